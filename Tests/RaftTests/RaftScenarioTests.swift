import Raft
import Testing

/// A tiny lossless cluster for scenario tests: messages are delivered in order, everything is
/// persisted at once, and every message exchanged is kept as a readable transcript.
struct ScenarioCluster {
    var nodes: [NodeID: RaftNode] = [:]
    var storages: [NodeID: MemoryStorage] = [:]
    var applied: [NodeID: [[UInt8]]] = [:]
    var isolated: Set<NodeID> = []
    var transcript: [String] = []

    init(voters: [NodeID]) {
        for id in voters {
            let storage = MemoryStorage()
            storage.bootstrap(voters: Set(voters))
            var config = RaftConfig(id: id)
            config.randomSeed = 7
            storages[id] = storage
            nodes[id] = RaftNode(config: config, storage: storage)
            applied[id] = []
        }
        settle()
    }

    /// Runs every node's Ready and delivers messages until nothing moves.
    mutating func settle() {
        for _ in 0..<100 {
            var queue: [Message] = []
            for id in nodes.keys.sorted() {
                guard var node = nodes[id], node.hasReady, let storage = storages[id] else { continue }
                let ready = node.ready()
                if let snapshot = ready.snapshotToInstall { storage.applySnapshot(snapshot) }
                storage.append(ready.entriesToPersist)
                if let hardState = ready.hardState { storage.setHardState(hardState) }
                queue += ready.messagesNow + ready.messagesAfterPersist
                for entry in ready.committedEntries where entry.kind == .normal && !entry.data.isEmpty {
                    applied[id, default: []].append(entry.data)
                }
                node.advance(ready)
                nodes[id] = node
            }
            if queue.isEmpty && !nodes.values.contains(where: \.hasReady) { return }
            for message in queue {
                if isolated.contains(message.from) || isolated.contains(message.to) {
                    transcript.append("drop \(message)")
                    continue
                }
                transcript.append("\(message)")
                nodes[message.to]?.step(message)
            }
        }
    }

    mutating func tick(_ count: Int = 1, only: NodeID? = nil) {
        for _ in 0..<count {
            for id in nodes.keys.sorted() where only == nil || only == id { nodes[id]?.tick() }
            settle()
        }
    }

    var leaders: [NodeID] { nodes.keys.filter { nodes[$0]?.role == .leader }.sorted() }
}

@Suite("Raft scenarios")
struct RaftScenarioTests {
    @Test func electionThenReplication() throws {
        // n1 campaigns; n2 and n3 grant its pre-vote and vote; n1 appends a no-op and commits.
        var cluster = ScenarioCluster(voters: [1, 2, 3])
        cluster.tick(10)  // let each node pass one election timeout, so votes are no disruption
        cluster.nodes[1]?.campaign()
        cluster.settle()
        #expect(cluster.leaders == [1], "transcript:\n\(cluster.transcript.joined(separator: "\n"))")
        #expect(cluster.transcript.contains { $0.hasPrefix("1→2 requestPreVote") })
        #expect(cluster.transcript.contains { $0.hasPrefix("2→1 voteResponse") && $0.hasSuffix("grant") })
        try cluster.nodes[1]?.propose(Array("x=1".utf8))
        cluster.settle()
        for id: NodeID in [1, 2, 3] {
            #expect(cluster.applied[id] == [Array("x=1".utf8)], "node \(id) applied the proposal")
        }
    }

    @Test func followerRefusesProposalsAndNamesTheLeader() throws {
        var cluster = ScenarioCluster(voters: [1, 2, 3])
        cluster.tick(10)
        cluster.nodes[1]?.campaign()
        cluster.settle()
        #expect(throws: RaftError.notLeader(leader: 1)) { try cluster.nodes[2]?.propose([1]) }
    }

    @Test func partitionedNodeDoesNotDisruptAfterRejoining() {
        // n3 is cut off and times out again and again; with pre-vote it never raises its term,
        // so when it comes back the leader keeps leading in the same term.
        var cluster = ScenarioCluster(voters: [1, 2, 3])
        cluster.tick(10)
        cluster.nodes[1]?.campaign()
        cluster.settle()
        let term = cluster.nodes[1]?.term
        cluster.isolated = [3]
        cluster.tick(60)
        #expect(cluster.nodes[3]?.term == term, "pre-vote kept n3's term")
        cluster.isolated = []
        cluster.tick(5)
        #expect(cluster.leaders == [1])
        #expect(cluster.nodes[1]?.term == term)
    }

    @Test func jointConsensusReplacesAVoter() throws {
        // Replace n3 by n4 in one change: enter C_old,new, then leave it automatically.
        var cluster = ScenarioCluster(voters: [1, 2, 3])
        let storage = MemoryStorage()
        var config = RaftConfig(id: 4)
        config.randomSeed = 7
        cluster.storages[4] = storage
        cluster.nodes[4] = RaftNode(config: config, storage: storage)
        cluster.tick(10)
        cluster.nodes[1]?.campaign()
        cluster.settle()
        try cluster.nodes[1]?.proposeConfChange(ConfChangeV2(changes: [.init(.addVoter, 4), .init(.remove, 3)]))
        for _ in 0..<20 { cluster.tick() }
        let conf = try #require(cluster.nodes[1]?.confState)
        #expect(conf.voters == [1, 2, 4] && !conf.isJoint, "\(conf)")
        #expect(cluster.nodes[4]?.confState.voters == [1, 2, 4], "the new voter learnt the configuration from the log")
        try cluster.nodes[1]?.propose(Array("after".utf8))
        cluster.settle()
        #expect(cluster.applied[4]?.last == Array("after".utf8))
    }

    @Test func confChangeEncodingAndValidation() throws {
        let change = ConfChangeV2(changes: [.init(.addVoter, 4), .init(.addLearner, 9), .init(.remove, 1)], transition: .jointExplicit)
        #expect(ConfChangeV2(decoding: change.encoded()) == change)
        #expect(ConfChangeV2(decoding: [9, 0, 0]) == nil, "unknown transition")
        #expect(ConfChangeV2(decoding: [0, 0, 2, 0]) == nil, "truncated")
        let conf = ConfState(voters: [1, 2, 3])
        #expect(throws: RaftError.self) { try conf.applying(ConfChangeV2(changes: [.init(.remove, 1), .init(.remove, 2), .init(.remove, 3)])) }
        #expect(throws: RaftError.self) { try conf.applying(.leaveJoint) }
        #expect(throws: RaftError.self) { try conf.applying(ConfChangeV2(changes: [.init(.addVoter, 4), .init(.remove, 4)])) }
        let joint = try conf.applying(ConfChangeV2(changes: [.init(.addVoter, 4), .init(.addLearner, 3)]))
        #expect(joint.isJoint && joint.votersOutgoing == [1, 2, 3] && joint.learnersNext == [3])
        let left = try joint.applying(.leaveJoint)
        #expect(left.voters == [1, 2, 4] && left.learners == [3] && !left.isJoint)
    }
}
