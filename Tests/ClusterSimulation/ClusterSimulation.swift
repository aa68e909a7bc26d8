import FlotillaProto
import Foundation
import Linearizability
import PlacementDriver
import Raft
import RaftStore
import RocksDB

/// Fault and workload rates of one whole-cluster run (per tick unless said otherwise; a tick
/// is 10 ms of simulated time: a Raft tick, and PD's clock moves 10 ms).
public struct ClusterSimulationOptions: Sendable {
    public var storeCount = 5
    public var keyCount = 10
    public var clientCount = 5
    /// Faults are injected until this tick, then healed.
    public var faultTicks: UInt64 = 2_500
    /// After the heal, every key must be written and read again within this many ticks.
    public var livenessTicks: UInt64 = 2_000
    public var electionTimeoutTicks = 10
    public var heartbeatIntervalTicks: UInt64 = 10
    public var dropProbability = 0.03
    public var duplicateProbability = 0.01
    public var maxDelayTicks: UInt64 = 4
    public var partitionProbability = 0.002
    public var partitionTicks: ClosedRange<UInt64> = 20...400
    public var crashProbability = 0.0015
    /// Of the crashes, the share that falls inside a store's next turn, before one of its disk
    /// writes (the first four, at random); half of those keep unsynced writes (a process crash
    /// rather than a power loss).
    public var crashInTurnShare = 0.5
    public var restartTicks: ClosedRange<UInt64> = 5...300
    public var pauseProbability = 0.0008
    public var pauseTicks: ClosedRange<UInt64> = 5...80
    public var leaderPauseProbability = 0.0015
    public var slowDiskProbability = 0.0008
    public var slowDiskTicks: ClosedRange<UInt64> = 20...300
    public var pdLeaderChangeProbability = 0.0006
    public var pdOutageTicks: ClosedRange<UInt64> = 5...100
    public var splitProbability = 0.004
    public var moveProbability = 0.004
    public var transferProbability = 0.004
    /// A client operation not answered within this many ticks ends with an unknown outcome.
    public var operationTimeoutTicks: UInt64 = 400
    public var linearizabilityTimeout: Duration = .seconds(60)

    public init() {}
}

/// The whole cluster in one process on a simulated network and clock: `storeCount` real
/// `StoreCore`s (each on its own RocksDB), PD's real `PlacementDriver`, and register clients
/// retrying as `FlotillaClient` does (same client id and sequence, so a retried write never
/// applies twice). A seeded nemesis drops, delays, reorders and duplicates messages, cuts
/// links (both ways or one way), crashes stores losing what RocksDB did not sync, pauses
/// them, slows their disks, fails PD over, and asks PD for splits, moves and leader
/// transfers. Every run checks: the history is linearizable (so no acknowledged write is
/// lost: each key is read last), replicas of a region at the same applied index hold the
/// same data, no two regions on a store overlap, and the cluster serves again within
/// `livenessTicks` of the heal.
public final class ClusterSimulation {
    public let seed: UInt64
    public let options: ClusterSimulationOptions
    private var random: SeededRandom
    private let root: String
    private var stores: [UInt64: SimulatedStore] = [:]
    private var storeIDs: [UInt64] = []
    private var pd: SimulatedPD
    private var clients: [SimulatedClient] = []
    private var network: [SimEnvelope] = []
    private var messageOrder: UInt64 = 0
    /// Directed links cut until a tick: (from, to) → until.
    private var cutLinks: [SimNode: [SimNode: UInt64]] = [:]
    private(set) var tick: UInt64 = 0
    private var events: [String] = []
    public private(set) var report = ClusterSimulationReport()
    var history: [RegisterOperation] = []
    private var historyClock: UInt64 = 0
    let keys: [String]
    private var healedAt: UInt64?
    /// What succeeded after the heal: "key/read" and "key/write" marks, and keys with both.
    private var servedAfterHeal: Set<String> = []
    private var keysServedAfterHeal: Set<String> = []

    public init(seed: UInt64, options: ClusterSimulationOptions = ClusterSimulationOptions()) throws {
        self.seed = seed
        self.options = options
        random = SeededRandom(seed: seed)
        root = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-sim-\(seed)-\(UUID().uuidString)").path
        keys = (0..<options.keyCount).map { String(format: "k%02d", $0 * 10) }
        var timings = PDTimings()
        timings.regionHeartbeatIntervalMs = options.heartbeatIntervalTicks * 10 * 4
        timings.storeDisconnectMs = options.heartbeatIntervalTicks * 10 * 20
        timings.operatorStepTimeoutMs = 10 * 1_500
        timings.balanceIntervalMs = 500
        timings.idBatch = 50
        pd = SimulatedPD(timings: timings)
        report.seed = seed
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try bootstrap()
    }

    deinit {
        stores = [:]
        network = []
        try? FileManager.default.removeItem(atPath: root)
    }

    var nowMs: UInt64 { 1_000 + tick * 10 }
    /// The simulated time of the stores' loops and agents.
    var now: Duration { .milliseconds(Int64(tick) * 10) }

    /// The PD agent's settings in simulated time: every awake region led is heartbeat each
    /// `heartbeatIntervalTicks` round, a sleeping one every twenty; splits are retried after 1,000 ticks.
    private var reportingSettings: PDReporting.Settings {
        var settings = PDReporting.Settings()
        settings.regionHeartbeatInterval = .milliseconds(Int64(options.heartbeatIntervalTicks) * 10)
        settings.splitRetryInterval = .milliseconds(10_000)
        // Sleeping regions report twenty times less often; PD asks for those it has steps for.
        settings.sleepingRegionHeartbeatInterval = settings.regionHeartbeatInterval * 20
        return settings
    }

    // MARK: Setup

