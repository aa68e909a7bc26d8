import FlotillaProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Raft
import RaftStore
import RocksDB

/// Settings of one store process.
public struct ServerSettings: Sendable {
    public var storeID: UInt64
    public var cluster: ClusterFile
    public var dataDirectory: String
    public var tickInterval: Duration = .milliseconds(100)
    public var electionTimeoutTicks = 10
    /// Log truncation thresholds, request bound and snapshot limits (see `StoreSettings`).
    public var logGCCountThreshold: UInt64 = 10_000
    public var logGCSizeThresholdBytes = 32 << 20
    public var maxPendingRequests = 16_384
    public var snapshotSendsMax = 4
    /// The secret the Raft ports of the cluster's stores prove to each other (the cluster
    /// file's `secretFile`). Without one, the port is open to anyone who knows the cluster id
    /// and store ids, and a warning says so.
    public var clusterSecret: [UInt8]?

    public init(storeID: UInt64, cluster: ClusterFile, dataDirectory: String) {
        self.storeID = storeID
        self.cluster = cluster
        self.dataDirectory = dataDirectory
    }
}

/// A running store: its RocksDB, store loop (which also runs the Raft transport to the other
/// stores) and gRPC server.
public final class FlotillaServer: Sendable {
    public let settings: ServerSettings
    private let driver: StoreDriver
    /// Where the Raft transport listens (the kernel's port when the cluster file says 0).
    public let raftListeningAddress: String
    private let server: GRPCServer<HTTP2ServerTransport.Posix>
    private let transport: HTTP2ServerTransport.Posix
    private let logger: Logger
    private let shutdownRequested: AsyncStream<Void>
    private let requestShutdown: AsyncStream<Void>.Continuation

    /// Opens (or creates) the store's data and prepares everything; `run()` serves.
    /// - Throws: `ConfigError` when the data dir belongs to another cluster or store.
    public init(settings: ServerSettings, logger: Logger, onFailure: @escaping @Sendable (Error) -> Void) throws {
        self.settings = settings
        self.logger = logger
        guard let me = settings.cluster.stores.first(where: { $0.id == settings.storeID }) else {
            throw ConfigError("store \(settings.storeID) is not in the cluster file (stores: \(settings.cluster.stores.map(\.id)))")
        }
        guard let address = HostPort(me.address) else { throw ConfigError("bad address \(me.address)") }
        guard let raftAddress = HostPort(me.raftAddress) else { throw ConfigError("bad raftAddress \(me.raftAddress)") }
        let db = try StoreDatabase.open(path: settings.dataDirectory + "/db")
        try Self.checkIdentity(db: db, clusterID: settings.cluster.clusterID, storeID: settings.storeID, path: settings.dataDirectory)
        let electionTimeoutTicks = settings.electionTimeoutTicks
        var storeSettings = StoreSettings(snapshotDirectory: settings.dataDirectory + "/snapshots")
        storeSettings.logGCCountThreshold = settings.logGCCountThreshold
        storeSettings.logGCSizeThresholdBytes = settings.logGCSizeThresholdBytes
        storeSettings.maxPendingRequests = settings.maxPendingRequests
        let core = try StoreCore(db: db, storeID: settings.storeID, settings: storeSettings) { peerID in
            var config = RaftConfig(id: peerID)
            config.electionTimeoutTicks = electionTimeoutTicks
            config.heartbeatIntervalTicks = 2
            // Commit indexes ride on the next append or heartbeat: half the messages per write.
            config.broadcastCommit = false
            config.randomSeed = peerID &* 0x9E37_79B9 ^ UInt64(UInt32(truncatingIfNeeded: ProcessInfo.processInfo.processIdentifier))
            return config
        }
        let initialRegions = settings.cluster.initialRegions()
        try Self.checkRegionsMatch(stored: core.regionIDs.compactMap { core.region($0) }, clusterFile: initialRegions)
        for region in initialRegions { try core.bootstrapRegion(region) }

        let clusterID = settings.cluster.clusterID
        let storeID = settings.storeID
        var addresses: [UInt64: HostPort] = [:]
        var raftPeers: [UInt64: HostPort] = [:]
        for store in settings.cluster.stores {
            addresses[store.id] = HostPort(store.address)
            if store.id != storeID { raftPeers[store.id] = HostPort(store.raftAddress) }
        }
        if settings.clusterSecret == nil {
            logger.warning("no cluster secret (secretFile in the cluster file): the Raft port accepts any peer that knows the cluster and store ids")
        }
        let network = try RaftSocketTransport(listen: raftAddress, clusterID: clusterID, storeID: storeID, peers: raftPeers,
                                              secret: settings.clusterSecret ?? [], logger: logger)
        raftListeningAddress = "\(raftAddress.host):\(network.listeningPort)"
        let snapshotSender = SnapshotSender(addresses: addresses, sendsMax: settings.snapshotSendsMax,
                                            secret: settings.clusterSecret ?? [], logger: logger)
        driver = StoreDriver(core: core, network: network, tickInterval: settings.tickInterval,
                             tickCatchUpMax: 2 * settings.electionTimeoutTicks + 1, logger: logger, onFailure: onFailure,
                             snapshots: snapshotSender)
        (shutdownRequested, requestShutdown) = AsyncStream.makeStream(of: Void.self)
        var transportConfig = HTTP2ServerTransport.Posix.Config.defaults
        // Room for the largest request the KV service accepts, and no more (see `KVLimits`).
        transportConfig.rpc.maxRequestPayloadSize = KVLimits.requestMessageBytesMax
        GRPCEdgeGuard().install(in: &transportConfig)
        // No flush coalescing: grpc-swift-nio-transport holds a response up to 100 µs for
        // more to share its write. Measured (issue 13, one region): a lone client's reads took
        // p50 0.70 ms with it and 0.47–0.54 ms without, writes 1.45–1.52 ms and 1.27 ms; at 64
        // clients throughput and CPU per operation did not change beyond the spread.
        transportConfig.connection.flushCoalescing = nil
        transport = HTTP2ServerTransport.Posix(address: .ipv4(host: address.host, port: address.port), transportSecurity: .plaintext,
                                               config: transportConfig)
        server = GRPCServer(transport: transport, services: [
            KVService(driver: driver),
            SnapshotTransferService(storeID: storeID, knownStores: Set(settings.cluster.stores.map(\.id)),
                                    driver: driver, logger: logger, snapshotDirectory: storeSettings.snapshotDirectory,
                                    secret: settings.clusterSecret ?? []),
            StoreAdminService(driver: driver, snapshotSender: snapshotSender),
        ])
    }

