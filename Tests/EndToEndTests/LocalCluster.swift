import FlotillaCluster
import FlotillaProto
import FlotillaClient
import FlotillaStoreServer
import Foundation
import Raft
import RaftStore
import RocksDB

/// Real `flotilla-server` processes on loopback with ephemeral ports, each with its own data
/// dir, started and stopped by the test.
final class LocalCluster {
    let root: String
    let cluster: ClusterFile
    let clusterPath: String
    var processes: [UInt64: Process] = [:]
    var logs: [UInt64: String] = [:]
    let tickMilliseconds: Int
    let extraArguments: [String]

    static var serverBinary: String {
        let testBinary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: testBinary).deletingLastPathComponent().appendingPathComponent("flotilla-server").path
    }

    init(storeCount: Int, splitKeys: [String], tickMilliseconds: Int = 50, extraArguments: [String] = []) throws {
        self.tickMilliseconds = tickMilliseconds
        self.extraArguments = extraArguments
        root = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-e2e-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let stores = try (1...UInt64(storeCount)).map { id in
            ClusterFile.Store(id: id, address: "127.0.0.1:\(try Self.freePort())", raftAddress: "127.0.0.1:\(try Self.freePort())")
        }
        try ClusterFile.writeNewSecret(to: root + "/cluster.secret")
        cluster = ClusterFile(clusterID: 42, stores: stores, splitKeys: splitKeys, secretFile: "cluster.secret")
        clusterPath = root + "/cluster.json"
        try JSONEncoder().encode(cluster).write(to: URL(fileURLWithPath: clusterPath))
        for store in stores { try start(store.id) }
    }

    /// A free loopback port for a server of the test to bind.
    static func freePort() throws -> Int { try freeLoopbackPort() }

    /// Runs a binary to its end as a user would; returns its exit status and its output
    /// (stdout and stderr together).
    static func runToEnd(_ binary: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    /// Starts a store from a TOML config file (as an operator would), with the log level and
    /// `extraArguments` as flags.
    func start(_ storeID: UInt64) throws {
        let configPath = root + "/store-\(storeID).toml"
        let config = """
            # store \(storeID) of an end-to-end test cluster
            store-id = \(storeID)
            cluster-file = "cluster.json"
            data-dir = "store-\(storeID)"
            tick-interval-ms = \(tickMilliseconds)

            [limits]
            snapshot-sends-max = 8
            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.serverBinary)
        process.arguments = ["--config", configPath, "--log-level",
                             ProcessInfo.processInfo.environment["FLOTILLA_E2E_LOG_LEVEL"] ?? "warning"] + extraArguments
        let log = root + "/store-\(storeID).log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        try handle.seekToEnd()
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        processes[storeID] = process
        logs[storeID] = log
    }

    func kill(_ storeID: UInt64, signal: Int32 = SIGKILL) {
        guard let process = processes.removeValue(forKey: storeID) else { return }
        Glibc.kill(process.processIdentifier, signal)
        process.waitUntilExit()
    }

    func makeClient(timeout: Duration = .seconds(20)) throws -> FlotillaClient {
        let stores = cluster.stores.compactMap { store in
            HostPort(store.address).map { FlotillaClient.Store(id: store.id, host: $0.host, port: $0.port) }
        }
        return try FlotillaClient(stores: stores, regions: cluster.initialRegions(), requestTimeout: timeout)
    }

    /// Stops every store (SIGTERM: a clean shutdown).
    func stopAll() {
        for storeID in processes.keys.sorted() { kill(storeID, signal: SIGTERM) }
    }

    /// Every region's digest in a stopped store's data dir, read offline.
    func offlineDigests(_ storeID: UInt64) throws -> [UInt64: RegionDigest] {
        precondition(processes[storeID] == nil, "store \(storeID) is running")
        let path = root + "/store-\(storeID)"
        let db = try StoreDatabase.open(path: path + "/db")
        let core = try StoreCore(db: db, storeID: storeID, settings: StoreSettings(snapshotDirectory: path + "/snapshots")) { RaftConfig(id: $0) }
        var digests: [UInt64: RegionDigest] = [:]
        for regionID in core.regionIDs { digests[regionID] = try core.regionDigest(regionID) }
        return digests
    }

    func log(_ storeID: UInt64) -> String {
        logs[storeID].flatMap { try? String(contentsOfFile: $0, encoding: .utf8) } ?? ""
    }

    deinit {
        for storeID in processes.keys { kill(storeID, signal: SIGKILL) }
        if ProcessInfo.processInfo.environment["FLOTILLA_KEEP_E2E"] == nil {
            try? FileManager.default.removeItem(atPath: root)
        } else {
            print("kept \(root)")
        }
    }
}
