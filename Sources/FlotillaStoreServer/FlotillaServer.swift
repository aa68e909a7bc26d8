import FlotillaCluster
import FlotillaNode
import FlotillaProto
import FlotillaClient
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Raft
import RaftStore
import RocksDB

/// Settings of one store process.
public struct ServerSettings: Sendable {
    /// The store's id: named in the cluster file, or given by PD when the store joins.
    public var storeID: UInt64
    /// The static cluster (tests and the bench's embedded cluster); nil for a store that
    /// joins through PD.
    public var cluster: ClusterFile?
    /// How a store joins through PD: PD's endpoints and this store's addresses.
    public var pd: PDJoin?
    public var dataDirectory: String
    /// How often the store reports itself and its led regions to PD.
    public var storeHeartbeatInterval: Duration = .seconds(1)
    public var regionHeartbeatInterval: Duration = .seconds(10)
    public var tickInterval: Duration = .milliseconds(100)
    public var electionTimeoutTicks = 10
    /// The store core's thresholds and bounds (log truncation, requests in flight, sessions).
    /// Its `snapshotDirectory` is always `snapshots/` in the data directory.
    public var store: StoreSettings
    /// Snapshots this store sends at once.
    public var snapshotSendsMax = 4
    /// A region's leader reports a peer down to PD after this long without hearing from it
    /// (TiKV's `max-peer-down-duration`, 10 minutes there).
    public var peerDownSeconds: UInt64 = 300
    /// With PD: a replica that has heard from no leader this long is checked with PD and
    /// destroyed when PD shows it was removed from its region (TiKV checks after 10 minutes).
    public var staleReplicaSeconds: UInt64 = 60
    /// With PD: when a region led here splits on its own (size and load).
    public var splitTriggers = SplitTriggers()
    /// The secret the Raft ports of the cluster's stores prove to each other (the cluster
    /// file's `secretFile`). Without one, the port is open to anyone who knows the cluster id
    /// and store ids, and a warning says so.
    public var clusterSecret: [UInt8]?
    /// Client writes are refused (with a "disk full" error) while the data directory's
    /// filesystem has less free space than this; 0 turns the guard off.
    public var diskReserveBytes: UInt64 = 128 << 20
    /// Honour `StoreAdmin.InjectFault` (nemesis tests only; refused otherwise).
    public var faultInjectionEnabled = false

    public init(storeID: UInt64, cluster: ClusterFile, dataDirectory: String) {
        self.storeID = storeID
        self.cluster = cluster
        self.dataDirectory = dataDirectory
        store = StoreSettings(snapshotDirectory: dataDirectory + "/snapshots")
    }

    /// A store that joins the cluster PD serves (its id comes from PD).
    public init(pd: PDJoin, dataDirectory: String) {
        self.storeID = 0
        self.pd = pd
        self.dataDirectory = dataDirectory
        store = StoreSettings(snapshotDirectory: dataDirectory + "/snapshots")
    }

    /// Every default, where `StoreTunable` reads them.
    static let defaults = ServerSettings(pd: PDJoin(endpoints: [], address: "", raftAddress: ""), dataDirectory: "")
}

/// Where a joining store finds PD and where it listens itself.
public struct PDJoin: Sendable {
    public var endpoints: [String]
    /// host:port of the store's KV service, as clients reach it.
    public var address: String
    /// host:port of the store's Raft transport, as other stores reach it.
    public var raftAddress: String
    /// How long a starting store waits for PD to answer.
    public var startTimeout: Duration = .seconds(60)
    /// The store's labels (for example zone=a), as PD's placement rules read them.
    public var labels: [(key: String, value: String)] = []

    public init(endpoints: [String], address: String, raftAddress: String) {
        self.endpoints = endpoints
        self.address = address
        self.raftAddress = raftAddress
    }
}

/// A running store: its RocksDB, store loop (which also runs the Raft transport to the other
/// stores) and gRPC server.
public final class FlotillaServer: Sendable {
    public let settings: ServerSettings
    private let driver: StoreDriver
    /// Reports to PD and carries out its steps, for a store that joined through PD.
    private let agent: PDStoreAgent?
    /// Where the Raft transport listens (the kernel's port when the cluster file says 0).
    public let raftListeningAddress: String
    private let server: GRPCServer<HTTP2ServerTransport.Posix>
    private let transport: HTTP2ServerTransport.Posix
    private let logger: Logger
    private let shutdownRequested: AsyncStream<Void>
    private let requestShutdown: AsyncStream<Void>.Continuation

