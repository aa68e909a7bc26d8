/// One member of a Raft group as a pure, deterministic state machine: no I/O, no threads, no
/// clock and no unseeded randomness. Feed it `tick()`, `step(_:)` and requests; take a
/// `Ready`, persist and send what it says, then `advance(_:)`.
///
/// Guarantees (checked by the simulator): at most one leader per term, log matching, leader
/// completeness, and every node applies a prefix of one sequence of committed entries.
public struct RaftNode {
    public let config: RaftConfig
    public var id: NodeID { config.id }

    public internal(set) var term: UInt64 = 0
    public internal(set) var vote: NodeID = noNode
    public internal(set) var role = Role.follower
    /// The leader this node follows (itself when leading), or `noNode`.
    public internal(set) var leader: NodeID = noNode
    /// The configuration applied so far.
    public internal(set) var confState: ConfState

    var log: RaftLog
    var progress: [NodeID: Progress] = [:]
    /// The peers in `progress` other than this node, sorted: messages go out in a fixed
    /// order (dictionary order varies between processes, and the simulator must replay).
    var followerIDs: [NodeID] = []
    var votes: [NodeID: Bool] = [:]
    var electionElapsed = 0
    var heartbeatElapsed = 0
    var randomizedElectionTimeout = 0
    var random: SplitMix64
    /// Local tick count since this node started; the clock of leases.
    var tickCount: UInt64 = 0
    /// Tick at which a current leader was last heard from (or the start: a fresh node waits an
    /// election timeout before granting votes, so a restart cannot break a lease).
    var leaderContactTick: UInt64 = 0
    /// The start-up wait is waived (`waiveStartupLease`) until a leader is heard from.
    var startupLeaseWaived = false
    /// Node this leader is handing leadership to, and when the handover started.
    public internal(set) var leadTransferee: NodeID = noNode
    var transferStartedTick: UInt64 = 0
    /// Once a TimeoutNow was sent in this term, lease reads are unsafe for the rest of it.
    var transferAttemptedInTerm = false
    /// Index of the last conf change proposed; another waits until it is applied.
    var pendingConfIndex: UInt64 = 0
    /// Proposals appended by this leader and not yet committed: (index, bytes).
    var uncommittedProposals: [(index: UInt64, bytes: Int)] = []
    var uncommittedBytes = 0
    var reads = ReadIndexQueue()
    /// Messages `step` refused as impossible (see `RaftLimits`), since this node started.
    public internal(set) var refusedMessages: UInt64 = 0
    /// Reads this node confirmed from its lease (no heartbeat round), since it started.
    public internal(set) var leaseReadsServed: UInt64 = 0
    /// Campaigns (pre-votes and elections, transfers included) this node started since it started.
    public internal(set) var campaignsStarted: UInt64 = 0
    /// The group sleeps (see `Sleep.swift`): no ticks, no heartbeats, no elections until woken.
    public internal(set) var isAsleep = false
    /// This leader asked its followers to sleep and waits for all to answer that they do.
    public internal(set) var isFallingAsleep = false
    var followersAsleep: Set<NodeID> = []
    /// Followers this falling-asleep leader does not wait for (their host presumes them dead).
    var followersExcused: Set<NodeID> = []

    var messagesNow: [Message] = []
    var messagesAfterPersist: [Message] = []
    var readStates: [ReadState] = []
    var lastReadyHardState: HardState
    var lastReadySoftState: SoftState

    /// A node over `storage`, restarting from what it holds (an empty storage is a new node
    /// whose configuration is `storage.initialState().confState`).
    public init(config: RaftConfig, storage: any RaftLogStorage) {
        precondition(config.electionTimeoutTicks > config.heartbeatIntervalTicks,
                     "election timeout must exceed the heartbeat interval")
        precondition(config.leaseClockDriftTicks >= 0 && config.leaseClockDriftTicks < config.electionTimeoutTicks,
                     "lease drift must be below the election timeout")
        self.config = config
        log = RaftLog(storage: storage)
        let (hardState, confState) = storage.initialState()
        self.confState = confState
        random = SplitMix64(seed: config.randomSeed ^ (config.id &* 0x9E37_79B9_7F4A_7C15))
        term = hardState.term
        vote = hardState.vote
        if hardState.commit > 0 {
            precondition(hardState.commit <= log.lastIndex, "commit \(hardState.commit) beyond the persisted log \(log.lastIndex)")
            log.commit(to: hardState.commit)
        }
        if config.appliedIndex > log.applied {
            precondition(config.appliedIndex <= log.committed, "applied \(config.appliedIndex) beyond commit \(log.committed)")
            log.applied(to: config.appliedIndex)
        }
        lastReadyHardState = hardState
        lastReadySoftState = SoftState(leader: noNode, role: .follower)
        resetRandomizedElectionTimeout()
    }

    // MARK: Queries

