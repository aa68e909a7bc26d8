import FlotillaProto
import Foundation
import Raft

/// What the store loop asks of the process around it: sockets, the sender of snapshots, the
/// callers waiting for answers, the PD agent and the log. The production driver
/// (`StoreDriver`) and the cluster simulation each implement it; every decision about order
/// stays in `StoreLoop`, so the simulation runs the same loop production does.
public protocol StoreLoopEdge: AnyObject {
    /// Who waits for a request's answer: a continuation in production, a simulated client.
    associatedtype Waiter

    /// Sends Raft messages grouped by destination store. Called before the turn's log sync
    /// with the leaders' appends and heartbeats, after it with everything else.
    func send(_ messagesByStore: [UInt64: [Flotilla_V1_RaftMessage]])
    /// Streams a snapshot to its store (returns at once).
    func sendSnapshot(_ snapshot: OutgoingSnapshot)
    /// Answers a write, a split or an administrative proposal. Called once per waiter.
    func complete(_ waiter: Waiter, with result: Result<Flotilla_V1_WriteResult, StoreRequestError>)
    /// A read may be served from `core` now, on the loop's thread (or it failed). Called once per waiter.
    func serveRead(_ waiter: Waiter, from core: Result<StoreCore, StoreRequestError>)
    /// A received snapshot the store did not take: its staged files go.
    func discard(_ snapshot: ReceivedSnapshot)
    /// Something the loop tells the process around it (the PD agent, the log).
    func notice(_ notice: StoreLoopNotice)
}

/// A split to propose: the region, the epoch it was planned at, the keys and PD's new ids.
/// There is one way to propose a split: `StoreLoop.Request.split`.
public struct SplitProposal: Sendable {
    public let regionID: UInt64
    public let epoch: Flotilla_V1_RegionEpoch
    public let keys: [Data]
    public let newRegions: [Flotilla_V1_SplitRegionIDs]

    public init(regionID: UInt64, epoch: Flotilla_V1_RegionEpoch, keys: [Data], newRegions: [Flotilla_V1_SplitRegionIDs]) {
        self.regionID = regionID
        self.epoch = epoch
        self.keys = keys
        self.newRegions = newRegions
    }
}

/// Work for the store that PD's agent hands the loop: an operator step, a stale replica's
/// removal, a consistency digest. Typed, so every way into the core is named here.
public enum StoreTask: Sendable {
    /// An operator step PD asked of a region led here, carried out through its log.
    case changePeers(regionID: UInt64, changes: [Flotilla_V1_ChangePeer])
    case transferLeader(regionID: UInt64, toPeerID: UInt64)
    /// Destroys the replica when PD's `region` shows it removed (TiKV's stale peer check).
    case destroyIfRemoved(regionID: UInt64, peerID: UInt64, region: Flotilla_V1_Region)
    /// A consistency check's digest, computed off the loop: recorded, and a leader proposes it.
    case recordDigest(RegionDigest)
}

/// What the loop tells the process around it, as it happens (pushed, never polled).
public enum StoreLoopNotice {
    /// The turn applied splits here: the PD agent reports the new regions at once. `campaigning`
    /// names the new regions whose replicas here campaign at once (the agent waits a moment
    /// for them to lead, so PD learns the new routes with the parent's shrunk one).
    case splitsApplied([AppliedSplit], campaigning: [UInt64])
    /// A consistency check applied: digest it off the loop, then hand back `StoreTask.recordDigest`.
    case consistencyCheck(ConsistencyCheckTask)
    /// A PD task the core refused (the reason, for the log).
    case taskRefused(StoreTask, StoreRequestError)
    /// A PD task carried out (for the log).
    case taskDone(StoreTask)
    /// Replicas disagree: the check's alarm text.
    case consistencyAlarm(String)
    /// A Raft message or snapshot the core refused, and why; how many it refused so far.
    case refusal(String, refusedTotal: UInt64)
    /// A received snapshot the store did not take.
    case snapshotNotTaken(regionID: UInt64)
    /// The loop fell behind real time by `ticks` (about an election timeout or more).
    case stalled(ticks: Int, ticksDropped: UInt64)
    /// Stores not heard from for `storeDeadAfterTicks`: the sleeping regions with a replica
    /// there woke (`regionsWoken`).
    case storesPresumedDead([UInt64], regionsWoken: Int)
}

