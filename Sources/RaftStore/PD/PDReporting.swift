import FlotillaProto
import Foundation

/// What a leader reports to PD of one region: the region, its leader peer, peers catching up
/// (pending), peers not heard from (down), whether it is in a joint configuration, and
/// whether it sleeps.
public typealias LeaderReport = (region: Flotilla_V1_Region, leader: Flotilla_V1_Peer, pending: [Flotilla_V1_Peer],
                                 down: [Flotilla_V1_Peer], joint: Bool, asleep: Bool)

/// What a PD operator step asks of the store that leads the region.
public enum PDStepAction: Sendable, Equatable {
    /// A task for the store loop; `resolveStores` must be reachable first (a new learner's).
    case task(StoreTask, resolveStores: [UInt64])
    /// A split at these keys: ask PD for ids, then propose it (once per epoch version).
    case split(keys: [Data])
}

/// The decisions of a store's PD agent, without I/O: which regions' heartbeats are due, what
/// an operator step in a heartbeat's answer asks, when a split may be proposed again, which
/// silent replicas to check with PD. The production agent (`PDStoreAgent`) and the cluster
/// simulation both run it; time is the caller's clock as a `Duration`.
///
/// Guarantees: a region's heartbeat goes when its region or leader changed, when it has
/// pending or down peers or a joint configuration, when PD asked for it, and at least every
/// `regionHeartbeatInterval` (a sleeping region's: every `sleepingRegionHeartbeatInterval`,
/// so PD's load grows with the regions that do something); a split is proposed once per (region, epoch version) unless
/// `splitRetryInterval` passed (a proposal lost with a leader change); at most
/// `staleChecksPerRoundMax` silent replicas are checked per round, each at most once per
/// `staleCheckInterval`.
public struct PDReporting: Sendable {
    public struct Settings: Sendable {
        /// A region unchanged is heartbeat at least this often.
        public var regionHeartbeatInterval: Duration = .seconds(10)
        /// A sleeping region unchanged is heartbeat at least this often. PD hands out
        /// operator steps only in its answers to region heartbeats, so it asks for the regions
        /// it has steps for in its answer to the store heartbeat (`asked` below); without that,
        /// a 60 s period kept a new cluster's first region at one voter for over 60 s in the
        /// process nemesis.
        public var sleepingRegionHeartbeatInterval: Duration = .seconds(60)
        /// A split proposed for a region and epoch is proposed again after this (the first
        /// was lost, e.g. with a leader change).
        public var splitRetryInterval: Duration = .seconds(10)
        /// Replicas checked with PD in one round, at most (a partition may silence thousands).
        public var staleChecksPerRoundMax = 16
        public init() {}

        /// A silent replica is checked again at most this often.
        public var staleCheckInterval: Duration { regionHeartbeatInterval * 6 }
    }

    public let settings: Settings
    private var lastSent: [UInt64: (region: Flotilla_V1_Region, leader: Flotilla_V1_Peer, at: Duration)] = [:]
    private var splitsProposed: [UInt64: (version: UInt64, at: Duration)] = [:]
    private var staleChecked: [UInt64: Duration] = [:]

    public init(settings: Settings = Settings()) {
        precondition(settings.regionHeartbeatInterval > .zero && settings.splitRetryInterval > .zero, "intervals are positive")
        precondition(settings.staleChecksPerRoundMax >= 1, "a round may check a replica")
        self.settings = settings
    }

