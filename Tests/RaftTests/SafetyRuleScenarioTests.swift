@testable import Raft
import Testing

/// Safety rules the simulator did not protect at CI's budget (issue 12), each pinned by a
/// deterministic scenario that fails when the rule is broken.
@Suite("Raft: safety rules as scenarios")
struct SafetyRuleScenarioTests {
    /// A pre-vote asks "would you vote for me in term + 1?": answering it must not move the
    /// receiver's term (a partitioned node's pre-votes would otherwise disrupt the group).
    @Test func aPreVoteRequestNeverChangesTheReceiversTerm() {
        // Without check-quorum, so no lease hides the request.
        var cluster = ScenarioCluster(voters: [1, 2, 3]) { $0.checkQuorum = false; $0.leaseReads = false }
        cluster.elect(1, ticking: [1, 2, 3])
        let term = cluster.nodes[2]?.term ?? 0
        var preVote = Message(kind: .requestPreVote, from: 3, to: 2)
        preVote.term = term + 1
        preVote.index = cluster.nodes[2]?.lastIndex ?? 0
        preVote.logTerm = term
        cluster.nodes[2]?.step(preVote)
        #expect(cluster.nodes[2]?.term == term, "the pre-vote moved the term")
        #expect(cluster.nodes[2]?.vote == cluster.nodes[1]?.id || cluster.nodes[2]?.vote == 1, "nor the vote")
        // Its answer is a pre-vote response in the candidate's term, not a real vote.
        var node = cluster.nodes[2]
        let ready = node?.ready()
        let answers = (ready?.messagesNow ?? []) + (ready?.messagesAfterPersist ?? [])
        #expect(answers.contains { $0.kind == .preVoteResponse && $0.to == 3 && $0.term == term + 1 })
        #expect(ready?.hardState.map { $0.term == term } ?? true, "no hard state with a new term to persist")
    }

    /// A snapshot at or below the commit index carries nothing new: it is ignored, never
    /// installed over committed entries.
    @Test func aSnapshotAtOrBelowTheCommitIndexIsIgnored() throws {
        var cluster = ScenarioCluster(voters: [1, 2, 3])
        cluster.elect(1, ticking: [1, 2, 3])
        for value in 1...3 { _ = try cluster.nodes[1]?.propose([UInt8(value)]) }
        cluster.settle()
        var follower = try #require(cluster.nodes[2])
        let committed = follower.committedIndex
        let last = follower.lastIndex
        for index in [committed - 1, committed] {
            var install = Message(kind: .installSnapshot, from: 1, to: 2)
            install.term = follower.term
            // A term that differs from the entry's there: installing it would replace the log.
            install.snapshot = Snapshot(metadata: SnapshotMetadata(index: index, term: follower.term - 1 == 0 ? follower.term : follower.term - 1,
                                                                   confState: ConfState(voters: [1, 2, 3])))
            follower.step(install)
            let ready = follower.ready()
            #expect(ready.snapshotToInstall == nil, "a snapshot at \(index) (commit \(committed)) was taken")
            #expect(follower.lastIndex == last && follower.committedIndex == committed)
            follower.advance(ready)
        }
    }

    /// In a joint configuration an entry commits only when a majority of **each** half holds
    /// it. Outgoing {1, 2, 3}, incoming {1, 4, 5}: a majority of either half alone is not enough.
    @Test func inAJointConfigurationCommitNeedsBothMajorities() throws {
        var cluster = ScenarioCluster(voters: [1, 2, 3, 4, 5])
        cluster.elect(1, ticking: [1, 2, 3, 4, 5])
        #expect(cluster.leaders == [1])
        // The leader in the joint configuration (as if it had applied the change), cut off so
        // the test delivers each acknowledgement by hand.
        cluster.nodes[1]?.confState = ConfState(voters: [1, 4, 5], votersOutgoing: [1, 2, 3])
        cluster.nodes[1]?.rebuildProgress()
        cluster.isolated = [1]
        let term = cluster.nodes[1]?.term ?? 0
        func acknowledge(_ from: NodeID, _ index: UInt64) {
            var ack = Message(kind: .appendResponse, from: from, to: 1)
            ack.term = term
            ack.index = index
            cluster.nodes[1]?.step(ack)
        }
        // The incoming half's majority alone ({1, 4}) does not commit; adding 2 does.
        let first = try #require(try cluster.nodes[1]?.propose([41]))
        cluster.settle()
        acknowledge(4, first)
        #expect((cluster.nodes[1]?.committedIndex ?? 0) < first, "committed with the incoming half's majority alone")
        acknowledge(2, first)
        #expect(cluster.nodes[1]?.committedIndex == first, "both halves hold it: committed")
        // The outgoing half's majority alone ({1, 2, 3}) does not commit; adding 5 does.
        let second = try #require(try cluster.nodes[1]?.propose([42]))
        cluster.settle()
        acknowledge(2, second)
        acknowledge(3, second)
        #expect((cluster.nodes[1]?.committedIndex ?? 0) < second, "committed with the outgoing half's majority alone")
        acknowledge(5, second)
        #expect(cluster.nodes[1]?.committedIndex == second, "both halves hold it: committed")
    }

