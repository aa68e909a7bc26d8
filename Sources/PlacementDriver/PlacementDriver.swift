import FlotillaProto
import Foundation

/// Timings of PD's leader, in milliseconds of the caller's monotonic clock.
public struct PDTimings: Sendable, Equatable {
    /// A store silent this long is disconnected (not yet down: see `max-store-down-time`).
    public var storeDisconnectMs: UInt64 = 20_000
    /// A store silent this long (three of its 1 s heartbeats missed) gets no new work: no
    /// balancer or checker picks it as a target, and a leader transfer waiting on it fails at
    /// once (it gave up only at the disconnect); other steps wait for the disconnect, as a
    /// learner on a store paused for seconds still catches up.
    public var storeSchedulableSilenceMs: UInt64 = 3_000
    /// How often region leaders report; a new PD leader waits one such round (plus slack)
    /// before it schedules, so it decides from every region's report, not its persisted
    /// routes alone.
    public var regionHeartbeatIntervalMs: UInt64 = 10_000
    /// An operator step not finished in this long ends the operator (timed out).
    public var operatorStepTimeoutMs: UInt64 = 60_000
    /// Ids a leader reserves through PD's log at a time.
    public var idBatch: UInt64 = 1_000
    /// How often the leader runs the balancers and looks for drained stores.
    public var balanceIntervalMs: UInt64 = 1_000
    /// Operators the balancers may start in one round (each also bounded by store limits).
    public var operatorsPerBalanceRoundMax = 8
    /// Regions the replica checker's patrol looks at in one balance round (from PD's routes,
    /// not a heartbeat: a sleeping region reports only seldom, so a checker that ran only on
    /// heartbeats left a lone-voter region alone for a minute). 100,000 regions: 25 rounds.
    public var regionsPatrolledPerRoundMax = 4_096

    public init() {}

    /// The wait after election before scheduling: one heartbeat round and a half.
    public var scheduleDelayMs: UInt64 { regionHeartbeatIntervalMs + regionHeartbeatIntervalMs / 2 }
}

/// The placement driver's logic, without I/O: the replicated `ClusterState` (changed only by
/// `apply`, in log order) and, while this member leads, the leader's memory: fresher routes
/// from region heartbeats, store liveness and statistics, the id window, and operators.
///
/// Requests that change replicated state are answered with the commands to propose; the
/// caller replicates them, calls `apply` on every member, and answers from the outcome.
/// Everything takes the time as `nowMs` (monotonic): tests drive it.
public struct PlacementDriver: Sendable {
    public private(set) var state = ClusterState()
    public let timings: PDTimings

    /// The leader's routes: persisted routes at election, then every accepted heartbeat.
    public private(set) var regions = RegionTree()
    public private(set) var operators: OperatorController
    private var storeHeard: [UInt64: (atMs: UInt64, stats: Flotilla_V1_StoreStats)] = [:]
    private var leaderSinceMs: UInt64?
    /// Ids this leader may hand out: idNext...idLimit (empty when idNext > idLimit).
    private var idNext: UInt64 = 1
    private var idLimit: UInt64 = 0
    private var lastBalanceMs: UInt64 = 0
    /// Where the replica checker's patrol goes on: the start key past the last region it saw.
    private var patrolNextKey = Data()
    /// Operators each scheduler made since this member became leader, by origin.
    public private(set) var operatorsMade: [String: UInt64] = [:]

    public init(timings: PDTimings = PDTimings(), state: ClusterState = ClusterState()) {
        self.timings = timings
        self.state = state
        self.operators = OperatorController(stepTimeoutMs: timings.operatorStepTimeoutMs)
    }

    public var isLeader: Bool { leaderSinceMs != nil }

    // MARK: Leadership

    /// This member became PD's leader at `nowMs` (after applying every entry of earlier terms).
    /// Ids it hands out start past everything reserved so far, so none is ever handed out
    /// twice, whatever the last leader handed out of its batch.
    ///
    /// Operator ids are `term << 32 | n`: unique across leaders (one leader per term) without a
    /// log write per operator.
    public mutating func becomeLeader(nowMs: UInt64, term: UInt64 = 1) {
        leaderSinceMs = nowMs
        regions = state.routes
        storeHeard = [:]
        idNext = state.reservedIDsThrough + 1
        idLimit = state.reservedIDsThrough
        operatorsMade = [:]
        lastBalanceMs = 0
        patrolNextKey = Data()
        operators = OperatorController(stepTimeoutMs: timings.operatorStepTimeoutMs, history: operators.history, firstID: term << 32 | 1)
    }