    /// Opens (or creates) the store's data and prepares everything; `run()` serves.
    /// - Throws: `ConfigError` when the data dir belongs to another cluster or store.
    public convenience init(settings: ServerSettings, logger: Logger, onFailure: @escaping @Sendable (Error) -> Void) throws {
        guard let cluster = settings.cluster else { throw ConfigError("no cluster file: a store joining through PD starts with join()") }
        guard let me = cluster.stores.first(where: { $0.id == settings.storeID }) else {
            throw ConfigError("store \(settings.storeID) is not in the cluster file (stores: \(cluster.stores.map(\.id)))")
        }
        guard let address = HostPort(me.address) else { throw ConfigError("bad address \(me.address)") }
        guard let raftAddress = HostPort(me.raftAddress) else { throw ConfigError("bad raftAddress \(me.raftAddress)") }
        let db = try StoreDatabase.open(path: settings.dataDirectory + "/db")
        try NodeIdentity.check(db: db, clusterID: cluster.clusterID, storeID: settings.storeID, path: settings.dataDirectory)
        var addresses: [UInt64: HostPort] = [:]
        var raftPeers: [UInt64: HostPort] = [:]
        for store in cluster.stores {
            addresses[store.id] = HostPort(store.address)
            if store.id != settings.storeID { raftPeers[store.id] = HostPort(store.raftAddress) }
        }
        if settings.clusterSecret == nil {
            logger.warning("no cluster secret (secretFile in the cluster file): the Raft port accepts any peer that knows the cluster and store ids")
        }
        try self.init(settings: settings, db: db, clusterID: cluster.clusterID, address: address, raftAddress: raftAddress,
                      addresses: addresses, raftPeers: raftPeers, knownStores: Set(cluster.stores.map(\.id)),
                      pd: nil, logger: logger, onFailure: onFailure) { core in
            let initialRegions = cluster.initialRegions()
            try Self.checkRegionsMatch(stored: core.regionIDs.compactMap { core.region($0) }, clusterFile: initialRegions)
            try core.bootstrapRegions(initialRegions)
        }
    }

