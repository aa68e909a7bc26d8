import Foundation
import FlotillaProto

/// One step of an operator: a change PD asks a region's leader to make, finished when a
/// region heartbeat shows it.
public enum OperatorStep: Equatable, Sendable, CustomStringConvertible {
    /// Add `peer` as a learner; finished once it exists and has caught up (not pending).
    case addLearner(Flotilla_V1_Peer)
    /// Make the learner `peer` a voter; finished once it is one.
    case promoteLearner(Flotilla_V1_Peer)
    /// Remove the region's peer on `peer.storeID`; finished once no peer is there.
    case removePeer(Flotilla_V1_Peer)
    /// Make `peer` the leader; finished once the leader is on its store.
    case transferLeader(Flotilla_V1_Peer)
    /// Split the region at these keys; finished once the region's epoch version grew (the
    /// leader reports the region and the new ones right after applying it).
    case splitRegion(keys: [Data])
    /// One joint-consensus change: the learner `promote` becomes a voter and the voter
    /// `demote` a learner at once (the region's leader leaves the joint configuration by
    /// itself); finished once both roles show and the region is out of the joint
    /// configuration.
    case promoteAndDemote(promote: Flotilla_V1_Peer, demote: Flotilla_V1_Peer)

    /// The change has been made (it may still be catching up).
    public func isApplied(to info: Flotilla_V1_RegionInfo) -> Bool {
        switch self {
        case .addLearner(let peer): info.region.peers.contains { $0.id == peer.id }
        case .promoteAndDemote(let promote, _):
            info.joint || info.region.peers.contains { $0.id == promote.id && $0.role == .voter }
        default: isFinished(on: info)
        }
    }

    public func isFinished(on info: Flotilla_V1_RegionInfo) -> Bool {
        switch self {
        case .addLearner(let peer):
            info.region.peers.contains { $0.id == peer.id } && !info.pendingPeers.contains { $0.id == peer.id }
        case .promoteLearner(let peer):
            info.region.peers.contains { $0.id == peer.id && $0.role == .voter }
        case .removePeer(let peer):
            !info.region.peers.contains { $0.storeID == peer.storeID }
        case .transferLeader(let peer):
            info.hasLeader && info.leader.storeID == peer.storeID
        case .splitRegion:
            false  // the version check of `OperatorController.heartbeat` sees it done
        case .promoteAndDemote(let promote, let demote):
            !info.joint && info.region.peers.contains { $0.id == promote.id && $0.role == .voter }
                && !info.region.peers.contains { $0.id == demote.id && $0.role == .voter }
        }
    }

    /// The stores this step adds a replica to or takes one from (for store limits).
    public var storesTouched: [UInt64] {
        switch self {
        case .addLearner(let peer), .removePeer(let peer): [peer.storeID]
        case .promoteAndDemote(let promote, let demote): [promote.storeID, demote.storeID]
        case .promoteLearner, .transferLeader, .splitRegion: []
        }
    }

    /// The stores that must be alive for this step to finish (a learner's, the new leader's);
    /// removing a replica needs nothing of its store.
    public var storesNeeded: [UInt64] {
        switch self {
        case .addLearner(let peer), .promoteLearner(let peer), .transferLeader(let peer): [peer.storeID]
        case .promoteAndDemote(let promote, _): [promote.storeID]
        case .removePeer, .splitRegion: []
        }
    }

    /// The peer this step would demote or remove, which must not be the leader then.
    var peerLeaving: Flotilla_V1_Peer? {
        switch self {
        case .removePeer(let peer): peer
        case .promoteAndDemote(_, let demote): demote
        default: nil
        }
    }

