import FlotillaProto
import Foundation
import Logging
import Raft
import RaftStore
import Synchronization

/// Where a store loop's snapshots go: a sender that streams them. Must return at once (it
/// queues). Raft messages go through the store thread's own `RaftSocketTransport`.
package protocol SnapshotOutbound: Sendable {
    func sendSnapshot(_ snapshot: OutgoingSnapshot)
}

/// Runs a `StoreCore` on its own thread: the store loop. Requests arrive from any thread
/// through a bounded inbox, Raft messages from the store thread's own sockets; each loop turn
/// takes both, ticks on schedule, runs the core's turn (one synced log batch for every ready
/// region), writes messages to the sockets and completes requests. Nothing here blocks an
/// event loop: callers await.
public final class StoreDriver: Sendable {
    /// Who waits for an answer from the loop.
    package enum Waiter: Sendable {
        case write(@Sendable (Result<Flotilla_V1_WriteResult, StoreRequestError>) -> Void)
        case read(ReadAction)
    }

    /// An arrival waiting in the inbox: a request for the loop (its deadline as an instant,
    /// turned into loop time when taken), or the server edge's own business.
    package enum Event: Sendable {
        case write(Flotilla_V1_WriteCommand, Flotilla_V1_RequestContext, deadline: ContinuousClock.Instant, Waiter)
        case read(Flotilla_V1_RequestContext, deadline: ContinuousClock.Instant, Waiter)
        case split(SplitProposal, deadline: ContinuousClock.Instant, Waiter)
        case consistencyCheck(Flotilla_V1_RequestContext, deadline: ContinuousClock.Instant, Waiter)
        case snapshot(ReceivedSnapshot)
        case task(StoreTask)
        case status(includeRegions: Bool, @Sendable (Flotilla_V1_StoreStatus) -> Void)
        /// A question of the server's edge answered on the store thread (PD reports, addresses
        /// of stores learnt from PD). Changes to the core go as typed `task`s.
        case perform(@Sendable (StoreCore, RaftSocketTransport) -> Void)
    }

    /// Runs on the store thread once a read may be served (or fails with the reason).
    package struct ReadAction: Sendable {
        let run: @Sendable (Result<StoreCore, StoreRequestError>) -> Void
    }

    struct Inbox {
        var events: [Event] = []
        var stopping = false
        /// The store thread found the inbox empty and waits (or is about to): the next event
        /// wakes it. Events arriving while it works are picked up by its next turn unsignalled,
        /// so a burst of requests costs one wake-up, not one per request.
        var storeThreadWaiting = false
    }

    /// Raised by the store thread when a turn applied splits: the PD agent reports the regions
    /// at once (pushed at apply, not polled).
    package let splitsApplied = StoreSignal()
    /// Regions made by splits here whose replica here campaigned at once: the PD agent waits a
    /// moment for them to lead, so PD learns the new routes in the same round as the shrunk one.
    package let splitRegionsCampaigning = Mutex<Set<UInt64>>([])
    /// Loop time is the time since this instant.
    private let startedAt = ContinuousClock.now
    private let inbox = Mutex(Inbox())
    private let wakeup: StoreThreadWakeup
    private let stopped = DispatchSemaphore(value: 0)
    private let inboxEventsMax: Int
    private let tickInterval: Duration
    private let tickCatchUpMax: Int
    private let requestTimeout: Duration
    private let snapshots: any SnapshotOutbound
    private let logger: Logger
    /// Client writes held for a consistent backup (checked before a write enters the inbox).
    public let writeFence = WriteFence()
    /// Client writes refused while the data filesystem is below its reserve (nil: no guard).
    public let diskGuard: DiskSpaceGuard?
    private let onFailure: @Sendable (Error) -> Void
    /// The core is touched only by the store thread, which also releases it (closing RocksDB)
    /// before `stop()` returns: closing during process exit races RocksDB's static teardown.
    private nonisolated(unsafe) var core: StoreCore?
    /// The Raft sockets, likewise used only by the store thread, which closes them at the end.
    private nonisolated(unsafe) var network: RaftSocketTransport?