    /// Starts a store that joins through PD: PD gives it an id on its first start (kept in its
    /// data dir), the first store of an unbootstrapped cluster bootstraps it (one region over
    /// every key, one replica here; exactly one store wins), and the store then reports to PD
    /// and carries out its steps.
    /// - Throws: `ConfigError` when PD cannot be reached, the data dir belongs to another
    ///   cluster, the address is another store's, or the store was removed (tombstone).
    public static func join(settings: ServerSettings, logger: Logger, onFailure: @escaping @Sendable (Error) -> Void) async throws -> FlotillaServer {
        guard let join = settings.pd else { throw ConfigError("no PD endpoints") }
        guard let address = HostPort(join.address) else { throw ConfigError("--address \(join.address) is not host:port") }
        guard let raftAddress = HostPort(join.raftAddress) else { throw ConfigError("--raft-address \(join.raftAddress) is not host:port") }
        if settings.clusterSecret == nil {
            logger.warning("no cluster secret: the Raft port accepts any peer that knows the cluster id")
        }
        let db = try StoreDatabase.open(path: settings.dataDirectory + "/db")
        let meta = try db.columnFamily(StoreKeys.metaColumnFamily)
        let ident = try db.get(StoreKeys.storeIdent, in: meta).map { try Flotilla_V1_StoreIdent(serializedBytes: $0) }
        let client: PDClient
        do { client = try PDClient(endpoints: join.endpoints, clusterID: ident?.clusterID ?? 0, requestTimeout: join.startTimeout) } catch {
            throw ConfigError("--pd: \(error)")
        }
        let connections = Task { try await client.run() }
        defer {
            client.close()
            connections.cancel()
        }
        var store = Flotilla_V1_Store()
        store.id = ident?.storeID ?? 0
        store.address = join.address
        store.raftAddress = join.raftAddress
        store.labels = join.labels.map { key, value in
            var label = Flotilla_V1_StoreLabel()
            label.key = key
            label.value = value
            return label
        }
        let first: Flotilla_V1_Region?
        do {
            var info = try await client.clusterInfo()
            // A PD group just started sets its cluster id with its first leader.
            let waitUntil = ContinuousClock.now + join.startTimeout
            while info.clusterID == 0 && ContinuousClock.now < waitUntil {
                try await Task.sleep(for: .milliseconds(100))
                info = try await client.clusterInfo()
            }
            guard info.clusterID != 0 else { throw ConfigError("PD at \(join.endpoints.joined(separator: ",")) has no cluster id after \(join.startTimeout)") }
            if let ident, ident.clusterID != info.clusterID {
                throw ConfigError("data dir \(settings.dataDirectory) belongs to cluster \(ident.clusterID), not to the cluster PD serves (\(info.clusterID))")
            }
            store = try await client.putStore(store)
            if ident == nil {
                var newIdent = Flotilla_V1_StoreIdent()
                newIdent.clusterID = info.clusterID
                newIdent.storeID = store.id
                try db.put(StoreKeys.storeIdent, try newIdent.serializedBytes(), in: meta, sync: true)
                logger.notice("joined the cluster", metadata: ["cluster_id": "\(info.clusterID)", "store_id": "\(store.id)"])
            }
            if !info.bootstrapped {
                let regionID = try await client.allocateIDs(2)
                var region = Flotilla_V1_Region()
                region.id = regionID
                region.epoch.confVer = 1
                region.epoch.version = 1
                var peer = Flotilla_V1_Peer()
                peer.id = regionID + 1
                peer.storeID = store.id
                region.peers = [peer]
                if try await Self.bootstrap(client, store: store, region: region) {
                    logger.notice("bootstrapped the cluster", metadata: ["region_id": "\(regionID)"])
                } else {
                    logger.info("the cluster was bootstrapped by another store")
                }
            }
            // The first region, if it is this store's alone and not here yet (a crash after
            // PD recorded the bootstrap and before the store wrote it).
            let found = try await client.region(key: Data()).region.region
            first = found.peers.count == 1 && found.peers[0].storeID == store.id && found.epoch.version == 1 && found.epoch.confVer == 1 ? found : nil
        } catch let error as ConfigError {
            throw error
        } catch {
            throw Self.joinError(error)
        }
        var resolved = settings
        resolved.storeID = store.id
        let agentClient: PDClient
        do { agentClient = try PDClient(endpoints: join.endpoints, clusterID: client.clusterID) } catch { throw ConfigError("--pd: \(error)") }
        var link = PDStoreAgent.Link(client: agentClient, store: store)
        link.storeHeartbeatInterval = settings.storeHeartbeatInterval
        link.regionHeartbeatInterval = settings.regionHeartbeatInterval
        let tickMilliseconds = max(1, settings.tickInterval.milliseconds)
        link.staleReplicaTicks = max(1, settings.staleReplicaSeconds * 1_000 / UInt64(tickMilliseconds))
        return try FlotillaServer(settings: resolved, db: db, clusterID: client.clusterID, address: address, raftAddress: raftAddress,
                                  addresses: [:], raftPeers: [:], knownStores: nil, pd: link, logger: logger, onFailure: onFailure) { core in
            if let first, core.region(first.id) == nil { try core.bootstrapRegion(first) }
        }
    }

    /// Asks PD to bootstrap with `region`; false when another store did it first.
    private static func bootstrap(_ client: PDClient, store: Flotilla_V1_Store, region: Flotilla_V1_Region) async throws -> Bool {
        do {
            try await client.bootstrap(store: store, region: region)
            return true
        } catch {
            if case .refused(let refusal) = error, refusal.alreadyBootstrapped { return false }
            throw error
        }
    }

    private static func joinError(_ error: Error) -> ConfigError {
        if let failure = error as? PDClientError, case .refused(let refusal) = failure {
            return ConfigError("PD refused this store: \(refusal.message)")
        }
        return ConfigError("\(error)")
    }