    /// PD gets a cluster id and the stores; the first region (every key) starts with one voter
    /// on the first store, as a real cluster bootstraps; PD's replica checker adds the others.
    private func bootstrap() throws {
        pd.becomeLeader(nowMs: nowMs)
        var command = Flotilla_V1_PDCommand()
        command.setClusterID = 7
        pd.apply(command)
        for _ in 0..<options.storeCount {
            guard let id = pd.allocate(1) else { throw failure("PD allocated no store id") }
            var store = Flotilla_V1_Store()
            store.id = id
            store.address = "sim:\(id)"
            store.raftAddress = "sim:\(id)"
            var put = Flotilla_V1_PDCommand()
            put.putStore = store
            try pd.apply(put).get()
            storeIDs.append(id)
            stores[id] = try SimulatedStore(id: id, root: root, raftSeed: seed &* 31 &+ id, electionTimeoutTicks: options.electionTimeoutTicks,
                                            reporting: reportingSettings, edge: SimulatedStoreEdge(storeID: id, simulation: self))
        }
        guard let regionID = pd.allocate(1), let peerID = pd.allocate(1) else { throw failure("PD allocated no region ids") }
        var region = Flotilla_V1_Region()
        region.id = regionID
        region.epoch.confVer = 1
        region.epoch.version = 1
        var peer = Flotilla_V1_Peer()
        peer.id = peerID
        peer.storeID = storeIDs[0]
        peer.role = .voter
        region.peers = [peer]
        var request = Flotilla_V1_BootstrapRequest()
        request.header.clusterID = 7
        request.store = pd.pd.state.stores[storeIDs[0]] ?? Flotilla_V1_Store()
        request.region = region
        var boot = Flotilla_V1_PDCommand()
        boot.bootstrap = request
        try pd.apply(boot).get()
        try stores[storeIDs[0]]?.core?.bootstrapRegion(region)
        clients = (0..<options.clientCount).map { SimulatedClient(index: $0, clientID: 1_000 + UInt64($0)) }
        for index in clients.indices { clients[index].routes = [region] }
        note("bootstrapped region \(regionID) on store \(storeIDs[0])")
    }

    // MARK: Running

    /// Runs the fault phase, heals, waits for service, reads every key, waits for replicas to
    /// catch up and checks everything. Throws the first violated invariant.
    public func run() throws -> ClusterSimulationReport {
        while tick < options.faultTicks {
            try step(faults: true)
        }
        heal()
        // Service again: every key written (or CAS'd) and read by operations invoked after the heal.
        while keysServedAfterHeal.count < keys.count {
            guard tick - (healedAt ?? tick) < options.livenessTicks else {
                throw failure("the cluster did not serve every key within \(options.livenessTicks) ticks of the heal (served: \(keysServedAfterHeal.sorted().joined(separator: ",")))")
            }
            try step(faults: false)
        }
        report.ticksToServeAfterHeal = tick - (healedAt ?? tick)
        // Quiesce the workload, then read every key once more (no acknowledged write lost).
        for index in clients.indices { clients[index].stopping = true }
        let quiesceDeadline = tick + options.operationTimeoutTicks + 50
        while clients.contains(where: { $0.operation != nil }) && tick < quiesceDeadline { try step(faults: false) }
        for (position, key) in keys.enumerated() { clients[position % clients.count].finalReads.append(key) }
        let readDeadline = tick + options.livenessTicks
        while clients.contains(where: { $0.operation != nil || !$0.finalReads.isEmpty }) {
            guard tick < readDeadline else { throw failure("final reads did not finish within \(options.livenessTicks) ticks") }
            try step(faults: false)
        }
        try awaitCaughtUpReplicas()
        try checkReplicas(final: true)
        try checkHistory()
        try checkSleepAndFailover()
        report.ticks = tick
        report.regionsAtEnd = pd.pd.regions.count
        report.regionSleeps = stores.values.reduce(0) { $0 + $1.regionSleepsTotal }
        report.regionWakes = stores.values.reduce(0) { $0 + $1.regionWakesTotal }
        return report
    }

    /// Sleeping regions, then a failover with every region asleep: with the workload stopped,
    /// regions fall asleep on their replicas; then the store leading the most regions is
    /// killed for good, and each region it led must elect a leader on another store within
    /// `storeDeadAfterTicks` and a few election timeouts (store liveness wakes them: no
    /// region heartbeat would).
    private func checkSleepAndFailover() throws {
        let up = { self.storeIDs.compactMap { self.stores[$0] }.filter { $0.isUp } }
        func replicas() -> (asleep: Int, all: Int) {
            up().reduce((0, 0)) { sum, store in
                guard let core = store.loop?.core else { return sum }
                return (sum.0 + core.sleepingRegionCount, sum.1 + core.regionIDs.count)
            }
        }
        let idleDeadline = tick + 600
        while tick < idleDeadline {
            try step(faults: false)
            let counted = replicas()
            if counted.asleep == counted.all { break }
        }
        (report.replicasAsleep, report.replicasAtEnd) = replicas()
        if ProcessInfo.processInfo.environment["FLOTILLA_SIM_SLEEP_DEBUG"] != nil {
            for store in up() {
                guard let core = store.loop?.core else { continue }
                for regionID in core.regionIDs where !core.isAsleep(regionID) {
                    print("seed \(seed) store \(store.id) region \(regionID) awake: \(core.raftStatus(regionID).map { "\($0.role)" } ?? "?") \(core.sleepBlocker(regionID) ?? "-")")
                }
            }
        }
        try checkTransferOfASleepingRegion(up: up())
        var ledAsleep: [UInt64: [UInt64]] = [:]
        for store in up() {
            guard let core = store.loop?.core else { continue }
            for regionID in core.regionIDs where core.raftStatus(regionID)?.role == .leader && core.isAsleep(regionID) {
                ledAsleep[store.id, default: []].append(regionID)
            }
        }
        guard let (victimID, led) = ledAsleep.max(by: { ($0.value.count, $1.key) < ($1.value.count, $0.key) }),
              let victim = stores[victimID], let victimCore = victim.loop?.core else { return }
        // Only regions that can elect without the victim: a majority of their voters elsewhere
        // (PD may have left a region with fewer replicas, e.g. mid-repair).
        let regions = led.filter { regionID in
            guard let region = victimCore.region(regionID) else { return false }
            let voters = region.peers.filter { $0.role == .voter }
            return voters.filter { $0.storeID != victimID }.count * 2 > voters.count
        }
        try victim.crash()
        victim.restartAt = nil
        note("store \(victimID) killed for good, leading regions \(regions) asleep")
        let killedAt = tick
        // Liveness presumes the store dead, then elections run; with the simulation's message
        // delays (up to 4 ticks against a 10-tick timeout) two survivors split votes often.
        let deadline = killedAt + SimulatedStore.storeDeadAfterTicks + UInt64(15 * options.electionTimeoutTicks)
        while true {
            try step(faults: false)
            let unled = regions.filter { regionID in !up().contains { $0.loop?.core.raftStatus(regionID)?.role == .leader } }
            if unled.isEmpty { break }
            guard tick < deadline else {
                let states = unled.flatMap { regionID in
                    up().compactMap { store in
                        store.loop?.core.sleepState(regionID).map { "region \(regionID) on store \(store.id): \($0)" }
                    }
                }
                throw failure("regions \(unled) had no leader \(tick - killedAt) ticks after store \(victimID), which led them asleep, was killed: "
                              + states.joined(separator: "; "))
            }
        }
        report.failoverTicks = tick - killedAt
        note("every region of store \(victimID) led again after \(report.failoverTicks) ticks")
    }