    /// The step as PD's API and a heartbeat answer carry it.
    public var proto: Flotilla_V1_OperatorStep {
        var step = Flotilla_V1_OperatorStep()
        switch self {
        case .addLearner(let peer): step.changePeer = Self.change(.addLearner, peer)
        case .promoteLearner(let peer): step.changePeer = Self.change(.promoteLearner, peer)
        case .removePeer(let peer): step.changePeer = Self.change(.removePeer, peer)
        case .transferLeader(let peer):
            var transfer = Flotilla_V1_TransferLeader()
            transfer.peer = peer
            step.transferLeader = transfer
        case .splitRegion(let keys):
            var split = Flotilla_V1_SplitRegion()
            split.splitKeys = keys
            step.splitRegion = split
        case .promoteAndDemote(let promote, let demote):
            var joint = Flotilla_V1_ChangePeers()
            joint.changes = [Self.change(.promoteLearner, promote), Self.change(.demoteVoter, demote)]
            step.changePeers = joint
        }
        return step
    }

    private static func change(_ kind: Flotilla_V1_ChangePeer.Kind, _ peer: Flotilla_V1_Peer) -> Flotilla_V1_ChangePeer {
        var change = Flotilla_V1_ChangePeer()
        change.kind = kind
        change.peer = peer
        return change
    }

    public var description: String {
        switch self {
        case .addLearner(let peer): "add learner \(peer.id) on store \(peer.storeID)"
        case .promoteLearner(let peer): "promote learner \(peer.id) on store \(peer.storeID)"
        case .removePeer(let peer): "remove peer on store \(peer.storeID)"
        case .transferLeader(let peer): "transfer leader to store \(peer.storeID)"
        case .splitRegion(let keys): "split at \(keys.count) key\(keys.count == 1 ? "" : "s")"
        case .promoteAndDemote(let promote, let demote):
            "promote \(promote.id) on store \(promote.storeID) and demote \(demote.id) on store \(demote.storeID) (joint)"
        }
    }
}

/// A sequence of steps for one region, with where it stands and how it ended.
public struct Operator: Equatable, Sendable {
    public enum Status: Equatable, Sendable {
        case running
        case succeeded
        case timedOut
        case cancelled
        case failed
    }

    public let id: UInt64
    public let regionID: UInt64
    /// What made it: "replica-checker", "admin", ...
    public let origin: String
    public let steps: [OperatorStep]
    /// The region's epoch version when the operator was made: a split or merge ends it.
    public let regionVersion: UInt64
    public let createdMs: UInt64
    public internal(set) var currentStep = 0
    public internal(set) var stepStartedMs: UInt64
    public internal(set) var status = Status.running
    public internal(set) var reason = ""
    public internal(set) var endedMs: UInt64 = 0

    public init(id: UInt64, regionID: UInt64, origin: String, steps: [OperatorStep], regionVersion: UInt64, nowMs: UInt64) {
        precondition(!steps.isEmpty, "an operator has at least one step")
        self.id = id
        self.regionID = regionID
        self.origin = origin
        self.steps = steps
        self.regionVersion = regionVersion
        self.createdMs = nowMs
        self.stepStartedMs = nowMs
    }

    public var description: String { steps.map(\.description).joined(separator: ", then ") }

    /// The operator as PD's API shows it at `nowMs`.
    public func info(nowMs: UInt64) -> Flotilla_V1_OperatorInfo {
        var info = Flotilla_V1_OperatorInfo()
        info.id = id
        info.regionID = regionID
        info.origin = origin
        info.description_p = description
        info.steps = steps.map(\.proto)
        info.currentStep = UInt32(currentStep)
        info.status = switch status {
        case .running: .running
        case .succeeded: .succeeded
        case .timedOut: .timedOut
        case .cancelled: .cancelled
        case .failed: .failed
        }
        info.reason = reason
        let end = status == .running ? nowMs : endedMs
        info.ageMs = end >= createdMs ? end - createdMs : 0
        return info
    }
}

/// The operators PD runs: at most one per region, each step bounded by a timeout, ended ones
/// kept in a bounded history with their outcome.
public struct OperatorController: Sendable {
    public private(set) var running: [UInt64: Operator] = [:]
    /// Ended operators, oldest first, at most `historyMax`.
    public private(set) var history: [Operator] = []
    public let stepTimeoutMs: UInt64
    public let historyMax: Int
    private var nextID: UInt64 = 1

