import FlotillaProto

/// What the schedulers know of a store.
public struct StoreView: Equatable, Sendable {
    public var store: Flotilla_V1_Store
    public var liveness: Flotilla_V1_StoreLiveness
    public var stats: Flotilla_V1_StoreStats
    /// Running operators adding a replica to this store or taking one from it.
    public var operatorsInFlight = 0
    /// Heard from within `PDTimings.storeSchedulableSilenceMs`: it may be given new work.
    public var heardLately = true

    public init(store: Flotilla_V1_Store, liveness: Flotilla_V1_StoreLiveness, stats: Flotilla_V1_StoreStats) {
        self.store = store
        self.liveness = liveness
        self.stats = stats
    }

    /// May receive a new replica: up (state and liveness) and not busy.
    public var canTakeReplicas: Bool { isSchedulable && !stats.busy }

    /// May be the target of new work (a replica, a leader): up, and heard from lately.
    public var isSchedulable: Bool { store.state == .up && liveness == .up && heardLately }

    /// Its replicas count toward a region's replicas: not down, not removed. (A store that is
    /// only disconnected still counts, so a short blip does not start a repair.)
    public var holdsReplicas: Bool { store.state != .tombstone && liveness != .down }

    /// Its replicas should go elsewhere: down, draining (offline) or removed.
    public var shouldShed: Bool { store.state != .up || liveness == .down }

    /// The value of `label` on this store ("" when it has none).
    public func label(_ label: String) -> String {
        store.labels.first { $0.key == label }?.value ?? ""
    }
}

/// Effective scheduler settings (0 in the proto means the default).
extension Flotilla_V1_SchedulerSettings {
    public var effectiveStoreLimit: Int { storeLimit == 0 ? 4 : Int(storeLimit) }
    public var effectiveTolerancePercent: Int { balanceTolerancePercent == 0 ? 10 : Int(balanceTolerancePercent) }
}

/// The replica checker: keeps each region at `max-replicas` healthy voters, on stores with
/// distinct values of the isolation label, with no stray learners. It decides from the
/// region's heartbeat and the stores alone, so a PD leader that took over mid-operation (or an
/// operator that was cancelled or timed out) finds the region's state and finishes or undoes
/// the work: a half-added learner is promoted when a voter is missing and removed otherwise.
public enum ReplicaChecker {
    /// What the checker wants done for one region.
    public enum Plan: Equatable, Sendable {
        /// Add a learner on `storeID` (a new peer id is needed), then promote it.
        case addReplica(storeID: UInt64)
        /// Promote the existing learner `peer` once it has caught up.
        case promote(Flotilla_V1_Peer)
        /// Replace the voter `peer` by a new replica on `storeID`: add a learner there, then
        /// one joint change promoting it and demoting `peer`, then remove `peer`.
        case replace(Flotilla_V1_Peer, storeID: UInt64)
        /// Remove `peer` (a learner, or a voter beyond `max-replicas`).
        case remove(Flotilla_V1_Peer)
    }

