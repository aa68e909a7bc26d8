import FlotillaCluster
import FlotillaNode
import FlotillaProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import PlacementDriver
import Raft
import RaftStore
import RocksDB

/// Settings of one PD member process.
public struct PDSettings: Sendable {
    public var name: String
    public var dataDirectory: String
    /// Where PD's gRPC API listens (port 0: the kernel picks).
    public var clientAddress: String
    /// Where PD's Raft transport listens; must be this member's address in `initialMembers`.
    public var peerAddress: String
    /// Every member, as (name, peer address), in the same order on every member: a member's
    /// id is its position (from 1).
    public var initialMembers: [(name: String, peerAddress: String)]
    public var tickInterval: Duration = .milliseconds(100)
    public var electionTimeoutTicks = 10
    public var timings = PDTimings()
    /// The secret PD members' Raft ports prove to each other; none: a warning says so.
    public var secret: [UInt8]?

    public init(name: String, dataDirectory: String, clientAddress: String, peerAddress: String,
                initialMembers: [(name: String, peerAddress: String)]) {
        self.name = name
        self.dataDirectory = dataDirectory
        self.clientAddress = clientAddress
        self.peerAddress = peerAddress
        self.initialMembers = initialMembers
    }

    /// Parses `pd1=host:port,pd2=host:port,...`: names distinct, addresses host:port, 1 to 7.
    public static func parseMembers(_ text: String) throws(ConfigError) -> [(name: String, peerAddress: String)] {
        var members: [(name: String, peerAddress: String)] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, parts[0].utf8.count <= PDLimits.memberNameBytesMax,
                  HostPort(String(parts[1])) != nil else {
                throw ConfigError("--initial-members: '\(item.prefix(80))' is not name=host:port")
            }
            guard !members.contains(where: { $0.name == parts[0] || $0.peerAddress == parts[1] }) else {
                throw ConfigError("--initial-members: \(parts[0]) or \(parts[1]) is named twice")
            }
            members.append((String(parts[0]), String(parts[1])))
        }
        guard (1...7).contains(members.count) else { throw ConfigError("--initial-members: 1 to 7 members, not \(members.count)") }
        return members
    }
}

/// A running PD member: PD's region (one Raft group over every member, its log, state and
/// snapshots in this member's RocksDB through the stores' own `StoreCore`), the Raft transport
/// to the other members, and PD's gRPC API.
public final class PDServer: Sendable {
    /// PD's metadata lives in one region over all keys.
    static let regionID: UInt64 = 1

    public let settings: PDSettings
    public let memberID: UInt64
    /// Where the Raft transport listens.
    public let peerListeningAddress: String
    private let driver: StoreDriver
    private let machine: PDMachine
    private let service: PDService
    private let snapshotSender: SnapshotSender
    private let server: GRPCServer<HTTP2ServerTransport.Posix>
    private let transport: HTTP2ServerTransport.Posix
    private let logger: Logger

    public init(settings: PDSettings, logger: Logger, onFailure: @escaping @Sendable (Error) -> Void) throws {
        self.settings = settings
        self.logger = logger
        guard let index = settings.initialMembers.firstIndex(where: { $0.name == settings.name }) else {
            throw ConfigError("--name \(settings.name) is not in --initial-members (\(settings.initialMembers.map(\.name).joined(separator: ", ")))")
        }
        guard settings.initialMembers[index].peerAddress == settings.peerAddress else {
            throw ConfigError("--peer-address \(settings.peerAddress) differs from \(settings.name)'s address in --initial-members (\(settings.initialMembers[index].peerAddress))")
        }
        guard let clientAddress = HostPort(settings.clientAddress) else { throw ConfigError("--client-address \(settings.clientAddress) is not host:port") }
        guard let peerAddress = HostPort(settings.peerAddress) else { throw ConfigError("--peer-address \(settings.peerAddress) is not host:port") }
        memberID = UInt64(index + 1)
        // The member list identifies this PD group on its Raft transport and in its data dir.
        let groupID = Self.groupID(settings.initialMembers)
        let db = try StoreDatabase.open(path: settings.dataDirectory + "/db")
        try NodeIdentity.check(db: db, clusterID: groupID, storeID: memberID, path: settings.dataDirectory,
                                   what: "PD member \(memberID) of members \(settings.initialMembers.map { "\($0.name)=\($0.peerAddress)" }.joined(separator: ","))")
        machine = PDMachine(timings: settings.timings)
        var policy = RegionRaftPolicy.process()
        policy.electionTimeoutTicks = settings.electionTimeoutTicks
        // The one difference from the stores': PD's log is short and rarely written, and a
        // member elected PD leader serves routes from what it applied at once, so followers
        // hear of every commit right away (one empty append per entry is cheap here).
        policy.broadcastCommit = true
        var storeSettings = StoreSettings(snapshotDirectory: settings.dataDirectory + "/snapshots")
        // PD's one group never sleeps: one region gains nothing, and its leader must keep its
        // lease and answer at once (a sleeping PD group left clients without a leader in the
        // process nemesis).
        storeSettings.regionSleepAfterQuietTicks = 0
        let core = try StoreCore(db: db, storeID: memberID, settings: storeSettings,
                                 raftConfig: { [policy] in policy.config(forPeer: $0) }, stateMachine: machine)
        var region = Flotilla_V1_Region()
        region.id = Self.regionID
        region.epoch.confVer = 1
        region.epoch.version = 1
        region.peers = settings.initialMembers.indices.map { position in
            var peer = Flotilla_V1_Peer()
            peer.id = UInt64(position + 1)
            peer.storeID = UInt64(position + 1)
            peer.role = .voter
            return peer
        }
        try core.bootstrapRegion(region)

        var raftPeers: [UInt64: HostPort] = [:]
        var members: [Flotilla_V1_PDMember] = []
        for (position, member) in settings.initialMembers.enumerated() {
            let id = UInt64(position + 1)
            if id != memberID { raftPeers[id] = HostPort(member.peerAddress) }
            var described = Flotilla_V1_PDMember()
            described.memberID = id
            described.name = member.name
            described.peerAddress = member.peerAddress
            members.append(described)
        }
        if settings.secret == nil {
            logger.warning("no secret: PD's Raft port accepts any peer that knows the member list")
        }
        let network = try RaftSocketTransport(listen: peerAddress, clusterID: groupID, storeID: memberID, peers: raftPeers,
                                              secret: settings.secret ?? [], logger: logger)
        peerListeningAddress = "\(peerAddress.host):\(network.listeningPort)"
        // Snapshots go to a member's client address (its gRPC server), learnt as members publish it.
        snapshotSender = SnapshotSender(addresses: [:], sendsMax: 2, secret: settings.secret ?? [], logger: logger)
        driver = StoreDriver(core: core, network: network, tickInterval: settings.tickInterval,
                             tickCatchUpMax: 2 * settings.electionTimeoutTicks + 1, logger: logger, onFailure: onFailure,
                             snapshots: snapshotSender)
        service = PDService(driver: driver, machine: machine, memberID: memberID, initialMembers: members)
        var transportConfig = HTTP2ServerTransport.Posix.Config.defaults
        transportConfig.rpc.maxRequestPayloadSize = PDLimits.requestMessageBytesMax
        GRPCEdgeGuard().install(in: &transportConfig)
        transport = HTTP2ServerTransport.Posix(address: .ipv4(host: clientAddress.host, port: clientAddress.port), transportSecurity: .plaintext,
                                               config: transportConfig)
        server = GRPCServer(transport: transport, services: [
            service,
            SnapshotTransferService(storeID: memberID, knownStores: Set(raftPeers.keys), driver: driver, logger: logger,
                                    snapshotDirectory: settings.dataDirectory + "/snapshots", secret: settings.secret ?? []),
        ])
    }