/// Counters of a store loop since it started.
public struct StoreLoopCounters: Sendable {
    public var turns: UInt64 = 0
    public var logSyncs: UInt64 = 0
    public var regionsInLogBatches: UInt64 = 0
    public var entriesApplied: UInt64 = 0
    public var snapshotsReceived: UInt64 = 0
    public var snapshotsInstalled: UInt64 = 0
    public var logsTruncated: UInt64 = 0

    public init() {}
}

/// The store loop's decisions, without I/O: what time owes (ticks first, so no lease
/// outlives its real length), the order arrivals are taken in, the turn, which effects
/// happen before the turn's log sync (leaders' appends go out, applied writes are answered)
/// and which after (votes, append responses, snapshots, reads), and the deadlines of the
/// requests waiting. Time is the loop's own: a `Duration` since it started, from a real
/// clock in production and a simulated one in the cluster simulation.
///
/// Guarantees: every request taken is answered exactly once (by the turn, its deadline, or
/// `stop`); a write is answered only after its entry applied here (so after a quorum
/// persisted it); no message that must wait for the disk leaves before the turn's sync.
public final class StoreLoop<Edge: StoreLoopEdge> {
    public typealias Waiter = Edge.Waiter

    /// An arrival for the loop, taken in the order given.
    public enum Request {
        case write(Flotilla_V1_WriteCommand, Flotilla_V1_RequestContext, deadline: Duration, Waiter)
        case read(Flotilla_V1_RequestContext, deadline: Duration, Waiter)
        /// A split through the region's log; `waiter` is answered once it applied here.
        case split(SplitProposal, deadline: Duration, Waiter)
        /// A consistency check of a region led here, answered like a write once applied here.
        case consistencyCheck(Flotilla_V1_RequestContext, deadline: Duration, Waiter)
        case raft(Flotilla_V1_RaftMessage)
        case snapshot(ReceivedSnapshot)
        case task(StoreTask)
    }

    public let core: StoreCore
    public private(set) var counters = StoreLoopCounters()
    private var schedule: TickSchedule
    private var pendingWrites: [ProposalID: (deadline: Duration, waiter: Waiter)] = [:]
    private var pendingReads: [ProposalID: (deadline: Duration, waiter: Waiter)] = [:]

    /// `tickCatchUpMax`: ticks run at once after the loop fell behind (see `TickSchedule`);
    /// at least an election timeout.
    public init(core: StoreCore, tickInterval: Duration, tickCatchUpMax: Int, startingAt start: Duration = .zero) {
        precondition(tickCatchUpMax >= 1, "a loop runs at least the tick that is due")
        self.core = core
        schedule = TickSchedule(interval: tickInterval, catchUpTicksMax: tickCatchUpMax, startingAt: start)
    }

    /// When the next tick is due, in loop time: the longest the loop may sleep.
    public var nextTickAt: Duration { schedule.nextTickAt }
    public var ticksDropped: UInt64 { schedule.ticksDropped }
    /// Requests taken and not yet answered.
    public var waitingCount: Int { pendingWrites.count + pendingReads.count }
    /// The turn left work that is ready now (a leader commits once its own write is done).
    public var hasReadyWork: Bool { core.hasPendingWork }

    // MARK: Time

    /// Runs every tick that time owes at `now` (also those missed while the process was
    /// stopped or a turn stalled), before any message or request is taken. Returns how many.
    @discardableResult
    public func runTicks(now: Duration, edge: Edge) -> Int {
        let due = schedule.ticksDue(at: now)
        precondition(due >= 0 && due <= schedule.catchUpTicksMax, "at most the catch-up ticks run at once")
        if due > schedule.catchUpTicksMax / 2 {
            // Stalled for about an election timeout or more: leases and leadership lapse.
            edge.notice(.stalled(ticks: due, ticksDropped: schedule.ticksDropped))
        }
        // Owed ticks move every clock by all of them but cost one tick of work (bounded work,
        // not just a bounded count): a late loop's followers do not campaign for its lateness.
        if due > 0 { core.tick(passing: due) }
        return due
    }

