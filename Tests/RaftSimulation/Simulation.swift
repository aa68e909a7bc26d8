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
    /// Once faults heal, a leader must commit a proposal within this many ticks. Generous
    /// because of runs without pre-vote: nodes whose logs are too short to win keep starting
    /// elections that reset everyone's timer, and in a joint configuration whose halves have
    /// two members each, every voter must vote for the one node that can win in the same term
    /// (seed 120 took more than 300 ticks).
    public var livenessTicks: UInt64 = 600
    public var electionTimeoutTicks = 10
    public var leaseClockDriftTicks = 1
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
    /// Chance that a Ready whose hard state changes the vote or the term ends in a crash:
    /// after sending what may leave early and before the write, or after the write and
    /// before the rest is sent. Votes are where a write-ordering bug makes two leaders.
    public var voteCrashProbability = 0.08
    /// Chance per tick of cutting the leader off from everyone, both ways, for
    /// `leaderFaultTicks` (a random span of one to four election timeouts).
    public var leaderIsolateProbability = 0.004
    /// Chance per tick of cutting one follower off from what the leader sends (one way) for
    /// one to four election timeouts: it times out and campaigns while the rest still hear
    /// the leader.
    public var leaderToFollowerCutProbability = 0.004
    /// Chance that, when a node whose log is as long as the leader's starts a (pre-)campaign
    /// while the leader is up, the leader stops hearing anything (it still sends) for one to
    /// four election timeouts.
    public var deafenLeaderInElectionProbability = 0.5
    /// Chance per tick of pausing the leader (a stopped process, a stalled disk): it neither
    /// ticks nor hears nor sends for one to four election timeouts, then resumes.
    public var leaderPauseProbability = 0.003
    /// A resumed node first catches up the ticks it missed, as the store's tick loop does. Off
    /// only to show that the simulator sees what happens without it.
    public var tickCatchUpOnResume = true
    /// Chance per tick of a leader in a non-joint configuration proposing a change that goes
    /// through a joint configuration it must leave explicitly, after a random delay of up to
    /// `jointDwellTicksMax`.
    public var explicitJointProbability = 0.01
    public var jointDwellTicksMax: UInt64 = 60
    /// Chance that a leader entering a joint configuration is cut off, then and there, from
    /// enough of one half that this half has no majority while the other keeps one.
    public var jointCutProbability = 0.5
    /// Each node's clock runs at its own rate, `1 ± clockRateSpread` ticks per simulated
    /// tick, with its own phase. Within the lease's drift bound: two clocks part by at most
    /// `leaseClockDriftTicks` over an election timeout.
    public var clockRateSpread: Double
    public var confChangeProbability = 0.01
    public var transferProbability = 0.005
    public var proposeProbability = 0.3
    public var readProbability = 0.2
    /// Chance per tick, for every node that believes it leads, of a read and of a write sent
    /// to it: a deposed leader that still serves shows up as a stale read.
    public var leaderReadProbability = 1.0
    public var leaderProposeProbability = 0.3
    /// Writes are sent to a leader only while fewer entries than this wait to commit there.
    public var leaderBacklogEntriesMax: UInt64 = 8
    /// Chance per tick of a quiet spell of one to four election timeouts with reads but no
    /// writes: logs even out, so a node cut off from the leader can win an election while
    /// the others still hear from it (what leases, and check-quorum, are about).
    public var quietSpellProbability = 0.01
    /// Chance per tick that a leader whose group may sleep (`RaftNode.canSleep`) starts
    /// falling asleep. Sleeping nodes do not tick (their clocks are handed the ticks, as a
    /// store does); a sleeping follower wakes when its host would presume the leader's
    /// process gone: the leader crashed, paused, or cut from it for `leaderGoneTicks`.
    public var sleepProbability = 0.3
    /// Chance per tick of an idle spell (two to eight election timeouts without any request):
    /// groups fall asleep; in half of them the sleeping leader is then isolated or paused for
    /// three to six election timeouts, so the rest elect a new leader while it sleeps.
    public var idleSpellProbability = 0.005
    public var leaderGoneTicks: UInt64 = 20
    public var snapshotEveryEntries: UInt64 = 25
    /// Every this many ticks, note every node's role, term, vote and log in the events (for
    /// reading a failing seed's trace: `FLOTILLA_SIM_STATES=N`).
    public var noteStatesEveryTicks: UInt64?
    /// Events kept for a failure's report (the older half is dropped past this).
    public var eventsKeptMax = 400

    public init(nodeCount: Int) {
        self.nodeCount = nodeCount
        clockRateSpread = Self.clockRateSpreadWithinDrift(driftTicks: leaseClockDriftTicks, electionTimeoutTicks: electionTimeoutTicks)
    }

    /// The widest rate spread whose clocks part by less than `driftTicks` over an election
    /// timeout (two clocks at `1 + s` and `1 - s` part by `2s` per tick), with a margin.
    public static func clockRateSpreadWithinDrift(driftTicks: Int, electionTimeoutTicks: Int) -> Double {
        0.9 * Double(driftTicks) / Double(2 * electionTimeoutTicks)
    }

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

    /// The node counts seeds cycle through.
    public static let nodeCounts = [1, 3, 5, 7]

    /// The options CI runs `seed` with: every node count gets a quarter of the seeds, and
    /// every other group of four seeds runs under heavy leader churn.
    public static func forSeed(_ seed: UInt64) -> SimulationOptions {
        let nodeCount = nodeCounts[Int(seed % UInt64(nodeCounts.count))]
        return (seed / 4) % 2 == 1 ? .stormy(nodeCount: nodeCount) : SimulationOptions(nodeCount: nodeCount)
    }
}

