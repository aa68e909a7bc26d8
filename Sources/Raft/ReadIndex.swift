/// A linearizable read waiting for a heartbeat quorum to confirm leadership.
struct PendingRead {
    var index: UInt64
    var context: [UInt8]
    var from: NodeID
    var acks: [NodeID: Bool]
}

/// The leader's queue of reads: those waiting for an entry of the current term to commit, and
/// those waiting for a heartbeat quorum, in arrival order.
struct ReadIndexQueue {
    var awaitingCommit: [(context: [UInt8], from: NodeID)] = []
    var awaitingQuorum: [PendingRead] = []
}

extension RaftNode {
    /// Asks for a linearizable read tagged `context` (unique per request). When confirmed, a
    /// `ReadState` with the read index appears in a `Ready`; serve the read once the applied
    /// index reaches it. A follower forwards the request to its leader.
    public mutating func readIndex(context: [UInt8]) throws(RaftError) {
        switch role {
        case .leader:
            handleReadIndex(context: context, from: id)
        case .follower where leader != noNode:
            var message = Message(kind: .readIndex, from: id, to: leader)
            message.context = context
            send(message)
        default:
            throw .notLeader(leader: leader)
        }
    }

    mutating func handleReadIndex(context: [UInt8], from: NodeID) {
        // Until an entry of this term commits, the commit index may lag the true one (§6.4),
        // even when this node is the only voter (it may have just taken over).
        guard (try? log.term(at: log.committed)) == term else {
            reads.awaitingCommit.append((context, from))
            return
        }
        if confState.voters == [id] && !confState.isJoint {
            respondToRead(index: log.committed, context: context, to: from)
            return
        }
        if leaseIsValid() {
            leaseReadsServed &+= 1
            respondToRead(index: log.committed, context: context, to: from)
            return
        }
        reads.awaitingQuorum.append(PendingRead(index: log.committed, context: context, from: from, acks: [id: true]))
        broadcastHeartbeat(context: context)
    }

    /// The lease holds while a quorum acknowledged a message sent less than an election
    /// timeout, less the drift bound, less one tick ago: those followers refuse votes until
    /// then. The one tick is the phase between two nodes' tick timers: a follower that got the
    /// message just before its own tick fired counts that tick as a whole one, so without it
    /// the drift bound would be spent on phase alone and any slower leader clock could outlast
    /// a follower's refusal. With it, the lease is safe while over `electionTimeoutTicks - 1`
    /// ticks two clocks part by at most `leaseClockDriftTicks`.
    func leaseIsValid() -> Bool {
        guard config.leaseReads, config.checkQuorum, leadTransferee == noNode, !transferAttemptedInTerm else { return false }
        let quorumTick = Quorum.committedIndex(confState) { nodeID in
            nodeID == id ? tickCount : (progress[nodeID]?.lastAckedSendTick ?? 0)
        }
        guard quorumTick != .max, quorumTick > 0 else { return false }
        let leaseTicks = config.electionTimeoutTicks - config.leaseClockDriftTicks - 1
        guard leaseTicks > 0 else { return false }
        return tickCount < quorumTick + UInt64(leaseTicks)
    }

    mutating func acknowledgeRead(context: [UInt8], from: NodeID) {
        guard let position = reads.awaitingQuorum.firstIndex(where: { $0.context == context }) else { return }
        reads.awaitingQuorum[position].acks[from] = true
        guard Quorum.voteResult(confState, votes: reads.awaitingQuorum[position].acks) == .won else { return }
        // Confirming one read confirms every read queued before it.
        let confirmed = reads.awaitingQuorum[...position]
        reads.awaitingQuorum.removeFirst(position + 1)
        for read in confirmed { respondToRead(index: read.index, context: read.context, to: read.from) }
    }

    mutating func releaseReadsAwaitingCommit() {
        guard !reads.awaitingCommit.isEmpty, (try? log.term(at: log.committed)) == term else { return }
        let waiting = reads.awaitingCommit
        reads.awaitingCommit = []
        for read in waiting { handleReadIndex(context: read.context, from: read.from) }
    }

    private mutating func respondToRead(index: UInt64, context: [UInt8], to nodeID: NodeID) {
        if nodeID == id {
            readStates.append(ReadState(index: index, context: context))
        } else {
            var message = Message(kind: .readIndexResponse, from: id, to: nodeID)
            message.index = index
            message.context = context
            send(message)
        }
    }
}