    /// A store restarted with a cluster file whose split keys differ from the regions it holds
    /// refuses to start (it would otherwise keep its old ranges silently while its peers
    /// bootstrap new ones).
    static func checkRegionsMatch(stored: [Flotilla_V1_Region], clusterFile expected: [Flotilla_V1_Region]) throws(ConfigError) {
        guard !stored.isEmpty else { return }
        func describe(_ region: Flotilla_V1_Region) -> String {
            "region \(region.id) [\(String(decoding: region.startKey, as: UTF8.self)), \(region.endKey.isEmpty ? "end" : String(decoding: region.endKey, as: UTF8.self)))"
        }
        let expectedByID = Dictionary(expected.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        for region in stored {
            guard let wanted = expectedByID[region.id], wanted.startKey == region.startKey, wanted.endKey == region.endKey else {
                throw ConfigError("the data dir holds \(describe(region)), which the cluster file's split keys do not describe "
                                  + "(\(expected.map(describe).joined(separator: ", "))): the split keys changed since this store was created")
            }
        }
        if let missing = expected.first(where: { wanted in !stored.contains { $0.id == wanted.id } }) {
            throw ConfigError("the cluster file describes \(describe(missing)), which this store's data dir does not hold: the split keys changed since this store was created")
        }
    }

    /// A store refuses a data dir that another cluster or store wrote.
    static func checkIdentity(db: Database, clusterID: UInt64, storeID: UInt64, path: String, what: String? = nil) throws {
        let meta = try db.columnFamily(StoreKeys.metaColumnFamily)
        if let stored = try db.get(StoreKeys.storeIdent, in: meta) {
            let ident = try Flotilla_V1_StoreIdent(serializedBytes: stored)
            guard ident.clusterID == clusterID, ident.storeID == storeID else {
                if let what {
                    throw ConfigError("data dir \(path) was written by another PD group or member than \(what)")
                }
                throw ConfigError("data dir \(path) belongs to cluster \(ident.clusterID) store \(ident.storeID), not cluster \(clusterID) store \(storeID)")
            }
            return
        }
        var ident = Flotilla_V1_StoreIdent()
        ident.clusterID = clusterID
        ident.storeID = storeID
        try db.put(StoreKeys.storeIdent, try ident.serializedBytes(), in: meta, sync: true)
    }

    /// Serves until `shutDown()`; prints the listening address once bound.
    public func run(onListening: @escaping @Sendable (String) -> Void) async throws {
        driver.start()
        do {
            try await serve(onListening: onListening)
        } catch is ShutdownGraceElapsed {
            logger.info("stopped after the shutdown grace period")
        } catch {
            await driver.stop()
            throw error
        }
        await driver.stop()
    }

    /// Thrown to end serving when peers keep their Raft streams open past the grace period.
    private struct ShutdownGraceElapsed: Error {}

    private func serve(onListening: @escaping @Sendable (String) -> Void) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            // Streams that never end by themselves (clients' command streams, snapshots):
            // after a short grace period for in-flight requests, stop waiting for them.
            group.addTask {
                for await _ in self.shutdownRequested {
                    try await Task.sleep(for: .milliseconds(500))
                    throw ShutdownGraceElapsed()
                }
            }
            group.addTask { try await self.server.serve() }
            if let address = try await transport.listeningAddress.ipv4 {
                onListening("\(address.host):\(address.port)")
            }
        }
    }

    /// Stops accepting requests and lets `run()` return (the store loop closes the Raft
    /// sockets as it stops).
    public func shutDown() {
        requestShutdown.yield()
        server.beginGracefulShutdown()
    }
}

/// Store status for operators and benchmarks: counters of the store loop, and per region
/// its Raft role, term, applied index and log bounds.
struct StoreAdminService: Flotilla_V1_StoreAdmin.SimpleServiceProtocol {
    let driver: StoreDriver
    let snapshotSender: SnapshotSender

    func status(request: Flotilla_V1_StoreStatusRequest, context: ServerContext) async throws -> Flotilla_V1_StoreStatus {
        switch await driver.status(includeRegions: request.includeRegions) {
        case .success(var status):
            status.snapshotsSent = UInt64(snapshotSender.sentCount.load(ordering: .relaxed))
            return status
        case .failure(let error):
            throw RPCError(code: .unavailable, message: error.description)
        }
    }
}
