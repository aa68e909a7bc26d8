import FlotillaCluster
import FlotillaProto
import ArgumentParser
import FlotillaCommandLine
import FlotillaStoreServer
import RaftStore
import Foundation
import Logging

/// `flotilla-server`: one Flotilla store.
@main
struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flotilla-server",
        abstract: "Run one Flotilla store (a node hosting region replicas)."
    )

    /// Runs Swift Concurrency's tasks on NIO's event loops (the threads gRPC does its I/O
    /// on) instead of a separate pool: a request no longer hops between the two.
    static func main() async { await mainOnEventLoops() }

    @Option(name: .customLong("config"), help: "TOML config file; flags given here override it.")
    var configFile: String?

    @Option(name: .customLong("store-id"), help: "This store's id, as named in the cluster file.")
    var storeID: UInt64?

    @Option(name: .customLong("cluster-file"), help: "JSON file naming the stores and the initial split keys.")
    var clusterFile: String?

    @Option(name: .customLong("pd"), help: "PD endpoints host:port,... (or FLOTILLA_PD): the store joins the cluster PD serves.")
    var pdEndpoints: String?

    @Option(name: .customLong("address"), help: "With --pd: host:port of this store's KV service.")
    var address: String?

    @Option(name: .customLong("raft-address"), help: "With --pd: host:port of this store's Raft transport.")
    var raftAddress: String?

    @Option(name: .customLong("labels"), help: "With --pd: this store's labels key=value,... (for example zone=a), read by PD's isolation rule.")
    var labels: String?

    @Option(name: .customLong("secret-file"), help: "With --pd: a file holding the cluster secret (16 to 4096 bytes) every store's Raft port proves.")
    var secretFile: String?

    @Option(name: .customLong("region-max-size-bytes"), help: "With --pd: a region past this size splits (4096 to 2^40; default 144 MiB).")
    var regionMaxSizeBytes: Int?

    @Option(name: .customLong("region-split-size-bytes"), help: "With --pd: ...into pieces of about this size (at most the max size; default 96 MiB).")
    var regionSplitSizeBytes: Int?

    @Option(name: .customLong("split-check-diff-bytes"), help: "With --pd: check a region's size once this much was written to it (default 1/16 of the split size).")
    var splitCheckDiffBytes: Int?

    @Option(name: .customLong("load-split-requests-per-second"), help: "With --pd: a region above this many requests per second... (0: no load split; default 3000).")
    var loadSplitRequestsPerSecond: Int?

    @Option(name: .customLong("load-split-seconds"), help: "...for this many seconds in a row splits where its load divides (1-3600; default 10).")
    var loadSplitSeconds: Int?

    @Option(name: .customLong("data-dir"), help: "Directory of this store's data (created if missing).")
    var dataDirectory: String?

    // The numeric settings: flag, help, bounds and default from `StoreTunable` (one place).
    @Option(name: .customLong(StoreTunable.tickIntervalMilliseconds.flag), help: ArgumentHelp(StoreTunable.tickIntervalMilliseconds.help))
    var tickIntervalMilliseconds: Int?
    @Option(name: .customLong(StoreTunable.electionTimeoutTicks.flag), help: ArgumentHelp(StoreTunable.electionTimeoutTicks.help))
    var electionTimeoutTicks: Int?
    @Option(name: .customLong(StoreTunable.logGCCountThreshold.flag), help: ArgumentHelp(StoreTunable.logGCCountThreshold.help))
    var logGCCountThreshold: Int?
    @Option(name: .customLong(StoreTunable.logGCSizeThresholdBytes.flag), help: ArgumentHelp(StoreTunable.logGCSizeThresholdBytes.help))
    var logGCSizeThresholdBytes: Int?
    @Option(name: .customLong(StoreTunable.maxPendingRequests.flag), help: ArgumentHelp(StoreTunable.maxPendingRequests.help))
    var maxPendingRequests: Int?
    @Option(name: .customLong(StoreTunable.snapshotSendsMax.flag), help: ArgumentHelp(StoreTunable.snapshotSendsMax.help))
    var snapshotSendsMax: Int?
    @Option(name: .customLong(StoreTunable.diskReserveMegabytes.flag), help: ArgumentHelp(StoreTunable.diskReserveMegabytes.help))
    var diskReserveMegabytes: Int?
    @Option(name: .customLong(StoreTunable.staleReplicaSeconds.flag), help: ArgumentHelp(StoreTunable.staleReplicaSeconds.help))
    var staleReplicaSeconds: Int?
    @Option(name: .customLong(StoreTunable.regionHeartbeatIntervalMilliseconds.flag), help: ArgumentHelp(StoreTunable.regionHeartbeatIntervalMilliseconds.help))
    var regionHeartbeatIntervalMilliseconds: Int?
    @Option(name: .customLong(StoreTunable.regionSleepAfterQuietTicks.flag), help: ArgumentHelp(StoreTunable.regionSleepAfterQuietTicks.help))
    var regionSleepAfterQuietTicks: Int?
    @Option(name: .customLong(StoreTunable.storeDeadAfterTicks.flag), help: ArgumentHelp(StoreTunable.storeDeadAfterTicks.help))
    var storeDeadAfterTicks: Int?

    /// The numeric flags given, by tunable (the order of `StoreTunable.all`).
    var tunableFlags: [String: Int] {
        let given: [(StoreTunable, Int?)] = [
            (.tickIntervalMilliseconds, tickIntervalMilliseconds), (.electionTimeoutTicks, electionTimeoutTicks),
            (.logGCCountThreshold, logGCCountThreshold), (.logGCSizeThresholdBytes, logGCSizeThresholdBytes),
            (.maxPendingRequests, maxPendingRequests), (.snapshotSendsMax, snapshotSendsMax),
            (.diskReserveMegabytes, diskReserveMegabytes), (.staleReplicaSeconds, staleReplicaSeconds),
            (.regionHeartbeatIntervalMilliseconds, regionHeartbeatIntervalMilliseconds),
            (.regionSleepAfterQuietTicks, regionSleepAfterQuietTicks),
            (.storeDeadAfterTicks, storeDeadAfterTicks),
        ]
        precondition(given.map(\.0.flag) == StoreTunable.all.map(\.flag), "every tunable has its flag")
        return given.reduce(into: [:]) { flags, pair in if let value = pair.1 { flags[pair.0.flag] = value } }
    }

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (default info).")
    var logLevel: String?

    @Flag(name: .customLong("enable-fault-injection"), help: ArgumentHelp("Honour StoreAdmin.InjectFault (cut Raft links): nemesis tests only.", visibility: .hidden))
    var enableFaultInjection = false

    /// `key=value,...`: at most 16 labels, keys of 1 to 64 bytes and values up to 64, each key
    /// once (PD's limits, checked here so a typo stops the store with a reason).
    static func parse(labels: String) throws(ConfigError) -> [(key: String, value: String)] {
        var parsed: [(key: String, value: String)] = []
        for item in labels.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw ConfigError("--labels: '\(item.prefix(80))' is not key=value") }
            let key = parts[0].trimmingCharacters(in: .whitespaces), value = parts[1].trimmingCharacters(in: .whitespaces)
            guard (1...64).contains(key.utf8.count), value.utf8.count <= 64 else {
                throw ConfigError("--labels: a key is 1 to 64 bytes and a value at most 64 ('\(item.prefix(80))')")
            }
            guard !parsed.contains(where: { $0.key == key }) else { throw ConfigError("--labels: key \(key) given twice") }
            parsed.append((key, value))
        }
        guard parsed.count <= 16 else { throw ConfigError("--labels: at most 16 labels, got \(parsed.count)") }
        return parsed
    }

    /// The flags over the config file over the defaults, checked; every problem is named.
    func resolvedSettings() throws(ConfigError) -> (settings: ServerSettings, logLevel: Logger.Level) {
        let file = try configFile.map { path throws(ConfigError) in try ServerConfigFile.load(path: path) } ?? ServerConfigFile()
        guard let dataDirectory = dataDirectory ?? file.dataDirectory else {
            throw ConfigError("no data directory: pass --data-dir or set data-dir in the config file")
        }
        var join: PDJoin?
        // Loaded after the flags are checked, so a flag's error is named first.
        var staticCluster: (storeID: UInt64, path: String)?
        if let endpoints = pdEndpoints ?? file.pdEndpoints ?? ProcessInfo.processInfo.environment["FLOTILLA_PD"] {
            guard storeID ?? file.storeID == nil, clusterFile ?? file.clusterFile == nil else {
                throw ConfigError("--pd and --store-id/--cluster-file exclude each other: PD gives a joining store its id")
            }
            let list = endpoints.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
            guard !list.isEmpty, list.allSatisfy({ HostPort(dialable: $0) != nil }) else { throw ConfigError("--pd: '\(endpoints)' is not host:port,...") }
            guard let address = address ?? file.address, HostPort(dialable: address) != nil else {
                throw ConfigError("with --pd, --address (address in the config file) is this store's KV host:port")
            }
            guard let raftAddress = raftAddress ?? file.raftAddress, HostPort(raftAddress) != nil else {
                throw ConfigError("with --pd, --raft-address (raft-address in the config file) is this store's Raft host:port")
            }
            join = PDJoin(endpoints: list, address: address, raftAddress: raftAddress)
            if let labels { join?.labels = try Self.parse(labels: labels) }
        } else {
            guard let storeID = storeID ?? file.storeID else { throw ConfigError("no store id: pass --pd to join through PD, or --store-id with --cluster-file") }
            guard storeID > 0 else { throw ConfigError("the store id must be positive") }
            guard let clusterPath = clusterFile ?? file.clusterFile else {
                throw ConfigError("no cluster file: pass --pd to join through PD, or --cluster-file")
            }
            staticCluster = (storeID, clusterPath)
        }
        let flags = tunableFlags
        let tunables = StoreTunable.all.compactMap { tunable in (flags[tunable.flag] ?? file.tunables[tunable.flag]).map { (tunable, $0) } }
        for (tunable, value) in tunables { try tunable.check(value) }
        let levelName = logLevel ?? file.logLevel ?? "info"
        guard let level = Logger.Level(rawValue: levelName) else { throw ConfigError("log level '\(levelName)' is not a level") }
        var settings: ServerSettings
        if let join {
            settings = ServerSettings(pd: join, dataDirectory: dataDirectory)
            if let secretFile { settings.clusterSecret = try ClusterFile.readSecret(path: secretFile) }
        } else if let (storeID, clusterPath) = staticCluster {
            guard secretFile == nil else { throw ConfigError("--secret-file is for --pd; a static cluster names its secret in the cluster file (secretFile)") }
            let cluster = try ClusterFile.load(path: clusterPath)
            settings = ServerSettings(storeID: storeID, cluster: cluster, dataDirectory: dataDirectory)
            settings.clusterSecret = try cluster.loadSecret(clusterFilePath: clusterPath)
        } else {
            throw ConfigError("no store id: pass --pd to join through PD, or --store-id with --cluster-file")
        }
        for (tunable, value) in tunables { try tunable.apply(value, to: &settings) }
        var triggers = SplitTriggers()
        if let value = regionMaxSizeBytes { triggers.regionMaxSizeBytes = value }
        if let value = regionSplitSizeBytes { triggers.regionSplitSizeBytes = value } else if regionMaxSizeBytes != nil {
            triggers.regionSplitSizeBytes = min(triggers.regionSplitSizeBytes, triggers.regionMaxSizeBytes * 2 / 3)
        }
        triggers.splitCheckDiffBytes = splitCheckDiffBytes ?? max(1, triggers.regionSplitSizeBytes / 16)
        if let value = loadSplitRequestsPerSecond { triggers.loadSplitRequestsPerSecond = value }
        if let value = loadSplitSeconds { triggers.loadSplitSeconds = value }
        do { settings.splitTriggers = try triggers.validated() } catch { throw ConfigError("\(error)") }
        settings.faultInjectionEnabled = enableFaultInjection
        return (settings, level)
    }

    func run() async throws {
        let server: FlotillaServer
        do {
            let (settings, level) = try resolvedSettings()
            var logger = Logger(label: "flotilla.store")
            logger.logLevel = level
            if settings.storeID != 0 { logger[metadataKey: "store_id"] = "\(settings.storeID)" }
            let onFailure: @Sendable (Error) -> Void = { error in
                FileHandle.standardError.write(Data("flotilla-server: store loop failed, stopping: \(error)\n".utf8))
                Foundation.exit(70)
            }
            if settings.pd != nil {
                server = try await FlotillaServer.join(settings: settings, logger: logger, onFailure: onFailure)
            } else {
                server = try FlotillaServer(settings: settings, logger: logger, onFailure: onFailure)
            }
        } catch let error as ConfigError {
            FileHandle.standardError.write(Data("flotilla-server: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let signals = [SIGINT, SIGTERM].map { signalNumber in
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber)
            source.setEventHandler { server.shutDown() }
            source.resume()
            return source
        }
        let raftAddress = server.raftListeningAddress
        let storeID = server.settings.storeID
        try await server.run { address in
            FileHandle.standardOutput.write(Data("flotilla-server store \(storeID) serving on \(address), Raft on \(raftAddress)\n".utf8))
        }
        withExtendedLifetime(signals) {}
    }
}
