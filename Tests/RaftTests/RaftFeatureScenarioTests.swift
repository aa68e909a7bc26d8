import Raft
import Testing

/// One scenario per feature, each a short exchange between named nodes.
@Suite("Raft feature scenarios")
struct RaftFeatureScenarioTests {
    /// A three-node group led by n1.
    private func ledByNode1(configure: (inout RaftConfig) -> Void = { _ in }) -> ScenarioCluster {
        var cluster = ScenarioCluster(voters: [1, 2, 3], configure: configure)
        cluster.elect(1, ticking: [1, 2, 3])
        return cluster
    }

    @Test func leaderStepsDownWhenItLosesItsQuorum() {
        // n1 is cut off from n2 and n3: after an election timeout without answers it steps
        // down (check-quorum), and n2 or n3 takes over in a newer term.
        var cluster = ledByNode1()
        #expect(cluster.leaders == [1])
        let term = cluster.nodes[1]?.term ?? 0
        cluster.isolated = [1]
        // Activity is checked once per election timeout: the first check still sees the
        // answers from before the cut, the second finds none.
        cluster.tick(20, only: [1])
        #expect(cluster.nodes[1]?.role == .follower, "n1 stepped down without a quorum")
        cluster.tick(40, only: [2, 3])
        let newLeader = cluster.leaders.first { $0 != 1 }
        #expect(newLeader != nil)
        #expect((newLeader.flatMap { cluster.nodes[$0]?.term } ?? 0) > term)
    }