    /// PD's operator for a sleeping region reaches it in a store heartbeat round or two (PD's
    /// answer to the store heartbeat asks for the region's report), not after the slow
    /// period at which sleeping regions report on their own (twenty rounds here).
    private func checkTransferOfASleepingRegion(up: [SimulatedStore]) throws {
        let candidates = up.flatMap { store -> [(UInt64, UInt64)] in
            guard let core = store.loop?.core else { return [] }
            return core.regionIDs.filter { core.raftStatus($0)?.role == .leader && core.isAsleep($0) }.map { ($0, store.id) }
        }
        guard let (regionID, leaderStore) = candidates.min(by: { $0.0 < $1.0 }),
              let region = stores[leaderStore]?.loop?.core.region(regionID),
              let target = region.peers.first(where: { $0.role == .voter && $0.storeID != leaderStore && stores[$0.storeID]?.isUp == true }),
              pd.pd.isLeader, pd.pd.operators.running[regionID] == nil else { return }
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = regionID
        request.transferLeaderStoreID = target.storeID
        do { _ = try pd.withLeader { pd throws in try pd.addOperator(request, newPeerID: nil, nowMs: nowMs) } } catch {
            note("no transfer of sleeping region \(regionID): \(error)")
            return
        }
        let startedAt = tick
        let deadline = tick + 3 * options.heartbeatIntervalTicks + UInt64(3 * options.electionTimeoutTicks)
        while stores[target.storeID]?.loop?.core.raftStatus(regionID)?.role != .leader {
            guard tick < deadline else {
                throw failure("PD's transfer of sleeping region \(regionID) to store \(target.storeID) had not happened \(tick - startedAt) ticks later")
            }
            try step(faults: false)
        }
        note("sleeping region \(regionID) transferred to store \(target.storeID) in \(tick - startedAt) ticks")
        report.sleepingTransferTicks = max(report.sleepingTransferTicks, tick - startedAt)
    }

    private func step(faults: Bool) throws {
        tick += 1
        if faults { try nemesis() }
        if !pd.pd.isLeader && tick >= pd.downUntil {
            pd.becomeLeader(nowMs: nowMs)
            note("PD leader \(pd.term) elected")
        }
        try deliverDue()
        for storeID in storeIDs {
            guard let store = stores[storeID] else { continue }
            if !store.isUp, let restartAt = store.restartAt, tick >= restartAt {
                try store.restart(at: now)
                note("store \(storeID) restarted")
            }
            guard store.isUp, store.runs(at: tick) else { continue }
            try runLoop(store)
        }
        if tick % 5 == 0 && pd.isUp(at: tick) { pdTick() }
        for index in clients.indices { stepClient(index) }
        if tick % 250 == 0 { try checkReplicas(final: false) }
    }

    /// Heals every fault: links, pauses, slow disks, crashed stores, PD.
    private func heal() {
        cutLinks = [:]
        for store in stores.values {
            store.pausedUntil = 0
            store.slowUntil = 0
            if !store.isUp { store.restartAt = tick }
        }
        pd.downUntil = min(pd.downUntil, tick)
        healedAt = tick
        note("healed")
    }

    // MARK: Nemesis

    private func nemesis() throws {
        if random.chance(options.crashProbability), let victim = random.pick(storeIDs), let store = stores[victim], store.isUp {
            if random.chance(options.crashInTurnShare) {
                store.armCrash(atWrite: Int(random.int(in: 0...3)), keepUnsynced: random.chance(0.5), tick: tick)
            } else {
                try crash(store)
            }
        }
        if random.chance(options.pauseProbability), let victim = random.pick(storeIDs), let store = stores[victim], store.isUp {
            store.pausedUntil = tick + random.int(in: options.pauseTicks)
            report.pauses += 1
            note("store \(victim) paused until \(store.pausedUntil)")
        }
        // A leader paused (a GC pause, SIGSTOP) while its lease runs: the rest elect another,
        // and requests queued at the old one are served when it resumes.
        if random.chance(options.leaderPauseProbability), let info = randomRegion(), info.hasLeader,
           let store = stores[info.leader.storeID], store.isUp, tick >= store.pausedUntil {
            store.pausedUntil = tick + random.int(in: options.pauseTicks)
            report.pauses += 1
            note("store \(store.id) (leads region \(info.region.id)) paused until \(store.pausedUntil)")
        }
        if random.chance(options.slowDiskProbability), let victim = random.pick(storeIDs), let store = stores[victim], store.isUp {
            store.slowUntil = tick + random.int(in: options.slowDiskTicks)
            store.slowEveryTicks = random.int(in: 2...8)
            report.slowDisks += 1
            note("store \(victim) disk slow (a turn every \(store.slowEveryTicks) ticks) until \(store.slowUntil)")
        }
        if random.chance(options.partitionProbability) { partition() }
        if random.chance(options.pdLeaderChangeProbability) {
            try pd.changeLeader(nowMs: nowMs, downUntil: tick + random.int(in: options.pdOutageTicks))
            report.pdLeaderChanges += 1
            note("PD leader fails over; PD answers again at \(pd.downUntil)")
        }
        if pd.isUp(at: tick) {
            if random.chance(options.splitProbability) { askSplit() }
            if random.chance(options.moveProbability) { askMove() }
            if random.chance(options.transferProbability) { askTransfer() }
        }
    }

