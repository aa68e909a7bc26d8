/// Sleeping groups (TiKV's hibernation, CockroachDB's quiescence): a group with nothing to do
/// stops ticking, heartbeating and counting election time on every member, so an idle group
/// costs nothing per tick.
///
/// Rules (each has a test in `RaftSleepTests`):
/// - A leader may start falling asleep only when `canSleep`: every member has its whole log,
///   everything is committed and applied, nothing is proposed, read, transferred or changing
///   (`startSleeping()`). Falling asleep, it keeps ticking and sends heartbeats marked `sleep`
///   each heartbeat interval (so a lost one is sent again); it sleeps once every follower
///   answered that it sleeps, and gives up when the group has something to do again.
/// - A follower falls asleep on such a heartbeat from its leader only when its log ends at the
///   leader's commit index; its response says whether it sleeps (`sleep`), or that it was
///   asked and cannot (`reject`), which wakes the leader to bring it up to date.
/// - A follower woken while its host knows its leader's process alive (store liveness) counts
///   the leader as heard from at that moment: a message that woke it alone (a stale one, a
///   vote request) must not let it campaign against, or vote out, a sleeping leader.
/// - A sleeping node is woken (`wake(leaderAlive:)`) by anything but its group's own
///   sleep heartbeat and the answers to it: a proposal, a read, any other message, a membership
///   change or transfer (both proposals), or its host (the store) deciding the leader's
///   process is gone (store-level liveness, outside this type).
/// - Time still passes for a sleeping node: before it steps anything, its host hands it the
///   ticks that passed (`passTicksAsleep`), so its clock — the clock of leases and of vote
///   refusals — is the one it would have had awake. A sleeping leader's lease therefore ends
///   when it would have ended awake: the first read after a long sleep confirms leadership
///   with a heartbeat round (one round trip), and a follower woken after a long sleep grants
///   votes at once.
extension RaftNode {
    /// Whether this leader's group has nothing to do and may sleep.
    public var canSleep: Bool { sleepBlocker(excusing: []) == nil }

    /// Whether it may sleep without the followers in `excused` (its host presumes their
    /// processes dead): the others, with the leader, must be a quorum.
    public func canSleep(excusing excused: Set<NodeID>) -> Bool { sleepBlocker(excusing: excused) == nil }

    public var sleepBlocker: String? { sleepBlocker(excusing: []) }

    /// Why this group may not sleep now (nil: it may), for `canSleep` and for operators.
    /// Followers in `excused` need not be caught up or heard from (a dead store's replicas):
    /// without them the group would stay awake, and tick, until PD repaired it. When one comes
    /// back it campaigns, which wakes the group, and its leader brings it up to date.
    public func sleepBlocker(excusing excused: Set<NodeID>) -> String? {
        guard role == .leader else { return "not the leader" }
        guard !isAsleep else { return "asleep already" }
        guard leadTransferee == noNode else { return "transferring leadership" }
        guard !confState.isJoint, pendingConfIndex <= log.applied else { return "a membership change is in progress" }
        guard uncommittedProposals.isEmpty, reads.awaitingCommit.isEmpty, reads.awaitingQuorum.isEmpty else { return "proposals or reads in flight" }
        guard log.unstableSnapshot == nil, log.stableLastIndex == log.lastIndex else { return "its log is not persisted" }
        guard log.committed == log.lastIndex, log.applied == log.committed else {
            return "entries to commit or apply (last \(log.lastIndex), committed \(log.committed), applied \(log.applied))"
        }
        guard (try? log.term(at: log.committed)) == term else { return "nothing of its term committed yet" }
        if !excused.isEmpty {
            var present: [NodeID: Bool] = [:]
            for nodeID in confState.allNodes { present[nodeID] = !excused.contains(nodeID) }
            guard Quorum.voteResult(confState, votes: present) == .won else { return "too few members alive to sleep" }
        }
        for nodeID in followerIDs where !excused.contains(nodeID) {
            guard let pr = progress[nodeID] else { return "no progress of \(nodeID)" }
            // Heard from in this check-quorum round (`recentActive`, counted in timer ticks,
            // so a late loop whose clock jumps still sees its followers), or within an
            // election timeout of the clock (check-quorum clears `recentActive` every round
            // before the answers come).
            guard pr.recentActive || tickCount - min(tickCount, pr.lastHeardTick) < UInt64(config.electionTimeoutTicks) else {
                return "follower \(nodeID) not heard from lately"
            }
            guard pr.state == .replicate, pr.match == log.lastIndex else { return "follower \(nodeID) is behind (match \(pr.match) of \(log.lastIndex), \(pr.state))" }
        }
        return nil
    }

