import FlotillaProto
import Foundation
import Logging
import Raft
import RaftStore
import Synchronization

/// Where a store loop's snapshots go: a sender that streams them. Must return at once (it
/// queues). Raft messages go through the store thread's own `RaftSocketTransport`.
protocol SnapshotOutbound: Sendable {
    func sendSnapshot(_ snapshot: OutgoingSnapshot)
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
}

/// A split to propose: the region, the epoch it was planned at, the keys and PD's new ids.
struct SplitProposal: Sendable {
    let regionID: UInt64
    let epoch: Flotilla_V1_RegionEpoch
    let keys: [Data]
    let newRegions: [Flotilla_V1_SplitRegionIDs]
}

/// Runs a `StoreCore` on its own thread: the store loop. Requests arrive from any thread
/// through a bounded inbox, Raft messages from the store thread's own sockets; each loop turn
/// takes both, ticks on schedule, runs the core's turn (one synced log batch for every ready
/// region), writes messages to the sockets and completes requests. Nothing here blocks an
/// event loop: callers await.
public final class StoreDriver: Sendable {
    /// A request waiting in the inbox or in flight.
    enum Event: Sendable {
        case write(Flotilla_V1_WriteCommand, Flotilla_V1_RequestContext, deadline: ContinuousClock.Instant,
                   @Sendable (Result<Flotilla_V1_WriteResult, StoreRequestError>) -> Void)
        case read(Flotilla_V1_RequestContext, deadline: ContinuousClock.Instant, ReadAction)
        case split(SplitProposal, deadline: ContinuousClock.Instant, @Sendable (Result<Flotilla_V1_WriteResult, StoreRequestError>) -> Void)
        /// An administrative proposal (a consistency check), answered like a write once applied here.
        case propose(@Sendable (StoreCore) throws(StoreRequestError) -> ProposalID, deadline: ContinuousClock.Instant,
                     @Sendable (Result<Flotilla_V1_WriteResult, StoreRequestError>) -> Void)
        case snapshot(ReceivedSnapshot)
        case status(includeRegions: Bool, @Sendable (Flotilla_V1_StoreStatus) -> Void)
        /// Work of the server's edge on the store thread (PD heartbeats and their steps,
        /// addresses of stores learnt from PD).
        case perform(@Sendable (StoreCore, RaftSocketTransport) -> Void)
    }

    /// Runs on the store thread once a read may be served (or fails with the reason).
    struct ReadAction: Sendable {
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

