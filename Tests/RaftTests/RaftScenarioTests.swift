import Raft
import Testing

/// A tiny lossless cluster for scenario tests: messages are delivered in order, every message
/// exchanged is kept as a readable transcript, and by default every Ready is persisted before
/// its messages leave. `crashBeforePersisting` lets a scenario do what a store may: send a
/// Ready's `messagesNow` first, then crash before its write lands.
struct ScenarioCluster {
    var nodes: [NodeID: RaftNode] = [:]
    var storages: [NodeID: MemoryStorage] = [:]
    var configs: [NodeID: RaftConfig] = [:]
    /// Nodes whose next Ready is handled as "send `messagesNow`, then crash before the
    /// persist": nothing of it is written, `messagesAfterPersist` never leave, and the node
    /// restarts from its storage. Each node is taken out of the set once it has crashed.
    var crashBeforePersisting: Set<NodeID> = []
    /// Storage writes a node's Ready asked for and the storage refused (a broken core).
    var storageViolations: [String] = []
    var applied: [NodeID: [[UInt8]]] = [:]
    var readStates: [NodeID: [ReadState]] = [:]
    var isolated: Set<NodeID> = []
    /// Drops any message it returns true for (on top of `isolated`).
    var dropIf: (Message) -> Bool = { _ in false }
    var transcript: [String] = []

    init(voters: [NodeID], configure: (inout RaftConfig) -> Void = { _ in }) {
        for id in voters {
            let storage = MemoryStorage()
            storage.bootstrap(voters: Set(voters))
            var config = RaftConfig(id: id)
            config.randomSeed = 7
            configure(&config)
            storages[id] = storage
            configs[id] = config
            nodes[id] = RaftNode(config: config, storage: storage)
            applied[id] = []
        }
        settle()
    }

    /// A node with an empty log, in no configuration yet (a member to add).
    mutating func addEmptyNode(_ id: NodeID) {
        let storage = MemoryStorage()
        var config = RaftConfig(id: id)
        config.randomSeed = 7
        storages[id] = storage
        nodes[id] = RaftNode(config: config, storage: storage)
    }

    /// Runs every node's Ready and delivers messages until nothing moves.
    mutating func settle() {
        for _ in 0..<100 {
            var queue: [Message] = []
            for id in nodes.keys.sorted() {
                guard var node = nodes[id], node.hasReady, let storage = storages[id] else { continue }
                let ready = node.ready()
                if crashBeforePersisting.contains(id) {
                    queue += ready.messagesNow
                    transcript.append("crash \(id) after sending \(ready.messagesNow.count) messages, before persisting \(ready.hardState.map { "\($0)" } ?? "no hard state")")
                    crash(id)
                    continue
                }
                do {
                    try storage.persist(ready)
                } catch {
                    storageViolations.append("\(id): \(error)")
                }
                queue += ready.messagesNow + ready.messagesAfterPersist
                readStates[id, default: []] += ready.readStates
                for entry in ready.committedEntries where entry.kind == .normal && !entry.data.isEmpty {
                    applied[id, default: []].append(entry.data)
                }
                node.advance(ready)
                nodes[id] = node
            }
            if queue.isEmpty && !nodes.values.contains(where: \.hasReady) { return }
            for message in queue {
                if isolated.contains(message.from) || isolated.contains(message.to) || dropIf(message) {
                    transcript.append("drop \(message)")
                    continue
                }
                transcript.append("\(message)")
                // As a store does: a message that wakes a sleeping node wakes it first.
                if nodes[message.to]?.wakes(on: message) == true { nodes[message.to]?.wake(leaderAlive: true) }
                nodes[message.to]?.step(message)
            }
        }
    }

    /// Restarts `id` from what its storage holds; everything in memory is lost.
    mutating func crash(_ id: NodeID) {
        crashBeforePersisting.remove(id)
        guard let storage = storages[id], let config = configs[id] else { return }
        nodes[id] = RaftNode(config: config, storage: storage)
    }

    mutating func tick(_ count: Int = 1, only: Set<NodeID>? = nil) {
        for _ in 0..<count {
            for id in nodes.keys.sorted() where only?.contains(id) ?? true {
                // A sleeping node does not tick; its host hands it the time that passed.
                if nodes[id]?.isAsleep == true { nodes[id]?.passTicksAsleep(1) } else { nodes[id]?.tick() }
            }
            settle()
        }
    }

    /// Ticks `nodes` until `id` leads (at most `limit` ticks), campaigning it once the others'
    /// leases have run out.
    mutating func elect(_ id: NodeID, ticking nodes: Set<NodeID>, limit: Int = 60) {
        for _ in 0..<limit where self.nodes[id]?.role != .leader {
            tick(only: nodes)
            if self.nodes[id]?.role != .leader { self.nodes[id]?.campaign(); settle() }
        }
    }

    func entry(_ id: NodeID, at index: UInt64) -> Entry? {
        try? nodes[id]?.entries(from: index, maxBytes: 1).first
    }

    var leaders: [NodeID] { nodes.keys.filter { nodes[$0]?.role == .leader }.sorted() }
}

/// A mutable count shared with a message filter.
final class Counter: @unchecked Sendable { var count = 0 }