    /// Starts putting this leader's group to sleep: every follower gets a heartbeat marked
    /// `sleep`, again every heartbeat interval until all answered that they sleep.
    public mutating func startSleeping(excusing excused: Set<NodeID> = []) {
        precondition(canSleep(excusing: excused) && !isFallingAsleep, "a leader sleeps only when its group has nothing to do")
        isFallingAsleep = true
        followersExcused = excused
        followersAsleep = []
        heartbeatElapsed = 0
        broadcastHeartbeat(context: [], sleep: true)
        finishFallingAsleepIfAllSleep()
    }

    /// On the leader: a follower's answer to a sleep heartbeat.
    mutating func noteSleepAnswer(_ message: Message) {
        guard isFallingAsleep else { return }
        if message.reject {
            isFallingAsleep = false  // it cannot sleep yet: replicate to it, sleep later
        } else if message.sleep {
            followersAsleep.insert(message.from)
            finishFallingAsleepIfAllSleep()
        }
    }

    private mutating func finishFallingAsleepIfAllSleep() {
        guard isFallingAsleep, followerIDs.allSatisfy({ followersAsleep.contains($0) || followersExcused.contains($0) }) else { return }
        isFallingAsleep = false
        guard canSleep(excusing: followersExcused) else { return }
        isAsleep = true
        precondition(isAsleep && role == .leader && !isFallingAsleep, "the sleeping leader still leads")
    }

    /// On the leader's tick while falling asleep: gives up when the group has work again.
    mutating func checkStillFallingAsleep() {
        if isFallingAsleep && !canSleep(excusing: followersExcused) { isFallingAsleep = false }
    }

    /// A follower told by its leader that the group sleeps: sleeps when its log ends at the
    /// leader's commit index (so it holds every entry there is). Returns whether it sleeps.
    mutating func fallAsleepIfCaughtUp(leaderCommit: UInt64) -> Bool {
        guard role == .follower, log.lastIndex == leaderCommit, log.committed == leaderCommit,
              log.unstableSnapshot == nil else { return false }
        isAsleep = true
        return true
    }

    /// Whether `message` wakes this sleeping node: everything does but, in this term, its
    /// leader's sleep heartbeat (on a follower) and heartbeat answers that do not refuse to
    /// sleep (on the leader: an answer to a heartbeat sent just before the sleep one is news
    /// of nothing).
    public func wakes(on message: Message) -> Bool {
        guard isAsleep else { return false }
        guard message.term == term else { return true }
        switch (role, message.kind) {
        case (.follower, .heartbeat): return !(message.sleep && message.from == leader)
        case (.leader, .heartbeatResponse): return message.reject
        default: return true
        }
    }

    /// Hands a sleeping node the ticks that passed while it slept (call before it steps a
    /// message or is woken): its clock stays real time, so leases and vote refusals stay true.
    public mutating func passTicksAsleep(_ ticks: UInt64) {
        precondition(isAsleep, "only a sleeping node passes time without ticking")
        tickCount += ticks
    }

    /// Wakes a sleeping node (its clock already caught up with `passTicksAsleep`). Timers
    /// start afresh: a follower campaigns after a full randomized election timeout without a
    /// leader, a leader heartbeats on its next tick and counts its followers active for one
    /// more check-quorum round (a liveness choice; leases rest on acknowledged sends only).
    /// `leaderAlive`: the host knows the leader's process alive; a follower then counts its
    /// leader as heard from now (refusing votes is always safe; it only delays an election).
    /// `followerSilentTicks`: on a leader, how long the host has not heard from each
    /// follower's process; the sleep itself is no silence (a follower that answered it sends
    /// nothing until woken), so a follower counts as heard that long ago, not when the group
    /// fell asleep (its down time, reported to PD, starts when its process went quiet).
    /// `campaignSoon`: the host presumes the leader's process dead and picked this follower
    /// (one per group) to stand first: it campaigns at its next tick instead of after a whole
    /// election timeout. Timers serve liveness only; the pre-vote still asks the others.
    public mutating func wake(leaderAlive: Bool, campaignSoon: Bool = false, followerSilentTicks: (NodeID) -> UInt64 = { _ in 0 }) {
        guard isAsleep else { return }
        isAsleep = false
        if role == .follower && leaderAlive && leader != noNode {
            leaderContactTick = tickCount
            startupLeaseWaived = false
        }
        electionElapsed = 0
        heartbeatElapsed = role == .leader ? config.heartbeatIntervalTicks - 1 : 0
        resetRandomizedElectionTimeout()
        if campaignSoon && !leaderAlive && role == .follower && isPromotable { electionElapsed = randomizedElectionTimeout - 1 }
        if role == .leader {
            for nodeID in followerIDs {
                progress[nodeID]?.recentActive = true
                let silent = min(followerSilentTicks(nodeID), tickCount)
                if let heard = progress[nodeID]?.lastHeardTick, heard < tickCount - silent { progress[nodeID]?.lastHeardTick = tickCount - silent }
            }
        }
        precondition(!isAsleep, "a woken node is awake")
    }
}
