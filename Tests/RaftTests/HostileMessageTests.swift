import Raft
@testable import raft_step_fuzzer
import Testing

/// Messages no correct peer sends (forged, corrupted, from other code): the core refuses them,
/// counts them, changes nothing and never traps — and a node that persisted an impossible term
/// before such messages were refused still starts.
@Suite("Raft: hostile messages")
struct HostileMessageTests {
    /// A three-node group with node 1 leading, settled.
    func ledCluster() -> ScenarioCluster {
        var cluster = ScenarioCluster(voters: [1, 2, 3])
        cluster.elect(1, ticking: [1, 2, 3])
        #expect(cluster.leaders == [1])
        return cluster
    }

    @Test func aHeartbeatWithTheLargestTermIsRefusedAndNoNodeEverCampaignsPastTheBound() throws {
        var cluster = ledCluster()
        let termBefore = cluster.nodes[2]?.term ?? 0
        var forged = Message(kind: .heartbeat, from: 3, to: 2)
        forged.term = .max
        let refusal = cluster.nodes[2]?.step(forged)
        #expect(refusal?.reason.contains("above the limit") == true)
        #expect(cluster.nodes[2]?.term == termBefore)
        #expect(cluster.nodes[2]?.refusedMessages == 1)
        // The group keeps serving: elections and proposals still work (term + 1 never overflows).
        cluster.tick(40)
        _ = try cluster.nodes[cluster.leaders[0]]?.propose([1])
        cluster.settle()
        #expect(cluster.applied[2]?.last == [1])
    }

    @Test func valuesJustBelowTheBoundsAreAcceptedAndOneAboveRefused() {
        var atLimit = Message(kind: .requestVote, from: 3, to: 2)
        atLimit.term = RaftLimits.termMax
        atLimit.index = RaftLimits.indexMax
        #expect(atLimit.implausibility == nil)
        var above = atLimit
        above.term = RaftLimits.termMax + 1
        #expect(above.implausibility != nil)
        above = atLimit
        above.index = RaftLimits.indexMax + 1
        #expect(above.implausibility != nil)
    }

    @Test func aNodeAtTheTermBoundNeverCampaignsAndNeverTraps() throws {
        // As a store that persisted a forged term before this check existed would restart.
        let storage = MemoryStorage()
        storage.bootstrap(voters: [1, 2, 3])
        try storage.setHardState(HardState(term: .max, vote: noNode, commit: 1))
        var node = RaftNode(config: RaftConfig(id: 1), storage: storage)
        #expect(node.termExhausted)
        for _ in 0..<100 { node.tick() }
        node.campaign()
        #expect(node.role == .follower && node.term == .max)
        // A stale leader's message is answered, not acted on.
        var append = Message(kind: .appendEntries, from: 2, to: 1)
        append.term = 5
        node.step(append)
        #expect(node.term == .max)
    }

    enum Corruption: String, CaseIterable, Sendable {
        case entriesOutOfSequence, entryTermAboveMessageTerm, logTermAboveMessageTerm, commitBeyondAnyIndex, prevIndexBeyondAnyIndex

        func apply(to message: inout Message) {
            switch self {
            case .entriesOutOfSequence: message.entries = [Entry(term: 2, index: 9)]
            case .entryTermAboveMessageTerm: message.entries = [Entry(term: message.term + 1, index: message.index + 1)]
            case .logTermAboveMessageTerm: message.logTerm = message.term + 1
            case .commitBeyondAnyIndex: message.commit = .max
            case .prevIndexBeyondAnyIndex: message.index = .max
            }
        }
    }

    @Test(arguments: Corruption.allCases)
    func malformedAppendsAreRefused(_ corruption: Corruption) {
        var cluster = ledCluster()
        let term = cluster.nodes[2]?.term ?? 0
        var append = Message(kind: .appendEntries, from: 1, to: 2)
        append.term = term
        append.index = 1
        append.logTerm = 1
        corruption.apply(to: &append)
        let last = cluster.nodes[2]?.lastIndex
        #expect(cluster.nodes[2]?.step(append) != nil, "\(corruption)")
        #expect(cluster.nodes[2]?.lastIndex == last)
    }

    @Test func anAppendRewritingCommittedHistoryIsRefused() throws {
        var cluster = ledCluster()
        _ = try cluster.nodes[1]?.propose([7])
        cluster.settle()
        let node2 = try #require(cluster.nodes[2])
        let committed = node2.committedIndex
        // A "leader" of the next term claims a different entry at the committed index.
        var append = Message(kind: .appendEntries, from: 3, to: 2)
        append.term = node2.term + 1
        append.index = committed - 1
        append.logTerm = try node2.term(at: committed - 1)
        append.entries = [Entry(term: node2.term + 1, index: committed, data: [66])]
        let refusal = cluster.nodes[2]?.step(append)
        #expect(refusal?.reason.contains("conflicts with committed") == true)
        #expect(cluster.nodes[2]?.term == node2.term)
        #expect(try cluster.nodes[2]?.term(at: committed) == node2.term(at: committed))
    }

    @Test func aLeaderRefusesAcknowledgementsOfWhatItNeverSent() {
        var cluster = ledCluster()
        let term = cluster.nodes[1]?.term ?? 0
        let last = cluster.nodes[1]?.lastIndex ?? 0
        var beyond = Message(kind: .appendResponse, from: 2, to: 1)
        beyond.term = term
        beyond.index = last + 1_000
        #expect(cluster.nodes[1]?.step(beyond) != nil)
        var future = Message(kind: .heartbeatResponse, from: 2, to: 1)
        future.term = term
        future.sentAtTick = .max
        #expect(cluster.nodes[1]?.step(future) != nil)
        #expect(cluster.nodes[1]?.refusedMessages == 2)
        #expect(cluster.nodes[1]?.committedIndex ?? 0 <= last)
    }
}

/// The libFuzzer target's input interpreter, on seeded random inputs (`ops/fuzz raft-step` runs
/// it under libFuzzer for longer).
@Suite("Raft: fuzz inputs")
struct RaftFuzzInputTests {
    @Test func seededRandomInputsNeverTrapTheCore() {
        var random = SplitMix64(seed: 2_026)
        for _ in 0..<300 {
            RaftStepFuzzer.run((0..<Int.random(in: 0...400, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) })
        }
    }
}
