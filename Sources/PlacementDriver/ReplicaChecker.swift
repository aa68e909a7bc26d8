import FlotillaProto

/// What the schedulers know of a store.
public struct StoreView: Equatable, Sendable {
    public var store: Flotilla_V1_Store
    public var liveness: Flotilla_V1_StoreLiveness
    public var stats: Flotilla_V1_StoreStats

    public init(store: Flotilla_V1_Store, liveness: Flotilla_V1_StoreLiveness, stats: Flotilla_V1_StoreStats) {
        self.store = store
        self.liveness = liveness
        self.stats = stats
    }

    /// May receive a new replica: up (state and liveness) and not busy.
    public var canTakeReplicas: Bool { store.state == .up && liveness == .up && !stats.busy }

    /// Its replicas count toward a region's replicas: not down, not removed. (A store that is
    /// only disconnected still counts, so a short blip does not start a repair.)
    public var holdsReplicas: Bool { store.state != .tombstone && liveness != .down }
}

/// The replica checker: a region with fewer voters than `max-replicas` on live stores gets a
/// learner on the least-loaded store that can take one, promoted once it has caught up. A
/// learner it finds already there is promoted the same way rather than a new one added.
/// (Replacing replicas on down stores and trimming extras come with the move issue.)
public enum ReplicaChecker {
    /// What the checker wants done for one region.
    public enum Plan: Equatable, Sendable {
        /// Add a learner on `storeID` (a new peer id is needed), then promote it.
        case addReplica(storeID: UInt64)
        /// Promote the existing learner `peer` once it has caught up.
        case promote(Flotilla_V1_Peer)
    }

    public static func check(_ info: Flotilla_V1_RegionInfo, stores: [UInt64: StoreView],
                             settings: Flotilla_V1_SchedulerSettings) -> Plan? {
        let region = info.region
        let live = region.peers.filter { stores[$0.storeID]?.holdsReplicas == true }
        let voters = live.filter { $0.role == .voter }.count
        guard voters < Int(settings.maxReplicas) else { return nil }
        if let learner = live.first(where: { $0.role == .learner && !info.downPeers.contains($0) }) {
            return .promote(learner)
        }
        let occupied = Set(region.peers.map(\.storeID))
        let candidates = stores.values.filter { $0.canTakeReplicas && !occupied.contains($0.store.id) }
        let target = candidates.min { a, b in
            if a.stats.regionCount != b.stats.regionCount { return a.stats.regionCount < b.stats.regionCount }
            if a.stats.availableBytes != b.stats.availableBytes { return a.stats.availableBytes > b.stats.availableBytes }
            return a.store.id < b.store.id
        }
        return target.map { .addReplica(storeID: $0.store.id) }
    }
}
