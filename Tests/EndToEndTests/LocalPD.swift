import FlotillaClient
import FlotillaProto
import FlotillaStoreServer
import Foundation

/// Real `flotilla-pd` members on loopback, each with its own data dir, started and stopped by
/// the test. Client ports are fixed at creation, so a restarted member keeps its address.
final class LocalPD {
    let root: String
    let names: [String]
    let clientAddresses: [String]
    let peerAddresses: [String]
    var processes: [Int: Process] = [:]
    let tickMilliseconds: Int

    static var binary: String {
        URL(fileURLWithPath: LocalCluster.serverBinary).deletingLastPathComponent().appendingPathComponent("flotilla-pd").path
    }

    /// Flags every member gets, after the defaults.
    let memberArguments: [String]

    init(members: Int = 3, tickMilliseconds: Int = 50, memberArguments: [String] = []) throws {
        self.tickMilliseconds = tickMilliseconds
        self.memberArguments = memberArguments
        root = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-pd-e2e-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        names = (1...members).map { "pd\($0)" }
        clientAddresses = try (1...members).map { _ in "127.0.0.1:\(try LocalCluster.freePort())" }
        peerAddresses = try (1...members).map { _ in "127.0.0.1:\(try LocalCluster.freePort())" }
        for index in 0..<members { try start(index) }
    }

    var initialMembers: String { zip(names, peerAddresses).map { "\($0)=\($1)" }.joined(separator: ",") }

    func arguments(_ index: Int) -> [String] {
        ["--name", names[index], "--data-dir", root + "/" + names[index], "--client-address", clientAddresses[index],
         "--peer-address", peerAddresses[index], "--initial-members", initialMembers,
         "--tick-interval-ms", "\(tickMilliseconds)", "--region-heartbeat-interval-ms", "1000",
         "--log-level", ProcessInfo.processInfo.environment["FLOTILLA_E2E_LOG_LEVEL"] ?? "warning"] + memberArguments
    }

    func start(_ index: Int) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments(index)
        let log = root + "/\(names[index]).log"
        if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        try handle.seekToEnd()
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        processes[index] = process
    }

    /// Stores joined through this PD, by index: their processes and addresses.
    var stores: [Int: Process] = [:]
    var storeAddresses: [Int: (address: String, raftAddress: String)] = [:]

    /// Starts store `index` with `--pd` (its addresses kept across restarts).
    /// Flags every store started from now on gets, after the defaults.
    var storeArguments: [String] = []

    /// Flags for one store (by index), after `storeArguments`: kept across its restarts.
    var storeArgumentsByIndex: [Int: [String]] = [:]

    func startStore(_ index: Int) throws {
        if storeAddresses[index] == nil {
            storeAddresses[index] = ("127.0.0.1:\(try LocalCluster.freePort())", "127.0.0.1:\(try LocalCluster.freePort())")
        }
        guard let addresses = storeAddresses[index] else { return }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: LocalCluster.serverBinary)
        process.arguments = ["--pd", clientAddresses.joined(separator: ","), "--data-dir", root + "/store-\(index)",
                             "--address", addresses.address, "--raft-address", addresses.raftAddress,
                             "--tick-interval-ms", "\(tickMilliseconds)", "--region-heartbeat-interval-ms", "1000",
                             "--log-level", ProcessInfo.processInfo.environment["FLOTILLA_E2E_LOG_LEVEL"] ?? "warning"]
            + storeArguments + (storeArgumentsByIndex[index] ?? [])
        let log = root + "/store-\(index).log"
        if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        try handle.seekToEnd()
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        stores[index] = process
    }

    func killStore(_ index: Int, signal: Int32 = SIGKILL) {
        guard let process = stores.removeValue(forKey: index) else { return }
        Glibc.kill(process.processIdentifier, signal)
        process.waitUntilExit()
    }

    func storeLog(_ index: Int) -> String {
        (try? String(contentsOfFile: root + "/store-\(index).log", encoding: .utf8)) ?? ""
    }

    func kill(_ index: Int, signal: Int32 = SIGKILL) {
        guard let process = processes.removeValue(forKey: index) else { return }
        Glibc.kill(process.processIdentifier, signal)
        process.waitUntilExit()
    }

    func log(_ index: Int) -> String {
        (try? String(contentsOfFile: root + "/\(names[index]).log", encoding: .utf8)) ?? ""
    }

    /// Runs `body` with a PD client over every member's client address.
    func withClient<T: Sendable>(timeout: Duration = .seconds(20), _ body: (PDClient) async throws -> T) async throws -> T {
        let client = try PDClient(endpoints: clientAddresses, requestTimeout: timeout)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            defer {
                client.close()
                group.cancelAll()
            }
            return try await body(client)
        }
    }

    /// Bootstraps this (unbootstrapped) PD through its API with a pretend store that no
    /// process serves, and a first region with one peer there: for tests of PD alone.
    func bootstrapWithPretendStore(_ client: PDClient) async throws -> (store: Flotilla_V1_Store, region: Flotilla_V1_Region) {
        var store = Flotilla_V1_Store()
        store.address = "127.0.0.1:31001"
        store.raftAddress = "127.0.0.1:32001"
        store = try await client.putStore(store)
        var region = Flotilla_V1_Region()
        region.id = try await client.allocateIDs(2)
        region.epoch.confVer = 1
        region.epoch.version = 1
        var peer = Flotilla_V1_Peer()
        peer.id = region.id + 1
        peer.storeID = store.id
        region.peers = [peer]
        try await client.bootstrap(store: store, region: region)
        return (store, region)
    }

    /// The index of the member that leads now, by asking the members.
    func leaderIndex(_ client: PDClient) async throws -> Int? {
        let members = try await client.members()
        guard members.hasLeader else { return nil }
        return names.firstIndex(of: members.leader.name)
    }

    deinit {
        for index in stores.keys { killStore(index, signal: SIGKILL) }
        for index in processes.keys { kill(index, signal: SIGKILL) }
        if ProcessInfo.processInfo.environment["FLOTILLA_KEEP_E2E"] == nil {
            try? FileManager.default.removeItem(atPath: root)
        } else {
            print("kept \(root)")
        }
    }
}
