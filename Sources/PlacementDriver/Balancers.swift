import FlotillaProto

/// The balancing schedulers: pure functions of PD's routes, the stores and the running
/// operators, each proposing at most one operator per call. PD's leader calls them every
/// balance interval, as long as they find something worth doing and the store limits allow.
public enum Balancers {
    /// A region's weight for balance-region: its size in MiB, an empty region counting 1.
    public static func regionWeight(_ info: Flotilla_V1_RegionInfo) -> Int {
        max(1, Int(info.stats.approximateSizeBytes >> 20))
    }

    /// Per store: the weight of the regions it holds a replica of, counting the replicas
    /// running operators will add (+) or remove (−).
    public static func regionWeights(_ regions: [Flotilla_V1_RegionInfo], running: [UInt64: Operator]) -> [UInt64: Int] {
        var weights: [UInt64: Int] = [:]
        var byID: [UInt64: Flotilla_V1_RegionInfo] = [:]
        for info in regions {
            byID[info.region.id] = info
            for peer in info.region.peers { weights[peer.storeID, default: 0] += regionWeight(info) }
        }
        for op in running.values {
            guard let info = byID[op.regionID] else { continue }
            precondition(op.currentStep < op.steps.count, "running operator \(op.id) past its last step")
            for step in op.steps[op.currentStep...] {
                switch step {
                case .addLearner(let peer) where !info.region.peers.contains(where: { $0.id == peer.id }):
                    weights[peer.storeID, default: 0] += regionWeight(info)
                case .removePeer(let peer) where info.region.peers.contains(where: { $0.storeID == peer.storeID }):
                    weights[peer.storeID, default: 0] -= regionWeight(info)
                default:
                    break
                }
            }
        }
        return weights
    }

    /// A region may be rescheduled: led, out of any joint configuration, every peer caught up
    /// and heard from, and no operator running for it.
    static func isQuiet(_ info: Flotilla_V1_RegionInfo, running: [UInt64: Operator]) -> Bool {
        info.hasLeader && !info.joint && info.pendingPeers.isEmpty && info.downPeers.isEmpty && running[info.region.id] == nil
    }

    /// Balance-region: a replica from the store with the most region weight to the one with
    /// the least, when they differ by more than the tolerance and by more than twice the
    /// region's weight (so the move cannot flip the imbalance and oscillate).
    public static func balanceRegion(regions: [Flotilla_V1_RegionInfo], stores: [UInt64: StoreView], running: [UInt64: Operator],
                                     settings: Flotilla_V1_SchedulerSettings) -> (region: Flotilla_V1_RegionInfo, from: Flotilla_V1_Peer, toStore: UInt64)? {
        let limit = settings.effectiveStoreLimit
        let live = stores.values.filter { $0.canTakeReplicas }
        guard live.count >= 2 else { return nil }
        let weights = regionWeights(regions, running: running)
        let weight = { (id: UInt64) in weights[id] ?? 0 }
        let mean = live.map { weight($0.store.id) }.reduce(0, +) / live.count
        let tolerance = max(1, mean * settings.effectiveTolerancePercent / 100)
        let sources = live.filter { $0.operatorsInFlight < limit }.sorted { weight($0.store.id) > weight($1.store.id) || (weight($0.store.id) == weight($1.store.id) && $0.store.id < $1.store.id) }
        let targets = live.filter { $0.operatorsInFlight < limit && Int($0.stats.snapshotsReceiving) < limit }
            .sorted { weight($0.store.id) < weight($1.store.id) || (weight($0.store.id) == weight($1.store.id) && $0.store.id < $1.store.id) }
        for source in sources {
            for target in targets where target.store.id != source.store.id {
                let gap = weight(source.store.id) - weight(target.store.id)
                guard gap > tolerance else { break }
                for info in regions where isQuiet(info, running: running) {
                    guard let peer = info.region.peers.first(where: { $0.storeID == source.store.id && $0.role == .voter }),
                          !info.region.peers.contains(where: { $0.storeID == target.store.id }),
                          gap > 2 * regionWeight(info) else { continue }
                    let kept = info.region.peers.filter { $0.role == .voter && $0.id != peer.id }
                    guard ReplicaChecker.isolationAllows(target.store.id, beside: kept, stores: stores, settings: settings) else { continue }
                    // A move goes from a voter on the heavier store to a store without a replica.
                    precondition(peer.storeID == source.store.id && source.store.id != target.store.id
                                 && weight(source.store.id) > weight(target.store.id), "balance-region would move region \(info.region.id) uphill")
                    return (info, peer, target.store.id)
                }
            }
        }
        return nil
    }