@Suite("Raft scenarios")
struct RaftScenarioTests {
    /// The Raft paper's figure 8: an entry of an earlier term that sits on a majority is not
    /// committed by counting replicas, because a node holding a newer conflicting entry can
    /// still win and overwrite it. Commit rule under test: only current-term entries commit by
    /// counting (§5.4.2). One entry per append, so the old entry and the new no-op travel apart.
    @Test func figure8EarlierTermEntryIsNotCommittedByCounting() throws {
        // Leases and pre-vote are off here: the scenario picks who wins each election.
        var cluster = ScenarioCluster(voters: [1, 2, 3]) {
            $0.maxAppendBytes = 1
            $0.checkQuorum = false
            $0.preVote = false
        }
        cluster.elect(1, ticking: [1])
        try cluster.nodes[1]?.propose(Array("a".utf8))
        cluster.settle()
        let base = try #require(cluster.nodes[1]?.lastIndex)   // committed on all three

        // (a) n1 (term 2) appends B at base+1 but is cut off before replicating it.
        cluster.isolated = [1]
        try cluster.nodes[1]?.propose(Array("B".utf8))
        let termOfB = try #require(cluster.nodes[1]?.term)

        // (b) n3 wins the next term with n2's vote and appends its no-op at base+1 and C at
        // base+2, but none of its appends get out.
        cluster.dropIf = { $0.from == 3 && ($0.kind == .appendEntries || $0.kind == .heartbeat) }
        cluster.elect(3, ticking: [3])
        #expect(cluster.nodes[3]?.role == .leader)
        try cluster.nodes[3]?.propose(Array("C".utf8))
        cluster.settle()
        #expect(cluster.entry(3, at: base + 1).map { $0.term } ?? 0 > termOfB)

        // (c) n3 goes down; n1 comes back and wins a later term with n2, then replicates B
        // (term 2) to n2, so B sits on a majority; n1's own no-op never reaches n2.
        cluster.isolated = [3]
        // The first probe after B (carrying the no-op) is let through so n2 rejects it and n1
        // backs up to send B alone; every later append after B is lost.
        let probesAfterB = Counter()
        cluster.dropIf = { message in
            guard message.from == 1, message.kind == .appendEntries, message.index == base + 1 else { return false }
            probesAfterB.count += 1
            return probesAfterB.count > 1
        }
        cluster.tick(1, only: [1])  // n1's heartbeat meets n2's newer term: n1 steps down
        #expect(cluster.nodes[1]?.role == .follower)
        cluster.elect(1, ticking: [1])
        #expect(cluster.nodes[1]?.role == .leader)
        cluster.tick(3, only: [1])
        #expect(cluster.entry(2, at: base + 1)?.data == Array("B".utf8), "B is on n1 and n2:\n\(cluster.transcript.suffix(30).joined(separator: "\n"))")
        let committedByN1 = try #require(cluster.nodes[1]?.committedIndex)
        #expect(committedByN1 <= base, "B, an earlier-term entry on a majority, is not committed by counting")

        // (d) n1 goes down; n3 (newer last term) wins with n2 and overwrites B with its own
        // entry, which then commits. Safe only because B was never committed.
        cluster.isolated = [1]
        cluster.dropIf = { _ in false }
        cluster.tick(1, only: [3])  // n3 (still leading term 3) meets n2's newer term
        cluster.elect(3, ticking: [3])
        cluster.tick(3, only: [3])
        #expect(cluster.nodes[3]?.role == .leader)
        let n3Commit = try #require(cluster.nodes[3]?.committedIndex)
        #expect(n3Commit >= base + 2)
        #expect(cluster.entry(2, at: base + 1)?.data != Array("B".utf8), "n3 replaced B on n2")
        #expect(cluster.entry(2, at: base + 1) == cluster.entry(3, at: base + 1))
    }

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
        cluster.addEmptyNode(4)
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

    @Test func aLeaderElectedInsideAJointConfigurationLeavesIt() throws {
        // n1 enters C_old,new replacing n3 by n4 but dies before its leave entry reaches
        // anyone. n2, elected in the joint configuration, must lead the region out of it.
        var cluster = ScenarioCluster(voters: [1, 2, 3])
        cluster.addEmptyNode(4)
        cluster.tick(10)
        cluster.nodes[1]?.campaign()
        cluster.settle()
        let leave = ConfChangeV2.leaveJoint.encoded()
        cluster.dropIf = { message in message.from == 1 && message.entries.contains { $0.kind == .confChange && $0.data == leave } }
        try cluster.nodes[1]?.proposeConfChange(ConfChangeV2(changes: [.init(.addVoter, 4), .init(.remove, 3)]))
        cluster.settle()
        #expect(cluster.nodes[2]?.confState.isJoint == true, "n2 applied the joint configuration")
        cluster.isolated = [1]
        cluster.dropIf = { _ in false }
        cluster.tick(40, only: [2, 3, 4])
        cluster.nodes[2]?.campaign()
        cluster.settle()
        for _ in 0..<10 { cluster.tick(1, only: [2, 3, 4]) }
        #expect(cluster.leaders.contains(2))
        let conf = try #require(cluster.nodes[2]?.confState)
        #expect(!conf.isJoint && conf.voters == [1, 2, 4], "\(conf)")
        #expect(cluster.nodes[4]?.confState.isJoint == false)
    }

    @Test func confChangeEncodingAndValidation() throws {
        let change = ConfChangeV2(changes: [.init(.addVoter, 4), .init(.addLearner, 9), .init(.remove, 1)], transition: .jointExplicit)
        #expect(ConfChangeV2(decoding: change.encoded()) == change)
        let withContext = ConfChangeV2(changes: [.init(.addLearner, 7)], context: [1, 2, 3])
        #expect(ConfChangeV2(decoding: withContext.encoded()) == withContext, "the application's context survives")
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