    @Test func leaderTransferCatchesUpTheTargetThenHandsOver() throws {
        var cluster = ledByNode1()
        try cluster.nodes[1]?.propose(Array("x".utf8))
        cluster.settle()
        try cluster.nodes[1]?.transferLeader(to: 3)
        cluster.settle()
        #expect(cluster.transcript.contains { $0.hasPrefix("1→3 timeoutNow") })
        #expect(cluster.transcript.contains { $0.hasPrefix("3→2 requestVote") && $0.hasSuffix("transfer") },
                "the target campaigns at once, skipping pre-vote, and its request overrides leases")
        #expect(cluster.leaders == [3])
    }

    @Test func leaderTransferToAnUnreachableNodeIsAbortedAfterATimeout() throws {
        var cluster = ledByNode1()
        cluster.isolated = [3]
        try cluster.nodes[1]?.transferLeader(to: 3)
        cluster.settle()
        #expect(throws: RaftError.leaderTransferInProgress) { try cluster.nodes[1]?.propose([1]) }
        // n2 keeps answering, so n1 keeps its quorum; after an election timeout it gives up
        // the transfer and accepts proposals again.
        cluster.tick(11, only: [1, 2])
        #expect(cluster.leaders == [1])
        #expect(cluster.nodes[1]?.leadTransferee == noNode)
        try cluster.nodes[1]?.propose(Array("after".utf8))
        cluster.settle()
        #expect(cluster.applied[2]?.last == Array("after".utf8))
    }

    @Test func readIndexNeedsAHeartbeatQuorumWithoutALease() throws {
        var cluster = ledByNode1 { $0.leaseReads = false }
        try cluster.nodes[1]?.readIndex(context: [42])
        cluster.settle()
        #expect(cluster.transcript.contains { $0.hasPrefix("1→2 heartbeat") && $0.contains("ctx=[42]") })
        #expect(cluster.transcript.contains { $0.hasPrefix("2→1 heartbeatResponse") && $0.contains("ctx=[42]") })
        #expect(cluster.readStates[1]?.contains { $0.context == [42] && $0.index == cluster.nodes[1]?.committedIndex } == true)
        // With n1 cut off, a read cannot be confirmed.
        cluster.isolated = [1]
        try cluster.nodes[1]?.readIndex(context: [43])
        cluster.settle()
        #expect(cluster.readStates[1]?.contains { $0.context == [43] } == false, "no quorum, no confirmed read")
    }

    @Test func leaseReadIsServedWithoutARoundTripAndFollowersForwardReads() throws {
        var cluster = ledByNode1()
        cluster.tick(2)  // heartbeats acknowledged: the lease is fresh
        var leader = try #require(cluster.nodes[1])
        _ = leader.ready()
        try leader.readIndex(context: [7])
        let ready = leader.ready()
        #expect(ready.readStates == [ReadState(index: leader.committedIndex, context: [7])],
                "the lease answers at once, with no message sent")
        #expect(ready.messagesNow.isEmpty)

        // A follower's read goes to the leader and comes back as a read state.
        try cluster.nodes[2]?.readIndex(context: [8])
        cluster.settle()
        #expect(cluster.transcript.contains { $0.hasPrefix("2→1 readIndex") })
        #expect(cluster.transcript.contains { $0.hasPrefix("1→2 readIndexResponse") })
        #expect(cluster.readStates[2]?.contains { $0.context == [8] } == true)
        var fresh = ScenarioCluster(voters: [1, 2, 3])
        #expect(throws: RaftError.notLeader(leader: noNode), "no leader known yet") {
            try fresh.nodes[2]?.readIndex(context: [9])
        }
    }

    @Test func uncommittedLimitRefusesProposalsWhenFollowersFallBehind() throws {
        var cluster = ledByNode1 { $0.maxUncommittedBytes = 1_000 }
        cluster.isolated = [2, 3]
        let payload = [UInt8](repeating: 1, count: 200)
        var accepted = 0
        var refusal: RaftError? = nil
        for _ in 0..<20 {
            do {
                try cluster.nodes[1]?.propose(payload)
                accepted += 1
            } catch {
                refusal = error
                break
            }
        }
        #expect(accepted == 4, "four 224-byte entries fit under 1,000 bytes, the fifth does not")
        #expect(refusal == .uncommittedLimitExceeded(limitBytes: 1_000))
        cluster.isolated = []
        cluster.tick(3)
        try cluster.nodes[1]?.propose(payload)  // committed entries free the budget
    }

    @Test func laggingFollowerCatchesUpBySnapshotAfterCompaction() throws {
        var cluster = ledByNode1()
        cluster.isolated = [3]
        for value in 0..<20 { try cluster.nodes[1]?.propose([UInt8(value)]) }
        cluster.settle()
        // n1 and n2 snapshot and drop their logs.
        for id: NodeID in [1, 2] {
            let node = try #require(cluster.nodes[id])
            try cluster.storages[id]?.createSnapshot(at: node.appliedIndex, confState: node.confState, data: Array("state".utf8))
        }
        cluster.isolated = []
        cluster.tick(5)
        #expect(cluster.transcript.contains { $0.hasPrefix("1→3 installSnapshot") })
        #expect(cluster.storages[3]?.snapshot().data == Array("state".utf8))
        #expect(cluster.nodes[3]?.committedIndex == cluster.nodes[1]?.committedIndex)
        try cluster.nodes[1]?.propose(Array("after".utf8))
        cluster.settle()
        #expect(cluster.applied[3]?.last == Array("after".utf8), "replication resumes after the snapshot")
    }

    @Test func leaderRemovedByItsOwnChangeHandsOverAfterTheChangeCommits() throws {
        var cluster = ledByNode1()
        try cluster.nodes[1]?.proposeConfChange(ConfChangeV2(changes: [.init(.remove, 1)]))
        cluster.settle()
        // The change committed and applied: n1 is no voter, and leadership moved to a voter.
        #expect(cluster.nodes[2]?.confState.voters == [2, 3])
        cluster.tick(3)
        let leader = try #require(cluster.leaders.first { $0 != 1 })
        #expect(cluster.transcript.contains { $0.hasPrefix("1→") && $0.contains("timeoutNow") })
        #expect(cluster.nodes[1]?.role == .follower, "n1 learnt the newer term and stepped down")
        try cluster.nodes[leader]?.propose(Array("after".utf8))
        cluster.settle()
        #expect(cluster.applied[leader]?.last == Array("after".utf8))
    }

    @Test func secondConfChangeWaitsForTheFirst() throws {
        var cluster = ledByNode1()
        cluster.isolated = [2, 3]  // the first change cannot commit
        try cluster.nodes[1]?.proposeConfChange(ConfChangeV2(changes: [.init(.addLearner, 4)]))
        #expect(throws: RaftError.confChangePending) {
            try cluster.nodes[1]?.proposeConfChange(ConfChangeV2(changes: [.init(.addLearner, 5)]))
        }
        #expect(throws: RaftError.notLeader(leader: 1)) {
            try cluster.nodes[2]?.proposeConfChange(ConfChangeV2(changes: [.init(.addLearner, 5)]))
        }
    }
}