    /// `tickCatchUpMax`: ticks run at once after the loop fell behind (see `TickSchedule`);
    /// at least an election timeout.
    package init(core: StoreCore, network: RaftSocketTransport, tickInterval: Duration, tickCatchUpMax: Int, requestTimeout: Duration = .seconds(5), inboxEventsMax: Int = 100_000,
         logger: Logger, onFailure: @escaping @Sendable (Error) -> Void, snapshots: any SnapshotOutbound, diskGuard: DiskSpaceGuard? = nil) {
        self.tickCatchUpMax = tickCatchUpMax
        self.diskGuard = diskGuard
        self.onFailure = onFailure
        self.core = core
        self.network = network
        self.wakeup = network.wakeup
        self.tickInterval = tickInterval
        self.requestTimeout = requestTimeout
        self.inboxEventsMax = inboxEventsMax
        self.logger = logger
        self.snapshots = snapshots
    }

    /// Starts the store thread.
    public func start() {
        let thread = Thread { [self] in
            if let core = self.core, let network = self.network { self.loop(core, network: network) }
            self.network?.closeAll()
            self.network = nil
            self.core = nil
            self.stopped.signal()
        }
        thread.name = "flotilla-store"
        thread.start()
    }

    /// Stops the loop after the current turn and waits for it (on a thread of its own, so
    /// no event loop blocks while the last turn finishes).
    public func stop() async {
        inbox.withLock { $0.stopping = true; $0.storeThreadWaiting = false }
        wakeup.wake()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread { [stopped] in
                stopped.wait()
                continuation.resume()
            }
        }
    }

    /// Queues an event; false when the inbox is full (the caller answers ServerIsBusy).
    func enqueue(_ event: Event) -> Bool {
        let (accepted, wake) = inbox.withLock { inbox -> (Bool, Bool) in
            guard inbox.events.count < inboxEventsMax, !inbox.stopping else { return (false, false) }
            inbox.events.append(event)
            defer { inbox.storeThreadWaiting = false }
            return (true, inbox.storeThreadWaiting)
        }
        if wake { wakeup.wake() }
        return accepted
    }

    /// Runs `body` on the store thread between turns and returns what it returned; nil when
    /// the store is stopping or its inbox is full.
    package func perform<T: Sendable>(_ body: @escaping @Sendable (StoreCore, RaftSocketTransport) -> T) async -> T? {
        await withCheckedContinuation { continuation in
            let once = Once<T?>(continuation)
            if !enqueue(.perform({ core, network in once.resume(body(core, network)) })) { once.resume(nil) }
        }
    }

    /// Hands a fully received snapshot to the store; its files are removed when the store
    /// does not take it.
    public func deliverSnapshot(_ snapshot: ReceivedSnapshot) {
        if !enqueue(.snapshot(snapshot)) {
            logger.warning("inbox full: dropped a snapshot", metadata: ["region_id": "\(snapshot.header.regionID)"])
            try? FileManager.default.removeItem(atPath: snapshot.directory)
        }
    }

    /// The store's counters and, with `includeRegions`, every region's Raft state.
    public func status(includeRegions: Bool) async -> Result<Flotilla_V1_StoreStatus, StoreRequestError> {
        await withCheckedContinuation { continuation in
            let once = Once(continuation)
            if !enqueue(.status(includeRegions: includeRegions, { once.resume(.success($0)) })) {
                once.resume(.failure(.serverIsBusy(reason: "store inbox full")))
            }
        }
    }

    /// Proposes a consistency check of a region led here; answers the check entry's index once
    /// it is applied here.
    package func checkRegion(context: Flotilla_V1_RequestContext) async -> Result<UInt64, StoreRequestError> {
        let deadline: ContinuousClock.Instant
        do { deadline = try self.deadline(of: context) } catch { return .failure(error) }
        let regionID = context.regionID
        let proposed: Result<Flotilla_V1_WriteResult, StoreRequestError> = await withCheckedContinuation { continuation in
            let event = Event.consistencyCheck(context, deadline: deadline, .write({ continuation.resume(returning: $0) }))
            if !enqueue(event) { continuation.resume(returning: .failure(.serverIsBusy(reason: "store inbox full"))) }
        }
        switch proposed {
        case .failure(let error): return .failure(error)
        case .success:
            guard let index = await perform({ core, _ in core.consistencyCheckIndex(of: regionID) }), index != 0 else {
                return .failure(.serverIsBusy(reason: "store stopping"))
            }
            return .success(index)
        }
    }

    /// Digests a check's snapshot on a background thread, then records it on the store
    /// thread (a leader then proposes its digest for every replica to compare).
    private func digestOffLoop(_ check: ConsistencyCheckTask) {
        DispatchQueue.global(qos: .utility).async { [self] in
            let digest: RegionDigest
            do { digest = try check.digest() } catch {
                logger.error("consistency check digest failed", metadata: ["region_id": "\(check.regionID)", "error": "\(error)"])
                return
            }
            _ = enqueue(.task(.recordDigest(digest)))
        }
    }

    /// Proposes a split; `complete` runs once it is applied here (or refused, or at the deadline).
    package func proposeSplit(_ proposal: SplitProposal, timeout: Duration,
                      complete: @escaping @Sendable (Result<Flotilla_V1_WriteResult, StoreRequestError>) -> Void) {
        if !enqueue(.split(proposal, deadline: ContinuousClock.now + timeout, .write(complete))) {
            complete(.failure(.serverIsBusy(reason: "store inbox full")))
        }
    }

    /// Proposes a split and waits until it is applied here (or refused, or the deadline).
    package func split(_ proposal: SplitProposal, timeout: Duration) async -> Result<Flotilla_V1_WriteResult, StoreRequestError> {
        await withCheckedContinuation { continuation in
            if !enqueue(.split(proposal, deadline: ContinuousClock.now + timeout, .write({ continuation.resume(returning: $0) }))) {
                continuation.resume(returning: .failure(.serverIsBusy(reason: "store inbox full")))
            }
        }
    }

    public func write(_ command: Flotilla_V1_WriteCommand, context: Flotilla_V1_RequestContext) async -> Result<Flotilla_V1_WriteResult, StoreRequestError> {
        await withCheckedContinuation { continuation in
            submitWrite(command, context: context) { continuation.resume(returning: $0) }
        }
    }

    /// The request's deadline: `timeout_ms` from now when set, else the server's default.
    package func deadline(of context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> ContinuousClock.Instant {
        guard context.timeoutMs <= KVLimits.requestTimeoutMillisecondsMax else {
            throw .invalidArgument(field: "context.timeout_ms", reason: "\(context.timeoutMs) is more than \(KVLimits.requestTimeoutMillisecondsMax)")
        }
        return ContinuousClock.now + (context.timeoutMs > 0 ? .milliseconds(Int(context.timeoutMs)) : requestTimeout)
    }

    /// Submits a write; `complete` runs once (on the store thread, or at once when refused).
    /// A write still in the inbox at its deadline is not proposed.
    public func submitWrite(_ command: Flotilla_V1_WriteCommand, context: Flotilla_V1_RequestContext,
                            complete: @escaping @Sendable (Result<Flotilla_V1_WriteResult, StoreRequestError>) -> Void) {
        let deadline: ContinuousClock.Instant
        do { deadline = try self.deadline(of: context) } catch { return complete(.failure(error)) }
        if let fenced = writeFence.refusal() { return complete(.failure(.serverIsBusy(reason: fenced))) }
        if let full = diskGuard?.refusal() { return complete(.failure(.serverIsBusy(reason: full))) }
        if !enqueue(.write(command, context, deadline: deadline, .write(complete))) {
            complete(.failure(.serverIsBusy(reason: "store inbox full")))
        }
    }

    /// Confirms a read of the region (as its consistency asks), then runs `body` on the store thread.
    public func read<Response: Sendable>(context: Flotilla_V1_RequestContext,
                                         _ body: @escaping @Sendable (StoreCore) throws -> Response) async -> Result<Response, Error> {
        await withCheckedContinuation { continuation in
            submitRead(context: context, body) { continuation.resume(returning: $0) }
        }
    }

    /// Submits a read; `complete` runs once with what `body` returned or the reason it could not run.
    public func submitRead<Response: Sendable>(context: Flotilla_V1_RequestContext,
                                               _ body: @escaping @Sendable (StoreCore) throws -> Response,
                                               complete: @escaping @Sendable (Result<Response, Error>) -> Void) {
        let action = ReadAction { outcome in
            switch outcome {
            case .success(let core): complete(Result { try body(core) })
            case .failure(let error): complete(.failure(error))
            }
        }
        let deadline: ContinuousClock.Instant
        do { deadline = try self.deadline(of: context) } catch { return complete(.failure(error)) }
        if !enqueue(.read(context, deadline: deadline, .read(action))) { complete(.failure(StoreRequestError.serverIsBusy(reason: "store inbox full"))) }
    }

    /// Hands a typed task to the store loop (PD's operator steps, stale replica checks);
    /// false when the inbox is full or the store stops.
    package func submit(_ task: StoreTask) -> Bool { enqueue(.task(task)) }

    // MARK: The loop

    /// The loop's time: since the driver was made.
    private func loopTime(_ instant: ContinuousClock.Instant) -> Duration { instant - startedAt }

    /// The store thread: the I/O around `StoreLoop`, which makes every decision of order.
    private func loop(_ core: StoreCore, network: RaftSocketTransport) {
        let clock = ContinuousClock()
        let loop = StoreLoop<DriverEdge>(core: core, tickInterval: tickInterval, tickCatchUpMax: tickCatchUpMax,
                                         startingAt: loopTime(clock.now))
        let edge = DriverEdge(network: network, snapshots: snapshots, logger: logger, driver: self)
        var tickCount = 0
        let deliver = { (batch: Flotilla_V1_RaftMessageBatch) in
            let now = self.loopTime(clock.now)
            // The frame's sender is authenticated: a message naming another store as its
            // sender (whose liveness it would vouch for) is not taken.
            for message in batch.messages where message.fromPeer.storeID == batch.fromStoreID {
                loop.take(.raft(message), now: now, edge: edge)
            }
        }
        while true {
            // Time first: every tick owed runs before any message or request is taken.
            let ticks = loop.runTicks(now: loopTime(clock.now), edge: edge)
            if ticks > 0 && logger.logLevel <= .debug {
                tickCount += ticks
                if tickCount >= 50 { tickCount = 0; logRegionStatus(core) }
            }
            // Frames that arrived while the last turn ran (no waiting).
            network.wait(timeoutMilliseconds: 0, deliver: deliver)
            let (events, stopping) = inbox.withLock { inbox in
                defer { inbox.events.removeAll(keepingCapacity: true) }
                return (inbox.events, inbox.stopping)
            }
            if stopping {
                // Nothing taken is left unanswered: a caller awaiting it would wait forever.
                for event in events { take(event, loop: loop, edge: edge, network: network, stopping: true) }
                break
            }
            for event in events { take(event, loop: loop, edge: edge, network: network, stopping: false) }
            do {
                // More work may be ready right away (e.g. commits after this turn's sync).
                if try loop.turn(now: loopTime(clock.now), edge: edge) { continue }
            } catch {
                // A failed write to the store's own disk: nothing acknowledged can be trusted
                // to be durable from here, so stop rather than limp on (as TiKV does).
                logger.critical("store loop failed: \(error)")
                onFailure(error)
                break
            }
            let idle = inbox.withLock { inbox -> Bool in
                inbox.storeThreadWaiting = inbox.events.isEmpty && !inbox.stopping
                return inbox.storeThreadWaiting
            }
            guard idle else { continue }
            let untilTick = loop.nextTickAt - loopTime(clock.now)
            let waitMilliseconds = max(0, untilTick.components.seconds * 1_000 + (untilTick.components.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
            network.wait(timeoutMilliseconds: Int32(min(waitMilliseconds, 60_000)), deliver: deliver)
            inbox.withLock { $0.storeThreadWaiting = false }
        }
        loop.stop(edge: edge)
    }

    /// One inbox event on the store thread: a request for the loop, or the edge's own.
    private func take(_ event: Event, loop: StoreLoop<DriverEdge>, edge: DriverEdge, network: RaftSocketTransport, stopping: Bool) {
        let request: StoreLoop<DriverEdge>.Request
        switch event {
        case .write(let command, let context, let deadline, let waiter):
            request = .write(command, context, deadline: loopTime(deadline), waiter)
        case .read(let context, let deadline, let waiter):
            request = .read(context, deadline: loopTime(deadline), waiter)
        case .split(let proposal, let deadline, let waiter):
            request = .split(proposal, deadline: loopTime(deadline), waiter)
        case .consistencyCheck(let context, let deadline, let waiter):
            request = .consistencyCheck(context, deadline: loopTime(deadline), waiter)
        case .snapshot(let received):
            request = .snapshot(received)
        case .task(let task):
            request = .task(task)
        case .perform(let body):
            return body(loop.core, network)
        case .status(let includeRegions, let reply):
            var status = Self.status(of: loop.core, counters: loop.counters, includeRegions: includeRegions)
            status.ticksDropped = loop.ticksDropped
            status.raftFramesSent = UInt64(network.framesSent)
            status.raftFramesReceived = UInt64(network.framesReceived)
            status.raftMessagesDropped = UInt64(network.droppedMessages)
            return reply(status)
        }
        if stopping { loop.refuse(request, edge: edge) } else { loop.take(request, now: loopTime(ContinuousClock.now), edge: edge) }
    }

    private func logRegionStatus(_ core: StoreCore) {
        for regionID in core.regionIDs {
            if let status = core.raftStatus(regionID) {
                logger.debug("region status", metadata: ["region_id": "\(regionID)", "role": "\(status.role)", "leader": "\(status.leader)", "term": "\(status.term)", "applied": "\(status.applied)"])
            }
        }
    }

    /// What a consistency check's digest needs, on a background thread (called by the edge).
    fileprivate func digestInBackground(_ check: ConsistencyCheckTask) { digestOffLoop(check) }
}

/// The production edge of the store loop: the store thread's Raft sockets, the snapshot
/// sender, the continuations of callers, and the PD agent's signals. Used only on the store
/// thread.
final class DriverEdge: StoreLoopEdge {
    package typealias Waiter = StoreDriver.Waiter
    private let network: RaftSocketTransport
    private let snapshots: any SnapshotOutbound
    private let logger: Logger
    private unowned let driver: StoreDriver

    package init(network: RaftSocketTransport, snapshots: any SnapshotOutbound, logger: Logger, driver: StoreDriver) {
        self.network = network
        self.snapshots = snapshots
        self.logger = logger
        self.driver = driver
    }

    package func send(_ messagesByStore: [UInt64: [Flotilla_V1_RaftMessage]]) { network.send(messagesByStore) }

    package func sendSnapshot(_ snapshot: OutgoingSnapshot) { snapshots.sendSnapshot(snapshot) }

    package func complete(_ waiter: Waiter, with result: Result<Flotilla_V1_WriteResult, StoreRequestError>) {
        switch waiter {
        case .write(let complete): complete(result)
        case .read(let action):
            assertionFailure("a read was answered as a write")
            action.run(.failure(.proposalDropped))
        }
    }

    package func serveRead(_ waiter: Waiter, from core: Result<StoreCore, StoreRequestError>) {
        switch waiter {
        case .read(let action): action.run(core)
        case .write(let complete):
            assertionFailure("a write was answered as a read")
            complete(.failure(.proposalDropped))
        }
    }

    package func discard(_ snapshot: ReceivedSnapshot) { try? FileManager.default.removeItem(atPath: snapshot.directory) }

    package func notice(_ notice: StoreLoopNotice) {
        switch notice {
        case .splitsApplied(let splits, let campaigning):
            for split in splits {
                logger.info("region split", metadata: ["region_id": "\(split.parent.id)",
                                                       "new_regions": "\(split.children.map(\.id))",
                                                       "version": "\(split.parent.epoch.version)"])
            }
            if !campaigning.isEmpty { driver.splitRegionsCampaigning.withLock { $0.formUnion(campaigning) } }
            driver.splitsApplied.raise()
        case .consistencyCheck(let check):
            driver.digestInBackground(check)
        case .taskDone(let task):
            logger.info("PD task carried out", metadata: ["task": "\(task.summary)"])
        case .taskRefused(let task, let error):
            logger.warning("PD task refused", metadata: ["task": "\(task.summary)", "error": "\(error)"])
        case .consistencyAlarm(let alarm):
            logger.critical("CONSISTENCY CHECK FAILED: \(alarm)")
        case .refusal(let report, let refusedTotal):
            logger.warning("refused a Raft message", metadata: ["reason": "\(report)", "refused_total": "\(refusedTotal)"])
        case .snapshotNotTaken(let regionID):
            logger.info("snapshot not taken", metadata: ["region_id": "\(regionID)"])
        case .storesPresumedDead(let stores, let woken):
            logger.warning("stores presumed dead: not heard from", metadata: ["stores": "\(stores)", "sleeping_regions_woken": "\(woken)"])
        case .stalled(let ticks, let dropped):
            logger.warning("store loop stalled: catching up ticks", metadata: ["ticks": "\(ticks)", "ticks_dropped_total": "\(dropped)"])
        }
    }
}

/// A signal the store thread raises and an async task awaits with a timeout: raising it
/// while nobody waits is remembered until the next wait.
package final class StoreSignal: Sendable {
    private struct State {
        var raised = false
        var waiter: CheckedContinuation<Void, Never>?
    }
    private let state = Mutex(State())

    package init() {}

    /// Raises the signal (from any thread).
    package func raise() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.raised = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Returns whether it was raised (clearing it), waiting up to `timeout` for that. One
    /// waiter at a time.
    package func wait(upTo timeout: Duration) async -> Bool {
        if state.withLock({ state in defer { state.raised = false }; return state.raised }) { return true }
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.awaitRaise() }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            _ = await group.next()
            return first
        }
    }

    /// Waits until raised (true) or cancelled (false).
    private func awaitRaise() async -> Bool {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.raised || Task.isCancelled { return true }
                    precondition(state.waiter == nil, "a StoreSignal has one waiter at a time")
                    state.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
            return state.withLock { state in defer { state.raised = false }; return state.raised }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }
}