    /// Commands recording the operators that ended and are not yet in the replicated history
    /// (so a PD failover keeps them). The caller proposes them; until one is applied, the next
    /// call returns it again (recording is idempotent).
    public func operatorRecords(nowMs: UInt64) -> [Flotilla_V1_PDCommand] {
        guard isLeader else { return [] }
        return operators.history.filter { state.operatorHistory[$0.id] == nil }.map { op in
            var command = Flotilla_V1_PDCommand()
            command.recordOperator = op.info(nowMs: nowMs)
            return command
        }
    }

    /// Running operators, then (with `includeHistory`) ended ones: the replicated history with
    /// this leader's not yet recorded, oldest first, at most `PDLimits.operatorHistoryMax`.
    public func operatorInfos(includeHistory: Bool, nowMs: UInt64) -> [Flotilla_V1_OperatorInfo] {
        let running = operators.running.values.sorted { $0.id < $1.id }.map { $0.info(nowMs: nowMs) }
        guard includeHistory else { return running }
        var ended = state.operatorHistory
        for op in operators.history where ended[op.id] == nil { ended[op.id] = op.info(nowMs: nowMs) }
        return running + ended.keys.sorted().suffix(PDLimits.operatorHistoryMax).compactMap { ended[$0] }
    }

    /// This member stopped leading: the leader's memory is dropped (operators end as
    /// cancelled in the history).
    public mutating func becomeFollower(nowMs: UInt64) {
        guard leaderSinceMs != nil else { return }
        for regionID in operators.running.keys.sorted() {
            operators.cancel(regionID: regionID, reason: "PD leader changed", nowMs: nowMs)
        }
        leaderSinceMs = nil
        regions = RegionTree()
        storeHeard = [:]
        idLimit = 0
    }

    private func requireLeader() throws(PDFailure) {
        guard isLeader else { throw .notLeader(leaderAddress: "") }
    }

    /// Refuses a request for another cluster (0 is accepted only where a caller learns the id).
    /// Before the first leader set the cluster id, only those requests are served.
    public func check(header: Flotilla_V1_PDRequestHeader, allowUnknown: Bool = false) throws(PDFailure) {
        if allowUnknown && header.clusterID == 0 { return }
        guard state.clusterID != 0 else { throw .starting }
        if header.clusterID == state.clusterID { return }
        throw .clusterMismatch(expected: state.clusterID, got: header.clusterID)
    }

    // MARK: Applying PD's log

    /// Applies one committed command (every member, in log order). The leader's memory
    /// follows: reserved ids widen its window, bootstrap and persisted routes reach its routes.
    public mutating func apply(_ command: Flotilla_V1_PDCommand) -> (outcome: Result<Void, PDFailure>, writes: [ClusterState.RecordWrite]) {
        let result = state.apply(command)
        guard case .success = result.outcome, isLeader else { return result }
        switch command.command {
        case .reserveIdsThrough(let bound):
            if bound > idLimit { idLimit = bound }
        case .bootstrap(let request):
            var info = Flotilla_V1_RegionInfo()
            info.region = request.region
            regions.update(info)
        default:
            break
        }
        return result
    }

    /// Replaces the replicated state (a snapshot installed, or a restart's load).
    public mutating func restore(_ loaded: ClusterState) {
        state = loaded
        if isLeader { regions = loaded.routes }
    }

    // MARK: Ids

    public enum IDAllocation: Equatable, Sendable {
        /// first ..< first + count
        case ids(first: UInt64, count: UInt32)
        /// Propose this, apply it, then ask again.
        case reserve(Flotilla_V1_PDCommand)
    }