    /// Balance-leader: leadership of one region from the store leading the most regions to a
    /// store leading the fewest that holds one of its voters, when the counts differ by more
    /// than the tolerance (and by at least 2, so the transfer cannot flip them).
    public static func balanceLeader(regions: [Flotilla_V1_RegionInfo], stores: [UInt64: StoreView], running: [UInt64: Operator],
                                     settings: Flotilla_V1_SchedulerSettings) -> (region: Flotilla_V1_RegionInfo, to: Flotilla_V1_Peer)? {
        let live = stores.values.filter(\.isSchedulable)
        guard live.count >= 2 else { return nil }
        var leaders: [UInt64: Int] = [:]
        for info in regions where info.hasLeader { leaders[info.leader.storeID, default: 0] += 1 }
        for op in running.values {
            precondition(op.currentStep < op.steps.count, "running operator \(op.id) past its last step")
            if case .transferLeader(let peer) = op.steps[op.currentStep] { leaders[peer.storeID, default: 0] += 1 }
        }
        let count = { (id: UInt64) in leaders[id] ?? 0 }
        let mean = live.map { count($0.store.id) }.reduce(0, +) / live.count
        let tolerance = max(1, mean * settings.effectiveTolerancePercent / 100)
        let ordered = live.map(\.store.id).sorted { count($0) < count($1) || (count($0) == count($1) && $0 < $1) }
        // From the store leading the most down: the busiest store's regions may have no
        // voter on the emptiest (their replicas all elsewhere), and a less busy source with
        // one still evens things out (the busiest then gives to it).
        for source in ordered.reversed() {
            for target in ordered where target != source {
                let gap = count(source) - count(target)
                guard gap > tolerance, gap >= 2 else { break }
                for info in regions where info.leader.storeID == source && isQuiet(info, running: running) {
                    if let voter = info.region.peers.first(where: { $0.storeID == target && $0.role == .voter }) {
                        precondition(voter.storeID != info.leader.storeID && count(source) > count(target),
                                     "balance-leader would move region \(info.region.id)'s leader to where it is, or uphill")
                        return (info, voter)
                    }
                }
            }
        }
        return nil
    }

    /// Written bytes per second a store's leaders must take, above the coolest store's, before
    /// hot-region acts.
    public static let hotWrittenBytesPerSecondMin: UInt64 = 1 << 20

    /// Hot-region: leadership of the hottest written region off the store whose leaders take
    /// the most written bytes per second, to a voter on a cooler store, when the hottest store
    /// takes more than twice the coolest's (plus `hotWrittenBytesPerSecondMin`) and the move
    /// leaves the target cooler than the source was.
    public static func hotRegion(regions: [Flotilla_V1_RegionInfo], stores: [UInt64: StoreView], running: [UInt64: Operator],
                                 settings: Flotilla_V1_SchedulerSettings) -> (region: Flotilla_V1_RegionInfo, to: Flotilla_V1_Peer)? {
        let live = stores.values.filter(\.isSchedulable)
        guard live.count >= 2 else { return nil }
        var heat: [UInt64: UInt64] = [:]
        for info in regions where info.hasLeader { heat[info.leader.storeID, default: 0] += info.stats.writtenBytesPerSecond }
        let rate = { (id: UInt64) in heat[id] ?? 0 }
        let ordered = live.map(\.store.id).sorted { rate($0) < rate($1) || (rate($0) == rate($1) && $0 < $1) }
        guard let hottest = ordered.last, let coolest = ordered.first,
              rate(hottest) > 2 * rate(coolest) + hotWrittenBytesPerSecondMin else { return nil }
        let led = regions.filter { $0.leader.storeID == hottest && isQuiet($0, running: running) }
            .sorted { $0.stats.writtenBytesPerSecond > $1.stats.writtenBytesPerSecond }
        for info in led where info.stats.writtenBytesPerSecond > 0 {
            for target in ordered where target != hottest && rate(target) + info.stats.writtenBytesPerSecond < rate(hottest) {
                if let voter = info.region.peers.first(where: { $0.storeID == target && $0.role == .voter }) {
                    precondition(voter.storeID != hottest && rate(target) < rate(hottest), "hot-region would move region \(info.region.id)'s leader onto a hotter store")
                    return (info, voter)
                }
            }
        }
        return nil
    }
}