    private func crash(_ store: SimulatedStore) throws {
        // In-flight snapshots read the crashed store's RocksDB: they go with it.
        network.removeAll { envelope in
            if case .snapshot = envelope.payload, envelope.from == .store(store.id) { return true }
            return false
        }
        let inTurn = store.crashedInTurn
        try store.crash()
        store.restartAt = tick + random.int(in: options.restartTicks)
        report.crashes += 1
        if let inTurn {
            report.crashesInTurn += 1
            note("store \(store.id) crashed inside a turn, before its \(inTurn); restarts at \(store.restartAt ?? 0)")
        } else {
            note("store \(store.id) crashed (unsynced writes lost); restarts at \(store.restartAt ?? 0)")
        }
    }

    /// Cuts a random group of stores (with PD, sometimes) from the rest, for a while; one way
    /// (the group hears nothing, or says nothing) half the time.
    private func partition() {
        var nodes: [SimNode] = storeIDs.map { .store($0) } + [.pd]
        var group: [SimNode] = []
        let size = Int(random.int(in: 1...UInt64(max(1, nodes.count / 2))))
        for _ in 0..<size {
            guard let node = random.pick(nodes) else { break }
            group.append(node)
            nodes.removeAll { $0 == node }
        }
        let until = tick + random.int(in: options.partitionTicks)
        let oneWay = random.chance(0.5)
        let inbound = random.chance(0.5)
        for inside in group {
            for outside in nodes {
                if !oneWay || inbound { cutLinks[outside, default: [:]][inside] = until }
                if !oneWay || !inbound { cutLinks[inside, default: [:]][outside] = until }
            }
        }
        report.partitions += 1
        if oneWay { report.oneWayPartitions += 1 }
        note("partition \(group.sorted().map(\.description).joined(separator: ",")) | rest\(oneWay ? (inbound ? " (one way: they hear nothing)" : " (one way: they say nothing)") : "") until \(until)")
    }

    private func randomRegion() -> Flotilla_V1_RegionInfo? {
        random.pick(pd.pd.regions.all)
    }

    private func askSplit() {
        guard let info = randomRegion() else { return }
        let region = info.region
        let inside = keys.map { Data($0.utf8) }.filter { key in
            region.contains(key) && key != region.startKey
        }
        guard let key = random.pick(inside) else { return }
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = region.id
        var split = Flotilla_V1_SplitRegion()
        split.splitKeys = [key]
        request.split = split
        addOperator(request, newPeer: false, what: "split region \(region.id) at \(String(decoding: key, as: UTF8.self))")
        report.splitsAsked += 1
    }

    private func askMove() {
        guard let info = randomRegion(), let from = random.pick(info.region.peers) else { return }
        let holders = Set(info.region.peers.map(\.storeID))
        guard let to = random.pick(storeIDs.filter { !holders.contains($0) }) else { return }
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = info.region.id
        var move = Flotilla_V1_MovePeer()
        move.fromStoreID = from.storeID
        move.toStoreID = to
        request.movePeer = move
        addOperator(request, newPeer: true, what: "move region \(info.region.id) from store \(from.storeID) to \(to)")
        report.movesAsked += 1
    }

    private func askTransfer() {
        guard let info = randomRegion(), let to = random.pick(info.region.peers.filter { $0.role == .voter && $0.id != info.leader.id }) else { return }
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = info.region.id
        request.transferLeaderStoreID = to.storeID
        addOperator(request, newPeer: false, what: "transfer region \(info.region.id)'s leader to store \(to.storeID)")
        report.transfersAsked += 1
    }

    private func addOperator(_ request: Flotilla_V1_AddOperatorRequest, newPeer: Bool, what: String) {
        let newPeerID = newPeer ? pd.allocate(1) : nil
        let now = nowMs
        do {
            let op = try pd.withLeader { pd throws in try pd.addOperator(request, newPeerID: newPeerID, nowMs: now) }
            note("PD operator \(op.id): \(what)")
        } catch {
            note("PD refused to \(what): \(error)")
        }
    }

    // MARK: Network

    private func isCut(_ from: SimNode, _ to: SimNode) -> Bool {
        guard let until = cutLinks[from]?[to] else { return false }
        return tick < until
    }

    func sendSnapshot(_ snapshot: OutgoingSnapshot, from storeID: UInt64) {
        guard let store = stores[storeID] else { return }
        send(.snapshot(snapshot, senderGeneration: store.generation), from: .store(storeID), to: .store(snapshot.toStoreID))
    }

    func splitsApplied(_ splits: [AppliedSplit], at storeID: UInt64) {
        for split in splits {
            report.splitsApplied += 1
            note("store \(storeID) applied the split of region \(split.parent.id) into \(split.children.map { String($0.id) }.joined(separator: ","))")
        }
        stores[storeID]?.splitsSinceHeartbeat = true
    }

    func send(_ payload: SimPayload, from: SimNode, to: SimNode, lossy: Bool = true) {
        report.messagesSent += 1
        if isCut(from, to) || (lossy && healedAt == nil && random.chance(options.dropProbability)) {
            report.messagesDropped += 1
            return
        }
        let copies = lossy && healedAt == nil && random.chance(options.duplicateProbability) ? 2 : 1
        if copies == 2 { report.messagesDuplicated += 1 }
        for _ in 0..<copies {
            messageOrder += 1
            network.append(SimEnvelope(deliverAt: tick + random.int(in: 0...options.maxDelayTicks), order: messageOrder,
                                       from: from, to: to, payload: payload))
        }
    }

    private func deliverDue() throws {
        guard !network.isEmpty else { return }
        var due: [SimEnvelope] = []
        var later: [SimEnvelope] = []
        for envelope in network {
            if envelope.deliverAt <= tick { due.append(envelope) } else { later.append(envelope) }
        }
        network = later
        due.sort { ($0.deliverAt, $0.order) < ($1.deliverAt, $1.order) }
        for envelope in due {
            // A link cut while the message was in flight loses it too.
            if isCut(envelope.from, envelope.to) { report.messagesDropped += 1; continue }
            switch envelope.to {
            case .store(let id):
                guard let store = stores[id], store.isUp else { continue }
                store.inbox.append(envelope)
            case .pd:
                guard pd.isUp(at: tick) else { continue }
                pdReceive(envelope)
            case .client(let index):
                guard case .reply(let reply) = envelope.payload else { continue }
                clientReceive(index, reply)
            }
        }
    }