    /// Hands out `count` ids from the leader's reserved window, or asks for a reservation.
    public mutating func allocateIDs(count: UInt32) throws(PDFailure) -> IDAllocation {
        try requireLeader()
        guard (1...PDLimits.idsPerAllocationMax).contains(count) else {
            throw .invalidArgument("count: must be 1 to \(PDLimits.idsPerAllocationMax)")
        }
        if idNext <= idLimit, idLimit - idNext + 1 >= UInt64(count) {
            let first = idNext
            idNext += UInt64(count)
            // Ids handed out are reserved in PD's log first: never past the reservation, never twice.
            precondition(idNext - 1 <= idLimit && idNext > first, "ids \(first)..<\(idNext) outside the reservation through \(idLimit)")
            precondition(idNext - 1 <= state.reservedIDsThrough, "ids handed out beyond what the log reserved (\(state.reservedIDsThrough))")
            return .ids(first: first, count: count)
        }
        var command = Flotilla_V1_PDCommand()
        command.reserveIdsThrough = max(idLimit, state.reservedIDsThrough) + max(timings.idBatch, UInt64(count))
        return .reserve(command)
    }

    // MARK: Stores

    /// The store's liveness at `nowMs`: a store this leader has not heard from counts from
    /// the leader's start.
    public func liveness(ofStore id: UInt64, nowMs: UInt64) -> Flotilla_V1_StoreLiveness {
        let silentMs = storeSilentMs(id, nowMs: nowMs)
        if silentMs > state.settings.maxStoreDownTimeSeconds * 1000 { return .down }
        if silentMs > timings.storeDisconnectMs { return .disconnected }
        return .up
    }

    /// How long the store has been silent (a store this leader has not heard from counts from
    /// the leader's start).
    public func storeSilentMs(_ id: UInt64, nowMs: UInt64) -> UInt64 {
        let since = storeHeard[id]?.atMs ?? leaderSinceMs ?? nowMs
        return nowMs >= since ? nowMs - since : 0
    }

    public func storeInfo(id: UInt64, nowMs: UInt64) -> Flotilla_V1_StoreInfo? {
        guard let store = state.stores[id] else { return nil }
        var info = Flotilla_V1_StoreInfo()
        info.store = store
        info.liveness = liveness(ofStore: id, nowMs: nowMs)
        if let heard = storeHeard[id] {
            info.stats = heard.stats
            info.lastHeartbeatAgeMs = nowMs >= heard.atMs ? nowMs - heard.atMs : 0
        }
        return info
    }

    /// The command registering `store` (id 0: a new store, given `newID`), or the store as
    /// held when nothing changes.
    public func putStoreCommand(_ store: Flotilla_V1_Store, newID: UInt64?) throws(PDFailure) -> Flotilla_V1_PDCommand {
        try requireLeader()
        try PDValidation.check(store: store)
        var stored = store
        if store.id == 0 {
            guard let newID else { throw .invalidArgument("store.id: 0 needs a new id") }
            stored.id = newID
            stored.state = .up
        } else {
            guard let held = state.stores[store.id] else { throw .unknownStore(store.id) }
            guard held.state != .tombstone else { throw .storeTombstone(store.id) }
            stored.state = held.state
        }
        var command = Flotilla_V1_PDCommand()
        command.putStore = stored
        return command
    }

    /// The command draining a store (offline) or taking the drain back (up). Draining is
    /// refused when fewer than `max-replicas` other stores could hold the replicas, and a
    /// tombstone is PD's to set (once the drained store is empty).
    public func setStoreStateCommand(_ change: Flotilla_V1_StoreStateChange, nowMs: UInt64) throws(PDFailure) -> Flotilla_V1_PDCommand {
        try requireLeader()
        guard let store = state.stores[change.storeID] else { throw .unknownStore(change.storeID) }
        guard store.state != .tombstone else { throw .storeTombstone(change.storeID) }
        switch change.state {
        case .up:
            break
        case .offline:
            let others = storeViews(nowMs: nowMs).values.filter { $0.store.id != store.id && $0.store.state == .up && $0.liveness != .down }
            let needed = Int(state.settings.maxReplicas)
            guard others.count >= needed else {
                throw .invalidArgument("store \(store.id) cannot be drained: \(others.count) other up store\(others.count == 1 ? "" : "s") for \(needed) replicas per region; add a store first")
            }
            let label = state.settings.isolationLabel
            if !label.isEmpty {
                let values = Set(others.map { $0.label(label) }.filter { !$0.isEmpty })
                guard values.count >= needed else {
                    throw .invalidArgument("store \(store.id) cannot be drained: the other up stores have \(values.count) distinct \"\(label)\" values for \(needed) replicas per region")
                }
            }
        case .tombstone:
            throw .invalidArgument("a store becomes a tombstone by draining: set it offline and PD removes it once it holds no replicas")
        case .UNRECOGNIZED(let value):
            throw .invalidArgument("state: unknown store state \(value)")
        }
        var command = Flotilla_V1_PDCommand()
        command.setStoreState = change
        return command
    }

