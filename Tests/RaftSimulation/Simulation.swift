import Raft

/// A violated invariant, with the seed and the command that replays it.
public struct SimulationFailure: Error, CustomStringConvertible {
    public let seed: UInt64
    public let nodeCount: Int
    public let tick: UInt64
    public let invariant: String
    public let recentEvents: [String]

    public var description: String {
        """
        Raft simulation failed: \(invariant)
          seed \(seed), \(nodeCount) nodes, at tick \(tick)
          replay: FLOTILLA_SIM_SEED=\(seed) swift test --filter RaftSimulationTests
        last events:
        \(recentEvents.suffix(60).map { "  " + $0 }.joined(separator: "\n"))
        """
    }
}

/// Fault and workload rates of one simulation run.
public struct SimulationOptions: Sendable {
    public var nodeCount: Int
    /// Extra nodes, outside the initial configuration, that membership changes may add.
    public var spareNodeCount = 2
    public var faultTicks: UInt64 = 400
    public var livenessTicks: UInt64 = 300
    public var electionTimeoutTicks = 10
    public var dropProbability = 0.05
    public var duplicateProbability = 0.02
    public var maxDelayTicks: UInt64 = 3
    public var partitionProbability = 0.01
    public var crashProbability = 0.004
    public var restartProbability = 0.05
    /// Extra chance per tick of crashing whoever leads: drives the leader churn under which
    /// logs diverge across terms (the Raft paper's figure 7 and 8 situations).
    public var leaderCrashProbability = 0.0
    /// Chance per tick of crashing a leader in its first `newLeaderTicks` ticks: new leaders
    /// that die half-way through replicating leave logs that diverge across terms.
    public var newLeaderCrashProbability = 0.0
    public var newLeaderTicks: UInt64 = 6
    /// Chance that a leader crashes right after applying newly committed entries, before its
    /// next messages go out: commit points are where wrong commit rules do their damage.
    public var crashAfterCommitProbability = 0.0
    /// Restart rate of nodes that crashed while leading; lower than `restartProbability` in
    /// stormy runs, so the rest of the group must carry on (and elect) without them.
    public var crashedLeaderRestartProbability = 0.05
    public var confChangeProbability = 0.01
    public var transferProbability = 0.005
    public var proposeProbability = 0.3
    public var readProbability = 0.2
    public var snapshotEveryEntries: UInt64 = 25

    public init(nodeCount: Int) { self.nodeCount = nodeCount }

    /// Heavy leader churn, quick restarts and lossy links.
    public static func stormy(nodeCount: Int) -> SimulationOptions {
        var options = SimulationOptions(nodeCount: nodeCount)
        options.dropProbability = 0.15
        options.leaderCrashProbability = 0.03
        options.newLeaderCrashProbability = 0.15
        options.crashAfterCommitProbability = 0.1
        options.crashedLeaderRestartProbability = 0.02
        options.restartProbability = 0.25
        options.partitionProbability = 0.02
        options.proposeProbability = 0.6
        return options
    }
}

/// One node of the simulated cluster: its durable storage, its Raft core (nil while crashed)
/// and its state machine, a register holding the last written value.
struct SimulatedNode {
    let id: NodeID
    let storage: MemoryStorage
    var raft: RaftNode?
    /// The register: index of the last write applied, and its value.
    var lastWriteIndex: UInt64 = 0
    var lastWriteValue: UInt64 = 0
    var appliedIndex: UInt64 = 0
    /// Confirmed reads waiting for the applied index to reach their read index.
    var pendingReads: [(readState: ReadState, invokedAt: UInt64)] = []
}

