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
        let isVoter = confState.voters.contains(id) || confState.votersOutgoing.contains(id)
        if !isVoter {
            // The change that removed us is committed (we only apply committed entries).
            becomeFollower(term: term, leader: noNode)
            return
        }
        if leadTransferee != noNode && !(progress[leadTransferee].map { !$0.isLearner } ?? false) {
            leadTransferee = noNode
        }
        if confState.isJoint && confState.autoLeave {
            let index = appendAsLeader([Entry(term: 0, index: 0, kind: .confChange, data: ConfChangeV2.leaveJoint.encoded())])
            pendingConfIndex = index
        }
        if !maybeCommit() { broadcastAppend() } else { broadcastAppend() }
    }
}