    /// `history` carries ended operators over from an earlier leadership of this member;
    /// new operator ids continue after them (ids are unique within one member's memory).
    public init(stepTimeoutMs: UInt64, historyMax: Int = PDLimits.operatorHistoryMax, history: [Operator] = [], firstID: UInt64 = 1) {
        self.stepTimeoutMs = stepTimeoutMs
        self.historyMax = historyMax
        self.history = Array(history.suffix(historyMax))
        self.nextID = max(firstID, (history.map(\.id).max() ?? 0) + 1)
    }

    /// Starts an operator for `regionID`; refused when one is running for it.
    public mutating func add(regionID: UInt64, origin: String, steps: [OperatorStep], regionVersion: UInt64,
                             nowMs: UInt64) throws(PDFailure) -> Operator {
        if let held = running[regionID] { throw .operatorRunning(regionID: regionID, operatorID: held.id) }
        guard !steps.isEmpty else { throw .invalidArgument("an operator needs at least one step") }
        let op = Operator(id: nextID, regionID: regionID, origin: origin, steps: steps, regionVersion: regionVersion, nowMs: nowMs)
        precondition(!history.contains { $0.id == op.id }, "operator id \(op.id) reused")
        nextID += 1
        running[regionID] = op
        precondition(op.currentStep == 0 && op.status == .running, "a new operator starts at its first step, running")
        return op
    }

    /// Ends the region's running operator as cancelled; false when none runs.
    @discardableResult
    public mutating func cancel(regionID: UInt64, reason: String, nowMs: UInt64) -> Bool {
        guard running[regionID] != nil else { return false }
        end(regionID: regionID, status: .cancelled, reason: reason, nowMs: nowMs)
        return true
    }

    /// Advances the region's operator by what its heartbeat shows and returns the step the
    /// leader should make now, if any (nothing while a made change catches up).
    public mutating func heartbeat(_ info: Flotilla_V1_RegionInfo, nowMs: UInt64) -> OperatorStep? {
        let regionID = info.region.id
        guard var op = running[regionID] else { return nil }
        precondition(op.currentStep < op.steps.count && op.status == .running,
                     "running operator \(op.id) at step \(op.currentStep) of \(op.steps.count), \(op.status)")
        if info.region.epoch.version != op.regionVersion {
            // A split step is done when the version grew; any other step fails with it.
            if case .splitRegion = op.steps[op.currentStep], op.currentStep == op.steps.count - 1,
               info.region.epoch.version > op.regionVersion {
                end(regionID: regionID, status: .succeeded, reason: "", nowMs: nowMs)
                return nil
            }
            end(regionID: regionID, status: .failed,
                reason: "the region split or merged (version \(op.regionVersion) → \(info.region.epoch.version))", nowMs: nowMs)
            return nil
        }
        let stepBefore = op.currentStep
        while op.currentStep < op.steps.count, op.steps[op.currentStep].isFinished(on: info) {
            op.currentStep += 1
            op.stepStartedMs = nowMs
        }
        precondition(op.currentStep >= stepBefore && op.currentStep <= op.steps.count, "operator \(op.id) step out of bounds")
        running[regionID] = op
        if op.currentStep == op.steps.count {
            end(regionID: regionID, status: .succeeded, reason: "", nowMs: nowMs)
            return nil
        }
        if timedOut(op, nowMs: nowMs) { return nil }
        let step = op.steps[op.currentStep]
        if step.isApplied(to: info) { return nil }
        // A leader is never demoted or removed: when the step would, the leadership moves to
        // another healthy voter first (the leader may have moved there since the operator began).
        if let leaving = step.peerLeaving, info.hasLeader, info.leader.id == leaving.id {
            let down = Set(info.downPeers.map(\.id))
            guard let heir = info.region.peers.first(where: { $0.role == .voter && $0.id != leaving.id && !down.contains($0.id) }) else {
                end(regionID: regionID, status: .failed, reason: "no other voter can lead region \(regionID) before \(step)", nowMs: nowMs)
                return nil
            }
            return .transferLeader(heir)
        }
        return step
    }