    /// What PD asks of a store in its heartbeat's answer: the regions led there to report now.
    public struct StoreHeartbeatAnswer: Equatable, Sendable {
        /// Regions with a running operator whose leader (as last heard) is this store, at most
        /// `PDLimits.regionsToReportPerAnswerMax`, ascending: a sleeping region reports only on
        /// a slow period, and PD hands out steps only in answers to region heartbeats.
        public var reportRegions: [UInt64] = []
        /// The first heartbeat this leader had from the store, or the first after a silence of
        /// `storeSchedulableSilenceMs` (reports sent meanwhile may have been lost): every
        /// region led there reports.
        public var reportAllRegions = false
        public init() {}
    }

    /// Records a store heartbeat; answers which regions led there should report now.
    @discardableResult
    public mutating func storeHeartbeat(storeID: UInt64, stats: Flotilla_V1_StoreStats, nowMs: UInt64) throws(PDFailure) -> StoreHeartbeatAnswer {
        try requireLeader()
        guard let store = state.stores[storeID] else { throw .unknownStore(storeID) }
        guard store.state != .tombstone else { throw .storeTombstone(storeID) }
        var answer = StoreHeartbeatAnswer()
        answer.reportAllRegions = storeHeard[storeID].map { nowMs >= $0.atMs && nowMs - $0.atMs >= timings.storeSchedulableSilenceMs } ?? true
        storeHeard[storeID] = (nowMs, stats)
        answer.reportRegions = Array(operators.running.keys.filter { regions.region(id: $0)?.leader.storeID == storeID }
            .sorted().prefix(PDLimits.regionsToReportPerAnswerMax))
        precondition(answer.reportRegions.count <= PDLimits.regionsToReportPerAnswerMax, "report list over its bound")
        return answer
    }

    // MARK: Regions

    /// What a region heartbeat produced: the step for the leader (if any) and the commands to
    /// propose (a changed route persisted; a reservation for new peer ids).
    public struct HeartbeatOutcome: Equatable, Sendable {
        public var step: OperatorStep?
        public var commands: [Flotilla_V1_PDCommand] = []
    }

    /// Takes a region leader's heartbeat: refused when stale (PD holds a newer epoch for the
    /// region or an overlapping one) or from an unknown store; otherwise the route is updated,
    /// the region's operator advanced, and the replica checker consulted once the leader has
    /// waited a heartbeat round.
    public mutating func regionHeartbeat(_ request: Flotilla_V1_RegionHeartbeatRequest, nowMs: UInt64) throws(PDFailure) -> HeartbeatOutcome {
        try requireLeader()
        guard state.isBootstrapped else { throw .notBootstrapped }
        guard let store = state.stores[request.storeID] else { throw .unknownStore(request.storeID) }
        guard store.state != .tombstone else { throw .storeTombstone(request.storeID) }
        let info = request.region
        try PDValidation.check(region: info.region)
        // Pending and down peers are peers of the region (bounded with them).
        for peer in info.pendingPeers + info.downPeers where !info.region.peers.contains(peer) {
            throw .invalidArgument("region \(info.region.id): pending or down peer \(peer.id) is not one of its peers")
        }
        guard info.pendingPeers.count + info.downPeers.count <= 2 * PDLimits.peersPerRegionMax else {
            throw .invalidArgument("region \(info.region.id): too many pending and down peers")
        }
        // Every region and peer id comes from PD's allocator: a larger one was never handed out.
        guard info.region.id <= state.reservedIDsThrough, info.region.peers.allSatisfy({ $0.id <= state.reservedIDsThrough }) else {
            throw .unknownRegion(info.region.id)
        }
        guard info.hasLeader, info.leader.storeID == request.storeID,
              info.region.peers.contains(where: { $0.id == info.leader.id && $0.storeID == info.leader.storeID }) else {
            throw .invalidArgument("region \(info.region.id): the heartbeat must come from the leader's store, and the leader must be a peer")
        }
        for peer in info.region.peers where state.stores[peer.storeID] == nil {
            throw .unknownStore(peer.storeID)
        }
        var outcome = HeartbeatOutcome()
        switch regions.update(info) {
        case .stale(let current):
            throw .staleRegion(current: current)
        case .sameMeta:
            break
        case .changed:
            var command = Flotilla_V1_PDCommand()
            command.putRegion = info.region
            outcome.commands.append(command)
        }
        failStepsOnDeadStores(nowMs: nowMs)
        outcome.step = operators.heartbeat(info, nowMs: nowMs)
        if operators.running[info.region.id] == nil, schedulingAllowed(nowMs: nowMs), state.settings.replicaCheckerEnabled {
            if let reservation = planReplicas(info, nowMs: nowMs) { outcome.commands.append(reservation) }
            // An operator the checker just made sends its first step with this answer.
            if operators.running[info.region.id] != nil { outcome.step = operators.heartbeat(info, nowMs: nowMs) }
        }
        return outcome
    }