    // MARK: Stores

    /// One iteration of a store's production `StoreLoop`, as `StoreDriver` runs it: the ticks
    /// time owes first, then what arrived in arrival order, then turns until no work is ready
    /// (bounded); the loop's edge puts what it hands out on the network in the loop's order.
    /// An armed crash may fall before any disk write of a turn.
    private func runLoop(_ store: SimulatedStore) throws {
        guard let loop = store.loop else { return }
        let edge = store.edge
        loop.runTicks(now: now, edge: edge)
        let inbox = store.inbox
        store.inbox = []
        for envelope in inbox {
            switch envelope.payload {
            case .raft(let message): loop.take(.raft(message), now: now, edge: edge)
            case .snapshot(let snapshot, let generation):
                guard case .store(let sender) = envelope.from, stores[sender]?.generation == generation else { continue }
                try receiveSnapshot(snapshot, at: store)
            case .request(let request): serve(request, at: store)
            case .heartbeatAnswer(let answer): carryOut(answer, at: store)
            case .splitIDs(let region, let keys, let ids):
                let proposal = SplitProposal(regionID: region.id, epoch: region.epoch, keys: keys, newRegions: ids)
                loop.take(.split(proposal, deadline: now + .milliseconds(10_000), .agent("split of region \(region.id)")), now: now, edge: edge)
            default: continue
            }
        }
        var turns = 0
        while true {
            turns += 1
            let more: Bool
            do { more = try loop.turn(now: now, edge: edge) } catch let crash as SimulatedCrash {
                _ = crash
                try self.crash(store)
                return
            } catch {
                throw failure("store \(store.id) turn failed: \(error)")
            }
            if let problem = edge.takeFailures().first { throw failure(problem) }
            // Production runs another turn at once while work is ready; so does the simulation,
            // up to a bound per tick.
            guard more, turns < Self.turnsPerTickMax else { break }
        }
        if let armed = store.crashInTurn, tick - armed.armedAt > Self.crashInTurnWaitTicks {
            // The store wrote too little to meet the armed crash: it falls between turns.
            try crash(store)
            return
        }
        try checkNoOverlap(store)
        if Self.tracing { traceRegions(store) }
        if (tick + store.id) % options.heartbeatIntervalTicks == 0 || store.splitsSinceHeartbeat { heartbeats(store) }
    }

    /// An armed crash not met by a disk write within this many ticks falls between turns.
    private static let crashInTurnWaitTicks: UInt64 = 50

    /// Turns a simulated store runs in one tick while its loop says work is ready.
    private static let turnsPerTickMax = 8

    private func receiveSnapshot(_ snapshot: OutgoingSnapshot, at store: SimulatedStore) throws {
        guard store.isUp else { return }
        var builder: SnapshotBuilder?
        do {
            while let chunk = try snapshot.reader.nextChunk() {
                if let builder { try builder.add(chunk) } else {
                    builder = try SnapshotBuilder(firstChunk: chunk, stagingDirectory: store.path + "/snapshots")
                }
            }
            guard let received = try builder?.finish() else { return }
            report.snapshotsDelivered += 1
            store.loop?.take(.snapshot(received), now: now, edge: store.edge)
        } catch {
            builder?.abandon()
            throw failure("a snapshot from store \(snapshot.header.fromPeer.storeID) to store \(store.id) failed: \(error)")
        }
    }

    /// A client's request, taken by the store's loop with the server's default deadline.
    private func serve(_ request: SimRequest, at store: SimulatedStore) {
        guard let loop = store.loop else { return }
        let deadline = now + .milliseconds(Int64(options.operationTimeoutTicks) * 10)
        if let command = request.command {
            loop.take(.write(command, request.context, deadline: deadline, .write(client: request.client, operation: request.operation)),
                      now: now, edge: store.edge)
        } else {
            let waiter = SimulatedWaiter.read(client: request.client, operation: request.operation, key: request.key,
                                              regionID: request.context.regionID, epoch: request.context.epoch)
            loop.take(.read(request.context, deadline: deadline, waiter), now: now, edge: store.edge)
        }
    }

    /// The PD agent's round, with production's decisions (`PDReporting`): heartbeats of the
    /// regions led here that are due (every interval, and at once after a split), the store
    /// heartbeat, and the check of replicas that hear from no leader (destroyed through the
    /// loop once PD shows them gone).
    private func heartbeats(_ store: SimulatedStore) {
        guard let core = store.core, let loop = store.loop else { return }
        store.splitsSinceHeartbeat = false
        let reports = core.leaderReports()
        var stats = Flotilla_V1_StoreStats()
        stats.capacityBytes = 100 << 30
        stats.availableBytes = 90 << 30
        stats.regionCount = UInt64(core.regionIDs.count)
        stats.leaderCount = UInt64(reports.count)
        // The store heartbeat first: PD's answer names the regions it wants reported now.
        var asked = PlacementDriver.StoreHeartbeatAnswer()
        let reachesPD = pd.isUp(at: tick) && !isCut(.store(store.id), .pd)
        if reachesPD, let answer = try? pd.withLeader({ pd throws in try pd.storeHeartbeat(storeID: store.id, stats: stats, nowMs: nowMs) }) {
            asked = answer
        }
        for info in store.reporting.heartbeatsDue(reports, now: now, asked: Set(asked.reportRegions), askedAll: asked.reportAllRegions) {
            var request = Flotilla_V1_RegionHeartbeatRequest()
            request.header.clusterID = 7
            request.storeID = store.id
            request.region = info
            send(.regionHeartbeat(request), from: .store(store.id), to: .pd)
        }
        if reachesPD {
            let silent = core.silentReplicas(minTicks: UInt64(options.electionTimeoutTicks * 20))
            for replica in store.reporting.staleChecksDue(silent, now: now) {
                guard let current = pd.pd.regions.region(id: replica.regionID) else { continue }
                loop.take(.task(.destroyIfRemoved(regionID: replica.regionID, peerID: replica.peerID, region: current.region)),
                          now: now, edge: store.edge)
            }
        }
    }