/// A whole Raft group on a seeded, simulated network and clock, checking safety invariants
/// after every tick and liveness once faults heal. Deterministic for a seed.
public struct Simulation {
    public let seed: UInt64
    public let options: SimulationOptions
    var random: SplitMix64
    var nodes: [NodeID: SimulatedNode] = [:]
    var inFlight: [(deliverAt: UInt64, order: UInt64, message: Message)] = []
    var messageOrder: UInt64 = 0
    /// Directed links that drop everything.
    var cutLinks: Set<[NodeID]> = []
    var clock: UInt64 = 0
    public internal(set) var events: [String] = []
    var faultsEnabled = true
    /// Nodes that were leading when they crashed (they may be slower to come back).
    var crashedWhileLeading: Set<NodeID> = []
    /// When each current leader took office.
    var leaderSince: [NodeID: UInt64] = [:]

    // Invariant bookkeeping.
    var leaderOfTerm: [UInt64: NodeID] = [:]
    /// The one committed sequence every node must apply a prefix of.
    var appliedSequence: [UInt64: (term: UInt64, data: [UInt8])] = [:]
    /// For each applied entry, a term at or after the one it was committed in: the term of
    /// the node that applied it first (it learnt the commit from a leader of that term or
    /// earlier). Leaders of later terms must hold the entry (leader completeness).
    var committedByTerm: [UInt64: UInt64] = [:]
    var nextWriteValue: UInt64 = 1
    /// Writes proposed: value → (proposing node, invocation tick).
    var writeInvocations: [UInt64: (node: NodeID, at: UInt64)] = [:]
    /// Acknowledged writes: (ack tick, log index).
    var acknowledgedWrites: [(at: UInt64, index: UInt64)] = []
    var nextReadContext: UInt64 = 1
    var readInvocations: [[UInt8]: UInt64] = [:]
    public internal(set) var readsChecked = 0
    public internal(set) var writesAcknowledged = 0

    public init(seed: UInt64, options: SimulationOptions) {
        self.seed = seed
        self.options = options
        random = SplitMix64(seed: seed)
        let voters = Set((1...UInt64(options.nodeCount)))
        for id in 1...UInt64(options.nodeCount + options.spareNodeCount) {
            let storage = MemoryStorage()
            if voters.contains(id) { storage.bootstrap(voters: voters) }
            nodes[id] = SimulatedNode(id: id, storage: storage, raft: makeRaft(id: id, storage: storage))
        }
    }

    func makeRaft(id: NodeID, storage: MemoryStorage) -> RaftNode {
        var config = RaftConfig(id: id)
        config.electionTimeoutTicks = options.electionTimeoutTicks
        // Flow-control limits vary with the seed: one entry per append (so an old entry and the
        // new leader's no-op travel, and get lost, separately) up to large batches.
        let shape = Int((seed / 4) % 4)
        config.maxAppendBytes = [1, 64, 256, 4_096][shape]
        config.maxInflightMessages = [1, 2, 4, 16][shape]
        // So do pre-vote and check-quorum (and with it leases): all four are valid settings.
        let protections = Int((seed / 8) % 4)
        config.preVote = protections & 1 == 0
        config.checkQuorum = protections & 2 == 0
        // And whether a new commit index is sent at once or with the next append or heartbeat.
        config.broadcastCommit = (seed / 32) % 2 == 0
        config.randomSeed = seed
        return RaftNode(config: config, storage: storage)
    }

    mutating func note(_ event: @autoclosure () -> String) {
        events.append("t\(clock) \(event())")
        if events.count > 400 { events.removeFirst(200) }
    }

    func failure(_ invariant: String) -> SimulationFailure {
        SimulationFailure(seed: seed, nodeCount: options.nodeCount, tick: clock, invariant: invariant, recentEvents: events)
    }

    mutating func chance(_ probability: Double) -> Bool {
        Double(random.next() >> 11) / Double(1 << 53) < probability
    }

    mutating func pick<T>(_ items: [T]) -> T? {
        items.isEmpty ? nil : items[Int(random.next() % UInt64(items.count))]
    }

    var aliveIDs: [NodeID] { nodes.keys.filter { nodes[$0]?.raft != nil }.sorted() }
    var leaders: [NodeID] { aliveIDs.filter { nodes[$0]?.raft?.role == .leader } }

    // MARK: Running

