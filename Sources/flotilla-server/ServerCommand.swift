import ArgumentParser
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

    @Option(name: .customLong("store-id"), help: "This store's id, as named in the cluster file.")
    var storeID: UInt64

    @Option(name: .customLong("cluster-file"), help: "JSON file naming the stores and the initial split keys.")
    var clusterFile: String

    @Option(name: .customLong("data-dir"), help: "Directory of this store's RocksDB (created if missing).")
    var dataDirectory: String

    @Option(name: .customLong("tick-interval-ms"), help: "Raft tick interval in milliseconds (10-10000).")
    var tickIntervalMilliseconds = 100

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    func validate() throws {
        guard storeID > 0 else { throw ValidationError("--store-id must be positive") }
        guard (10...10_000).contains(tickIntervalMilliseconds) else {
            throw ValidationError("--tick-interval-ms must be between 10 and 10000, got \(tickIntervalMilliseconds)")
        }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level '\(logLevel)' is not a level") }
    }

    func run() async throws {
        var logger = Logger(label: "flotilla.store")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        logger[metadataKey: "store_id"] = "\(storeID)"
        let cluster: ClusterFile
        do { cluster = try ClusterFile.load(path: clusterFile) } catch {
            throw ValidationError(error.description)
        }
        var settings = ServerSettings(storeID: storeID, cluster: cluster, dataDirectory: dataDirectory)
        settings.tickInterval = .milliseconds(tickIntervalMilliseconds)
        let server: FlotillaServer
        do {
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
        let storeID = self.storeID
        try await server.run { address in
            FileHandle.standardOutput.write(Data("flotilla-server store \(storeID) serving on \(address)\n".utf8))
        }
        withExtendedLifetime(signals) {}
    }
}