    /// A PD step for a region led here, carried out as `PDStoreAgent` does (`PDReporting`
    /// decides what it asks; the loop carries it out).
    private func carryOut(_ answer: Flotilla_V1_RegionHeartbeatResponse, at store: SimulatedStore) {
        guard let core = store.core, let loop = store.loop, let region = core.region(answer.regionID),
              let action = PDReporting.action(for: answer, region: region) else { return }
        switch action {
        case .task(let task, _):
            loop.take(.task(task), now: now, edge: store.edge)
        case .split(let keys):
            guard store.reporting.beginSplit(of: region, now: now) else { return }
            send(.askSplit(region: region, keys: keys), from: .store(store.id), to: .pd)
        }
    }

    // MARK: PD

    private func pdReceive(_ envelope: SimEnvelope) {
        guard case .store(let storeID) = envelope.from else { return }
        let now = nowMs
        switch envelope.payload {
        case .regionHeartbeat(let request):
            guard let outcome = try? pd.withLeader({ pd throws in try pd.regionHeartbeat(request, nowMs: now) }) else { return }
            for command in outcome.commands {
                guard case .success = pd.apply(command) else { return }
            }
            guard let step = outcome.step?.proto.step else { return }
            var answer = Flotilla_V1_RegionHeartbeatResponse()
            answer.regionID = request.region.region.id
            answer.epoch = request.region.region.epoch
            switch step {
            case .changePeer(let change): answer.changePeer = change
            case .transferLeader(let transfer): answer.transferLeader = transfer
            case .splitRegion(let split): answer.splitRegion = split
            case .changePeers(let changes): answer.changePeers = changes
            }
            send(.heartbeatAnswer(answer), from: .pd, to: .store(storeID))
        case .askSplit(let region, let keys):
            guard let count = try? pd.withLeader({ pd throws in try pd.idsForSplit(of: region, splitCount: UInt32(keys.count)) }),
                  let first = pd.allocate(count) else { return }
            let ids = PlacementDriver.splitRegionIDs(first: first, splitCount: UInt32(keys.count), peerCount: region.peers.count)
            send(.splitIDs(region: region, keys: keys, ids: ids), from: .pd, to: .store(storeID))
        default:
            return
        }
    }

    private func pdTick() {
        let now = nowMs
        let commands = pd.withLeader { pd in pd.tick(nowMs: now) + pd.operatorRecords(nowMs: now) }
        for command in commands { pd.apply(command) }
    }

    // MARK: Clients

    private func stepClient(_ index: Int) {
        if clients[index].operation == nil {
            guard tick >= clients[index].idleUntil else { return }
            if let key = clients[index].finalReads.first {
                clients[index].finalReads.removeFirst()
                start(index, .read, key: key)
            } else if !clients[index].stopping {
                guard let key = random.pick(keys) else { return }
                let value = "c\(index)-\(clients[index].nextValue())"
                let kind: SimulatedClient.Kind
                switch random.next() % 10 {
                case 0...3: kind = .read
                case 4...6: kind = .write(value)
                default: kind = .compareAndSwap(expected: clients[index].lastSeen[key] ?? nil, new: value)
                }
                start(index, kind, key: key)
            }
            return
        }
        guard var operation = clients[index].operation else { return }
        if tick >= operation.deadline {
            finish(index, outcome: nil)
            return
        }
        if let retryAt = operation.retryAt, tick >= retryAt {
            operation.retryAt = nil
            clients[index].operation = operation
            attempt(index)
        } else if operation.retryAt == nil && tick >= operation.attemptDeadline {
            // No answer: the request or its reply was lost; ask again (another store, maybe).
            clients[index].leaders[operation.regionID] = nil
            attempt(index)
        }
    }

    private func start(_ index: Int, _ kind: SimulatedClient.Kind, key: String) {
        historyClock += 1
        var sequence: UInt64 = 0
        if case .read = kind {} else {
            clients[index].sequence += 1
            sequence = clients[index].sequence
        }
        clients[index].operationCount += 1
        clients[index].operation = SimulatedClient.Operation(
            id: UInt64(index) << 48 | clients[index].operationCount, kind: kind, key: key, invokedAt: historyClock,
            deadline: tick + options.operationTimeoutTicks, sequence: sequence, startTick: tick)
        attempt(index)
    }

    /// Sends the operation to the store the client believes leads the key's region.
    private func attempt(_ index: Int) {
        guard var operation = clients[index].operation else { return }
        let keyData = Data(operation.key.utf8)
        if clients[index].route(keyData) == nil, pd.isUp(at: tick), let info = pd.pd.regions.region(containing: keyData) {
            clients[index].learn([info.region])
            if info.hasLeader { clients[index].leaders[info.region.id] = info.leader.storeID }
        }
        guard let region = clients[index].route(keyData) else {
            operation.retryAt = tick + 5
            clients[index].operation = operation
            return
        }
        let target = clients[index].leaders[region.id] ?? random.pick(region.peers.filter { $0.role == .voter })?.storeID ?? storeIDs[0]
        var context = Flotilla_V1_RequestContext()
        context.regionID = region.id
        context.epoch = region.epoch
        context.readConsistency = .linearizable
        var command: Flotilla_V1_WriteCommand?
        switch operation.kind {
        case .read: break
        case .write(let value):
            var write = Flotilla_V1_WriteCommand()
            var pair = Flotilla_V1_KeyValue()
            pair.key = keyData
            pair.value = Data(value.utf8)
            write.puts = [pair]
            command = write
        case .compareAndSwap(let expected, let new):
            var write = Flotilla_V1_WriteCommand()
            write.compareAndSwap.key = keyData
            write.compareAndSwap.expectExists = expected != nil
            write.compareAndSwap.expectedValue = Data((expected ?? "").utf8)
            write.compareAndSwap.newValue = Data(new.utf8)
            command = write
        }
        if var write = command {
            write.clientID = clients[index].clientID
            write.sequence = operation.sequence
            write.firstIncompleteSequence = operation.sequence
            context.clientID = clients[index].clientID
            context.sequence = operation.sequence
            context.firstIncompleteSequence = operation.sequence
            command = write
        }
        operation.regionID = region.id
        operation.attemptDeadline = tick + 40
        clients[index].operation = operation
        send(.request(SimRequest(client: index, operation: operation.id, context: context, key: keyData, command: command)),
             from: .client(index), to: .store(target))
    }