    public var hardState: HardState { HardState(term: term, vote: vote, commit: log.committed) }
    public var softState: SoftState { SoftState(leader: leader, role: role) }
    public var committedIndex: UInt64 { log.committed }
    public var appliedIndex: UInt64 { log.applied }
    public var lastIndex: UInt64 { log.lastIndex }
    /// The first index still held as an entry (earlier ones are in a snapshot).
    public var firstIndex: UInt64 { log.firstIndex }
    /// The term is at `RaftLimits.termMax` (only a forged message, persisted before such messages
    /// were refused, can put it there): this node never campaigns again, as the next term would
    /// be beyond the bound. It still follows a leader of its term, and never traps.
    public var termExhausted: Bool { term >= RaftLimits.termMax }

    /// Whether this node may campaign: a voter with no snapshot waiting to be installed.
    var isPromotable: Bool {
        (confState.voters.contains(id) || confState.votersOutgoing.contains(id)) && log.unstableSnapshot == nil
    }

    /// On a leader: ticks since each other member was last heard from (counted from the start
    /// of this leadership for one never heard); empty on a follower.
    public var silentTicks: [NodeID: UInt64] {
        guard role == .leader else { return [:] }
        var result: [NodeID: UInt64] = [:]
        for (node, pr) in progress where node != id { result[node] = tickCount >= pr.lastHeardTick ? tickCount - pr.lastHeardTick : 0 }
        return result
    }

    /// Ticks since a leader was last heard from (0 on the leader itself; counted from the
    /// start for a node that never heard one).
    public var ticksSinceLeaderContact: UInt64 {
        role == .leader ? 0 : tickCount - min(tickCount, leaderContactTick)
    }

    /// The replication state of each follower, as the leader sees it (empty otherwise).
    public var replicationStates: [NodeID: (match: UInt64, state: ReplicationState)] {
        progress.mapValues { ($0.match, $0.state) }
    }

    /// Entries in `[low, lastIndex]` of this node's log (persisted and not), for inspection.
    public func entries(from low: UInt64, maxBytes: Int = .max) throws(RaftError) -> [Entry] {
        try log.entries(from: low, maxBytes: maxBytes)
    }

    public func term(at index: UInt64) throws(RaftError) -> UInt64 { try log.term(at: index) }

    // MARK: Time

    /// Advances the logical clock by one tick: elections on followers, heartbeats and
    /// check-quorum on leaders. The lease counts these ticks, so call it once for every tick
    /// interval that passed in real time — including intervals the process missed (paused,
    /// stalled on a slow disk) — before stepping messages or asking for reads: a node that
    /// resumes with its clock behind would serve reads from a lease that ran out.
    public mutating func tick() {
        precondition(!isAsleep, "a sleeping node passes time with passTicksAsleep, not tick")
        tickCount += 1
        if role == .leader { tickLeader() } else { tickElection() }
    }

    /// Runs `ticks` ticks' worth of time as one: the clock (and so every lease, vote refusal
    /// and transfer deadline) moves by all of them, while election and heartbeat timers move
    /// by one. For a loop that fell behind: its catching up costs one tick of work, and a
    /// follower never campaigns because its own loop was late (its leader's heartbeats are
    /// waiting in the socket), while no lease outlives real time.
    public mutating func tick(passing ticks: UInt64) {
        precondition(ticks >= 1, "at least the tick that is due")
        precondition(!isAsleep, "a sleeping node passes time with passTicksAsleep, not tick")
        tickCount += ticks - 1
        tick()
    }

    private mutating func tickElection() {
        electionElapsed += 1
        if isPromotable && electionElapsed >= randomizedElectionTimeout {
            electionElapsed = 0
            startCampaign(transfer: false)
        }
    }

    private mutating func tickLeader() {
        heartbeatElapsed += 1
        electionElapsed += 1
        if electionElapsed >= config.electionTimeoutTicks {
            electionElapsed = 0
            if config.checkQuorum {
                if !quorumRecentlyActive() {
                    becomeFollower(term: term, leader: noNode)
                    return
                }
                for nodeID in progress.keys where nodeID != id { progress[nodeID]?.recentActive = false }
            }
        }
        if leadTransferee != noNode && tickCount - transferStartedTick >= UInt64(config.electionTimeoutTicks) {
            leadTransferee = noNode  // the transfer timed out: keep leading
            if !isVoter { handOffLeadership() }  // a removed leader tries again
        }
        // A snapshot that got no answer for two election timeouts is presumed lost.
        for (nodeID, pr) in progress where pr.state == .snapshot
            && tickCount - pr.snapshotSentAtTick >= UInt64(2 * config.electionTimeoutTicks) {
            progress[nodeID]?.becomeProbe()
        }
        checkStillFallingAsleep()
        if heartbeatElapsed >= config.heartbeatIntervalTicks {
            heartbeatElapsed = 0
            broadcastHeartbeat(context: [], sleep: isFallingAsleep)
        }
    }

    private func quorumRecentlyActive() -> Bool {
        var active: [NodeID: Bool] = [:]
        for (nodeID, pr) in progress where !pr.isLearner { active[nodeID] = nodeID == id || pr.recentActive }
        return Quorum.voteResult(confState, votes: active) == .won
    }