    // MARK: Arrivals

    /// Takes one arrival. A request past its deadline is answered Timeout without being proposed.
    public func take(_ request: Request, now: Duration, edge: Edge) {
        switch request {
        case .write(let command, let context, let deadline, let waiter):
            guard now < deadline else {
                return edge.complete(waiter, with: .failure(.timeout(reason: "the write reached its deadline before it was proposed (not applied)")))
            }
            propose(deadline: deadline, waiter: waiter, edge: edge) { core throws(StoreRequestError) in try core.proposeWrite(command, context: context) }
        case .split(let proposal, let deadline, let waiter):
            propose(deadline: deadline, waiter: waiter, edge: edge) { core throws(StoreRequestError) in
                try core.proposeSplit(regionID: proposal.regionID, epoch: proposal.epoch, splitKeys: proposal.keys, newRegions: proposal.newRegions)
            }
        case .consistencyCheck(let context, let deadline, let waiter):
            propose(deadline: deadline, waiter: waiter, edge: edge) { core throws(StoreRequestError) in try core.proposeConsistencyCheck(context: context) }
        case .read(let context, let deadline, let waiter):
            guard now < deadline else {
                return edge.serveRead(waiter, from: .failure(.timeout(reason: "the read reached its deadline before it started")))
            }
            do {
                let id = try core.proposeRead(context: context)
                precondition(pendingReads[id] == nil, "a proposal id was handed out twice")
                pendingReads[id] = (deadline, waiter)
            } catch {
                edge.serveRead(waiter, from: .failure(error))
            }
        case .raft(let message):
            _ = core.step(message)
        case .snapshot(let received):
            counters.snapshotsReceived += 1
            if !core.stepSnapshot(received) {
                edge.notice(.snapshotNotTaken(regionID: received.header.regionID))
                edge.discard(received)
            }
        case .task(let task):
            carryOut(task, edge: edge)
        }
    }

    private func propose(deadline: Duration, waiter: Waiter, edge: Edge,
                         _ body: (StoreCore) throws(StoreRequestError) -> ProposalID) {
        do {
            let id = try body(core)
            precondition(pendingWrites[id] == nil, "a proposal id was handed out twice")
            pendingWrites[id] = (deadline, waiter)
        } catch {
            edge.complete(waiter, with: .failure(error))
        }
    }

    private func carryOut(_ task: StoreTask, edge: Edge) {
        do throws(StoreRequestError) {
            switch task {
            case .changePeers(let regionID, let changes):
                guard let proposed = StoreCore.membershipChanges(for: changes) else {
                    throw .invalidArgument(field: "changes", reason: "not a membership change the store makes")
                }
                _ = try core.proposeMembershipChange(regionID: regionID, changes: proposed)
            case .transferLeader(let regionID, let peerID):
                try core.transferLeader(regionID: regionID, to: peerID)
            case .destroyIfRemoved(let regionID, let peerID, let region):
                guard core.destroyIfRemoved(regionID: regionID, peerID: peerID, region: region) else { return }
            case .recordDigest(let digest):
                guard let verify = core.recordConsistencyDigest(digest) else { return }
                try core.proposeConsistencyVerification(verify, regionID: digest.regionID)
            }
            edge.notice(.taskDone(task))
        } catch {
            edge.notice(.taskRefused(task, error))
        }
    }

    // MARK: The turn