    private func clientReceive(_ index: Int, _ reply: SimReply) {
        guard var operation = clients[index].operation, operation.id == reply.operation else { return }
        switch reply.result {
        case .success(.read(let value)):
            guard case .read = operation.kind else { return }
            finish(index, outcome: .read(value.map { String(decoding: $0, as: UTF8.self) }))
        case .success(.write(let result)):
            if !result.refused.isEmpty || result.payloadMismatch || result.staleDuplicate {
                protocolViolations.append("client \(index) operation \(operation.id) on \(operation.key): write answered \(result)")
                finish(index, outcome: nil)
                return
            }
            switch operation.kind {
            case .read: return
            case .write: finish(index, outcome: .written)
            case .compareAndSwap: finish(index, outcome: .swapped(result.succeeded))
            }
        case .failure(let error):
            switch error {
            case .notLeader(_, let leader):
                clients[index].leaders[operation.regionID] = leader?.storeID
                operation.retryAt = tick + (leader == nil ? 3 : 1)
            case .epochNotMatch(let current):
                clients[index].learn(current)
                operation.retryAt = tick + 1
            case .keyNotInRegion, .regionNotFound:
                clients[index].forget(regionID: operation.regionID)
                operation.retryAt = tick + 2
            case .serverIsBusy, .proposalDropped, .timeout:
                clients[index].leaders[operation.regionID] = nil
                operation.retryAt = tick + 3
            case .invalidArgument(let field, let reason):
                protocolViolations.append("client \(index) operation \(operation.id) on \(operation.key) refused: \(field): \(reason)")
                finish(index, outcome: nil)
                return
            }
            clients[index].operation = operation
        }
    }

    private var protocolViolations: [String] = []

    private enum Outcome {
        case read(String?)
        case written
        case swapped(Bool)
    }

    /// Ends the client's operation: into the history (a read without an answer did nothing
    /// and is left out; a write without one has an unknown outcome).
    private func finish(_ index: Int, outcome: Outcome?) {
        guard let operation = clients[index].operation else { return }
        clients[index].operation = nil
        clients[index].idleUntil = tick + random.int(in: 0...3)
        historyClock += 1
        let returnedAt: UInt64? = outcome == nil ? nil : historyClock
        let kind: RegisterOperation.Kind
        switch (operation.kind, outcome) {
        case (.read, .read(let observed)?):
            kind = .read(observed: observed)
            clients[index].lastSeen[operation.key] = .some(observed)
        case (.read, _):
            return
        case (.write(let value), _):
            kind = .write(value)
            if outcome != nil { clients[index].lastSeen[operation.key] = .some(value) }
        case (.compareAndSwap(let expected, let new), .swapped(let succeeded)?):
            kind = .compareAndSwap(expected: expected, new: new, succeeded: succeeded)
            if succeeded { clients[index].lastSeen[operation.key] = .some(new) } else { clients[index].lastSeen[operation.key] = nil }
        case (.compareAndSwap(let expected, let new), _):
            kind = .compareAndSwap(expected: expected, new: new, succeeded: nil)
            clients[index].lastSeen[operation.key] = nil
        }
        if outcome == nil { report.operationsUnknown += 1 }
        if Self.tracing { note("client \(index) seq \(operation.sequence) region \(operation.regionID): \(RegisterOperation(client: index, key: operation.key, invokedAt: operation.invokedAt, returnedAt: returnedAt, kind: kind))") }
        history.append(RegisterOperation(client: index, key: operation.key, invokedAt: operation.invokedAt, returnedAt: returnedAt, kind: kind))
        if let healedAt, outcome != nil, operation.startTick >= healedAt {
            switch kind {
            case .read: servedAfterHeal.insert(operation.key + "/read")
            default: servedAfterHeal.insert(operation.key + "/write")
            }
            if servedAfterHeal.contains(operation.key + "/read") && servedAfterHeal.contains(operation.key + "/write") {
                keysServedAfterHeal.insert(operation.key)
            }
        }
    }

    // MARK: Checks

    private var tracedRegions: [UInt64: [UInt64: String]] = [:]

    /// With tracing on: a store's replicas as they appear, change range or go.
    private func traceRegions(_ store: SimulatedStore) {
        guard let core = store.core else { return }
        var now: [UInt64: String] = [:]
        for id in core.regionIDs {
            guard let region = core.region(id) else { continue }
            now[id] = "[\(Self.text(region.startKey)), \(Self.text(region.endKey))) v\(region.epoch.version) c\(region.epoch.confVer)"
        }
        let before = tracedRegions[store.id] ?? [:]
        for (id, text) in now.sorted(by: { $0.key < $1.key }) where before[id] != text {
            note("store \(store.id) region \(id) now \(text) applied \(core.raftStatus(id)?.applied ?? 0)")
        }
        for id in before.keys.sorted() where now[id] == nil { note("store \(store.id) region \(id) gone") }
        tracedRegions[store.id] = now
    }

    private func checkNoOverlap(_ store: SimulatedStore) throws {
        guard let core = store.core else { return }
        let regions = core.regionIDs.compactMap { core.region($0) }.sorted { $0.startKey.lexicographicallyPrecedes($1.startKey) }
        for (previous, next) in zip(regions, regions.dropFirst()) where previous.endKey.isEmpty || next.startKey.lexicographicallyPrecedes(previous.endKey) {
            throw failure("store \(store.id) holds overlapping regions \(previous.id) [\(Self.text(previous.startKey)), \(Self.text(previous.endKey))) and \(next.id) [\(Self.text(next.startKey)), \(Self.text(next.endKey)))")
        }
        if !core.overlappingRegions().isEmpty {
            throw failure("store \(store.id)'s region map holds overlapping ranges \(core.overlappingRegions())")
        }
    }