    /// The regions among `reports` (every region led here) whose heartbeat is due at `now`,
    /// as PD's `RegionInfo` (the caller adds the region's statistics): those PD `asked` for in
    /// its answer to the store heartbeat (every one when `askedAll`), and those changed or
    /// unreported for their interval. Forgets regions no longer led here.
    public mutating func heartbeatsDue(_ reports: [LeaderReport], now: Duration,
                                       asked: Set<UInt64> = [], askedAll: Bool = false) -> [Flotilla_V1_RegionInfo] {
        var due: [Flotilla_V1_RegionInfo] = []
        for report in reports {
            let previous = lastSent[report.region.id]
            let interval = report.asleep ? max(settings.sleepingRegionHeartbeatInterval, settings.regionHeartbeatInterval) : settings.regionHeartbeatInterval
            let changed = previous.map { $0.region != report.region || $0.leader != report.leader
                || now - $0.at >= interval } ?? true
            let wanted = askedAll || asked.contains(report.region.id)
            guard changed || wanted || !report.pending.isEmpty || !report.down.isEmpty || report.joint else { continue }
            lastSent[report.region.id] = (report.region, report.leader, now)
            var info = Flotilla_V1_RegionInfo()
            info.region = report.region
            info.leader = report.leader
            info.pendingPeers = report.pending
            info.downPeers = report.down
            info.joint = report.joint
            due.append(info)
        }
        let leading = Set(reports.map(\.region.id))
        lastSent = lastSent.filter { leading.contains($0.key) }
        precondition(lastSent.count <= reports.count, "heartbeat memory of regions not led here")
        return due
    }

    /// What the step in PD's answer to the heartbeat of `region` asks; nil when the answer is
    /// for another epoch (the region changed since: PD asks again) or carries no step.
    public static func action(for answer: Flotilla_V1_RegionHeartbeatResponse, region: Flotilla_V1_Region) -> PDStepAction? {
        guard answer.regionID == region.id, answer.epoch == region.epoch, let step = answer.step else { return nil }
        let changes: [Flotilla_V1_ChangePeer]
        switch step {
        case .changePeer(let change): changes = [change]
        case .changePeers(let joint): changes = joint.changes
        case .transferLeader(let transfer):
            return .task(.transferLeader(regionID: region.id, toPeerID: transfer.peer.id), resolveStores: [])
        case .splitRegion(let split):
            return split.splitKeys.isEmpty ? nil : .split(keys: split.splitKeys)
        }
        guard StoreCore.membershipChanges(for: changes) != nil else { return nil }
        let learners = changes.filter { $0.kind == .addLearner }.map(\.peer.storeID)
        return .task(.changePeers(regionID: region.id, changes: changes), resolveStores: learners)
    }

    /// Whether a split of `region` may be proposed now (and records it): once per epoch
    /// version, again only after `splitRetryInterval`.
    public mutating func beginSplit(of region: Flotilla_V1_Region, now: Duration) -> Bool {
        if let last = splitsProposed[region.id], last.version == region.epoch.version,
           now - last.at < settings.splitRetryInterval { return false }
        splitsProposed[region.id] = (region.epoch.version, now)
        return true
    }

    /// The split of `regionID` was not proposed after all (PD gave no ids): it may be tried at once.
    public mutating func splitAbandoned(regionID: UInt64) {
        splitsProposed[regionID] = nil
    }

    /// The silent replicas to check with PD this round, from `silent` (replicas that heard
    /// from no leader for long): each at most once per `staleCheckInterval`, at most
    /// `staleChecksPerRoundMax` of them.
    public mutating func staleChecksDue(_ silent: [(regionID: UInt64, peerID: UInt64, confVer: UInt64)],
                                        now: Duration) -> [(regionID: UInt64, peerID: UInt64, confVer: UInt64)] {
        let interval = settings.staleCheckInterval
        staleChecked = staleChecked.filter { now - $0.value < interval }
        let due = Array(silent.filter { staleChecked[$0.regionID] == nil }.prefix(settings.staleChecksPerRoundMax))
        for replica in due { staleChecked[replica.regionID] = now }
        precondition(due.count <= settings.staleChecksPerRoundMax, "stale checks over the round's bound")
        return due
    }
}

extension StoreTask: Equatable {
    public static func == (lhs: StoreTask, rhs: StoreTask) -> Bool {
        switch (lhs, rhs) {
        case (.changePeers(let a, let x), .changePeers(let b, let y)): a == b && x == y
        case (.transferLeader(let a, let x), .transferLeader(let b, let y)): a == b && x == y
        case (.destroyIfRemoved(let a, let x, let r), .destroyIfRemoved(let b, let y, let s)): a == b && x == y && r == s
        case (.recordDigest(let a), .recordDigest(let b)): a == b
        default: false
        }
    }
}
