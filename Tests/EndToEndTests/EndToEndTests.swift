import FlotillaClient
import FlotillaCluster
import FlotillaStoreServer
import Foundation
import Testing

/// Real processes, as a user runs them.
@Suite("End to end: flotilla-server processes and the client", .serialized)
struct EndToEndTests {
    /// Runs `body` with a connected client, closing it afterwards.
    func withClient<T>(_ cluster: LocalCluster, _ body: (FlotillaClient) async throws -> T) async throws -> T {
        let client = try cluster.makeClient()
        let connections = Task { try await client.run() }
        defer {
            client.close()
            connections.cancel()
        }
        return try await body(client)
    }

    @Test func threeStoresServeReadsAndWritesAndSurviveLosingOne() async throws {
        let cluster = try LocalCluster(storeCount: 3, splitKeys: ["g", "n", "t"])
        try await withClient(cluster) { client in
            let keys = (0..<40).map { "key-\(String(UnicodeScalar(UInt8(ascii: "a") + UInt8($0 % 26))))-\($0)" }
            for key in keys { try await client.put(Data(key.utf8), Data("v1-\(key)".utf8)) }
            for key in keys { #expect(try await client.get(Data(key.utf8)) == Data("v1-\(key)".utf8)) }
            let scanned = try await client.scan(from: Data(), to: Data(), limit: 1_000)
            #expect(scanned.map { String(decoding: $0.key, as: UTF8.self) } == keys.sorted(), "a scan crosses every region")

            // Lose a store: every region keeps a majority and keeps serving.
            cluster.kill(2)
            for key in keys { try await client.put(Data(key.utf8), Data("v2-\(key)".utf8)) }
            for key in keys { #expect(try await client.get(Data(key.utf8)) == Data("v2-\(key)".utf8)) }

            // Bring it back and lose another: the restarted store must have caught up.
            try cluster.start(2)
            try await Task.sleep(for: .seconds(2))
            cluster.kill(3)
            for key in keys { #expect(try await client.get(Data(key.utf8)) == Data("v2-\(key)".utf8), "\(key) after store 2 rejoined") }
            let swapped = try await client.compareAndSwap(Data(keys[0].utf8), expected: Data("v2-\(keys[0])".utf8), newValue: Data("v3".utf8))
            #expect(swapped.succeeded)
        }
    }

    @Test func storeRefusesADataDirOfAnotherStore() async throws {
        let cluster = try LocalCluster(storeCount: 1, splitKeys: [])
        try await withClient(cluster) { client in try await client.put(Data("k".utf8), Data("v".utf8)) }
        cluster.kill(1, signal: SIGTERM)
        // Point store id 9 at store 1's data dir (with a cluster file that names store 9).
        var other = cluster.cluster
        other.stores = [ClusterFile.Store(id: 9, address: cluster.cluster.stores[0].address, raftAddress: cluster.cluster.stores[0].raftAddress)]
        let otherPath = cluster.root + "/other.json"
        try JSONEncoder().encode(other).write(to: URL(fileURLWithPath: otherPath))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: LocalCluster.serverBinary)
        process.arguments = ["--store-id", "9", "--cluster-file", otherPath, "--data-dir", cluster.root + "/store-1"]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = Pipe()
        try process.run()
        process.waitUntilExit()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 2)
        #expect(message.contains("belongs to cluster 42 store 1"), "\(message)")
    }

    @Test func flotillactlTakesAHugeScanLimitAndARestartWithOtherSplitKeysIsRefused() async throws {
        let cluster = try LocalCluster(storeCount: 1, splitKeys: ["m"])
        try await withClient(cluster) { client in
            try await client.put(Data("apple".utf8), Data("red".utf8))
            try await client.put(Data("plum".utf8), Data("purple".utf8))
        }
        let ctl = URL(fileURLWithPath: LocalCluster.serverBinary).deletingLastPathComponent().appendingPathComponent("flotillactl").path
        // Once a crash (UInt32(remaining) in the client).
        let (status, output) = try LocalCluster.runToEnd(ctl, ["kv", "scan", "--limit", "99999999999", "--cluster-file", cluster.clusterPath])
        #expect(status == 0 && output.contains("apple") && output.contains("plum"), "\(output)")
        cluster.kill(1, signal: SIGTERM)
        // The same data dir with other split keys: refused, naming the regions.
        var moved = cluster.cluster
        moved.splitKeys = ["n"]
        let movedPath = cluster.root + "/moved.json"
        try JSONEncoder().encode(moved).write(to: URL(fileURLWithPath: movedPath))
        let (restartStatus, restart) = try LocalCluster.runToEnd(LocalCluster.serverBinary,
                                                                 ["--store-id", "1", "--cluster-file", movedPath, "--data-dir", cluster.root + "/store-1"])
        #expect(restartStatus != 0 && restart.contains("split keys changed"), "\(restart)")
    }

    @Test func badFlagsAndBadClusterFilesAreRejectedClearly() async throws {
        func run(_ arguments: [String]) throws -> (Int32, String) { try LocalCluster.runToEnd(LocalCluster.serverBinary, arguments) }
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-flags-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (missingStatus, missing) = try run(["--store-id", "1", "--cluster-file", root + "/absent.json", "--data-dir", root + "/d"])
        #expect(missingStatus != 0 && missing.contains("cannot read cluster file"))
        try #"{"clusterID": 1, "stores": [{"id": 1, "address": "nowhere", "raftAddress": "127.0.0.1:2"}], "splitKeys": []}"#.write(toFile: root + "/bad.json", atomically: true, encoding: .utf8)
        let (badStatus, bad) = try run(["--store-id", "1", "--cluster-file", root + "/bad.json", "--data-dir", root + "/d"])
        #expect(badStatus != 0 && bad.contains("expected host:port"))
        try #"{"clusterID": 1, "stores": [{"id": 1, "address": "127.0.0.1:1", "raftAddress": "127.0.0.1:2"}], "splitKeys": ["m", "c"]}"#.write(toFile: root + "/order.json", atomically: true, encoding: .utf8)
        let (orderStatus, order) = try run(["--store-id", "1", "--cluster-file", root + "/order.json", "--data-dir", root + "/d"])
        #expect(orderStatus != 0 && order.contains("strictly increasing"))
        try #"{"clusterID": 1, "stores": [{"id": 1, "address": "127.0.0.1:1"}], "splitKeys": []}"#.write(toFile: root + "/noraft.json", atomically: true, encoding: .utf8)
        let (noRaftStatus, noRaft) = try run(["--store-id", "1", "--cluster-file", root + "/noraft.json", "--data-dir", root + "/d"])
        #expect(noRaftStatus != 0 && noRaft.contains("raftAddress"), "\(noRaft)")
        try #"{"clusterID": 1, "stores": [{"id": 1, "address": "127.0.0.1:1", "raftAddress": "127.0.0.1:1"}], "splitKeys": []}"#.write(toFile: root + "/twice.json", atomically: true, encoding: .utf8)
        let (twiceStatus, twice) = try run(["--store-id", "1", "--cluster-file", root + "/twice.json", "--data-dir", root + "/d"])
        #expect(twiceStatus != 0 && twice.contains("are the same endpoint"), "\(twice)")
        let (tickStatus, tick) = try run(["--store-id", "1", "--cluster-file", root + "/order.json", "--data-dir", root + "/d", "--tick-interval-ms", "1"])
        #expect(tickStatus != 0 && tick.contains("--tick-interval-ms"))
        // The TOML config file: typos and wrong types are named, flags override the file.
        try "store-id = 1\ntick-interval = 50\n".write(toFile: root + "/typo.toml", atomically: true, encoding: .utf8)
        let (typoStatus, typo) = try run(["--config", root + "/typo.toml"])
        #expect(typoStatus == 2 && typo.contains("unknown key 'tick-interval'"), "\(typo)")
        try "store-id = \"one\"\n".write(toFile: root + "/type.toml", atomically: true, encoding: .utf8)
        let (typeStatus, type) = try run(["--config", root + "/type.toml"])
        #expect(typeStatus == 2 && type.contains("'store-id'") && type.contains("must be an integer"), "\(type)")
        try "store-id = 1\n[limits\n".write(toFile: root + "/broken.toml", atomically: true, encoding: .utf8)
        let (brokenStatus, broken) = try run(["--config", root + "/broken.toml"])
        #expect(brokenStatus == 2 && broken.contains("not valid TOML") && broken.contains("line 2"), "\(broken)")
        try "store-id = 1\ncluster-file = \"order.json\"\n".write(toFile: root + "/partial.toml", atomically: true, encoding: .utf8)
        let (partialStatus, partial) = try run(["--config", root + "/partial.toml"])
        #expect(partialStatus == 2 && partial.contains("no data directory"), "\(partial)")
    }
}
