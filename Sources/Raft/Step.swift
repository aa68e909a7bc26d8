extension RaftNode {
    /// Feeds a message from a peer. Messages from stale terms are answered or dropped, never
    /// acted on; a newer term makes this node a follower first. A message no correct peer could
    /// send (`refusal(of:)`: a term or index beyond `RaftLimits`, entries out of sequence, an
    /// acknowledgement of what was never sent) changes nothing: it is counted in
    /// `refusedMessages` and returned, so the caller can log it. Never traps on a message.
    @discardableResult
    public mutating func step(_ message: Message) -> MessageRefusal? {
        guard message.to == id, message.from != id, message.from != noNode else { return nil }
        if let reason = refusal(of: message) {
            refusedMessages &+= 1
            return MessageRefusal(reason: "\(message.kind) from \(message.from) in term \(message.term): \(reason)")
        }
        stepChecked(message)
        return nil
    }

    private mutating func stepChecked(_ message: Message) {
        if message.term > term {
            switch message.kind {
            case .requestVote, .requestPreVote:
                // Within an election timeout of hearing from a leader, a vote request is a
                // disruption (a removed or partitioned node): ignore it, term and all (§4.2.3).
                let inLease = role == .leader
                    || (!startupLeaseWaived && tickCount < leaderContactTick + UInt64(config.electionTimeoutTicks))
                if config.checkQuorum && !message.isLeaderTransfer && inLease {
                    return
                }
                if message.kind == .requestVote { becomeFollower(term: message.term, leader: noNode) }
            case .preVoteResponse where !message.reject:
                break  // a granted pre-vote is for term + 1 and changes no term
            case .appendEntries, .heartbeat, .installSnapshot:
                becomeFollower(term: message.term, leader: message.from)
            default:
                becomeFollower(term: message.term, leader: noNode)
            }
        } else if message.term < term {
            if message.kind == .appendEntries || message.kind == .heartbeat {
                // Tell a stale leader about the newer term so it steps down.
                send(Message(kind: .appendResponse, from: id, to: message.from))
            } else if message.kind == .requestPreVote {
                send(voteRejection(.preVoteResponse, to: message.from))
            }
            return
        }

        switch message.kind {
        case .requestVote, .requestPreVote:
            handleVoteRequest(message)
        default:
            switch role {
            case .leader: stepLeader(message)
            case .candidate, .preCandidate: stepCandidate(message)
            case .follower: stepFollower(message)
            }
        }
    }

    private mutating func handleVoteRequest(_ message: Message) {
        let isPreVote = message.kind == .requestPreVote
        let canVote = vote == message.from
            || (vote == noNode && leader == noNode)
            || (isPreVote && message.term > term)
        let kind: MessageKind = isPreVote ? .preVoteResponse : .voteResponse
        guard canVote && log.isUpToDate(lastIndex: message.index, lastTerm: message.logTerm) else {
            send(voteRejection(kind, to: message.from))
            return
        }
        var reply = Message(kind: kind, from: id, to: message.from)
        // Answer in the candidate's term: a granted pre-vote must reach it.
        reply.term = message.term
        if !isPreVote {
            electionElapsed = 0
            vote = message.from
        }
        send(reply)
    }

    /// A refused vote that tells the candidate how far this node knows the log is committed
    /// (index and term). A candidate whose log holds that entry may adopt the commit index:
    /// without it, a voter that never learnt that its configuration changed can be refused
    /// forever by removed nodes with longer logs (found by the simulator).
    private func voteRejection(_ kind: MessageKind, to candidate: NodeID) -> Message {
        var reply = Message(kind: kind, from: id, to: candidate)
        reply.reject = true
        reply.commit = log.committed
        reply.logTerm = (try? log.term(at: log.committed)) ?? 0
        return reply
    }

    /// Adopts a commit index reported by a peer when our log holds the same entry there: by
    /// log matching, our entries up to it are the committed ones.
    mutating func learnCommit(index: UInt64, term commitTerm: UInt64) {
        guard index > log.committed, commitTerm > 0, log.matchesTerm(index, commitTerm) else { return }
        log.commit(to: index)
    }

    private mutating func stepCandidate(_ message: Message) {
        switch message.kind {
        case .appendEntries, .heartbeat, .installSnapshot:
            becomeFollower(term: term, leader: message.from)
            stepFollower(message)
        case .voteResponse where role == .candidate, .preVoteResponse where role == .preCandidate:
            if message.reject { learnCommit(index: message.commit, term: message.logTerm) }
            votes[message.from] = !message.reject
            tallyVotes()
        default:
            break
        }
    }

    private mutating func stepFollower(_ message: Message) {
        switch message.kind {
        case .appendEntries:
            heardFromLeader(message.from)
            handleAppend(message)
        case .heartbeat:
            heardFromLeader(message.from)
            log.commit(to: min(message.commit, log.lastIndex))
            var reply = Message(kind: .heartbeatResponse, from: id, to: message.from)
            reply.context = message.context
            reply.sentAtTick = message.sentAtTick
            if message.sleep {
                reply.sleep = fallAsleepIfCaughtUp(leaderCommit: message.commit)
                reply.reject = !reply.sleep  // asked to sleep and cannot: wakes the leader
            }
            send(reply)
        case .installSnapshot:
            heardFromLeader(message.from)
            handleSnapshot(message)
        case .timeoutNow:
            startCampaign(transfer: true)
        case .readIndexResponse:
            readStates.append(ReadState(index: message.index, context: message.context))
        default:
            break
        }
    }

    private mutating func heardFromLeader(_ from: NodeID) {
        electionElapsed = 0
        leader = from
        leaderContactTick = tickCount
        startupLeaseWaived = false
    }

    private mutating func handleAppend(_ message: Message) {
        var reply = Message(kind: .appendResponse, from: id, to: message.from)
        reply.sentAtTick = message.sentAtTick
        if message.index < log.committed {
            reply.index = log.committed
        } else if let lastNewIndex = log.maybeAppend(index: message.index, logTerm: message.logTerm,
                                                       commit: message.commit, entries: message.entries) {
            reply.index = lastNewIndex
        } else {
            // Hint where our logs may agree: the last index at or below the probe whose term is
            // no newer than the leader's term there.
            let hint = lastIndexWithTermAtMost(min(message.index, log.lastIndex), term: message.logTerm)
            reply.reject = true
            reply.index = message.index
            reply.rejectHint = hint
            reply.rejectHintTerm = (try? log.term(at: hint)) ?? 0
        }
        send(reply)
    }

    private mutating func handleSnapshot(_ message: Message) {
        guard let snapshot = message.snapshot else { return }
        var reply = Message(kind: .appendResponse, from: id, to: message.from)
        reply.sentAtTick = message.sentAtTick
        let metadata = snapshot.metadata
        if metadata.index <= log.committed {
            reply.index = log.committed
        } else if log.matchesTerm(metadata.index, metadata.term) {
            // We already have the entries: just learn that they are committed.
            log.commit(to: metadata.index)
            reply.index = log.committed
        } else {
            log.restore(snapshot)
            confState = metadata.confState
            reply.index = log.lastIndex
        }
        send(reply)
    }

    private mutating func stepLeader(_ message: Message) {
        switch message.kind {
        case .appendResponse:
            handleAppendResponse(message)
        case .heartbeatResponse:
            handleHeartbeatResponse(message)
        case .readIndex:
            handleReadIndex(context: message.context, from: message.from)
        default:
            break
        }
    }

    private mutating func markActive(_ nodeID: NodeID, sentAtTick: UInt64) -> Bool {
        guard progress[nodeID] != nil else { return false }
        progress[nodeID]?.recentActive = true
        progress[nodeID]?.lastHeardTick = tickCount
        if let pr = progress[nodeID], sentAtTick > pr.lastAckedSendTick {
            progress[nodeID]?.lastAckedSendTick = sentAtTick
        }
        return true
    }

    private mutating func handleAppendResponse(_ message: Message) {
        let from = message.from
        guard markActive(from, sentAtTick: message.sentAtTick), var pr = progress[from] else { return }
        if message.reject {
            var probeFrom = message.rejectHint
            if message.rejectHintTerm > 0 {
                probeFrom = lastIndexWithTermAtMost(min(message.rejectHint, log.lastIndex), term: message.rejectHintTerm)
            }
            if pr.maybeDecrease(rejected: message.index, hint: probeFrom) {
                if pr.state == .replicate { pr.becomeProbe() }
                progress[from] = pr
                sendAppend(to: from)
            }
            return
        }
        let wasPaused = pr.isPaused
        guard pr.maybeUpdate(message.index) else { return }
        switch pr.state {
        case .probe:
            pr.becomeReplicate()
        case .snapshot:
            if pr.match >= pr.pendingSnapshot || pr.match + 1 >= log.firstIndex {
                pr.becomeProbe()
                pr.becomeReplicate()
            }
        case .replicate:
            pr.inflights.free(upTo: message.index)
        }
        progress[from] = pr
        if maybeCommit() {
            broadcastCommitted()
        } else if wasPaused {
            sendAppend(to: from)
        }
        // Keep the pipeline full.
        while sendAppend(to: from, sendIfEmpty: false) {}
        if from == leadTransferee && progress[from]?.match == log.lastIndex {
            sendTimeoutNow(to: from)
        }
    }

    private mutating func handleHeartbeatResponse(_ message: Message) {
        let from = message.from
        guard markActive(from, sentAtTick: message.sentAtTick), var pr = progress[from] else { return }
        pr.probeSent = false
        if pr.state == .replicate && pr.inflights.isFull { pr.inflights.freeFirst() }
        progress[from] = pr
        if pr.match < log.lastIndex { sendAppend(to: from) }
        if !message.context.isEmpty { acknowledgeRead(context: message.context, from: from) }
        noteSleepAnswer(message)
    }

    mutating func sendTimeoutNow(to nodeID: NodeID) {
        transferAttemptedInTerm = true
        send(Message(kind: .timeoutNow, from: id, to: nodeID))
    }
}