    /// One turn of the core, with production's ordering: leaders' appends go out before the
    /// log sync, writes the apply answered are completed before it, the rest after. Then
    /// requests past their deadline are answered. Returns whether more work is ready now
    /// (run another turn before sleeping). A thrown error is the store's own disk failing:
    /// nothing acknowledged after it could be trusted, so the caller stops the store.
    public func turn(now: Duration, edge: Edge) throws -> Bool {
        for alarm in core.takeConsistencyAlarms() { edge.notice(.consistencyAlarm(alarm)) }
        for report in core.takeRefusalReports() { edge.notice(.refusal(report, refusedTotal: core.raftMessagesRefused)) }
        let output = try core.runTurn(sendBeforeSync: { edge.send($0) }, completeBeforeSync: { completed in
            for (id, result) in completed { self.finishWrite(id, result, edge: edge) }
        })
        counters.turns += 1
        counters.logSyncs += UInt64(output.logSyncs)
        counters.regionsInLogBatches += UInt64(output.regionsInLogBatch)
        counters.entriesApplied += UInt64(output.entriesApplied)
        counters.snapshotsInstalled += UInt64(output.snapshotsInstalled)
        counters.logsTruncated += UInt64(output.logsTruncated)
        // After the sync: what had to wait for the disk.
        if !output.messagesByStore.isEmpty { edge.send(output.messagesByStore) }
        for snapshot in output.snapshotsToSend { edge.sendSnapshot(snapshot) }
        for check in output.consistencyChecks { edge.notice(.consistencyCheck(check)) }
        for (id, result) in output.completedWrites { finishWrite(id, result, edge: edge) }
        for read in output.readyReads {
            if let pending = pendingReads.removeValue(forKey: read.id) { edge.serveRead(pending.waiter, from: .success(core)) }
        }
        for read in output.failedReads {
            if let pending = pendingReads.removeValue(forKey: read.id) { edge.serveRead(pending.waiter, from: .failure(read.error)) }
        }
        if !output.storesPresumedDead.isEmpty {
            edge.notice(.storesPresumedDead(output.storesPresumedDead, regionsWoken: output.regionsWokenByStoreDeath))
        }
        if !output.splits.isEmpty {
            let campaigning = output.splits.filter(\.ledByThisStore).flatMap { $0.children.map(\.id) }
            edge.notice(.splitsApplied(output.splits, campaigning: campaigning))
        }
        if core.hasPendingWork { return true }
        expire(now: now, edge: edge)
        return false
    }

    private func finishWrite(_ id: ProposalID, _ result: Result<Flotilla_V1_WriteResult, StoreRequestError>, edge: Edge) {
        guard let pending = pendingWrites.removeValue(forKey: id) else { return }
        edge.complete(pending.waiter, with: result)
    }

    /// Answers Timeout to every request past its deadline (a write's outcome is then unknown).
    public func expire(now: Duration, edge: Edge) {
        for (id, pending) in pendingWrites.sorted(by: { $0.key < $1.key }) where pending.deadline <= now {
            pendingWrites[id] = nil
            edge.complete(pending.waiter, with: .failure(.timeout(reason: "the write did not commit before its deadline (its outcome is unknown)")))
        }
        for (id, pending) in pendingReads.sorted(by: { $0.key < $1.key }) where pending.deadline <= now {
            pendingReads[id] = nil
            edge.serveRead(pending.waiter, from: .failure(.timeout(reason: "the read was not confirmed before its deadline")))
        }
        assert(!pendingWrites.values.contains { $0.deadline <= now } && !pendingReads.values.contains { $0.deadline <= now },
               "a request past its deadline is answered")
    }

    // MARK: Stop

    /// Answers an arrival that will not be taken (the store stops): nothing is left waiting.
    public func refuse(_ request: Request, edge: Edge) {
        let stopping = StoreRequestError.serverIsBusy(reason: "store stopping")
        switch request {
        case .write(_, _, _, let waiter), .split(_, _, let waiter), .consistencyCheck(_, _, let waiter):
            edge.complete(waiter, with: .failure(stopping))
        case .read(_, _, let waiter): edge.serveRead(waiter, from: .failure(stopping))
        case .snapshot(let received): edge.discard(received)
        case .raft, .task: break
        }
    }

    /// Answers every request still waiting: the store stops.
    public func stop(edge: Edge) {
        let stopping = StoreRequestError.serverIsBusy(reason: "store stopping")
        for (_, pending) in pendingWrites.sorted(by: { $0.key < $1.key }) { edge.complete(pending.waiter, with: .failure(stopping)) }
        for (_, pending) in pendingReads.sorted(by: { $0.key < $1.key }) { edge.serveRead(pending.waiter, from: .failure(stopping)) }
        pendingWrites = [:]
        pendingReads = [:]
        precondition(waitingCount == 0, "a stopped loop leaves nothing waiting")
    }
}
