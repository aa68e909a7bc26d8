extension RaftNode {
    /// Proposes `data` for the log. Only the leader accepts proposals; the entry is committed
    /// when a quorum persists it, and appears in `Ready.committedEntries`.
    /// - Returns: the index the entry was given.
    @discardableResult
    public mutating func propose(_ data: [UInt8]) throws(RaftError) -> UInt64 {
        try proposeEntry(Entry(term: 0, index: 0, kind: .normal, data: data))
    }

    /// Proposes a membership change. At most one may be pending (proposed, not applied);
    /// entering a joint configuration with `.auto` or `.jointImplicit` leaves it by itself.
    @discardableResult
    public mutating func proposeConfChange(_ change: ConfChangeV2) throws(RaftError) -> UInt64 {
        guard role == .leader else { throw .notLeader(leader: leader) }
        if pendingConfIndex > log.applied { throw .confChangePending }
        _ = try confState.applying(change)  // validate against the current configuration
        let index = try proposeEntry(Entry(term: 0, index: 0, kind: .confChange, data: change.encoded()))
        pendingConfIndex = index
        return index
    }

    private mutating func proposeEntry(_ entry: Entry) throws(RaftError) -> UInt64 {
        guard role == .leader else { throw .notLeader(leader: leader) }
        guard leadTransferee == noNode else { throw .leaderTransferInProgress }
        if uncommittedBytes > 0 && uncommittedBytes + entry.sizeBytes > config.maxUncommittedBytes {
            throw .uncommittedLimitExceeded(limitBytes: config.maxUncommittedBytes)
        }
        let index = appendAsLeader([entry])
        uncommittedProposals.append((index, entry.sizeBytes))
        uncommittedBytes += entry.sizeBytes
        broadcastAppend()
        return index
    }

    /// Starts an election now (for tests and bootstrapping a single node).
    public mutating func campaign() {
        if role != .leader { startCampaign(transfer: false) }
    }

    /// For a group that never had a leader (a region a split just made, its log at the split
    /// point): no node can hold a lease of it yet, so this node grants votes at once instead
    /// of waiting an election timeout after its start, and the group's first election takes
    /// one round trip. Ends when a leader is heard from. Never use on a node that may have
    /// heard from a leader before its start.
    public mutating func waiveStartupLease() {
        if leader == noNode { startupLeaseWaived = true }
    }

    /// On a leader: each other member's highest log index known to match the leader's
    /// (0 when unknown); empty on a follower.
    public var matchIndexes: [NodeID: UInt64] {
        guard role == .leader else { return [:] }
        var result: [NodeID: UInt64] = [:]
        for (node, pr) in progress where node != id { result[node] = pr.match }
        return result
    }

    /// Hands leadership to `target`: catch it up, then tell it to campaign at once. Aborted
    /// after an election timeout; proposals are refused meanwhile.
    public mutating func transferLeader(to target: NodeID) throws(RaftError) {
        guard role == .leader else { throw .notLeader(leader: leader) }
        guard target != id else { return }
        guard let pr = progress[target], !pr.isLearner else {
            throw .invalidConfChange("node \(target) is not a voter")
        }
        leadTransferee = target
        transferStartedTick = tickCount
        electionElapsed = 0
        if pr.match == log.lastIndex {
            sendTimeoutNow(to: target)
        } else {
            sendAppend(to: target)
        }
    }

    /// Leadership transfer out of a leader that is no longer a voter: to the voter with the
    /// highest match index. Steps down only when there is no voter to hand to.
    mutating func handOffLeadership() {
        let target = confState.voters.union(confState.votersOutgoing)
            .filter { $0 != id }
            .max { (progress[$0]?.match ?? 0, $1) < (progress[$1]?.match ?? 0, $0) }
        guard let target, progress[target] != nil else {
            becomeFollower(term: term, leader: noNode)
            return
        }
        leadTransferee = target
        transferStartedTick = tickCount
        if progress[target]?.match == log.lastIndex {
            sendTimeoutNow(to: target)
        } else {
            sendAppend(to: target)
        }
    }

    var isVoter: Bool { confState.voters.contains(id) || confState.votersOutgoing.contains(id) }

    /// Applies a committed membership change: the configuration, the progress set, and the
    /// leader's follow-ups (leave a joint state by itself; step down when removed).
    mutating func applyConfChange(_ change: ConfChangeV2) {
        guard let next = try? confState.applying(change) else {
            // A committed change that does not apply was validated against a different
            // configuration; every node skips it alike, so the state stays identical.
            return
        }
        confState = next
        guard role == .leader else { return }
        rebuildProgress()
        if !isVoter {
            // Removed or demoted: the change is committed, but the remaining voters may not know
            // it yet, and our log may be longer than theirs. Stepping down now could leave no
            // voter able to win; hand leadership to the most caught-up voter instead.
            handOffLeadership()
            return
        }
        if leadTransferee != noNode && !(progress[leadTransferee].map { !$0.isLearner } ?? false) {
            leadTransferee = noNode
        }
        if confState.isJoint && confState.autoLeave {
            let index = appendAsLeader([Entry(term: 0, index: 0, kind: .confChange, data: ConfChangeV2.leaveJoint.encoded())])
            pendingConfIndex = index
        }
        // The quorum changed: the commit index may move, and new members need appends.
        maybeCommit()
        broadcastAppend()
    }
}