extension StoreTask {
    /// One line for the log.
    package var summary: String {
        switch self {
        case .changePeers(let regionID, let changes):
            "region \(regionID): " + changes.map { "\($0.kind) \($0.peer.id) on store \($0.peer.storeID)" }.joined(separator: ", ")
        case .transferLeader(let regionID, let peerID): "region \(regionID): transfer leader to peer \(peerID)"
        case .destroyIfRemoved(let regionID, let peerID, let region):
            "region \(regionID): destroy replica \(peerID) (PD lists conf_ver \(region.epoch.confVer) without it)"
        case .recordDigest(let digest): "region \(digest.regionID): consistency digest at \(digest.appliedIndex)"
        }
    }
}

extension StoreDriver {
    package static func status(of core: StoreCore, counters: StoreLoopCounters, includeRegions: Bool) -> Flotilla_V1_StoreStatus {
        var status = Flotilla_V1_StoreStatus()
        status.storeID = core.storeID
        status.turns = counters.turns
        status.logSyncs = counters.logSyncs
        status.regionsInLogBatches = counters.regionsInLogBatches
        status.entriesApplied = counters.entriesApplied
        status.snapshotsReceived = counters.snapshotsReceived
        status.snapshotsInstalled = counters.snapshotsInstalled
        status.logsTruncated = counters.logsTruncated
        status.pendingRequests = UInt64(core.pendingRequestCount)
        status.consistencyMismatches = core.consistencyMismatches
        status.regionsAsleep = UInt64(core.sleepingRegionCount)
        status.regionSleeps = core.regionSleepsTotal
        status.regionWakes = core.regionWakesTotal
        status.storesPresumedDead = core.storesPresumedDead.sorted()
        status.ticks = core.storeTick
        let regionIDs = core.regionIDs
        status.regions = UInt64(regionIDs.count)
        for regionID in regionIDs {
            guard let raft = core.raftStatus(regionID) else { continue }
            if raft.role == .leader { status.leaders += 1 }
            guard includeRegions else { continue }
            var region = Flotilla_V1_RegionStatus()
            region.regionID = regionID
            region.role = "\(raft.role)"
            region.leaderPeerID = raft.leader
            region.term = raft.term
            region.appliedIndex = raft.applied
            region.asleep = core.isAsleep(regionID)
            if !region.asleep, let blocker = core.sleepBlocker(regionID) { region.awakeBecause = blocker }
            if let bounds = core.logBounds(regionID) {
                region.firstLogIndex = bounds.first
                region.lastLogIndex = bounds.last
            }
            if let membership = core.membership(of: regionID) {
                region.region = membership.region
                region.joint = membership.joint
                region.confChanges = membership.confChanges
            }
            if let check = core.consistencyCheckResult(of: regionID) { region.lastCheck = check }
            status.regionStatus.append(region)
        }
        return status
    }
}

/// Resumes a continuation exactly once, whoever gets there first.
package final class Once<Value: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<Value, Never>?>

    package init(_ continuation: CheckedContinuation<Value, Never>) { self.continuation = Mutex(continuation) }

    package func resume(_ value: Value) {
        continuation.withLock { stored in
            stored?.resume(returning: value)
            stored = nil
        }
    }
}