    /// The ReadStates a node hands out for `context` in its next Ready (the Ready is taken).
    static func readStates(of cluster: inout ScenarioCluster, node id: NodeID, context: [UInt8]) throws -> [ReadState] {
        guard var node = cluster.nodes[id], node.hasReady, let storage = cluster.storages[id] else { return [] }
        let ready = node.ready()
        try storage.persist(ready)
        node.advance(ready)
        cluster.nodes[id] = node
        return ready.readStates.filter { $0.context == context }
    }

    /// A leader serves reads from its lease only while a quorum acknowledged something it sent
    /// less than an election timeout (less the drift) ago: once acknowledgements stop, the
    /// lease runs out even while it still believes it leads.
    @Test func theLeaseExpiresWhenAcknowledgementsStop() throws {
        var cluster = ScenarioCluster(voters: [1, 2, 3])
        cluster.elect(1, ticking: [1, 2, 3])
        // Commit an entry of the term, and line up just after a check-quorum round so the
        // leader keeps leading for a whole election timeout once cut off.
        _ = try cluster.nodes[1]?.propose([1])
        cluster.settle()
        for _ in 0..<40 where cluster.nodes[1]?.electionElapsed != 0 { cluster.tick() }
        #expect(cluster.nodes[1]?.electionElapsed == 0 && cluster.leaders == [1])
        // A read now is served from the lease, at once.
        try cluster.nodes[1]?.readIndex(context: [0])
        #expect(try !Self.readStates(of: &cluster, node: 1, context: [0]).isEmpty, "the lease serves while acknowledged")
        let cutOff = cluster.nodes[1]?.tickCount ?? 0
        cluster.isolated = [1]
        let timeout = UInt64(cluster.nodes[1]?.config.electionTimeoutTicks ?? 10)
        let drift = UInt64(cluster.nodes[1]?.config.leaseClockDriftTicks ?? 1)
        var checked = 0
        for step in 1...Int(timeout) {
            cluster.tick(only: [1])
            guard cluster.nodes[1]?.role == .leader, let now = cluster.nodes[1]?.tickCount, now >= cutOff + timeout - drift else { continue }
            let context = [UInt8(step)]
            try cluster.nodes[1]?.readIndex(context: context)
            #expect(try Self.readStates(of: &cluster, node: 1, context: context).isEmpty,
                    "a read at tick \(now) was served from a lease whose last acknowledged send was at tick \(cutOff) or before")
            checked += 1
        }
        #expect(checked > 0, "the leader led past its lease's end")
    }

    /// Leases rest on followers refusing votes while they hear from a leader, which is
    /// check-quorum's doing: without check-quorum, no read is served from a lease.
    @Test func leaseReadsRequireCheckQuorum() throws {
        var cluster = ScenarioCluster(voters: [1, 2, 3]) { $0.checkQuorum = false; $0.leaseReads = true }
        cluster.elect(1, ticking: [1, 2, 3])
        _ = try cluster.nodes[1]?.propose([1])
        cluster.settle()
        cluster.tick()
        cluster.isolated = [1]
        try cluster.nodes[1]?.readIndex(context: [9])
        #expect(try Self.readStates(of: &cluster, node: 1, context: [9]).isEmpty, "a read was served from a lease without check-quorum")
    }

    /// In a joint configuration an election needs a majority of each half.
    @Test func inAJointConfigurationAnElectionNeedsBothMajorities() throws {
        for (first, second, name) in [(NodeID(4), NodeID(2), "incoming"), (NodeID(2), NodeID(3), "outgoing")] {
            let storage = MemoryStorage()
            storage.bootstrap(voters: [1, 2, 3])
            var config = RaftConfig(id: 1)
            config.preVote = false
            var node = RaftNode(config: config, storage: storage)
            node.confState = ConfState(voters: [1, 4, 5], votersOutgoing: [1, 2, 3])
            node.campaign()
            #expect(node.role == .candidate)
            func grant(_ from: NodeID) {
                var vote = Message(kind: .voteResponse, from: from, to: 1)
                vote.term = node.term
                node.step(vote)
            }
            grant(first)
            if name == "outgoing" { grant(second) }
            #expect(node.role == .candidate, "won with the \(name) half's majority alone")
            grant(name == "outgoing" ? 5 : second)
            #expect(node.role == .leader, "a majority of both halves elects")
        }
    }

    /// A granted vote may leave only after the hard state that holds it is durable: it is
    /// among the messages sent after the persist, never before, and the Ready's hard state
    /// records the vote and its term — so a crash between the two cannot forget a vote cast.
    @Test func aVoteLeavesOnlyAfterTheHardStateHoldingItIsPersisted() throws {
        var cluster = ScenarioCluster(voters: [1, 2, 3]) { $0.checkQuorum = false }
        cluster.elect(1, ticking: [1, 2, 3])
        var voter = try #require(cluster.nodes[2])
        var request = Message(kind: .requestVote, from: 3, to: 2)
        request.term = voter.term + 1
        request.index = voter.lastIndex
        request.logTerm = voter.term
        voter.step(request)
        let ready = voter.ready()
        let grants = ready.messagesAfterPersist.filter { $0.kind == .voteResponse && !$0.reject && $0.to == 3 }
        #expect(grants.count == 1, "the vote is granted, after the persist")
        #expect(!ready.messagesNow.contains { $0.kind == .voteResponse }, "a vote left before its hard state was durable")
        #expect(ready.hardState?.vote == 3 && ready.hardState?.term == request.term, "the hard state to persist holds the vote")
        // Crash before the persist: the restarted node has not voted, and sends nothing it had not.
        let restarted = RaftNode(config: voter.config, storage: try #require(cluster.storages[2]))
        #expect(restarted.vote != 3 || restarted.term < request.term)
    }

    /// The same rule seen from the outside: a voter that sends what it may send before its
    /// write and crashes before the write lands has cast no vote, so it can vote once more in
    /// that term without making two leaders. (Had the vote left early, both candidates of the
    /// term would lead.)
    @Test func aVoterThatCrashesBeforePersistingHasCastNoVote() throws {
        var cluster = ScenarioCluster(voters: [1, 2, 3]) { $0.checkQuorum = false; $0.preVote = false }
        // 1 and 2 cannot hear each other; 3 hears both, and 1's appends never reach it.
        cluster.dropIf = { message in
            (message.from == 1 && message.to == 2) || (message.from == 2 && message.to == 1)
                || (message.from == 1 && message.to == 3 && message.kind != .requestVote)
        }
        let term = try #require(cluster.nodes[3]?.term)
        cluster.crashBeforePersisting = [3]
        cluster.nodes[1]?.campaign()
        cluster.settle()
        #expect(cluster.transcript.contains { $0.hasPrefix("crash 3") }, "3 crashed between its send and its write")
        #expect(cluster.nodes[3]?.term == term, "3 restarted from what it had persisted")
        cluster.nodes[2]?.campaign()
        cluster.settle()
        let leadersOfTerm = cluster.leaders.filter { cluster.nodes[$0]?.term == term + 1 }
        #expect(leadersOfTerm.count <= 1, "two leaders in term \(term + 1): \(leadersOfTerm)\n\(cluster.transcript.joined(separator: "\n"))")
        #expect(cluster.leaders == [2], "2 won with 3's only vote of the term")
        #expect(cluster.storageViolations.isEmpty, "\(cluster.storageViolations)")
    }
}
