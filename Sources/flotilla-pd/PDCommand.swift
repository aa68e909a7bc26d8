import ArgumentParser
import FlotillaCluster
import FlotillaCommandLine
import FlotillaPDServer
import Foundation
import Logging

/// `flotilla-pd`: one member of the placement driver's Raft group.
@main
struct PDCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flotilla-pd",
        abstract: "Run one member of Flotilla's placement driver (PD): routes, ids, stores and scheduling.",
        discussion: """
        Start every member with the same --initial-members, e.g. three on one machine:
          flotilla-pd --name pd1 --data-dir pd1 --client-address 127.0.0.1:2379 --peer-address 127.0.0.1:2380 \\
            --initial-members pd1=127.0.0.1:2380,pd2=127.0.0.1:2382,pd3=127.0.0.1:2384
        One member is allowed for development.
        """
    )

    static func main() async { await mainOnEventLoops() }

    @Option(name: .customLong("config"), help: "TOML config file; flags given here override it.")
    var configFile: String?

    @Option(name: .customLong("name"), help: "This member's name, as in --initial-members.")
    var name: String?

    @Option(name: .customLong("data-dir"), help: "Directory of this member's data (created if missing).")
    var dataDirectory: String?

    @Option(name: .customLong("client-address"), help: "host:port of PD's gRPC API (port 0: the kernel picks).")
    var clientAddress: String?

    @Option(name: .customLong("peer-address"), help: "host:port of this member's Raft transport, as in --initial-members.")
    var peerAddress: String?

    @Option(name: .customLong("initial-members"), help: "Every member as name=peer-host:port, comma-separated, the same on every member.")
    var initialMembers: String?

    @Option(name: .customLong("tick-interval-ms"), help: "Raft tick interval in milliseconds (10-10000; default 100).")
    var tickIntervalMilliseconds: Int?

    @Option(name: .customLong("election-timeout-ticks"), help: "Raft election timeout in ticks (3-1000; default 10).")
    var electionTimeoutTicks: Int?

    @Option(name: .customLong("region-heartbeat-interval-ms"), help: "How often stores report regions; PD waits one round after election before scheduling (1000-600000; default 10000).")
    var regionHeartbeatIntervalMilliseconds: UInt64?

    @Option(name: .customLong("operator-step-timeout-ms"), help: "An operator step not finished in this long ends the operator (1000-3600000; default 60000).")
    var operatorStepTimeoutMilliseconds: UInt64?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (default info).")
    var logLevel: String?

    @Option(name: .customLong("secret-file"), help: "A file holding the secret (16 to 4096 bytes) PD members' Raft ports prove to each other.")
    var secretFile: String?

    func resolvedSettings() throws(ConfigError) -> (settings: PDSettings, logLevel: Logger.Level) {
        let file = try configFile.map { path throws(ConfigError) in try PDConfigFile.load(path: path) } ?? PDConfigFile()
        guard let name = name ?? file.name else { throw ConfigError("no name: pass --name or set name in the config file") }
        guard let dataDirectory = dataDirectory ?? file.dataDirectory else {
            throw ConfigError("no data directory: pass --data-dir or set data-dir in the config file")
        }
        guard let clientAddress = clientAddress ?? file.clientAddress else {
            throw ConfigError("no client address: pass --client-address or set client-address in the config file")
        }
        guard let peerAddress = peerAddress ?? file.peerAddress else {
            throw ConfigError("no peer address: pass --peer-address or set peer-address in the config file")
        }
        let members = try PDSettings.parseMembers(initialMembers ?? file.initialMembers ?? "\(name)=\(peerAddress)")
        var settings = PDSettings(name: name, dataDirectory: dataDirectory, clientAddress: clientAddress, peerAddress: peerAddress,
                                  initialMembers: members)
        let tick = tickIntervalMilliseconds ?? file.tickIntervalMilliseconds ?? 100
        guard (10...10_000).contains(tick) else { throw ConfigError("--tick-interval-ms must be between 10 and 10000, got \(tick)") }
        let election = electionTimeoutTicks ?? file.electionTimeoutTicks ?? 10
        guard (3...1_000).contains(election) else { throw ConfigError("--election-timeout-ticks must be between 3 and 1000, got \(election)") }
        settings.tickInterval = .milliseconds(tick)
        settings.electionTimeoutTicks = election
        if let interval = regionHeartbeatIntervalMilliseconds ?? file.regionHeartbeatIntervalMilliseconds {
            guard (1_000...600_000).contains(interval) else { throw ConfigError("--region-heartbeat-interval-ms must be between 1000 and 600000, got \(interval)") }
            settings.timings.regionHeartbeatIntervalMs = interval
        }
        if let timeout = operatorStepTimeoutMilliseconds ?? file.operatorStepTimeoutMilliseconds {
            guard (1_000...3_600_000).contains(timeout) else { throw ConfigError("--operator-step-timeout-ms must be between 1000 and 3600000, got \(timeout)") }
            settings.timings.operatorStepTimeoutMs = timeout
        }
        if let secretFile { settings.secret = try ClusterFile.readSecret(path: secretFile) }
        let levelName = logLevel ?? file.logLevel ?? "info"
        guard let level = Logger.Level(rawValue: levelName) else { throw ConfigError("log level '\(levelName)' is not a level") }
        return (settings, level)
    }

    func run() async throws {
        let server: PDServer
        do {
            let (settings, level) = try resolvedSettings()
            var logger = Logger(label: "flotilla.pd")
            logger.logLevel = level
            logger[metadataKey: "member"] = "\(settings.name)"
            server = try PDServer(settings: settings, logger: logger) { error in
                FileHandle.standardError.write(Data("flotilla-pd: PD loop failed, stopping: \(error)\n".utf8))
                Foundation.exit(70)
            }
        } catch let error as ConfigError {
            FileHandle.standardError.write(Data("flotilla-pd: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let signals = [SIGINT, SIGTERM].map { signalNumber in
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber)
            source.setEventHandler { server.shutDown() }
            source.resume()
            return source
        }
        let name = server.settings.name, peer = server.peerListeningAddress, id = server.memberID
        try await server.run { address in
            FileHandle.standardOutput.write(Data("flotilla-pd \(name) (member \(id)) serving on \(address), Raft on \(peer)\n".utf8))
        }
        withExtendedLifetime(signals) {}
    }
}
