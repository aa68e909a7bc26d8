import ArgumentParser
import FlotillaCommandLine
import FlotillaServer
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

    @Option(name: .customLong("data-dir"), help: "Directory of this store's data (created if missing).")
    var dataDirectory: String?

    @Option(name: .customLong("tick-interval-ms"), help: "Raft tick interval in milliseconds (10-10000; default 100).")
    var tickIntervalMilliseconds: Int?

    @Option(name: .customLong("election-timeout-ticks"), help: "Raft election timeout in ticks (3-1000; default 10).")
    var electionTimeoutTicks: Int?

    @Option(name: .customLong("log-gc-count-threshold"), help: "Truncate a region's log beyond this many applied entries (default 10000).")
    var logGCCountThreshold: UInt64?

    @Option(name: .customLong("log-gc-size-threshold-bytes"), help: "...or beyond this many bytes of entries (default 32 MiB).")
    var logGCSizeThresholdBytes: Int?

    @Option(name: .customLong("max-pending-requests"), help: "Requests in flight before ServerIsBusy (default 16384).")
    var maxPendingRequests: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (default info).")
    var logLevel: String?

    /// The flags over the config file over the defaults, checked; every problem is named.
    func resolvedSettings() throws(ConfigError) -> (settings: ServerSettings, logLevel: Logger.Level) {
        let file = try configFile.map { path throws(ConfigError) in try ServerConfigFile.load(path: path) } ?? ServerConfigFile()
        guard let storeID = storeID ?? file.storeID else { throw ConfigError("no store id: pass --store-id or set store-id in the config file") }
        guard storeID > 0 else { throw ConfigError("the store id must be positive") }
        guard let clusterPath = clusterFile ?? file.clusterFile else {
            throw ConfigError("no cluster file: pass --cluster-file or set cluster-file in the config file")
        }
        guard let dataDirectory = dataDirectory ?? file.dataDirectory else {
            throw ConfigError("no data directory: pass --data-dir or set data-dir in the config file")
        }
        let tick = tickIntervalMilliseconds ?? file.tickIntervalMilliseconds ?? 100
        guard (10...10_000).contains(tick) else { throw ConfigError("--tick-interval-ms (tick-interval-ms) must be between 10 and 10000, got \(tick)") }
        let election = electionTimeoutTicks ?? file.electionTimeoutTicks ?? 10
        guard (3...1_000).contains(election) else { throw ConfigError("--election-timeout-ticks (election-timeout-ticks) must be between 3 and 1000, got \(election)") }
        let levelName = logLevel ?? file.logLevel ?? "info"
        guard let level = Logger.Level(rawValue: levelName) else { throw ConfigError("log level '\(levelName)' is not a level") }
        let cluster = try ClusterFile.load(path: clusterPath)
        var settings = ServerSettings(storeID: storeID, cluster: cluster, dataDirectory: dataDirectory)
        settings.clusterSecret = try cluster.loadSecret(clusterFilePath: clusterPath)
        settings.tickInterval = .milliseconds(tick)
        settings.electionTimeoutTicks = election
        if let value = logGCCountThreshold ?? file.logGCCountThreshold {
            guard value >= 1 else { throw ConfigError("the log GC count threshold must be at least 1") }
            settings.logGCCountThreshold = value
        }
        if let value = logGCSizeThresholdBytes ?? file.logGCSizeThresholdBytes {
            guard value >= 4_096 else { throw ConfigError("the log GC size threshold must be at least 4096 bytes, got \(value)") }
            settings.logGCSizeThresholdBytes = value
        }
        if let value = maxPendingRequests ?? file.maxPendingRequests {
            guard value >= 1 else { throw ConfigError("max pending requests must be at least 1, got \(value)") }
            settings.maxPendingRequests = value
        }
        if let value = file.snapshotSendsMax {
            guard value >= 1 else { throw ConfigError("snapshot-sends-max must be at least 1, got \(value)") }
            settings.snapshotSendsMax = value
        }
        return (settings, level)
    }

    func run() async throws {
        let server: FlotillaServer
        let storeID: UInt64
        do {
            let (settings, level) = try resolvedSettings()
            storeID = settings.storeID
            var logger = Logger(label: "flotilla.store")
            logger.logLevel = level
            logger[metadataKey: "store_id"] = "\(storeID)"
            server = try FlotillaServer(settings: settings, logger: logger) { error in
                FileHandle.standardError.write(Data("flotilla-server: store loop failed, stopping: \(error)\n".utf8))
                Foundation.exit(70)
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
        try await server.run { address in
            FileHandle.standardOutput.write(Data("flotilla-server store \(storeID) serving on \(address), Raft on \(raftAddress)\n".utf8))
        }
        withExtendedLifetime(signals) {}
    }
}