    public static func check(_ info: Flotilla_V1_RegionInfo, stores: [UInt64: StoreView],
                             settings: Flotilla_V1_SchedulerSettings) -> Plan? {
        // The leader leaves a joint configuration by itself; nothing else changes meanwhile.
        guard !info.joint else { return nil }
        let region = info.region
        let maxReplicas = Int(settings.maxReplicas)
        let down = Set(info.downPeers.map(\.id))
        let leaderID = info.hasLeader ? info.leader.id : 0
        func healthy(_ peer: Flotilla_V1_Peer) -> Bool {
            guard let view = stores[peer.storeID] else { return false }
            return !view.shouldShed
        }
        let voters = region.peers.filter { $0.role == .voter }
        let healthyVoters = voters.filter(healthy)
        let learners = region.peers.filter { $0.role == .learner }

        // Learners on stores that shed replicas go at once.
        if let learner = learners.first(where: { !healthy($0) }) { return .remove(learner) }

        // A voter on a down, draining or removed store is replaced, or simply removed when
        // enough healthy voters remain.
        if let leaving = voters.first(where: { !healthy($0) }) {
            if healthyVoters.count >= maxReplicas, leaving.id != leaderID { return .remove(leaving) }
            let kept = voters.filter { $0.id != leaving.id }
            if let target = target(for: region, keeping: kept, stores: stores, settings: settings) {
                return .replace(leaving, storeID: target)
            }
            // No store can take it: a learner already on a good store may become the voter.
            if healthyVoters.count < maxReplicas,
               let learner = learners.first(where: { healthy($0) && !down.contains($0.id) }) {
                return .promote(learner)
            }
            return nil
        }

        if healthyVoters.count < maxReplicas {
            if let learner = learners.first(where: { !down.contains($0.id) && isolationAllows($0.storeID, beside: healthyVoters, stores: stores, settings: settings) }) {
                return .promote(learner)
            }
            return target(for: region, keeping: healthyVoters, stores: stores, settings: settings).map { .addReplica(storeID: $0) }
        }

        if healthyVoters.count > maxReplicas {
            // The extra voter that breaks isolation, else the one on the fullest store; never
            // the leader.
            let candidates = healthyVoters.filter { $0.id != leaderID }
            let breaking = candidates.first { peer in
                !isolationAllows(peer.storeID, beside: healthyVoters.filter { $0.id != peer.id }, stores: stores, settings: settings)
            }
            let fullest = candidates.max { a, b in
                score(stores[a.storeID]) < score(stores[b.storeID])
            }
            return (breaking ?? fullest).map { .remove($0) }
        }

        // Full: learners left by an operator that ended are removed.
        if let learner = learners.first { return .remove(learner) }

        // Two voters share an isolation value: move one where the value is new.
        if !settings.isolationLabel.isEmpty {
            for peer in voters.reversed() {
                let others = voters.filter { $0.id != peer.id }
                guard !isolationAllows(peer.storeID, beside: others, stores: stores, settings: settings) else { continue }
                if let target = target(for: region, keeping: others, stores: stores, settings: settings) {
                    return .replace(peer, storeID: target)
                }
            }
        }
        return nil
    }

    /// The least-loaded store that can take a replica of `region` next to `keeping`: not
    /// holding one, under its store limit, not receiving too many snapshots, and with an
    /// isolation value none of `keeping` has.
    public static func target(for region: Flotilla_V1_Region, keeping: [Flotilla_V1_Peer], stores: [UInt64: StoreView],
                              settings: Flotilla_V1_SchedulerSettings) -> UInt64? {
        let occupied = Set(region.peers.map(\.storeID))
        let limit = settings.effectiveStoreLimit
        let candidates = stores.values.filter { view in
            view.canTakeReplicas && !occupied.contains(view.store.id) && view.operatorsInFlight < limit
                && Int(view.stats.snapshotsReceiving) < limit
                && isolationAllows(view.store.id, beside: keeping, stores: stores, settings: settings)
        }
        return candidates.min { a, b in
            let scoreA = score(a), scoreB = score(b)
            if scoreA != scoreB { return scoreA < scoreB }
            return a.store.id < b.store.id
        }?.store.id
    }

    /// A replica on `storeID` keeps the isolation rule next to `peers`: its label value is set
    /// and none of theirs is the same (always, without a rule).
    public static func isolationAllows(_ storeID: UInt64, beside peers: [Flotilla_V1_Peer], stores: [UInt64: StoreView],
                                       settings: Flotilla_V1_SchedulerSettings) -> Bool {
        let label = settings.isolationLabel
        guard !label.isEmpty else { return true }
        guard let value = stores[storeID]?.label(label), !value.isEmpty else { return false }
        return !peers.contains { $0.storeID != storeID && stores[$0.storeID]?.label(label) == value }
    }

    /// A store's load for choosing targets: regions it holds, counting operators under way.
    static func score(_ view: StoreView?) -> Int {
        guard let view else { return Int.max }
        return Int(view.stats.regionCount) + view.operatorsInFlight
    }
}