    /// Replicas of one region at the same applied index hold the same data and sessions.
    private func checkReplicas(final: Bool) throws {
        var digests: [UInt64: [(store: UInt64, digest: RegionDigest)]] = [:]
        for storeID in storeIDs {
            guard let core = stores[storeID]?.core else { continue }
            for regionID in core.regionIDs {
                do {
                    digests[regionID, default: []].append((storeID, try core.regionDigest(regionID)))
                } catch {
                    throw failure("store \(storeID) could not digest region \(regionID): \(error)")
                }
            }
        }
        for (regionID, replicas) in digests.sorted(by: { $0.key < $1.key }) {
            let byIndex = Dictionary(grouping: replicas, by: \.digest.appliedIndex)
            for (index, same) in byIndex.sorted(by: { $0.key < $1.key }) where same.contains(where: { $0.digest != same[0].digest }) {
                throw failure("region \(regionID)'s replicas differ at applied index \(index): " + same.map { replica in
                    "store \(replica.store): \(replica.digest) {\(dump(replica.store, regionID))}"
                }.joined(separator: "; "))
            }
        }
    }

    /// A replica's pairs, for a failure message.
    private func dump(_ storeID: UInt64, _ regionID: UInt64) -> String {
        guard let core = stores[storeID]?.core, let keys = try? core.keys(in: regionID) else { return "?" }
        return keys.map { key in
            let value = (try? core.get(Data(key), regionID: regionID)).flatMap { $0 }.map { String(decoding: $0, as: UTF8.self) } ?? "?"
            return "\(String(decoding: key, as: UTF8.self))=\(value)"
        }.joined(separator: " ")
    }

    /// After the heal, every replica PD's routes list catches up with its region's leader.
    private func awaitCaughtUpReplicas() throws {
        let deadline = tick + options.livenessTicks
        while true {
            var lagging: [String] = []
            var regionsSeen = 0
            for storeID in storeIDs {
                guard let core = stores[storeID]?.core else { continue }
                for (region, _, _, _, _, _) in core.leaderReports() {
                    regionsSeen += 1
                    guard let leaderApplied = core.raftStatus(region.id)?.applied else { continue }
                    for peer in region.peers {
                        let applied = stores[peer.storeID]?.core?.raftStatus(region.id)?.applied ?? 0
                        if applied != leaderApplied { lagging.append("region \(region.id) peer \(peer.id) on store \(peer.storeID): \(applied) of \(leaderApplied)") }
                    }
                }
            }
            if lagging.isEmpty && regionsSeen > 0 && regionsSeen >= pd.pd.regions.count { return }
            guard tick < deadline else {
                throw failure("replicas did not catch up within \(options.livenessTicks) ticks of the end: \(lagging.prefix(8).joined(separator: "; "))" + (regionsSeen < pd.pd.regions.count ? " (\(regionsSeen) of \(pd.pd.regions.count) regions have a leader)" : ""))
            }
            try step(faults: false)
        }
    }

    private func checkHistory() throws {
        if let violation = protocolViolations.first { throw failure(violation) }
        report.operationsChecked = history.count
        switch RegisterChecker.check(history, timeout: options.linearizabilityTimeout) {
        case .linearizable: return
        case .timedOut(let key):
            report.linearizabilityTimedOut += 1
            note("linearizability search ran out of time on key \(key)")
        case .violation(let key, let counterexample):
            throw failure("the history of key \(key) is not linearizable; smallest counterexample:\n" + counterexample.map { "    \($0)" }.joined(separator: "\n"))
        }
    }

    // MARK: Events

    private static let tracing = ProcessInfo.processInfo.environment["FLOTILLA_CLUSTER_SIM_TRACE"] != nil

    func note(_ event: String) {
        if Self.tracing { print("[\(tick)] \(event)") }
        events.append("[\(tick)] \(event)")
        if events.count > 400 { events.removeFirst(200) }
    }

    private func failure(_ invariant: String) -> ClusterSimulationFailure {
        ClusterSimulationFailure(seed: seed, tick: tick, invariant: invariant, recentEvents: events)
    }

    static func text(_ key: Data) -> String { key.isEmpty ? "∞" : String(decoding: key, as: UTF8.self) }
}

/// A register client: one operation at a time, retried with the same sequence until
/// answered or out of time; routes learnt from PD and from the stores' errors.
struct SimulatedClient {
    enum Kind {
        case read
        case write(String)
        case compareAndSwap(expected: String?, new: String)
    }

    struct Operation {
        let id: UInt64
        let kind: Kind
        let key: String
        let invokedAt: UInt64
        let deadline: UInt64
        let sequence: UInt64
        let startTick: UInt64
        var regionID: UInt64 = 0
        var attemptDeadline: UInt64 = 0
        var retryAt: UInt64?
    }

    let index: Int
    let clientID: UInt64
    var sequence: UInt64 = 0
    var operationCount: UInt64 = 0
    var operation: Operation?
    var idleUntil: UInt64 = 0
    var stopping = false
    var finalReads: [String] = []
    var routes: [Flotilla_V1_Region] = []
    var leaders: [UInt64: UInt64] = [:]
    /// The last value this client saw for each key (what its next compare-and-swap expects).
    var lastSeen: [String: String?] = [:]
    private var values = 0

    init(index: Int, clientID: UInt64) {
        self.index = index
        self.clientID = clientID
    }

    mutating func nextValue() -> Int {
        values += 1
        return values
    }

    func route(_ key: Data) -> Flotilla_V1_Region? { routes.first { $0.contains(key) } }

    /// Takes newer regions in, dropping cached ones they overlap.
    mutating func learn(_ regions: [Flotilla_V1_Region]) {
        for region in regions {
            routes.removeAll { cached in
                cached.id == region.id || (
                    (region.endKey.isEmpty || cached.startKey.lexicographicallyPrecedes(region.endKey))
                    && (cached.endKey.isEmpty || region.startKey.lexicographicallyPrecedes(cached.endKey)))
            }
            routes.append(region)
        }
    }

    mutating func forget(regionID: UInt64) {
        routes.removeAll { $0.id == regionID }
        leaders[regionID] = nil
    }
}
