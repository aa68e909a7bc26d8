import FlotillaCluster
import FlotillaProto
@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import Foundation
import FuzzSupport
import Logging
import Testing

/// Seeded mutation of what a store reads from files and from its Raft port: TOML configs,
/// cluster files, and frames from an authenticated peer. Each mutant is refused with a message
/// or handled; none crashes or hangs.
@Suite("Fuzz: config files and Raft frames", .serialized)
struct InputFuzzTests {
    static let config = """
        store-id = 1
        cluster-file = "cluster.json"
        data-dir = "/tmp/flotilla-fuzz"
        tick-interval-ms = 100
        election-timeout-ticks = 10
        log-level = "info"

        [raft-log-gc]
        count-threshold = 10000
        size-threshold-bytes = 33554432

        [limits]
        max-pending-requests = 16384
        snapshot-sends-max = 4
        """

    static let cluster = #"{"clusterID": 1, "secretFile": "s", "splitKeys": ["g", "n"], "stores": [{"id": 1, "address": "127.0.0.1:7001", "raftAddress": "127.0.0.1:7002"}, {"id": 2, "address": "127.0.0.1:7003", "raftAddress": "127.0.0.1:7004"}]}"#

    @Test func mutatedConfigAndClusterFilesAreRefusedWithAMessage() throws {
        var mutator = Mutator(seed: Mutator.seed(default: 5))
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("config-fuzz-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        #expect(throws: Never.self) { try ServerConfigFile.parse(Self.config, source: "valid") }
        var refused = 0
        for _ in 0..<Mutator.iterations(default: 1_000) {
            let text = String(decoding: mutator.mutate(Array(Self.config.utf8)), as: UTF8.self)
            do { _ = try ServerConfigFile.parse(text, source: "mutant") } catch { refused += 1; #expect(!error.description.isEmpty) }
            let path = folder + "/cluster.json"
            try Data(mutator.mutate(Array(Self.cluster.utf8))).write(to: URL(fileURLWithPath: path))
            do { _ = try ClusterFile.load(path: path) } catch { refused += 1; #expect(!error.description.isEmpty) }
        }
        #expect(refused > 0)
        print("fuzz: \(Mutator.iterations(default: 1_000) * 2) mutated config and cluster files tried, \(refused) refused with a message")
        // Files over the bound are refused before they are parsed.
        let huge = folder + "/huge.toml"
        try Data(repeating: 0x23, count: (1 << 20) + 1).write(to: URL(fileURLWithPath: huge))
        #expect(throws: ConfigError.self) { try ServerConfigFile.load(path: huge) }
    }

    @Test func mutatedFramesFromAnAuthenticatedPeerNeverCrashTheTransport() throws {
        let secret = Array("fuzz-cluster-secret-0123".utf8)
        let transport = try RaftSocketTransport(listen: HostPort("127.0.0.1:0")!, clusterID: 5, storeID: 2,
                                                peers: [1: HostPort("127.0.0.1:1")!], secret: secret, logger: Logger(label: "fuzz"))
        var valid = Flotilla_V1_RaftMessageBatch()
        valid.clusterID = 5
        valid.fromStoreID = 1
        valid.toStoreID = 2
        var message = Flotilla_V1_RaftMessage()
        message.regionID = 1
        message.message.kind = 0
        message.message.term = 3
        message.message.entries = [Flotilla_V1_RaftEntry.with { $0.index = 5; $0.term = 3; $0.data = Data("entry".utf8) }]
        valid.messages = [message, message]
        let payload: [UInt8] = try valid.serializedBytes()
        var mutator = Mutator(seed: Mutator.seed(default: 9))
        var delivered = 0
        let pump = { transport.wait(timeoutMilliseconds: 2) { _ in delivered += 1 } }
        var peer = try RawRaftPeer(port: transport.listeningPort)
        try peer.handshake(clusterID: 5, from: 1, to: 2, secret: secret, pump: pump)
        for _ in 0..<Mutator.iterations(default: 300) {
            let body = mutator.chance(4) ? payload : mutator.mutate(payload)
            var length = UInt32(body.count)
            if mutator.chance(10) { length = UInt32.random(in: 0...UInt32.max, using: &mutator.random) }
            peer.write([UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)] + body)
            for _ in 0..<3 { pump() }
            // A refused frame closes the connection: authenticate again.
            if peer.waitUntilClosed(seconds: 0.01, pump: pump) || length != UInt32(body.count) {
                peer = try RawRaftPeer(port: transport.listeningPort)
                try peer.handshake(clusterID: 5, from: 1, to: 2, secret: secret, pump: pump)
            }
        }
        #expect(delivered > 0, "valid and harmlessly mutated frames were delivered")
        #expect(transport.connectionsRefused > 0, "invalid frames were refused")
        print("fuzz: \(Mutator.iterations(default: 300)) mutated Raft frames tried on an authenticated connection, \(delivered) delivered, \(transport.connectionsRefused) connections refused")
    }
}
