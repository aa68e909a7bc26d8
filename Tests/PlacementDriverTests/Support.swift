import FlotillaProto
import Foundation
import PlacementDriver

/// Builders for PD scenarios: stores, regions and a one-member PD whose proposals apply at
/// once (the log is PD's Raft group's business; these tests are about decisions).
enum Build {
    static func store(_ id: UInt64, port: Int? = nil, labels: [String: String] = [:]) -> Flotilla_V1_Store {
        var store = Flotilla_V1_Store()
        store.id = id
        store.address = "127.0.0.1:\(port ?? 20_000 + Int(id))"
        store.raftAddress = "127.0.0.1:\(port.map { $0 + 1 } ?? 30_000 + Int(id))"
        store.labels = labels.sorted { $0.key < $1.key }.map { key, value in
            var label = Flotilla_V1_StoreLabel()
            label.key = key
            label.value = value
            return label
        }
        return store
    }

    static func peer(_ id: UInt64, store: UInt64, learner: Bool = false) -> Flotilla_V1_Peer {
        var peer = Flotilla_V1_Peer()
        peer.id = id
        peer.storeID = store
        peer.role = learner ? .learner : .voter
        return peer
    }

    static func region(_ id: UInt64, _ start: String, _ end: String, version: UInt64 = 1, confVer: UInt64 = 1,
                       peers: [Flotilla_V1_Peer]) -> Flotilla_V1_Region {
        var region = Flotilla_V1_Region()
        region.id = id
        region.startKey = Data(start.utf8)
        region.endKey = Data(end.utf8)
        region.epoch.version = version
        region.epoch.confVer = confVer
        region.peers = peers
        return region
    }

    static func info(_ region: Flotilla_V1_Region, leader: Flotilla_V1_Peer? = nil, pending: [Flotilla_V1_Peer] = []) -> Flotilla_V1_RegionInfo {
        var info = Flotilla_V1_RegionInfo()
        info.region = region
        if let leader = leader ?? region.peers.first(where: { $0.role == .voter }) { info.leader = leader }
        info.pendingPeers = pending
        return info
    }

    static func command(_ body: (inout Flotilla_V1_PDCommand) -> Void) -> Flotilla_V1_PDCommand {
        var command = Flotilla_V1_PDCommand()
        body(&command)
        return command
    }

    static func heartbeat(_ info: Flotilla_V1_RegionInfo, clusterID: UInt64 = 0) -> Flotilla_V1_RegionHeartbeatRequest {
        var request = Flotilla_V1_RegionHeartbeatRequest()
        request.header.clusterID = clusterID
        request.storeID = info.leader.storeID
        request.region = info
        return request
    }
}

/// A one-member PD: what it proposes is applied at once, and every record write is kept, so
/// a test can reload the state from them as a restart would.
struct SingleMemberPD {
    var pd: PlacementDriver
    var records: [Data: Data] = [:]
    var nowMs: UInt64 = 1_000

    init(timings: PDTimings = PDTimings()) {
        pd = PlacementDriver(timings: timings)
        pd.becomeLeader(nowMs: nowMs)
    }

    @discardableResult
    mutating func apply(_ command: Flotilla_V1_PDCommand) -> Result<Void, PDFailure> {
        let (outcome, writes) = pd.apply(command)
        for write in writes { write.apply(to: &records) }
        return outcome
    }

    /// Ids as the PD service hands them out: reserving through the log when the window is empty.
    mutating func allocate(_ count: UInt32 = 1) throws -> UInt64 {
        for _ in 0..<2 {
            switch try pd.allocateIDs(count: count) {
            case .ids(let first, _): return first
            case .reserve(let command): try apply(command).get()
            }
        }
        throw PDFailure.invalidArgument("allocation did not succeed after a reservation")
    }

    /// Sets the cluster id, registers `stores` and bootstraps with the first of them.
    mutating func bootstrap(clusterID: UInt64 = 7, stores storeCount: Int) throws -> (regionID: UInt64, stores: [UInt64]) {
        try apply(Build.command { $0.setClusterID = clusterID }).get()
        var storeIDs: [UInt64] = []
        for _ in 0..<storeCount {
            let id = try allocate()
            try apply(Build.command { $0.putStore = Build.store(id) }).get()
            storeIDs.append(id)
        }
        let regionID = try allocate(), peerID = try allocate()
        var request = Flotilla_V1_BootstrapRequest()
        request.header.clusterID = clusterID
        request.store = pd.state.stores[storeIDs[0]] ?? Build.store(storeIDs[0])
        request.region = Build.region(regionID, "", "", peers: [Build.peer(peerID, store: storeIDs[0])])
        try apply(Build.command { $0.bootstrap = request }).get()
        return (regionID, storeIDs)
    }

    /// A region heartbeat whose proposals are applied at once.
    mutating func heartbeat(_ info: Flotilla_V1_RegionInfo) throws -> OperatorStep? {
        let outcome = try pd.regionHeartbeat(Build.heartbeat(info, clusterID: pd.state.clusterID), nowMs: nowMs)
        for command in outcome.commands { try apply(command).get() }
        return outcome.step
    }

    mutating func storeHeartbeats(_ stores: [UInt64], regionCounts: [UInt64: UInt64] = [:], busy: Set<UInt64> = []) throws {
        for id in stores {
            var stats = Flotilla_V1_StoreStats()
            stats.regionCount = regionCounts[id] ?? 0
            stats.availableBytes = 100 << 30
            stats.busy = busy.contains(id)
            try pd.storeHeartbeat(storeID: id, stats: stats, nowMs: nowMs)
        }
    }
}

/// The failure of an applied command, nil when it succeeded.
func failure(_ outcome: Result<Void, PDFailure>) -> PDFailure? {
    if case .failure(let error) = outcome { return error }
    return nil
}