    /// Schedulers wait one heartbeat round after election.
    public func schedulingAllowed(nowMs: UInt64) -> Bool {
        guard let since = leaderSinceMs else { return false }
        return nowMs >= since && nowMs - since >= timings.scheduleDelayMs
    }

    /// Runs the replica checker for one region; returns a reservation to propose when it
    /// needs a peer id and the window is empty (the next heartbeat retries).
    private mutating func planReplicas(_ info: Flotilla_V1_RegionInfo, nowMs: UInt64) -> Flotilla_V1_PDCommand? {
        let views = storeViews(nowMs: nowMs)
        let origin = "replica-checker"
        switch ReplicaChecker.check(info, stores: views, settings: state.settings) {
        case nil:
            return nil
        case .promote(let learner):
            start(info, origin: origin, steps: [.addLearner(learner), .promoteLearner(learner)], nowMs: nowMs)
            return nil
        case .remove(let peer):
            start(info, origin: origin, steps: [.removePeer(peer)], nowMs: nowMs)
            return nil
        case .addReplica(let storeID):
            switch try? allocateIDs(count: 1) {
            case .ids(let first, _):
                let peer = Self.learner(id: first, storeID: storeID)
                start(info, origin: origin, steps: [.addLearner(peer), .promoteLearner(peer)], nowMs: nowMs)
                return nil
            case .reserve(let command): return command
            case nil: return nil
            }
        case .replace(let leaving, let storeID):
            switch try? allocateIDs(count: 1) {
            case .ids(let first, _):
                start(info, origin: origin, steps: Self.moveSteps(leaving, to: Self.learner(id: first, storeID: storeID)), nowMs: nowMs)
                return nil
            case .reserve(let command): return command
            case nil: return nil
            }
        }
    }

    private static func learner(id: UInt64, storeID: UInt64) -> Flotilla_V1_Peer {
        var peer = Flotilla_V1_Peer()
        peer.id = id
        peer.storeID = storeID
        peer.role = .learner
        return peer
    }

    /// The steps moving `leaving`'s replica to the new learner `arriving`: add it, then (for a
    /// voter) one joint change promoting it and demoting `leaving`, then remove `leaving`. The
    /// operator moves the leadership off `leaving` first when it leads.
    public static func moveSteps(_ leaving: Flotilla_V1_Peer, to arriving: Flotilla_V1_Peer) -> [OperatorStep] {
        var removed = leaving
        removed.role = .learner
        if leaving.role == .learner { return [.addLearner(arriving), .removePeer(removed)] }
        return [.addLearner(arriving), .promoteAndDemote(promote: arriving, demote: leaving), .removePeer(removed)]
    }

    /// Starts an operator and counts it for its scheduler.
    @discardableResult
    private mutating func start(_ info: Flotilla_V1_RegionInfo, origin: String, steps: [OperatorStep], nowMs: UInt64) -> Operator? {
        guard let op = try? operators.add(regionID: info.region.id, origin: origin, steps: steps,
                                          regionVersion: info.region.epoch.version, nowMs: nowMs) else { return nil }
        operatorsMade[origin, default: 0] += 1
        return op
    }