    /// Splits applied on this store so far: the PD agent reports the regions at once when it grows.
    let splitsApplied = Atomic<UInt64>(0)
    /// Regions made by splits here whose replica here campaigned at once: the PD agent waits a
    /// moment for them to lead, so PD learns the new routes in the same round as the shrunk one.
    let splitRegionsCampaigning = Mutex<Set<UInt64>>([])
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
    init(core: StoreCore, network: RaftSocketTransport, tickInterval: Duration, tickCatchUpMax: Int, requestTimeout: Duration = .seconds(5), inboxEventsMax: Int = 100_000,
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
    func perform<T: Sendable>(_ body: @escaping @Sendable (StoreCore, RaftSocketTransport) -> T) async -> T? {
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
    func checkRegion(context: Flotilla_V1_RequestContext) async -> Result<UInt64, StoreRequestError> {
        let deadline: ContinuousClock.Instant
        do { deadline = try self.deadline(of: context) } catch { return .failure(error) }
        let regionID = context.regionID
        let proposed: Result<Flotilla_V1_WriteResult, StoreRequestError> = await withCheckedContinuation { continuation in
            let event = Event.propose({ core throws(StoreRequestError) in try core.proposeConsistencyCheck(context: context) },
                                      deadline: deadline, { continuation.resume(returning: $0) })
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
            _ = enqueue(.perform({ [logger] core, _ in
                guard let verify = core.recordConsistencyDigest(digest) else { return }
                do { try core.proposeConsistencyVerification(verify, regionID: digest.regionID) } catch {
                    logger.warning("consistency check verification not proposed", metadata: ["region_id": "\(digest.regionID)", "error": "\(error)"])
                }
            }))
        }
    }

    /// Proposes a split and waits until it is applied here (or refused, or the deadline).
    func split(_ proposal: SplitProposal, timeout: Duration) async -> Result<Flotilla_V1_WriteResult, StoreRequestError> {
        await withCheckedContinuation { continuation in
            if !enqueue(.split(proposal, deadline: ContinuousClock.now + timeout, { continuation.resume(returning: $0) })) {
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
    func deadline(of context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> ContinuousClock.Instant {
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
        if !enqueue(.write(command, context, deadline: deadline, complete)) {
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
        if !enqueue(.read(context, deadline: deadline, action)) { complete(.failure(StoreRequestError.serverIsBusy(reason: "store inbox full"))) }
    }

    // MARK: The loop

    private func loop(_ core: StoreCore, network: RaftSocketTransport) {
        var pendingWrites: [ProposalID: (deadline: ContinuousClock.Instant, complete: @Sendable (Result<Flotilla_V1_WriteResult, StoreRequestError>) -> Void)] = [:]
        var pendingReads: [ProposalID: (deadline: ContinuousClock.Instant, action: ReadAction)] = [:]
        let clock = ContinuousClock()
        var schedule = TickSchedule(interval: tickInterval, catchUpTicksMax: tickCatchUpMax, startingAt: clock.now)
        var tickCount = 0
        var counters = StoreLoopCounters()
        let deliver = { (batch: Flotilla_V1_RaftMessageBatch) in
            for message in batch.messages { core.step(message) }
        }
        while true {
            // Time first: every tick that real time owes (also those missed while the process
            // was stopped or a turn stalled) runs before any message or request is taken, so no
            // lease outlives its real length.
            let ticksDue = schedule.ticksDue(at: clock.now)
            if ticksDue > tickCatchUpMax / 2 {
                // Stalled for about an election timeout or more: leases and leadership lapse.
                logger.warning("store loop stalled: catching up ticks", metadata: ["ticks": "\(ticksDue)", "ticks_dropped_total": "\(schedule.ticksDropped)"])
            }
            for _ in 0..<ticksDue {
                core.tick()
                tickCount += 1
                if tickCount % 50 == 0 && logger.logLevel <= .debug {
                    for regionID in core.regionIDs {
                        if let status = core.raftStatus(regionID) {
                            logger.debug("region status", metadata: ["region_id": "\(regionID)", "role": "\(status.role)", "leader": "\(status.leader)", "term": "\(status.term)", "applied": "\(status.applied)"])
                        }
                    }
                }
            }
            // Frames that arrived while the last turn ran (no waiting).
            network.wait(timeoutMilliseconds: 0, deliver: deliver)
            let (events, stopping) = inbox.withLock { inbox in
                defer { inbox.events.removeAll(keepingCapacity: true) }
                return (inbox.events, inbox.stopping)
            }
            if stopping {
                // Nothing taken is left unanswered: a caller awaiting it would wait forever.
                for event in events {
                    switch event {
                    case .write(_, _, _, let complete), .split(_, _, let complete), .propose(_, _, let complete): complete(.failure(.serverIsBusy(reason: "store stopping")))
                    case .read(_, _, let action): action.run(.failure(.serverIsBusy(reason: "store stopping")))
                    case .snapshot(let received): try? FileManager.default.removeItem(atPath: received.directory)
                    case .status(let includeRegions, let reply): reply(Self.status(of: core, counters: counters, includeRegions: includeRegions))
                    case .perform(let body): body(core, network)
                    }
                }
                break
            }
            for event in events {
                switch event {
                case .write(let command, let context, let deadline, let complete):
                    guard clock.now < deadline else {
                        complete(.failure(.timeout(reason: "the write reached its deadline before it was proposed (not applied)")))
                        continue
                    }
                    do {
                        let id = try core.proposeWrite(command, context: context)
                        pendingWrites[id] = (deadline, complete)
                    } catch {
                        complete(.failure(error))
                    }
                case .split(let proposal, let deadline, let complete):
                    do {
                        let id = try core.proposeSplit(regionID: proposal.regionID, epoch: proposal.epoch, splitKeys: proposal.keys,
                                                       newRegions: proposal.newRegions)
                        pendingWrites[id] = (deadline, complete)
                    } catch {
                        complete(.failure(error))
                    }
                case .propose(let body, let deadline, let complete):
                    do {
                        let id = try body(core)
                        pendingWrites[id] = (deadline, complete)
                    } catch {
                        complete(.failure(error))
                    }
                case .read(let context, let deadline, let action):
                    guard clock.now < deadline else {
                        action.run(.failure(.timeout(reason: "the read reached its deadline before it started")))
                        continue
                    }
                    do {
                        let id = try core.proposeRead(context: context)
                        pendingReads[id] = (deadline, action)
                    } catch {
                        action.run(.failure(error))
                    }
                case .snapshot(let received):
                    counters.snapshotsReceived += 1
                    if !core.stepSnapshot(received) {
                        logger.info("snapshot not taken", metadata: ["region_id": "\(received.header.regionID)"])
                        try? FileManager.default.removeItem(atPath: received.directory)
                    }
                case .perform(let body):
                    body(core, network)
                case .status(let includeRegions, let reply):
                    var status = Self.status(of: core, counters: counters, includeRegions: includeRegions)
                    status.raftFramesSent = UInt64(network.framesSent)
                    status.raftFramesReceived = UInt64(network.framesReceived)
                    status.raftMessagesDropped = UInt64(network.droppedMessages)
                    reply(status)
                }
            }
            for alarm in core.takeConsistencyAlarms() {
                logger.critical("CONSISTENCY CHECK FAILED: \(alarm)")
            }
            for report in core.takeRefusalReports() {
                logger.warning("refused a Raft message", metadata: ["reason": "\(report)", "refused_total": "\(core.raftMessagesRefused)"])
            }
            do {
                let output = try core.runTurn(sendBeforeSync: { network.send($0) }, completeBeforeSync: { completed in
                    for (id, result) in completed { pendingWrites.removeValue(forKey: id)?.complete(result) }
                })
                counters.turns += 1
                counters.logSyncs += UInt64(output.logSyncs)
                counters.regionsInLogBatches += UInt64(output.regionsInLogBatch)
                counters.entriesApplied += UInt64(output.entriesApplied)
                counters.snapshotsInstalled += UInt64(output.snapshotsInstalled)
                counters.logsTruncated += UInt64(output.logsTruncated)
                if !output.messagesByStore.isEmpty { network.send(output.messagesByStore) }
                for snapshot in output.snapshotsToSend { snapshots.sendSnapshot(snapshot) }
                for check in output.consistencyChecks { digestOffLoop(check) }
                for (id, result) in output.completedWrites { pendingWrites.removeValue(forKey: id)?.complete(result) }
                for read in output.readyReads { pendingReads.removeValue(forKey: read.id)?.action.run(.success(core)) }
                for read in output.failedReads { pendingReads.removeValue(forKey: read.id)?.action.run(.failure(read.error)) }
                for split in output.splits {
                    logger.info("region split", metadata: ["region_id": "\(split.parent.id)",
                                                           "new_regions": "\(split.children.map(\.id))",
                                                           "version": "\(split.parent.epoch.version)"])
                }
                let campaigning = output.splits.filter(\.ledByThisStore).flatMap { $0.children.map(\.id) }
                if !campaigning.isEmpty { splitRegionsCampaigning.withLock { $0.formUnion(campaigning) } }
                if !output.splits.isEmpty { splitsApplied.add(UInt64(output.splits.count), ordering: .releasing) }
                // More work may be ready right away (e.g. commits after this turn's sync).
                if core.hasPendingWork { continue }
            } catch {
                // A failed write to the store's own disk: nothing acknowledged can be trusted
                // to be durable from here, so stop rather than limp on (as TiKV does).
                logger.critical("store loop failed: \(error)")
                onFailure(error)
                break
            }
            let now = clock.now
            for (id, pending) in pendingWrites where pending.deadline <= now {
                pendingWrites[id] = nil
                pending.complete(.failure(.timeout(reason: "the write did not commit before its deadline (its outcome is unknown)")))
            }
            for (id, pending) in pendingReads where pending.deadline <= now {
                pendingReads[id] = nil
                pending.action.run(.failure(StoreRequestError.timeout(reason: "the read was not confirmed before its deadline")))
            }
            let idle = inbox.withLock { inbox -> Bool in
                inbox.storeThreadWaiting = inbox.events.isEmpty && !inbox.stopping
                return inbox.storeThreadWaiting
            }
            guard idle else { continue }
            let untilTick = schedule.nextTickAt - clock.now
            let waitMilliseconds = max(0, untilTick.components.seconds * 1_000 + (untilTick.components.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
            network.wait(timeoutMilliseconds: Int32(min(waitMilliseconds, 60_000)), deliver: deliver)
            inbox.withLock { $0.storeThreadWaiting = false }
        }
        for pending in pendingWrites.values { pending.complete(.failure(.serverIsBusy(reason: "store stopping"))) }
        for pending in pendingReads.values { pending.action.run(.failure(.serverIsBusy(reason: "store stopping"))) }
    }
}

extension StoreDriver {
    static func status(of core: StoreCore, counters: StoreLoopCounters, includeRegions: Bool) -> Flotilla_V1_StoreStatus {
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
final class Once<Value: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<Value, Never>?>

    init(_ continuation: CheckedContinuation<Value, Never>) { self.continuation = Mutex(continuation) }

    func resume(_ value: Value) {
        continuation.withLock { stored in
            stored?.resume(returning: value)
            stored = nil
        }
    }
}