    /// The store's core, Raft transport, loop and gRPC services, for a cluster file's store
    /// or one that joined through PD (`pd`: its agent runs beside the server, and stores
    /// not named up front are accepted and resolved through PD).
    init(settings: ServerSettings, db: Database, clusterID: UInt64, address: HostPort, raftAddress: HostPort,
         addresses: [UInt64: HostPort], raftPeers: [UInt64: HostPort], knownStores: Set<UInt64>?, pd: PDStoreAgent.Link?,
         logger: Logger, onFailure: @escaping @Sendable (Error) -> Void, prepare: (StoreCore) throws -> Void) throws {
        self.settings = settings
        self.logger = logger
        var storeSettings = settings.store
        storeSettings.snapshotDirectory = settings.dataDirectory + "/snapshots"
        let tickMilliseconds = max(1, settings.tickInterval.milliseconds)
        storeSettings.peerDownTicks = max(1, settings.peerDownSeconds * 1_000 / UInt64(tickMilliseconds))
        var policy = RegionRaftPolicy.process()
        policy.electionTimeoutTicks = settings.electionTimeoutTicks
        let core = try StoreCore(db: db, storeID: settings.storeID, settings: storeSettings, raftConfig: { [policy] in policy.config(forPeer: $0) })
        try prepare(core)
        let storeID = settings.storeID
        let network = try RaftSocketTransport(listen: raftAddress, clusterID: clusterID, storeID: storeID, peers: raftPeers,
                                              secret: settings.clusterSecret ?? [], acceptAnyStore: knownStores == nil, logger: logger)
        raftListeningAddress = "\(raftAddress.host):\(network.listeningPort)"
        let snapshotSender = SnapshotSender(addresses: addresses, sendsMax: settings.snapshotSendsMax,
                                            secret: settings.clusterSecret ?? [], logger: logger)
        let driver = StoreDriver(core: core, network: network, tickInterval: settings.tickInterval,
                                 tickCatchUpMax: 2 * settings.electionTimeoutTicks + 1, logger: logger, onFailure: onFailure,
                                 snapshots: snapshotSender,
                                 diskGuard: DiskSpaceGuard(path: settings.dataDirectory, reserveBytes: settings.diskReserveBytes))
        self.driver = driver
        let snapshotsReceiving = SnapshotReceiveCount()
        agent = pd.map { PDStoreAgent(link: $0, driver: driver, snapshotSender: snapshotSender, logger: logger, dataDirectory: settings.dataDirectory,
                                      splitTriggers: settings.splitTriggers, snapshotsReceiving: snapshotsReceiving) }
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
            SnapshotTransferService(storeID: storeID, knownStores: knownStores,
                                    driver: driver, logger: logger, snapshotDirectory: storeSettings.snapshotDirectory,
                                    secret: settings.clusterSecret ?? [], receiving: snapshotsReceiving),
            StoreAdminService(driver: driver, snapshotSender: snapshotSender, agent: agent, snapshotsReceiving: snapshotsReceiving,
                              faultInjectionEnabled: settings.faultInjectionEnabled),
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
            if let agent = self.agent {
                group.addTask { await agent.run() }
            }
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
    /// The store's PD agent (nil on a static cluster, which cannot split: ids come from PD).
    let agent: PDStoreAgent?
    /// Snapshots this store is receiving (their progress is in the status).
    let snapshotsReceiving: SnapshotReceiveCount
    /// Whether `InjectFault` is honoured (`--enable-fault-injection`, nemesis tests only).
    let faultInjectionEnabled: Bool
    /// Backup snapshots opened under a write fence, streamed later.
    let heldBackups = HeldBackups()

    /// Store ids one `InjectFault` may name.
    static let cutStoresMax = 1_024

    func injectFault(request: Flotilla_V1_InjectFaultRequest, context: ServerContext) async throws -> Flotilla_V1_InjectFaultResponse {
        var response = Flotilla_V1_InjectFaultResponse()
        guard faultInjectionEnabled else {
            response.error = protocolError(StoreRequestError.invalidArgument(
                field: "request", reason: "fault injection is off on this store (start it with --enable-fault-injection, for nemesis tests only)"))
            return response
        }
        guard request.cutStoreIds.count <= Self.cutStoresMax else {
            response.error = protocolError(StoreRequestError.invalidArgument(
                field: "cut_store_ids", reason: "\(request.cutStoreIds.count) store ids, more than \(Self.cutStoresMax)"))
            return response
        }
        let cut = Set(request.cutStoreIds)
        guard let now = await driver.perform({ _, network -> [UInt64] in
            network.cutStores = cut
            return network.cutStores.sorted()
        }) else {
            response.error = protocolError(StoreRequestError.serverIsBusy(reason: "store stopping"))
            return response
        }
        response.cutStoreIds = now
        return response
    }

    func splitRegion(request: Flotilla_V1_SplitRegionRequest, context: ServerContext) async throws -> Flotilla_V1_SplitRegionResponse {
        var response = Flotilla_V1_SplitRegionResponse()
        guard let agent else {
            response.error = protocolError(StoreRequestError.invalidArgument(field: "request", reason: "this store runs a static cluster (no PD): regions cannot split"))
            return response
        }
        switch await agent.split(context: request.context, keys: request.splitKeys) {
        case .success(let regions): response.regions = regions
        case .failure(let error): response.error = protocolError(error)
        }
        return response
    }

    func checkRegion(request: Flotilla_V1_CheckRegionRequest, context: ServerContext) async throws -> Flotilla_V1_CheckRegionResponse {
        var response = Flotilla_V1_CheckRegionResponse()
        switch await driver.checkRegion(context: request.context) {
        case .success(let index): response.index = index
        case .failure(let error): response.error = protocolError(error)
        }
        return response
    }

    /// Streams a region's backup: a read confirmed by its leader, then its data and sessions
    /// from one RocksDB snapshot at the applied index, about a megabyte per chunk (read off the
    /// store's loop). An error is the only chunk.
    func backupRegion(request: Flotilla_V1_BackupRegionRequest, response: RPCWriter<Flotilla_V1_BackupChunk>,
                      context: ServerContext) async throws {
        let reader: RegionBackupReader
        if request.heldID != 0 {
            guard let held = heldBackups.take(request.heldID) else {
                var chunk = Flotilla_V1_BackupChunk()
                chunk.error = protocolError(StoreRequestError.invalidArgument(field: "held_id", reason: "\(request.heldID) is not held here (expired, streamed already, or the store restarted)"))
                try await response.write(chunk)
                return
            }
            reader = held
        } else {
            let regionID = request.context.regionID
            let opened = await driver.read(context: request.context) { core in try core.openBackupReader(regionID: regionID) }
            switch opened {
            case .success(let opened): reader = opened
            case .failure(let error):
                var chunk = Flotilla_V1_BackupChunk()
                chunk.error = protocolError(error)
                try await response.write(chunk)
                return
            }
        }
        if request.hold {
            var chunk = Flotilla_V1_BackupChunk()
            chunk.region = reader.region
            chunk.appliedIndex = reader.appliedIndex
            if let id = heldBackups.hold(reader) {
                chunk.heldID = id
            } else {
                chunk.error = protocolError(StoreRequestError.serverIsBusy(reason: "\(HeldBackups.countMax) backup snapshots are held here already"))
            }
            try await response.write(chunk)
            return
        }
        var chunk = Flotilla_V1_BackupChunk()
        chunk.region = reader.region
        chunk.appliedIndex = reader.appliedIndex
        while let pairs = try reader.nextPairs() {
            chunk.pairs = pairs.map { pair in
                var backup = Flotilla_V1_BackupPair()
                backup.session = pair.column == .sessions
                backup.key = pair.key
                backup.value = pair.value
                return backup
            }
            try await response.write(chunk)
            chunk = Flotilla_V1_BackupChunk()
        }
        chunk.last = true
        chunk.pairCount = reader.pairCount
        chunk.checksum = reader.checksum
        try await response.write(chunk)
    }

    func fenceWrites(request: Flotilla_V1_WriteFenceRequest, context: ServerContext) async throws -> Flotilla_V1_WriteFenceResponse {
        var response = Flotilla_V1_WriteFenceResponse()
        do {
            let (id, held) = try driver.writeFence.handle(request)
            response.fenceID = id
            response.held = held
        } catch {
            response.error = protocolError(error)
        }
        return response
    }

    func status(request: Flotilla_V1_StoreStatusRequest, context: ServerContext) async throws -> Flotilla_V1_StoreStatus {
        switch await driver.status(includeRegions: request.includeRegions) {
        case .success(var status):
            status.snapshotsSent = UInt64(snapshotSender.sentCount.load(ordering: .relaxed))
            status.snapshotsReceiving = snapshotsReceiving.inFlight
            let regionID = request.digestRegionID
            if regionID != 0, let digest = await driver.perform({ core, _ in try? core.regionDigest(regionID) }) ?? nil {
                status.digest.regionID = regionID
                status.digest.appliedIndex = digest.appliedIndex
                status.digest.keys = UInt64(digest.keyCount)
                status.digest.checksum = digest.checksum
            }
            return status
        case .failure(let error):
            throw RPCError(code: .unavailable, message: error.description)
        }
    }
}