    /// Every non-tombstone store as the schedulers see it.
    public func storeViews(nowMs: UInt64) -> [UInt64: StoreView] {
        var views: [UInt64: StoreView] = [:]
        for (id, store) in state.stores where store.state != .tombstone {
            views[id] = StoreView(store: store, liveness: liveness(ofStore: id, nowMs: nowMs),
                                  stats: storeHeard[id]?.stats ?? Flotilla_V1_StoreStats())
            views[id]?.heardLately = storeSilentMs(id, nowMs: nowMs) <= timings.storeSchedulableSilenceMs
        }
        for (storeID, count) in operators.storeLoad() { views[storeID]?.operatorsInFlight = count }
        return views
    }

    // MARK: Operators

    /// An operator an admin asked for, checked against the region as PD knows it.
    public mutating func addOperator(_ request: Flotilla_V1_AddOperatorRequest, newPeerID: UInt64?, nowMs: UInt64) throws(PDFailure) -> Operator {
        try requireLeader()
        guard let info = regions.region(id: request.regionID) else { throw .unknownRegion(request.regionID) }
        let region = info.region
        let steps: [OperatorStep]
        switch request.kind {
        case .addPeerStoreID(let storeID):
            guard let store = state.stores[storeID], store.state == .up else { throw .unknownStore(storeID) }
            guard !region.peers.contains(where: { $0.storeID == storeID }) else {
                throw .invalidArgument("region \(region.id) already has a peer on store \(storeID)")
            }
            guard region.peers.count < PDLimits.peersPerRegionMax else {
                throw .invalidArgument("region \(region.id) has \(region.peers.count) peers, the most a region may have")
            }
            guard let newPeerID else { throw .invalidArgument("adding a peer needs a new peer id") }
            var peer = Flotilla_V1_Peer()
            peer.id = newPeerID
            peer.storeID = storeID
            peer.role = .learner
            steps = [.addLearner(peer), .promoteLearner(peer)]
        case .removePeerStoreID(let storeID):
            guard let peer = region.peers.first(where: { $0.storeID == storeID }) else {
                throw .invalidArgument("region \(region.id) has no peer on store \(storeID)")
            }
            guard !(info.hasLeader && info.leader.storeID == storeID) else {
                throw .invalidArgument("the peer on store \(storeID) leads region \(region.id): transfer the leader first")
            }
            guard peer.role == .learner || region.peers.filter({ $0.role == .voter }).count > 1 else {
                throw .invalidArgument("the peer on store \(storeID) is region \(region.id)'s only voter")
            }
            steps = [.removePeer(peer)]
        case .transferLeaderStoreID(let storeID):
            guard let peer = region.peers.first(where: { $0.storeID == storeID }), peer.role == .voter else {
                throw .invalidArgument("region \(region.id) has no voter on store \(storeID)")
            }
            steps = [.transferLeader(peer)]
        case .split(let split):
            try PDValidation.check(splitKeys: split.splitKeys, in: region)
            steps = [.splitRegion(keys: split.splitKeys)]
        case .movePeer(let move):
            guard let leaving = region.peers.first(where: { $0.storeID == move.fromStoreID }) else {
                throw .invalidArgument("region \(region.id) has no peer on store \(move.fromStoreID): --from must be one of its stores (\(region.peers.map { String($0.storeID) }.joined(separator: ",")))")
            }
            guard !region.peers.contains(where: { $0.storeID == move.toStoreID }) else {
                throw .invalidArgument("region \(region.id) already has a peer on store \(move.toStoreID): --to must be a store without one")
            }
            guard let target = state.stores[move.toStoreID] else { throw .unknownStore(move.toStoreID) }
            guard target.state == .up else { throw .invalidArgument("store \(move.toStoreID) is \(target.state == .offline ? "draining (offline)" : "removed (tombstone)") and takes no replicas") }
            guard !info.joint else { throw .invalidArgument("region \(region.id) is in a joint configuration; retry once its leader has left it") }
            let views = storeViews(nowMs: nowMs)
            let kept = region.peers.filter { $0.role == .voter && $0.id != leaving.id }
            guard leaving.role == .learner || ReplicaChecker.isolationAllows(move.toStoreID, beside: kept, stores: views, settings: state.settings) else {
                throw .invalidArgument("store \(move.toStoreID) has the same \"\(state.settings.isolationLabel)\" as another replica of region \(region.id) (isolation rule)")
            }
            guard let newPeerID else { throw .invalidArgument("moving a peer needs a new peer id") }
            steps = Self.moveSteps(leaving, to: Self.learner(id: newPeerID, storeID: move.toStoreID))
        case nil:
            throw .invalidArgument("an operator request needs a kind")
        }
        return try operators.add(regionID: region.id, origin: "admin", steps: steps, regionVersion: region.epoch.version, nowMs: nowMs)
    }

