@testable import Raft
import Testing

/// The rules of sleeping groups (`Raft/Sleep.swift`), one scenario each; each fails when its
/// rule is broken.
@Suite("Raft: sleeping groups")
struct SleepScenarioTests {
    private func quietGroup() -> ScenarioCluster {
        var cluster = ScenarioCluster(voters: [1, 2, 3])
        cluster.elect(1, ticking: [1, 2, 3])
        _ = try? cluster.nodes[1]?.propose([1])
        cluster.settle()
        cluster.tick(2)
        return cluster
    }

    @Test func aQuietGroupSleepsOnEveryMemberAndThenSendsNothing() throws {
        var cluster = quietGroup()
        #expect(cluster.nodes[1]?.canSleep == true, "\(cluster.nodes[1]?.sleepBlocker ?? "")")
        cluster.nodes[1]?.startSleeping()
        cluster.settle()
        for id: NodeID in [1, 2, 3] { #expect(cluster.nodes[id]?.isAsleep == true, "node \(id) sleeps") }
        let terms = cluster.nodes.mapValues(\.term)
        let sent = cluster.transcript.count
        cluster.tick(100)
        #expect(cluster.transcript.count == sent, "a sleeping group sends nothing: \(cluster.transcript.suffix(3))")
        #expect(cluster.nodes.mapValues(\.term) == terms, "and elects nobody")
        #expect(cluster.nodes[2]?.ticksSinceLeaderContact == 100, "while its clock runs on")
    }

    @Test func aGroupWithWorkDoesNotSleep() throws {
        var cluster = quietGroup()
        cluster.isolated = [3]
        _ = try cluster.nodes[1]?.propose([2])
        cluster.settle()
        #expect(cluster.nodes[1]?.canSleep == false, "a follower is behind")
        #expect(cluster.nodes[1]?.sleepBlocker?.contains("behind") == true)
        cluster.isolated = []
        cluster.tick(2)
        #expect(cluster.nodes[1]?.canSleep == true)
        #expect(cluster.nodes[2]?.canSleep == false, "only a leader sleeps a group")
        try cluster.nodes[1]?.transferLeader(to: 2)
        #expect(cluster.nodes[1]?.canSleep == false, "not while transferring leadership")
    }

    @Test func aLostSleepHeartbeatIsSentAgainUntilEveryFollowerSleeps() throws {
        var cluster = quietGroup()
        let dropped = Counter()
        cluster.dropIf = { message in
            guard message.kind == .heartbeat, message.sleep, message.to == 3, dropped.count == 0 else { return false }
            dropped.count += 1
            return true
        }
        cluster.nodes[1]?.startSleeping()
        cluster.settle()
        #expect(cluster.nodes[1]?.isAsleep == false && cluster.nodes[1]?.isFallingAsleep == true,
                "the leader waits for every follower's answer")
        #expect(cluster.nodes[3]?.isAsleep == false)
        cluster.tick(2)
        for id: NodeID in [1, 2, 3] { #expect(cluster.nodes[id]?.isAsleep == true, "node \(id) sleeps after the resend") }
    }

    @Test func aFollowerNotCaughtUpRefusesAndItsAnswerWakesTheLeader() throws {
        var cluster = quietGroup()
        cluster.nodes[1]?.startSleeping()
        cluster.settle()
        var follower = try #require(cluster.nodes[2])
        follower.wake(leaderAlive: true)
        var ahead = Message(kind: .heartbeat, from: 1, to: 2)
        ahead.term = follower.term
        ahead.commit = follower.lastIndex + 1
        ahead.sleep = true
        follower.step(ahead)
        let answer = try #require(follower.ready().messagesAfterPersist.first { $0.kind == .heartbeatResponse })
        #expect(!follower.isAsleep && !answer.sleep && answer.reject, "a follower whose log ends short of the commit stays awake")
        #expect(cluster.nodes[1]?.wakes(on: answer) == true, "its refusal wakes the sleeping leader")
        var plain = answer
        plain.reject = false
        #expect(cluster.nodes[1]?.wakes(on: plain) == false, "a late answer to an earlier heartbeat does not")
    }

    @Test func wakesOnEverythingButItsOwnSleepTraffic() throws {
        var cluster = quietGroup()
        cluster.nodes[1]?.startSleeping()
        cluster.settle()
        let follower = try #require(cluster.nodes[2])
        let term = follower.term
        func message(_ kind: MessageKind, from: NodeID, to: NodeID, term: UInt64, sleep: Bool) -> Message {
            var message = Message(kind: kind, from: from, to: to)
            message.term = term
            message.sleep = sleep
            return message
        }
        #expect(!follower.wakes(on: message(.heartbeat, from: 1, to: 2, term: term, sleep: true)))
        #expect(follower.wakes(on: message(.heartbeat, from: 1, to: 2, term: term, sleep: false)))
        #expect(follower.wakes(on: message(.heartbeat, from: 1, to: 2, term: term + 1, sleep: true)), "a newer term wakes")
        #expect(follower.wakes(on: message(.appendEntries, from: 1, to: 2, term: term, sleep: false)))
        #expect(follower.wakes(on: message(.requestPreVote, from: 3, to: 2, term: term + 1, sleep: false)))
        #expect(follower.wakes(on: message(.heartbeat, from: 3, to: 2, term: term, sleep: true)), "a sleep heartbeat from a non-leader wakes")
        let leader = try #require(cluster.nodes[1])
        #expect(!leader.wakes(on: message(.heartbeatResponse, from: 2, to: 1, term: term, sleep: true)))
        #expect(leader.wakes(on: message(.appendResponse, from: 2, to: 1, term: term, sleep: false)))
        #expect(leader.wakes(on: message(.readIndex, from: 2, to: 1, term: term, sleep: false)))
    }

    /// A sleeping leader's lease ends when it would have ended awake: its host hands it the
    /// ticks that passed, and the first read after a long sleep needs a heartbeat round.
    @Test func aSleepingLeadersLeaseEndsWithRealTime() throws {
        var cluster = quietGroup()
        cluster.nodes[1]?.startSleeping()
        cluster.settle()
        var leader = try #require(cluster.nodes[1])
        var forgetful = leader
        leader.passTicksAsleep(UInt64(leader.config.electionTimeoutTicks))
        leader.wake(leaderAlive: true)
        let served = leader.leaseReadsServed
        try leader.readIndex(context: [1])
        #expect(leader.leaseReadsServed == served, "the lease ran out while it slept")
        #expect(leader.ready().messagesNow.contains { $0.kind == .heartbeat && $0.context == [1] }, "a heartbeat round confirms the read")
        // The same leader whose host forgot the ticks would have served it from a dead lease.
        forgetful.wake(leaderAlive: true)
        try forgetful.readIndex(context: [1])
        #expect(forgetful.leaseReadsServed == served + 1, "the rule this test guards is what stops it")
    }

    /// Woken long after its leader's last word, a follower grants a pre-vote (its refusal ran
    /// out with real time); woken while its host knows the leader alive, it refuses one.
    @Test func aWokenFollowerVotesByRealTimeUnlessItsLeaderIsKnownAlive() throws {
        var cluster = quietGroup()
        cluster.nodes[1]?.startSleeping()
        cluster.settle()
        var gone = try #require(cluster.nodes[3])
        var alive = gone
        let ticks = UInt64(3 * gone.config.electionTimeoutTicks)
        gone.passTicksAsleep(ticks)
        alive.passTicksAsleep(ticks)
        gone.wake(leaderAlive: false)
        alive.wake(leaderAlive: true)
        var preVote = Message(kind: .requestPreVote, from: 2, to: 3)
        preVote.term = gone.term + 1
        preVote.index = gone.lastIndex
        preVote.logTerm = try gone.term(at: gone.lastIndex)
        gone.step(preVote)
        alive.step(preVote)
        #expect(gone.ready().messagesAfterPersist.contains { $0.kind == .preVoteResponse && !$0.reject }, "the leader is gone: vote")
        #expect(!alive.ready().messagesAfterPersist.contains { $0.kind == .preVoteResponse && !$0.reject }, "the leader lives: no vote")
    }

    /// A loop that fell behind runs its owed ticks as one: the clock moves by all of them, the
    /// election timer by one, so a follower never campaigns for its own lateness.
    @Test func owedTicksMoveTheClockButNotTheElectionTimer() throws {
        let cluster = quietGroup()
        var late = try #require(cluster.nodes[2])
        var punctual = late
        let before = late.ticksSinceLeaderContact
        late.tick(passing: 40)
        #expect(late.role == .follower && late.ticksSinceLeaderContact == before + 40)
        for _ in 0..<40 { punctual.tick() }
        #expect(punctual.role != .follower, "forty real ticks alone do make it campaign")
    }
}