    /// FNV-1a of the member list: the same list on every member gives the same id.
    static func groupID(_ members: [(name: String, peerAddress: String)]) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in members.map({ "\($0.name)=\($0.peerAddress)" }).joined(separator: ",").utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        return hash == 0 ? 1 : hash
    }

    /// Serves until `shutDown()`; `onListening` gets the client address once bound.
    public func run(onListening: @escaping @Sendable (String) -> Void) async throws {
        driver.start()
        defer { Task { await driver.stop() } }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.server.serve() }
            guard let address = try await transport.listeningAddress.ipv4 else { return }
            let listening = "\(address.host):\(address.port)"
            onListening(listening)
            group.addTask { await self.maintain(clientAddress: listening) }
            // The gRPC server ends on shutDown (or fails): the maintenance loop ends with it.
            try await group.next()
            group.cancelAll()
        }
        await driver.stop()
    }

    public func shutDown() {
        server.beginGracefulShutdown()
    }

    /// Every half second: as leader, set the cluster id (first leader only), publish this
    /// member's addresses, and end operators past their timeout; as follower, ask the leader
    /// to publish this member's addresses. Snapshot destinations follow the published members.
    private func maintain(clientAddress: String) async {
        var me = Flotilla_V1_PDMember()
        me.memberID = memberID
        me.name = settings.name
        me.clientAddress = clientAddress
        me.peerAddress = settings.peerAddress
        let header = Flotilla_V1_PDRequestHeader()
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(500))
            let memberID = self.memberID
            let leading = await service.onLeader(header, allowUnknownCluster: true) { pd, nowMs in
                let scheduled = pd.tick(nowMs: nowMs)
                return (pd.state.clusterID, pd.state.members[memberID], pd.operatorRecords(nowMs: nowMs) + scheduled)
            }
            let published = machine.published.withLock { $0 }
            for (id, member) in published.members where id != memberID {
                if let address = HostPort(member.clientAddress) { snapshotSender.setAddress(address, for: id) }
            }
            switch leading {
            case .success(let (clusterID, recorded, operatorRecords)):
                // Ended operators into the replicated history (a failover keeps them), drained
                // stores made tombstones, ids the balancers need.
                for command in operatorRecords { _ = await service.propose(command) }
                if clusterID == 0 {
                    var command = Flotilla_V1_PDCommand()
                    command.setClusterID = UInt64.random(in: 1...UInt64.max)
                    if let error = await service.propose(command) { logger.warning("setting the cluster id failed: \(error.message)") }
                    else { logger.notice("cluster id set", metadata: ["cluster_id": "\(machine.published.withLock { $0.clusterID })"]) }
                }
                if recorded != me {
                    var command = Flotilla_V1_PDCommand()
                    command.putMember = me
                    _ = await service.propose(command)
                }
            case .failure(let error):
                // Not leading (any more): drop the leader memory; running operators end in the
                // history as cancelled.
                let machine = self.machine
                _ = await driver.perform { _, _ in machine.confirmFollower() }
                guard published.members[memberID] != me, case .notLeader(let hint)? = error.proto.detail,
                      let leader = HostPort(hint.leaderAddress) else { continue }
                var request = Flotilla_V1_PutMemberRequest()
                request.header.clusterID = published.clusterID
                request.member = me
                do {
                    let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: leader.host, port: leader.port), transportSecurity: .plaintext)
                    _ = try await withGRPCClient(transport: transport) { client in
                        try await Flotilla_V1_PD.Client(wrapping: client).putMember(request)
                    }
                } catch {
                    logger.debug("publishing this member's address to the leader failed: \(error)")
                }
            }
        }
    }
}