    /// Runs the faulty phase, heals everything, then demands progress.
    public mutating func run() throws(SimulationFailure) {
        while clock < options.faultTicks { try step() }
        heal()
        let healedAt = clock
        var probeValue: UInt64? = nil
        while clock < healedAt + options.livenessTicks {
            try step()
            if probeValue == nil, let leaderID = leaders.first, nodes[leaderID]?.raft?.leadTransferee == noNode {
                probeValue = propose(at: leaderID)
            }
            if let value = probeValue, let leaderID = leaders.first,
               let node = nodes[leaderID], node.lastWriteValue >= value || writeWasAcknowledged(value) {
                return
            }
        }
        let states = aliveIDs.compactMap { id in
            nodes[id]?.raft.map { "\(id): \($0.role) t\($0.term) commit \($0.committedIndex) applied \($0.appliedIndex) last \($0.lastIndex) voters \($0.confState.voters.sorted()) out \($0.confState.votersOutgoing.sorted()) learners \($0.confState.learners.sorted())\($0.role == .leader ? " transferee \($0.leadTransferee) progress \($0.replicationStates.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value.match)/\($0.value.state)" })" : "")" }
        }
        throw failure("no leader committed a proposal within \(options.livenessTicks) ticks after faults healed (leaders: \(leaders)); nodes: \(states.joined(separator: "; "))")
    }

    func writeWasAcknowledged(_ value: UInt64) -> Bool {
        writeInvocations[value] == nil && value < nextWriteValue
    }

    mutating func heal() {
        faultsEnabled = false
        cutLinks = []
        for id in nodes.keys.sorted() where nodes[id]?.raft == nil { restart(id) }
        note("heal: all links restored, all nodes running")
    }

    mutating func step() throws(SimulationFailure) {
        clock += 1
        if faultsEnabled { injectFaults() }
        deliverMessages()
        for id in aliveIDs { nodes[id]?.raft?.tick() }
        if chance(options.proposeProbability), let id = pick(aliveIDs) { _ = propose(at: id) }
        if chance(options.readProbability), let id = pick(aliveIDs) { requestRead(at: id) }
        for id in aliveIDs { try processReady(id) }
        try checkInvariants()
    }

    // MARK: Faults

    mutating func injectFaults() {
        if chance(options.partitionProbability), let id = pick(nodes.keys.sorted()) {
            let others = nodes.keys.filter { $0 != id }
            if chance(0.5) {
                for other in others { cutLinks.insert([id, other]); cutLinks.insert([other, id]) }
                note("partition: \(id) isolated")
            } else if let other = pick(others.sorted()) {
                cutLinks.insert([id, other])
                note("partition: one-way \(id)→\(other) cut")
            }
        }
        if !cutLinks.isEmpty && chance(0.05) {
            cutLinks = []
            note("partition healed")
        }
        if chance(options.crashProbability), let id = pick(aliveIDs) { crash(id) }
        if chance(options.leaderCrashProbability), let id = leaders.first { crash(id) }
        for id in leaders where clock - (leaderSince[id] ?? 0) < options.newLeaderTicks
            && chance(options.newLeaderCrashProbability) {
            crash(id)
        }
        for id in nodes.keys.sorted() where nodes[id]?.raft == nil {
            let probability = crashedWhileLeading.contains(id) ? options.crashedLeaderRestartProbability : options.restartProbability
            if chance(probability) { restart(id) }
        }
        if chance(options.confChangeProbability) { randomConfChange() }
        if chance(options.transferProbability), let leaderID = leaders.first,
           let target = pick(Array(nodes[leaderID]?.raft?.confState.voters ?? []).sorted()) {
            try? nodes[leaderID]?.raft?.transferLeader(to: target)
            note("transfer leader \(leaderID) → \(target)")
        }
    }

    mutating func crash(_ id: NodeID) {
        if nodes[id]?.raft?.role == .leader { crashedWhileLeading.insert(id) } else { crashedWhileLeading.remove(id) }
        nodes[id]?.raft = nil
        nodes[id]?.pendingReads = []
        note("crash \(id)")
    }

