import FlotillaClient
import FlotillaCluster
import FlotillaProto
import FlotillaNode
import FlotillaPDServer
import FlotillaStoreServer
import Foundation
import Logging

/// One single-store Flotilla server running in the test process (one region, leading itself),
/// stopped by `stop()`.
final class InProcessServer: @unchecked Sendable {
    let server: FlotillaServer
    let root: String
    let address: HostPort
    private var task: Task<Void, Error>?

    /// `configure` adjusts the store's settings before it starts. The server is ready once a
    /// write of `in-process-server-ready` succeeds (a read, with `readyByRead`: for a store
    /// that refuses writes).
    init(readyByRead: Bool = false, configure: (inout ServerSettings) -> Void = { _ in }) async throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-edge-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let store = ClusterFile.Store(id: 1, address: "127.0.0.1:\(try freeLoopbackPort())", raftAddress: "127.0.0.1:\(try freeLoopbackPort())")
        address = HostPort(store.address)!
        var settings = ServerSettings(storeID: 1, cluster: ClusterFile(clusterID: 3, stores: [store], splitKeys: []), dataDirectory: root + "/data")
        settings.tickInterval = .milliseconds(20)
        settings.clusterSecret = Array("in-process-test-secret".utf8)
        configure(&settings)
        var logger = Logger(label: "edge-test")
        logger.logLevel = .warning
        server = try FlotillaServer(settings: settings, logger: logger, onFailure: { _ in })
        let listening = AsyncStream<Void>.makeStream()
        task = Task { [server] in try await server.run { _ in listening.continuation.yield() } }
        for await _ in listening.stream { break }
        // Serving: the region has elected its leader (slow on a loaded machine).
        try await withClient { client in
            if readyByRead { _ = try await client.get(Data("in-process-server-ready".utf8)) } else {
                try await client.put(Data("in-process-server-ready".utf8), Data())
            }
        }
    }

    /// A client of this server (run it with `withClient`).
    func withClient<T>(_ body: (FlotillaClient) async throws -> T) async throws -> T {
        var region = Flotilla_V1_Region()
        region.id = 1
        region.epoch.confVer = 1
        region.epoch.version = 1
        var peer = Flotilla_V1_Peer()
        peer.id = 1 << 16 | 1
        peer.storeID = 1
        region.peers = [peer]
        let client = try FlotillaClient(stores: [FlotillaClient.Store(id: 1, host: address.host, port: address.port)], regions: [region],
                                        requestTimeout: .seconds(10))
        let connections = Task { try await client.run() }
        defer {
            client.close()
            connections.cancel()
        }
        return try await body(client)
    }

    func stop() async {
        server.shutDown()
        _ = try? await task?.value
        try? FileManager.default.removeItem(atPath: root)
    }
}
