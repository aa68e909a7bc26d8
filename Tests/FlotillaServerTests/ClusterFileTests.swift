import FlotillaCluster
import FlotillaProto
@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import Foundation
import Testing

/// Cluster files as an operator writes them, typos and all.
@Suite("Cluster files")
struct ClusterFileTests {
    func write(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cluster-\(UUID().uuidString).json").path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    let store = #"{"id": 1, "address": "127.0.0.1:7001", "raftAddress": "127.0.0.1:7002"}"#

    @Test func aMisspelledFieldIsRefusedByName() throws {
        let top = try write(#"{"clusterID": 1, "stores": [\#(store)], "splitKey": ["g"]}"#)
        #expect(throws: ConfigError.self) { try ClusterFile.load(path: top) }
        do { _ = try ClusterFile.load(path: top) } catch { #expect(error.description.contains("'splitKey'")) }
        let inner = try write(#"{"clusterID": 1, "stores": [{"id": 1, "adress": "127.0.0.1:7001", "raftAddress": "127.0.0.1:7002"}], "splitKeys": []}"#)
        do { _ = try ClusterFile.load(path: inner); Issue.record("accepted") } catch { #expect(error.description.contains("'adress'")) }
        let good = try write(#"{"clusterID": 1, "stores": [\#(store)], "splitKeys": ["g"]}"#)
        #expect(try ClusterFile.load(path: good).splitKeys == ["g"])
    }

    /// One parser of host:port for every program (server, PD, client, bench).
    @Test func hostPortIsParsedStrictlyOnce() {
        #expect(HostPort("127.0.0.1:7001") == HostPort(dialable: "127.0.0.1:7001"))
        #expect(HostPort("[::1]:80")?.host == "[::1]")
        #expect(HostPort("127.0.0.1:0")?.port == 0, "a listener may ask for an ephemeral port")
        #expect(HostPort(dialable: "127.0.0.1:0") == nil, "nobody dials port 0")
        for bad in ["", ":80", "host", "host:", "host:+80", "host:-1", "host:65536", "host:000080", "host:8 0",
                    "host:٣", String(repeating: "h", count: HostPort.textBytesMax) + ":1"] {
            #expect(HostPort(bad) == nil, "\(bad.prefix(40)) was accepted")
        }
    }

    @Test func addressesAreComparedAsEndpointsNotText() throws {
        let path = try write(#"{"clusterID": 1, "stores": [{"id": 1, "address": "localhost:7001", "raftAddress": "127.0.0.1:7001"}], "splitKeys": []}"#)
        do { _ = try ClusterFile.load(path: path); Issue.record("accepted") } catch { #expect(error.description.contains("same endpoint")) }
    }

    @Test func theSecretFileIsReadRelativeToTheClusterFileAndBounded() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("secret-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try ClusterFile.writeNewSecret(to: folder + "/s")
        let file = ClusterFile(clusterID: 1, stores: [], splitKeys: [], secretFile: "s")
        #expect(try file.loadSecret(clusterFilePath: folder + "/cluster.json")?.count == 64)
        try Data("short\n".utf8).write(to: URL(fileURLWithPath: folder + "/s"))
        #expect(throws: ConfigError.self) { try file.loadSecret(clusterFilePath: folder + "/cluster.json") }
        try Data(repeating: 65, count: RaftHandshake.secretBytesMax + 1).write(to: URL(fileURLWithPath: folder + "/s"))
        #expect(throws: ConfigError.self) { try file.loadSecret(clusterFilePath: folder + "/cluster.json") }
        #expect(try ClusterFile(clusterID: 1, stores: [], splitKeys: []).loadSecret(clusterFilePath: folder + "/c") == nil)
    }

    @Test func aStoreRestartedWithOtherSplitKeysRefusesToStart() throws {
        let stores = [ClusterFile.Store(id: 1, address: "127.0.0.1:1", raftAddress: "127.0.0.1:2")]
        let before = ClusterFile(clusterID: 1, stores: stores, splitKeys: ["g", "n"]).initialRegions()
        let after = ClusterFile(clusterID: 1, stores: stores, splitKeys: ["h", "n"]).initialRegions()
        #expect(throws: Never.self) { try FlotillaServer.checkRegionsMatch(stored: before, clusterFile: before) }
        #expect(throws: Never.self) { try FlotillaServer.checkRegionsMatch(stored: [], clusterFile: after) }
        #expect(throws: ConfigError.self) { try FlotillaServer.checkRegionsMatch(stored: before, clusterFile: after) }
        let fewer = ClusterFile(clusterID: 1, stores: stores, splitKeys: ["g"]).initialRegions()
        #expect(throws: ConfigError.self) { try FlotillaServer.checkRegionsMatch(stored: before, clusterFile: fewer) }
        #expect(throws: ConfigError.self) { try FlotillaServer.checkRegionsMatch(stored: fewer, clusterFile: before) }
    }
}