    mutating func restart(_ id: NodeID) {
        guard var node = nodes[id] else { return }
        node.raft = makeRaft(id: id, storage: node.storage)
        // The state machine restarts from the snapshot; the log replays the rest.
        let snapshot = node.storage.snapshot()
        (node.lastWriteIndex, node.lastWriteValue) = Self.decodeRegister(snapshot.data)
        node.appliedIndex = snapshot.metadata.index
        nodes[id] = node
        note("restart \(id) from snapshot \(snapshot.metadata.index), log to \(node.storage.lastIndex)")
    }

    mutating func randomConfChange() {
        guard let leaderID = leaders.first, let conf = nodes[leaderID]?.raft?.confState, !conf.isJoint else { return }
        let all = nodes.keys.sorted()
        var changes: [ConfChangeSingle] = []
        let count = 1 + Int(random.next() % 2)
        for id in all.shuffled(using: &random).prefix(count) {
            if conf.voters.contains(id) {
                // Keep at least three voters (one when the group started with one).
                if conf.voters.count - changes.filter({ $0.kind != .addVoter }).count <= min(3, options.nodeCount) { continue }
                changes.append(ConfChangeSingle(chance(0.5) ? .remove : .addLearner, id))
            } else if conf.learners.contains(id) {
                changes.append(ConfChangeSingle(chance(0.7) ? .addVoter : .remove, id))
            } else {
                changes.append(ConfChangeSingle(chance(0.5) ? .addLearner : .addVoter, id))
            }
        }
        guard !changes.isEmpty else { return }
        let transition: ConfChangeTransition = chance(0.3) ? .jointImplicit : .auto
        do {
            let index = try nodes[leaderID]?.raft?.proposeConfChange(ConfChangeV2(changes: changes, transition: transition))
            note("conf change at \(leaderID) index \(index ?? 0): \(changes.map { "\($0.kind) \($0.nodeID)" }) \(transition)")
        } catch {
            note("conf change refused at \(leaderID): \(error)")
        }
    }

    // MARK: Network

    mutating func send(_ message: Message) {
        if faultsEnabled && chance(options.dropProbability) { return }
        let copies = faultsEnabled && chance(options.duplicateProbability) ? 2 : 1
        for _ in 0..<copies {
            let delay = 1 + random.next() % options.maxDelayTicks
            messageOrder += 1
            inFlight.append((clock + delay, messageOrder ^ (random.next() & 0xFF_FFFF), message))
        }
    }

    mutating func deliverMessages() {
        let due = inFlight.filter { $0.deliverAt <= clock }.sorted { $0.order < $1.order }
        inFlight.removeAll { $0.deliverAt <= clock }
        for item in due {
            let message = item.message
            guard !cutLinks.contains([message.from, message.to]), nodes[message.to]?.raft != nil else { continue }
            nodes[message.to]?.raft?.step(message)
        }
    }

    // MARK: Clients

    mutating func propose(at id: NodeID) -> UInt64? {
        let value = nextWriteValue
        guard (try? nodes[id]?.raft?.propose(Self.encodeWrite(value))) != nil else { return nil }
        nextWriteValue += 1
        writeInvocations[value] = (id, clock)
        return value
    }

    mutating func requestRead(at id: NodeID) {
        let context = Self.encodeWrite(nextReadContext)
        guard (try? nodes[id]?.raft?.readIndex(context: context)) != nil else { return }
        nextReadContext += 1
        readInvocations[context] = clock
    }

    static func encodeWrite(_ value: UInt64) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    static func decodeValue(_ bytes: [UInt8]) -> UInt64 {
        bytes.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    static func decodeRegister(_ data: [UInt8]) -> (UInt64, UInt64) {
        guard data.count == 16 else { return (0, 0) }
        return (decodeValue(Array(data[0..<8])), decodeValue(Array(data[8..<16])))
    }
}