    mutating func resetRandomizedElectionTimeout() {
        randomizedElectionTimeout = config.electionTimeoutTicks
            + Int.random(in: 0..<config.electionTimeoutTicks, using: &random)
    }

    // MARK: Roles

    mutating func becomeFollower(term newTerm: UInt64, leader newLeader: NodeID) {
        if newTerm != term {
            precondition(newTerm > term, "term goes backwards: \(term) → \(newTerm)")
            term = newTerm
            vote = noNode
            transferAttemptedInTerm = false
        }
        role = .follower
        leader = newLeader
        isAsleep = false
        resetVolatileState()
    }

    private mutating func resetVolatileState() {
        electionElapsed = 0
        heartbeatElapsed = 0
        resetRandomizedElectionTimeout()
        leadTransferee = noNode
        isFallingAsleep = false
        followersAsleep = []
        votes = [:]
        uncommittedProposals = []
        uncommittedBytes = 0
        reads = ReadIndexQueue()
        progress = [:]
        followerIDs = []
    }

    /// Starts an election: a pre-vote round first when configured, unless this is a leader
    /// transfer (which must not be held back by followers' leases).
    mutating func startCampaign(transfer: Bool) {
        guard isPromotable, !termExhausted else { return }
        campaignsStarted += 1
        if config.preVote && !transfer {
            role = .preCandidate
            leader = noNode
            votes = [id: true]
            requestVotes(kind: .requestPreVote, term: term + 1, transfer: false)
            tallyVotes()
        } else {
            campaignAsCandidate(transfer: transfer)
        }
    }

    private mutating func requestVotes(kind: MessageKind, term voteTerm: UInt64, transfer: Bool) {
        for voter in confState.voters.union(confState.votersOutgoing).sorted() where voter != id {
            var message = Message(kind: kind, from: id, to: voter)
            message.term = voteTerm
            message.index = log.lastIndex
            message.logTerm = log.lastTerm
            message.isLeaderTransfer = transfer
            send(message)
        }
    }

    /// Counts votes received; wins or loses the (pre-)election when the result is known.
    mutating func tallyVotes() {
        switch Quorum.voteResult(confState, votes: votes) {
        case .pending:
            return
        case .lost:
            becomeFollower(term: term, leader: noNode)
        case .won:
            if role == .preCandidate {
                campaignAsCandidate(transfer: false)
            } else if role == .candidate {
                becomeLeader()
            }
        }
    }

    private mutating func campaignAsCandidate(transfer: Bool) {
        becomeFollower(term: term + 1, leader: noNode)
        role = .candidate
        vote = id
        votes = [id: true]
        requestVotes(kind: .requestVote, term: term, transfer: transfer)
        tallyVotes()
    }

    mutating func becomeLeader() {
        precondition(role == .candidate, "only a candidate becomes leader")
        role = .leader
        leader = id
        let currentVote = vote
        resetVolatileState()
        vote = currentVote
        rebuildProgress()
        // Every entry up to here may hold an unapplied conf change: allow the next one only
        // after all of them are applied.
        pendingConfIndex = log.lastIndex
        // A no-op in the new term: entries of earlier terms commit only through it (§5.4.2).
        _ = appendAsLeader([Entry(term: term, index: 0)])
        broadcastAppend()
    }

    /// Progress for every node of the configuration, starting in probe after the last index.
    mutating func rebuildProgress() {
        var rebuilt: [NodeID: Progress] = [:]
        let allNodes = confState.allNodes
        for nodeID in allNodes {
            // A node in `learnersNext` is still a voter of the outgoing half until the joint
            // configuration is left (the simulator caught check-quorum ignoring its answers).
            let isLearner = !confState.voters.contains(nodeID) && !confState.votersOutgoing.contains(nodeID)
            if var existing = progress[nodeID] {
                existing.isLearner = isLearner
                rebuilt[nodeID] = existing
            } else {
                var fresh = Progress(next: log.lastIndex + 1, isLearner: isLearner,
                                     maxInflightMessages: config.maxInflightMessages,
                                     maxInflightBytes: config.maxInflightBytes)
                fresh.lastHeardTick = tickCount
                if nodeID == id {
                    fresh.match = log.stableLastIndex
                    fresh.becomeReplicate()
                    fresh.recentActive = true
                }
                rebuilt[nodeID] = fresh
            }
        }
        progress = rebuilt
        followerIDs = rebuilt.keys.filter { $0 != id }.sorted()
    }

    // MARK: Outbox

    /// Queues `message`, stamped with the current term unless it carries its own. Messages a
    /// leader sends about its log may leave before the leader persists (thesis §10.2.1); every
    /// other message waits for the persist of the Ready it is in.
    mutating func send(_ message: Message) {
        var message = message
        if message.term == 0 { message.term = term }
        switch (role, message.kind) {
        case (.leader, .appendEntries), (.leader, .heartbeat), (.leader, .installSnapshot),
             (.leader, .timeoutNow), (.leader, .readIndexResponse):
            messagesNow.append(message)
        default:
            messagesAfterPersist.append(message)
        }
    }
}