    /// The ids of a split's new regions laid out from the first of the ids `idsForSplit`
    /// counted: each new region's id, then one peer id per peer of the region (a region
    /// without peers, which validation refuses, gets none).
    public static func splitRegionIDs(first: UInt64, splitCount: UInt32, peerCount: Int) -> [Flotilla_V1_SplitRegionIDs] {
        guard peerCount > 0 else { return [] }
        var next = first
        let layout = (0..<splitCount).map { _ in
            var ids = Flotilla_V1_SplitRegionIDs()
            ids.regionID = next
            ids.peerIds = (1...peerCount).map { offset in next + UInt64(offset) }
            next += UInt64(1 + peerCount)
            return ids
        }
        // Exactly the ids `idsForSplit` counted, each once.
        precondition(next - first == UInt64(splitCount) * UInt64(1 + peerCount), "split id layout uses \(next - first) ids")
        return layout
    }

    /// How many ids a split of `region` into `splitCount` more regions needs (a region id and
    /// one peer id per peer, for each new region), once checked: the region is known here
    /// and not at a newer epoch than the asking leader's.
    public func idsForSplit(of region: Flotilla_V1_Region, splitCount: UInt32) throws(PDFailure) -> UInt32 {
        try requireLeader()
        try PDValidation.check(region: region)
        guard (1...UInt32(KVLimits.splitKeysMax)).contains(splitCount) else {
            throw .invalidArgument("split_count: 1 to \(KVLimits.splitKeysMax), not \(splitCount)")
        }
        guard let known = regions.region(id: region.id) else { throw .unknownRegion(region.id) }
        let epoch = known.region.epoch
        if epoch.version > region.epoch.version || epoch.confVer > region.epoch.confVer {
            throw .staleRegion(current: known.region)
        }
        return splitCount * UInt32(1 + region.peers.count)
    }

    public mutating func cancelOperator(regionID: UInt64, nowMs: UInt64) throws(PDFailure) {
        try requireLeader()
        guard operators.cancel(regionID: regionID, reason: "cancelled by an admin", nowMs: nowMs) else {
            throw .invalidArgument("region \(regionID) has no running operator")
        }
    }

    /// Ends operators whose step ran out of time, and every `balanceIntervalMs` runs the
    /// balancers and makes drained, empty stores tombstones. Returns the commands to propose
    /// (tombstones, id reservations the balancers need).
    @discardableResult
    public mutating func tick(nowMs: UInt64) -> [Flotilla_V1_PDCommand] {
        guard isLeader else { return [] }
        operators.tick(nowMs: nowMs)
        failStepsOnDeadStores(nowMs: nowMs)
        guard schedulingAllowed(nowMs: nowMs), nowMs >= lastBalanceMs + timings.balanceIntervalMs else { return [] }
        lastBalanceMs = nowMs
        var commands: [Flotilla_V1_PDCommand] = []
        // A drained store that no region lists any more is removed for good.
        let holding = Set(regions.all.flatMap { $0.region.peers.map(\.storeID) })
        for store in state.stores.values.sorted(by: { $0.id < $1.id }) where store.state == .offline && !holding.contains(store.id) {
            var command = Flotilla_V1_PDCommand()
            command.setStoreState.storeID = store.id
            command.setStoreState.state = .tombstone
            commands.append(command)
        }
        if let reservation = patrolReplicas(nowMs: nowMs) { commands.append(reservation) }
        if let reservation = balance(nowMs: nowMs) { commands.append(reservation) }
        return commands
    }

