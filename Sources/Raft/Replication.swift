extension RaftNode {
    /// Appends entries as the leader, assigning term and index. Returns the last index.
    mutating func appendAsLeader(_ entries: [Entry]) -> UInt64 {
        var entries = entries
        var index = log.lastIndex
        for position in entries.indices {
            index += 1
            entries[position].term = term
            entries[position].index = index
        }
        return log.append(entries)
    }

    /// Sends appends to every follower that is not paused.
    mutating func broadcastAppend() {
        for nodeID in followerIDs {
            _ = sendAppend(to: nodeID)
        }
    }

    /// After the commit index moved: appends to every follower, or with `broadcastCommit`
    /// off only to those that have new entries to receive.
    mutating func broadcastCommitted() {
        if config.broadcastCommit {
            broadcastAppend()
            return
        }
        for nodeID in followerIDs {
            _ = sendAppend(to: nodeID, sendIfEmpty: false)
        }
    }

    /// Sends the next append (or a snapshot, when the follower needs compacted entries).
    /// Returns whether a message was sent.
    @discardableResult
    mutating func sendAppend(to nodeID: NodeID, sendIfEmpty: Bool = true) -> Bool {
        guard var pr = progress[nodeID], !pr.isPaused else { return false }
        let previousIndex = pr.next - 1
        let previousTerm: UInt64
        let entries: [Entry]
        do {
            previousTerm = try log.term(at: previousIndex)
            entries = try log.entries(from: pr.next, maxBytes: config.maxAppendBytes)
        } catch {
            return sendSnapshot(to: nodeID)
        }
        if entries.isEmpty && !sendIfEmpty { return false }
        var message = Message(kind: .appendEntries, from: id, to: nodeID)
        message.index = previousIndex
        message.logTerm = previousTerm
        message.entries = entries
        message.commit = log.committed
        message.sentAtTick = tickCount
        switch pr.state {
        case .replicate:
            if let last = entries.last {
                pr.next = last.index + 1
                pr.inflights.add(lastIndex: last.index, bytes: entries.reduce(0) { $0 + $1.sizeBytes })
            }
        case .probe:
            pr.probeSent = true
        case .snapshot:
            preconditionFailure("append to a follower waiting for a snapshot")
        }
        progress[nodeID] = pr
        send(message)
        return true
    }

    private mutating func sendSnapshot(to nodeID: NodeID) -> Bool {
        guard let pr = progress[nodeID], pr.recentActive else { return false }
        let snapshot = log.storage.snapshot()
        guard !snapshot.isEmpty else { return false }
        progress[nodeID]?.becomeSnapshot(index: snapshot.metadata.index, atTick: tickCount)
        var message = Message(kind: .installSnapshot, from: id, to: nodeID)
        message.snapshot = snapshot
        message.sentAtTick = tickCount
        send(message)
        return true
    }

    /// Heartbeats carry the commit index only as far as each follower is known to match, so a
    /// follower never commits an entry it may not have.
    mutating func broadcastHeartbeat(context: [UInt8], sleep: Bool = false) {
        for nodeID in followerIDs {
            guard let pr = progress[nodeID] else { continue }
            var message = Message(kind: .heartbeat, from: id, to: nodeID)
            message.commit = min(pr.match, log.committed)
            message.context = context
            message.sentAtTick = tickCount
            message.sleep = sleep
            send(message)
        }
    }

    /// Advances the commit index to what a quorum of the configuration has persisted, if that
    /// is an entry of the current term. Returns whether it moved.
    @discardableResult
    mutating func maybeCommit() -> Bool {
        let quorumIndex = Quorum.committedIndex(confState) { progress[$0]?.match ?? 0 }
        guard quorumIndex != .max, log.maybeCommit(index: quorumIndex, term: term) else { return false }
        while let first = uncommittedProposals.first, first.index <= log.committed {
            uncommittedBytes -= first.bytes
            uncommittedProposals.removeFirst()
        }
        releaseReadsAwaitingCommit()
        return true
    }

    /// The largest index at or below `index` whose term is at most `term`: where a follower's
    /// and a leader's logs may agree (fast back-tracking over whole terms).
    func lastIndexWithTermAtMost(_ index: UInt64, term maximumTerm: UInt64) -> UInt64 {
        var candidate = index
        while candidate > 0 {
            guard let found = try? log.term(at: candidate) else { return candidate }
            if found <= maximumTerm { return candidate }
            candidate -= 1
        }
        return 0
    }
}