/// What a simulation run did, so a reader can see the faults it claims actually happened.
public struct SimulationReport: Sendable, CustomStringConvertible {
    public var seeds = 0
    public var ticks: UInt64 = 0
    /// Faults injected, by kind.
    public var faults: [String: Int] = [:]
    public var elections = 0
    public var jointConfigurationsEntered = 0
    public var leaseReadsServed: UInt64 = 0
    public var readsChecked = 0
    public var writesAcknowledged = 0
    /// Seeds by Raft settings ("pre-vote, check-quorum" …).
    public var settings: [String: Int] = [:]

    public init() {}

    public mutating func merge(_ other: SimulationReport) {
        seeds += other.seeds
        ticks += other.ticks
        faults.merge(other.faults, uniquingKeysWith: +)
        elections += other.elections
        jointConfigurationsEntered += other.jointConfigurationsEntered
        leaseReadsServed += other.leaseReadsServed
        readsChecked += other.readsChecked
        writesAcknowledged += other.writesAcknowledged
        settings.merge(other.settings, uniquingKeysWith: +)
    }

    public var description: String {
        """
        Raft simulation: \(seeds) seeds, \(ticks) ticks, \(elections) leaders elected, \(jointConfigurationsEntered) joint configurations entered
          reads checked \(readsChecked) (\(leaseReadsServed) served from a lease), writes acknowledged \(writesAcknowledged)
          settings: \(settings.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
          faults: \(faults.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        """
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

/// A message on the simulated wire; `order` shuffles those that arrive in the same tick.
struct InFlightMessage {
    let order: UInt64
    let message: Message
}

/// A whole Raft group on a seeded, simulated network and clock, checking safety invariants
/// after every tick and liveness once faults heal. Deterministic for a seed.
public struct Simulation {
    public let seed: UInt64
    public let options: SimulationOptions
    var random: SplitMix64
    var nodes: [NodeID: SimulatedNode] = [:]
    /// The role of every node that is up (a crashed node has none), kept in step with the
    /// nodes so the hot paths need not copy them to ask.
    var roles: [NodeID: Role] = [:]
    /// Paused nodes, and the tick each resumes at.
    var pausedUntil: [NodeID: UInt64] = [:]
    /// Ticks a sleeping follower's leader has been gone (crashed, paused, cut off) for it.
    var leaderGoneFor: [NodeID: UInt64] = [:]
    /// Each node's clock: ticks per simulated tick, and the fraction of a tick run up.
    var clockRates: [NodeID: Double] = [:]
    var clockPhases: [NodeID: Double] = [:]
    /// Messages on the wire, by the tick they arrive at.
    var inFlight: [UInt64: [InFlightMessage]] = [:]
    /// Messages that arrived at a paused node: delivered when it resumes, in arrival order.
    var heldForPaused: [NodeID: [InFlightMessage]] = [:]
    var messageOrder: UInt64 = 0
    /// Ids of the nodes that are up, in order.
    var aliveIDs: [NodeID] = []
    /// Directed links that drop everything, until healed at random.
    var cutLinks: Set<[NodeID]> = []
    /// Directed links cut by a fault aimed at a leader, until a set tick.
    var timedCuts: [(until: UInt64, links: Set<[NodeID]>)] = []
    var clock: UInt64 = 0
    public internal(set) var events: [String] = []
    var faultsEnabled = true
    /// Nodes that were leading when they crashed (they may be slower to come back).
    var crashedWhileLeading: Set<NodeID> = []
    /// When each current leader took office.
    var leaderSince: [NodeID: UInt64] = [:]
    /// The explicit joint change in flight: its log index, and when to leave it.
    var explicitJoint: (index: UInt64, leaveAt: UInt64)?
    /// Indexes of the conf-change entries that entered a joint configuration.
    var jointEntryIndexes: Set<UInt64> = []
    public internal(set) var report = SimulationReport()
    /// The last vote each node granted (sent, whether or not the network delivered it).
    var votesSent: [NodeID: (term: UInt64, candidate: NodeID)] = [:]
    /// Nodes that crashed on a vote come back quickly, at these ticks, while the election
    /// they voted in is still on.
    var quickRestartAt: [NodeID: UInt64] = [:]
    /// When to cut a level voter off from the leader during the current quiet spell.
    var quietCutAt: UInt64?
    /// No client writes until this tick.
    var quietUntil: UInt64?
    /// No requests at all until then (an idle spell), and when its leader fault falls.
    var idleUntil: UInt64?
    var idleFaultAt: UInt64?
    /// An invariant broken where the simulator cannot throw; thrown at the end of the step.
    var pendingFailure: SimulationFailure?

    // Invariant bookkeeping.
    var leaderOfTerm: [UInt64: NodeID] = [:]
    /// The one committed sequence every node must apply a prefix of: the entry at index i is
    /// at position i - 1.
    var appliedSequence: [(term: UInt64, data: [UInt8])] = []
    /// For each applied entry, a term at or after the one it was committed in: the term of
    /// the node that applied it first (it learnt the commit from a leader of that term or
    /// earlier). Leaders of later terms must hold the entry (leader completeness).
    var committedByTerm: [UInt64] = []
    var nextWriteValue: UInt64 = 1
    /// Writes proposed: value → (proposing node, invocation tick).
    var writeInvocations: [UInt64: (node: NodeID, at: UInt64)] = [:]
    /// Acknowledged writes in the order they were acknowledged: the tick, and the highest log
    /// index of any write acknowledged so far.
    var acknowledgedWrites: [(at: UInt64, highestIndex: UInt64)] = []
    /// Leader completeness is checked up to this many applied entries for (leader, term).
    var completenessChecked: [NodeID: (term: UInt64, upTo: UInt64)] = [:]
    var nextReadContext: UInt64 = 1
    var readInvocations: [[UInt8]: UInt64] = [:]
    public var readsChecked: Int { report.readsChecked }
    public var writesAcknowledged: Int { report.writesAcknowledged }

    public init(seed: UInt64, options: SimulationOptions) {
        self.seed = seed
        self.options = options
        random = SplitMix64(seed: seed)
        let voters = Set((1...UInt64(options.nodeCount)))
        for id in 1...UInt64(options.nodeCount + options.spareNodeCount) {
            let storage = MemoryStorage()
            if voters.contains(id) { storage.bootstrap(voters: voters) }
            nodes[id] = SimulatedNode(id: id, storage: storage, raft: makeRaft(id: id, storage: storage))
            roles[id] = .follower
            aliveIDs.append(id)
            clockRates[id] = 1 + options.clockRateSpread * (2 * unitRandom() - 1)
            clockPhases[id] = unitRandom()
        }
        report.seeds = 1
        let config = makeConfig(id: 1)
        report.settings["\(config.preVote ? "pre-vote" : "no pre-vote"), \(config.checkQuorum ? "check-quorum" : "no check-quorum")"] = 1
    }

    func makeRaft(id: NodeID, storage: MemoryStorage) -> RaftNode {
        RaftNode(config: makeConfig(id: id), storage: storage)
    }

    /// The Raft settings of node `id` under this seed.
    func makeConfig(id: NodeID) -> RaftConfig {
        var config = RaftConfig(id: id)
        config.electionTimeoutTicks = options.electionTimeoutTicks
        config.leaseClockDriftTicks = options.leaseClockDriftTicks
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
        return config
    }

    mutating func note(_ event: @autoclosure () -> String) {
        events.append("t\(clock) \(event())")
        if events.count > options.eventsKeptMax { events.removeFirst(options.eventsKeptMax / 2) }
    }

    mutating func count(_ fault: String) {
        report.faults[fault, default: 0] += 1
    }

    func failure(_ invariant: String) -> SimulationFailure {
        SimulationFailure(seed: seed, nodeCount: options.nodeCount, tick: clock, invariant: invariant, recentEvents: events)
    }

    mutating func unitRandom() -> Double {
        Double(random.next() >> 11) / Double(1 << 53)
    }

    mutating func chance(_ probability: Double) -> Bool {
        unitRandom() < probability
    }

    mutating func pick<T>(_ items: [T]) -> T? {
        items.isEmpty ? nil : items[Int(random.next() % UInt64(items.count))]
    }

    mutating func ticks(from low: UInt64, to high: UInt64) -> UInt64 {
        low + random.next() % (high - low + 1)
    }

    /// Nodes that are up and not paused.
    var runningIDs: [NodeID] {
        if pausedUntil.isEmpty { return aliveIDs }
        var running: [NodeID] = []
        for id in aliveIDs where pausedUntil[id] == nil { running.append(id) }
        return running
    }

    var leaders: [NodeID] {
        var leaders: [NodeID] = []
        for id in aliveIDs where roles[id] == .leader && pausedUntil[id] == nil { leaders.append(id) }
        return leaders
    }

    mutating func refreshRole(_ id: NodeID) {
        roles[id] = nodes[id]?.raft?.role
    }

    // MARK: Running

    /// Runs the faulty phase, heals everything, then demands progress.
    public mutating func run() throws(SimulationFailure) {
        defer { finishReport() }
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

    mutating func finishReport() {
        report.ticks = clock
        for id in aliveIDs { report.leaseReadsServed += nodes[id]?.raft?.leaseReadsServed ?? 0 }
        report.jointConfigurationsEntered = jointEntryIndexes.count
    }

    func writeWasAcknowledged(_ value: UInt64) -> Bool {
        writeInvocations[value] == nil && value < nextWriteValue
    }

    mutating func heal() {
        faultsEnabled = false
        cutLinks = []
        timedCuts = []
        for id in nodes.keys.sorted() where nodes[id]?.raft == nil { restart(id) }
        for id in pausedUntil.keys.sorted() { resume(id) }
        note("heal: all links restored, all nodes running")
    }

    mutating func step() throws(SimulationFailure) {
        clock += 1
        if faultsEnabled { injectFaults() }
        timedCuts.removeAll { $0.until <= clock }
        for id in pausedUntil.keys.sorted() where (pausedUntil[id] ?? .max) <= clock { resume(id) }
        advanceClocks()
        try deliverMessages()
        runClients()
        if let pendingFailure { throw pendingFailure }
        for id in runningIDs { try processReady(id) }
        leaveExplicitJointWhenDue()
        if let pendingFailure { throw pendingFailure }
        if let every = options.noteStatesEveryTicks, every > 0, clock % every == 0 {
            for id in aliveIDs {
                guard let raft = nodes[id]?.raft else { continue }
                note("  \(id) \(raft.role) t\(raft.term) vote \(raft.vote) leader \(raft.leader) commit \(raft.committedIndex) last \(raft.lastIndex)@\((try? raft.term(at: raft.lastIndex)) ?? 0)")
            }
        }
        try checkInvariants()
    }

    /// Each running node's clock moves by its own rate; a paused node's clock runs on, and
    /// the node catches up the ticks when it resumes.
    mutating func advanceClocks() {
        for id in aliveIDs {
            var phase = (clockPhases[id] ?? 0) + (clockRates[id] ?? 1)
            if pausedUntil[id] == nil {
                while phase >= 1 {
                    phase -= 1
                    tickOrPassAsleep(id)
                }
                tendSleep(id)
                refreshRole(id)
            }
            clockPhases[id] = phase
        }
    }

    /// One tick of a node's clock: run, or handed to it as a sleeping host does.
    mutating func tickOrPassAsleep(_ id: NodeID) {
        if nodes[id]?.raft?.isAsleep == true { nodes[id]?.raft?.passTicksAsleep(1) } else { nodes[id]?.raft?.tick() }
    }

    /// The host's half of sleeping, as a store does it: a quiet leader may start sleeping; a
    /// sleeping follower whose leader's process is gone (crashed, paused, cut off) for
    /// `leaderGoneTicks` wakes.
    mutating func tendSleep(_ id: NodeID) {
        guard let raft = nodes[id]?.raft else { return }
        if raft.role == .leader && raft.canSleep && !raft.isFallingAsleep && chance(options.sleepProbability) {
            nodes[id]?.raft?.startSleeping()
            count("sleep: leader starts sleeping")
            return
        }
        guard raft.isAsleep, raft.role != .leader else { leaderGoneFor[id] = nil; return }
        if leaderReachable(from: id) {
            leaderGoneFor[id] = nil
        } else {
            let gone = (leaderGoneFor[id] ?? 0) + 1
            leaderGoneFor[id] = gone
            if gone >= options.leaderGoneTicks {
                wakeIfAsleep(id)
                count("sleep: follower woken by its leader's death")
            }
        }
    }

    /// Whether `id`'s leader's process runs and reaches it (what store liveness tells).
    func leaderReachable(from id: NodeID) -> Bool {
        guard let leader = nodes[id]?.raft?.leader, leader != noNode, leader != id else { return false }
        return nodes[leader]?.raft != nil && pausedUntil[leader] == nil && !linkIsCut(leader, id)
    }

    mutating func wakeIfAsleep(_ id: NodeID) {
        guard nodes[id]?.raft?.isAsleep == true else { return }
        let leaderAlive = leaderReachable(from: id)
        nodes[id]?.raft?.wake(leaderAlive: leaderAlive)
        leaderGoneFor[id] = nil
        count("sleep: woken")
    }

    mutating func runClients() {
        if faultsEnabled && quietUntil == nil && chance(options.quietSpellProbability) {
            let until = clock + ticks(from: UInt64(2 * options.electionTimeoutTicks), to: UInt64(4 * options.electionTimeoutTicks))
            quietUntil = until
            note("quiet spell: no writes until t\(until)")
            count("workload: quiet spell")
            // Once the logs are level, a voter that stops hearing the leader can win an election
            // while the others still hear it.
            if chance(0.5) { quietCutAt = clock + 5 }
        }
        if let until = quietUntil, until <= clock || !faultsEnabled { quietUntil = nil }
        if let at = quietCutAt, at <= clock {
            quietCutAt = nil
            if let until = quietUntil { cutLeaderFromOneFollower(until: until) }
        }
        if idleSpell() { return }
        let writing = quietUntil == nil
        if chance(options.proposeProbability), writing, let id = pick(runningIDs) { _ = propose(at: id) }
        if chance(options.readProbability), let id = pick(runningIDs) { requestRead(at: id) }
        for id in leaders {
            // Clients hold back while the leader has a backlog (as a client with bounded
            // concurrency does): the slowest flow-control shapes replicate one entry per round
            // trip, and unbounded load would make liveness a matter of queue length.
            if chance(options.leaderProposeProbability), writing,
               let raft = nodes[id]?.raft, raft.lastIndex - raft.committedIndex < options.leaderBacklogEntriesMax {
                _ = propose(at: id)
            }
            if chance(options.leaderReadProbability) { requestRead(at: id) }
        }
    }

    /// Starts, runs and ends idle spells; true while one runs (no client sends anything).
    mutating func idleSpell() -> Bool {
        if faultsEnabled && idleUntil == nil && quietUntil == nil && chance(options.idleSpellProbability) {
            let timeout = UInt64(options.electionTimeoutTicks)
            let spell = ticks(from: 2 * timeout, to: 8 * timeout)
            idleUntil = clock + spell
            if chance(0.5) {
                let faultAfter = ticks(from: timeout, to: 2 * timeout)
                idleFaultAt = clock + faultAfter
            }
            let event = "idle spell: no requests until t\(clock + spell)"
            note(event)
            count("workload: idle spell")
        }
        guard let until = idleUntil else { return false }
        if let at = idleFaultAt, at <= clock {
            idleFaultAt = nil
            if let id = leaders.first, nodes[id]?.raft?.isAsleep == true {
                let faultUntil = clock + ticks(from: UInt64(3 * options.electionTimeoutTicks), to: UInt64(6 * options.electionTimeoutTicks))
                if chance(0.5) {
                    cut(id, from: nodes.keys.filter { $0 != id }, until: faultUntil)
                    let event = "sleeping leader \(id) isolated until t\(faultUntil)"
                    note(event)
                    count("sleeping leader isolated")
                } else {
                    pausedUntil[id] = faultUntil
                    let event = "sleeping leader \(id) paused until t\(faultUntil)"
                    note(event)
                    count("sleeping leader paused")
                }
            }
        }
        if until <= clock || !faultsEnabled {
            idleUntil = nil
            idleFaultAt = nil
            return false
        }
        return true
    }

    // MARK: Faults

    mutating func injectFaults() {
        if chance(options.partitionProbability), let id = pick(nodes.keys.sorted()) {
            let others = nodes.keys.filter { $0 != id }
            if chance(0.5) {
                for other in others { cutLinks.insert([id, other]); cutLinks.insert([other, id]) }
                note("partition: \(id) isolated")
                count("partition: node isolated")
            } else if let other = pick(others.sorted()) {
                cutLinks.insert([id, other])
                note("partition: one-way \(id)→\(other) cut")
                count("partition: one-way link cut")
            }
        }
        if !cutLinks.isEmpty && chance(0.05) {
            cutLinks = []
            note("partition healed")
        }
        if chance(options.crashProbability), let id = pick(aliveIDs) { crash(id, fault: "crash: any node") }
        if chance(options.leaderCrashProbability), let id = leaders.first { crash(id, fault: "crash: leader") }
        for id in leaders where clock - (leaderSince[id] ?? 0) < options.newLeaderTicks
            && chance(options.newLeaderCrashProbability) {
            crash(id, fault: "crash: new leader")
        }
        for id in nodes.keys.sorted() where nodes[id]?.raft == nil {
            if let at = quickRestartAt[id] {
                if at <= clock { restart(id) }
                continue
            }
            let probability = crashedWhileLeading.contains(id) ? options.crashedLeaderRestartProbability : options.restartProbability
            if chance(probability) { restart(id) }
        }
        if chance(options.leaderIsolateProbability), let id = leaders.first {
            let until = clock + ticks(from: UInt64(options.electionTimeoutTicks), to: UInt64(4 * options.electionTimeoutTicks))
            cut(id, from: nodes.keys.filter { $0 != id }, until: until)
            note("leader \(id) isolated until t\(until)")
            count("leader isolated")
        }
        if chance(options.leaderToFollowerCutProbability) {
            cutLeaderFromOneFollower(until: clock + ticks(from: UInt64(options.electionTimeoutTicks), to: UInt64(4 * options.electionTimeoutTicks)))
        }
        if chance(options.leaderPauseProbability), let id = leaders.first {
            let until = clock + ticks(from: UInt64(options.electionTimeoutTicks), to: UInt64(4 * options.electionTimeoutTicks))
            pausedUntil[id] = until
            note("leader \(id) paused until t\(until)")
            count("leader paused")
        }
        if chance(options.confChangeProbability) { randomConfChange() }
        if chance(options.explicitJointProbability) { enterExplicitJoint() }
        if chance(options.transferProbability), let leaderID = leaders.first,
           let target = pick(Array(nodes[leaderID]?.raft?.confState.voters ?? []).sorted()) {
            wakeIfAsleep(leaderID)
            try? nodes[leaderID]?.raft?.transferLeader(to: target)
            note("transfer leader \(leaderID) → \(target)")
            count("leader transfer")
        }
    }

    /// Cuts what the leader sends to one voter, until `until`.
    mutating func cutLeaderFromOneFollower(until: UInt64) {
        // A voter whose log is level with the leader's: it can win once it times out.
        guard let id = leaders.first, let raft = nodes[id]?.raft else { return }
        let level = raft.confState.voters.union(raft.confState.votersOutgoing).subtracting([id]).filter {
            raft.replicationStates[$0]?.match == raft.lastIndex
        }
        guard let follower = pick(level.sorted()) else { return }
        timedCuts.append((until, [[id, follower]]))
        note("leader \(id)'s messages to \(follower) cut until t\(until)")
        count("leader cut from one follower, one way")
    }

    /// Cuts every link between `id` and `others`, both ways, until `until`.
    mutating func cut(_ id: NodeID, from others: [NodeID], until: UInt64) {
        var links: Set<[NodeID]> = []
        for other in others { links.insert([id, other]); links.insert([other, id]) }
        timedCuts.append((until, links))
    }

    mutating func resume(_ id: NodeID) {
        guard pausedUntil.removeValue(forKey: id) != nil else { return }
        // What the node's clock ran up while it was stopped.
        var missed = 0
        var phase = clockPhases[id] ?? 0
        while phase >= 1 {
            phase -= 1
            missed += 1
            if options.tickCatchUpOnResume { tickOrPassAsleep(id) }
        }
        clockPhases[id] = phase
        refreshRole(id)
        let how = options.tickCatchUpOnResume ? "catching up \(missed) ticks" : "\(missed) ticks behind"
        note("\(id) resumes, \(how)")
        // Client requests that queued while it was stopped may be taken before the peer
        // messages that queued too (they come on other connections).
        if roles[id] == .leader { requestRead(at: id) }
    }

    mutating func crash(_ id: NodeID, fault: String) {
        guard let raft = nodes[id]?.raft else { return }
        // A vote that left the node is on its disk: otherwise it could vote again in that term.
        if let vote = votesSent[id], let persisted = nodes[id]?.storage.hardState, pendingFailure == nil,
           persisted.term < vote.term || (persisted.term == vote.term && persisted.vote != vote.candidate) {
            pendingFailure = failure("node \(id) crashed after sending its vote for \(vote.candidate) in term \(vote.term), but its storage holds term \(persisted.term) vote \(persisted.vote): the vote was not durable when it left")
        }
        if raft.role == .leader { crashedWhileLeading.insert(id) } else { crashedWhileLeading.remove(id) }
        report.leaseReadsServed += raft.leaseReadsServed
        nodes[id]?.raft = nil
        nodes[id]?.pendingReads = []
        roles[id] = nil
        aliveIDs.removeAll { $0 == id }
        pausedUntil[id] = nil
        heldForPaused[id] = nil
        note(fault == "crash: any node" || fault == "crash: leader" || fault == "crash: new leader" ? "crash \(id)" : "crash \(id): \(fault)")
        count(fault)
    }

    mutating func restart(_ id: NodeID) {
        guard var node = nodes[id] else { return }
        node.raft = makeRaft(id: id, storage: node.storage)
        // The state machine restarts from the snapshot; the log replays the rest.
        let snapshot = node.storage.snapshot()
        (node.lastWriteIndex, node.lastWriteValue) = Self.decodeRegister(snapshot.data)
        node.appliedIndex = snapshot.metadata.index
        nodes[id] = node
        refreshRole(id)
        aliveIDs = roles.keys.sorted()
        quickRestartAt[id] = nil
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
            wakeIfAsleep(leaderID)
            let index = try nodes[leaderID]?.raft?.proposeConfChange(ConfChangeV2(changes: changes, transition: transition))
            note("conf change at \(leaderID) index \(index ?? 0): \(changes.map { "\($0.kind) \($0.nodeID)" }) \(transition)")
            self.count("conf change proposed")
        } catch {
            note("conf change refused at \(leaderID): \(error)")
        }
    }

    /// Proposes a change through a joint configuration that only an explicit empty change
    /// leaves: one voter out (removed or demoted to learner), one node in, and sometimes a
    /// second swap, so the two halves differ.
    mutating func enterExplicitJoint() {
        guard explicitJoint == nil, let leaderID = leaders.first, let conf = nodes[leaderID]?.raft?.confState,
              !conf.isJoint, conf.voters.count >= 3 || options.nodeCount == 1 else { return }
        let outsiders = nodes.keys.filter { !conf.voters.contains($0) }.sorted()
        let swaps = 1 + Int(random.next() % 2)
        var changes: [ConfChangeSingle] = []
        var leaving = conf.voters.sorted().shuffled(using: &random)
        var joining = outsiders.shuffled(using: &random)
        for _ in 0..<swaps {
            guard let out = leaving.popLast(), let incoming = joining.popLast() else { break }
            changes.append(ConfChangeSingle(.addVoter, incoming))
            changes.append(ConfChangeSingle(chance(0.5) ? .remove : .addLearner, out))
        }
        guard !changes.isEmpty else { return }
        do {
            wakeIfAsleep(leaderID)
            guard let index = try nodes[leaderID]?.raft?.proposeConfChange(ConfChangeV2(changes: changes, transition: .jointExplicit)) else { return }
            let dwell = ticks(from: 1, to: options.jointDwellTicksMax)
            explicitJoint = (index, clock + dwell)
            note("explicit joint change at \(leaderID) index \(index): \(changes.map { "\($0.kind) \($0.nodeID)" }), to be left after \(dwell) ticks")
            count("explicit joint change proposed")
        } catch {
            note("explicit joint change refused at \(leaderID): \(error)")
        }
    }

    /// Once an explicit joint configuration's delay is up, whoever leads proposes leaving it
    /// (again each tick until it is left; a new leader in a joint configuration too). Done
    /// once a leader that applied the entering entry is out of the joint configuration (or the
    /// entry lost its place in the log).
    mutating func leaveExplicitJointWhenDue() {
        guard let plan = explicitJoint, clock >= plan.leaveAt || !faultsEnabled,
              let leaderID = leaders.first, let raft = nodes[leaderID]?.raft else { return }
        if raft.confState.isJoint {
            wakeIfAsleep(leaderID)
            if let index = try? nodes[leaderID]?.raft?.proposeConfChange(.leaveJoint) {
                note("leave joint proposed at \(leaderID) index \(index)")
                count("explicit joint leave proposed")
            }
        } else if raft.appliedIndex >= plan.index {
            explicitJoint = nil
        }
    }

    // MARK: Network

    mutating func send(_ message: Message) {
        if message.kind == .voteResponse && !message.reject {
            votesSent[message.from] = (message.term, message.to)
        }
        if faultsEnabled && chance(options.dropProbability) { return }
        let copies = faultsEnabled && chance(options.duplicateProbability) ? 2 : 1
        for _ in 0..<copies {
            let delay = 1 + random.next() % options.maxDelayTicks
            messageOrder += 1
            inFlight[clock + delay, default: []].append(InFlightMessage(order: messageOrder ^ (random.next() & 0xFF_FFFF), message: message))
        }
    }

    func linkIsCut(_ from: NodeID, _ to: NodeID) -> Bool {
        if cutLinks.isEmpty && timedCuts.isEmpty { return false }
        if cutLinks.contains([from, to]) { return true }
        for cut in timedCuts where cut.links.contains([from, to]) { return true }
        return false
    }

    /// Delivers the messages due, checking a rule at the boundary: a pre-vote request never
    /// changes the receiver's term. (A granted pre-vote may: it can win the pre-election,
    /// and the real campaign that follows moves to the next term.)
    mutating func deliverMessages() throws(SimulationFailure) {
        // Messages to a paused node wait (as in its socket) until it resumes.
        var due = inFlight.removeValue(forKey: clock) ?? []
        due.sort { $0.order < $1.order }
        for id in heldForPaused.keys.sorted() where pausedUntil[id] == nil {
            due = (heldForPaused.removeValue(forKey: id) ?? []) + due
        }
        for item in due {
            let message = item.message
            if pausedUntil[message.to] != nil {
                heldForPaused[message.to, default: []].append(item)
                continue
            }
            guard roles[message.to] != nil, !linkIsCut(message.from, message.to) else { continue }
            if nodes[message.to]?.raft?.wakes(on: message) == true { wakeIfAsleep(message.to) }
            let termBefore = message.kind == .requestPreVote ? nodes[message.to]?.raft?.term : nil
            let leaseReadsBefore = message.kind == .readIndex ? nodes[message.to]?.raft?.leaseReadsServed : nil
            nodes[message.to]?.raft?.step(message)
            refreshRole(message.to)
            if let leaseReadsBefore { checkLeaseRead(at: message.to, leaseReadsBefore: leaseReadsBefore) }
            if let termBefore, let termAfter = nodes[message.to]?.raft?.term, termAfter != termBefore {
                throw failure("a \(message.kind) (\(message)) moved node \(message.to)'s term from \(termBefore) to \(termAfter)")
            }
        }
    }

    // MARK: Clients

    mutating func propose(at id: NodeID) -> UInt64? {
        let value = nextWriteValue
        wakeIfAsleep(id)
        guard (try? nodes[id]?.raft?.propose(Self.encodeWrite(value))) != nil else { return nil }
        nextWriteValue += 1
        writeInvocations[value] = (id, clock)
        return value
    }

    mutating func requestRead(at id: NodeID) {
        let context = Self.encodeWrite(nextReadContext)
        let leaseReadsBefore = nodes[id]?.raft?.leaseReadsServed ?? 0
        wakeIfAsleep(id)
        guard (try? nodes[id]?.raft?.readIndex(context: context)) != nil else { return }
        nextReadContext += 1
        readInvocations[context] = clock
        checkLeaseRead(at: id, leaseReadsBefore: leaseReadsBefore)
    }

    /// What a lease stands for, checked whenever a read is served from one: no node leads a
    /// later term (followers that acknowledged the lease holder refuse to elect anyone until
    /// it runs out). A broken lease shows here even when no write happened to be stale.
    mutating func checkLeaseRead(at id: NodeID, leaseReadsBefore: UInt64) {
        guard pendingFailure == nil, let raft = nodes[id]?.raft, raft.leaseReadsServed > leaseReadsBefore else { return }
        for (other, role) in roles.sorted(by: { $0.key < $1.key }) where other != id && role == .leader {
            if let otherTerm = nodes[other]?.raft?.term, otherTerm > raft.term {
                pendingFailure = failure("node \(id) served a read from its lease in term \(raft.term) while node \(other) leads term \(otherTerm)")
                return
            }
        }
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
