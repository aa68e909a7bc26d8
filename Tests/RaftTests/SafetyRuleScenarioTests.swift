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
}