    /// The replica checker over PD's routes, `regionsPatrolledPerRoundMax` regions a round in
    /// key order, wrapping at the end: a region without an operator whose last report lacks or
    /// has too many voters gets its operator here, and the leader's store is then asked for the
    /// region (`report_regions`) to take the first step. Returns a reservation when the
    /// checker needs ids and the window is empty (the next round goes on from the same region).
    private mutating func patrolReplicas(nowMs: UInt64) -> Flotilla_V1_PDCommand? {
        guard state.settings.replicaCheckerEnabled, regions.count > 0 else { return nil }
        let batch = regions.regions(from: patrolNextKey, to: Data(), limit: timings.regionsPatrolledPerRoundMax)
        precondition(batch.count <= timings.regionsPatrolledPerRoundMax, "patrol batch over its bound")
        for info in batch {
            if info.hasLeader, operators.running[info.region.id] == nil,
               let reservation = planReplicas(info, nowMs: nowMs) {
                patrolNextKey = info.region.startKey
                return reservation
            }
        }
        // On past the last region seen; back to the first after the region reaching the end.
        let last = batch.last?.region.endKey ?? Data()
        patrolNextKey = batch.count < timings.regionsPatrolledPerRoundMax ? Data() : last
        return nil
    }

    /// Fails operators waiting on a store that is not live (see `OperatorController.failSteps`).
    /// A store this leader has not heard from yet counts as live until the disconnect time.
    private mutating func failStepsOnDeadStores(nowMs: UInt64) {
        let live = Set(state.stores.values.filter { $0.state == .up && liveness(ofStore: $0.id, nowMs: nowMs) == .up }.map(\.id))
        let heard = Set(live.filter { storeSilentMs($0, nowMs: nowMs) <= timings.storeSchedulableSilenceMs })
        operators.failSteps(needing: { live.contains($0) }, heardLately: { heard.contains($0) }, nowMs: nowMs)
    }

    /// One round of the enabled balancers; returns a reservation when a move needs ids.
    private mutating func balance(nowMs: UInt64) -> Flotilla_V1_PDCommand? {
        let settings = state.settings
        let all = regions.all
        for _ in 0..<timings.operatorsPerBalanceRoundMax {
            var started = false
            let views = storeViews(nowMs: nowMs)
            if settings.hotRegionEnabled, let (info, to) = Balancers.hotRegion(regions: all, stores: views, running: operators.running, settings: settings) {
                started = start(info, origin: "hot-region", steps: [.transferLeader(to)], nowMs: nowMs) != nil || started
            }
            if settings.balanceLeaderEnabled,
               let (info, to) = Balancers.balanceLeader(regions: all, stores: storeViews(nowMs: nowMs), running: operators.running, settings: settings) {
                started = start(info, origin: "balance-leader", steps: [.transferLeader(to)], nowMs: nowMs) != nil || started
            }
            if settings.balanceRegionEnabled,
               let (info, from, toStore) = Balancers.balanceRegion(regions: all, stores: storeViews(nowMs: nowMs), running: operators.running, settings: settings) {
                switch try? allocateIDs(count: 1) {
                case .ids(let first, _):
                    started = start(info, origin: "balance-region", steps: Self.moveSteps(from, to: Self.learner(id: first, storeID: toStore)), nowMs: nowMs) != nil || started
                case .reserve(let command): return command
                case nil: break
                }
            }
            if !started { break }
        }
        return nil
    }

    /// The schedulers, whether each runs, and how many operators each made under this leader.
    public func schedulerInfos() -> [Flotilla_V1_SchedulerInfo] {
        let settings = state.settings
        let table: [(String, Bool, String)] = [
            ("replica-checker", settings.replicaCheckerEnabled,
             "keeps \(settings.maxReplicas) voters per region: adds missing ones, replaces those on down or draining stores, removes extras and stray learners"),
            ("balance-region", settings.balanceRegionEnabled, "moves replicas from the fullest store to the emptiest (tolerance \(settings.effectiveTolerancePercent) %)"),
            ("balance-leader", settings.balanceLeaderEnabled, "moves leadership from the store leading most regions to the one leading fewest"),
            ("hot-region", settings.hotRegionEnabled, "moves leadership of the hottest written region off the hottest store"),
        ]
        return table.map { name, enabled, description in
            var info = Flotilla_V1_SchedulerInfo()
            info.name = name
            info.enabled = enabled
            info.description_p = description
            info.operatorsMade = operatorsMade[name] ?? 0
            return info
        }
    }
}