    /// Running operators' current steps per store they add a replica to or take one from.
    public func storeLoad() -> [UInt64: Int] {
        var load: [UInt64: Int] = [:]
        for op in running.values {
            precondition(op.currentStep < op.steps.count, "running operator \(op.id) past its last step")
            for storeID in Set(op.steps[op.currentStep...].flatMap(\.storesTouched)) { load[storeID, default: 0] += 1 }
        }
        return load
    }

    /// Ends as failed the operators whose current step needs a store that is not live (down,
    /// disconnected, draining or gone): such a step cannot finish, and the region is left to
    /// the replica checker at once instead of after the step timeout.
    /// A leader transfer also fails when its target is merely silent (`isHeardLately` false): a
    /// transfer is quick or lost, and waiting holds the region's writes; a learner catching up
    /// on a store paused a few seconds may still finish, so other steps wait for `isLive`.
    public mutating func failSteps(needing isLive: (UInt64) -> Bool, heardLately isHeardLately: (UInt64) -> Bool = { _ in true }, nowMs: UInt64) {
        for op in running.values.sorted(by: { $0.id < $1.id }) {
            precondition(op.currentStep < op.steps.count, "running operator \(op.id) past its last step")
            let step = op.steps[op.currentStep]
            let transfer: Bool = if case .transferLeader = step { true } else { false }
            guard let store = step.storesNeeded.first(where: { !isLive($0) || (transfer && !isHeardLately($0)) }) else { continue }
            end(regionID: op.regionID, status: .failed,
                reason: "step \(op.currentStep + 1) of \(op.steps.count) (\(op.steps[op.currentStep])) needs store \(store), which is not up", nowMs: nowMs)
        }
    }

    /// Ends operators whose current step ran past its timeout (also for regions that stopped
    /// reporting). Returns the ones it ended.
    @discardableResult
    public mutating func tick(nowMs: UInt64) -> [Operator] {
        var ended: [Operator] = []
        for op in running.values.sorted(by: { $0.id < $1.id }) where timedOut(op, nowMs: nowMs) {
            if let last = history.last, last.id == op.id { ended.append(last) }
        }
        return ended
    }

    /// Ends `op` as timed out when its step is past the timeout.
    private mutating func timedOut(_ op: Operator, nowMs: UInt64) -> Bool {
        precondition(op.currentStep < op.steps.count, "running operator \(op.id) past its last step")
        guard nowMs >= op.stepStartedMs, nowMs - op.stepStartedMs > stepTimeoutMs else { return false }
        end(regionID: op.regionID, status: .timedOut,
            reason: "step \(op.currentStep + 1) of \(op.steps.count) (\(op.steps[op.currentStep])) did not finish in \(stepTimeoutMs) ms",
            nowMs: nowMs)
        return true
    }

    private mutating func end(regionID: UInt64, status: Operator.Status, reason: String, nowMs: UInt64) {
        guard var op = running.removeValue(forKey: regionID) else { return }
        precondition(op.status == .running && status != .running, "operator \(op.id) ended twice, or as running")
        precondition(status != .succeeded || op.currentStep == op.steps.count || op.currentStep == op.steps.count - 1,
                     "operator \(op.id) succeeded at step \(op.currentStep) of \(op.steps.count)")
        op.status = status
        op.reason = reason
        op.endedMs = nowMs
        history.append(op)
        if history.count > historyMax { history.removeFirst(history.count - historyMax) }
        precondition(running[regionID] == nil && history.count <= historyMax, "an ended operator still runs, or history is over its bound")
    }
}
