import FlotillaProto
import Foundation
import Raft
@testable import RaftStore
import Testing

/// The edge of a store loop in these tests: messages wait in an outbox until the test carries
/// them to their store; nothing here streams snapshots or answers clients.
private final class QueueEdge: StoreLoopEdge {
    typealias Waiter = Int
    var outbox: [(UInt64, Flotilla_V1_RaftMessage)] = []
    var stalls = 0
    var unexpected: [String] = []

    func send(_ messagesByStore: [UInt64: [Flotilla_V1_RaftMessage]]) {
        for (destination, messages) in messagesByStore.sorted(by: { $0.key < $1.key }) {
            outbox += messages.map { (destination, $0) }
        }
    }
    func sendSnapshot(_ snapshot: OutgoingSnapshot) { unexpected.append("snapshot to store \(snapshot.toStoreID)") }
    func complete(_ waiter: Int, with result: Result<Flotilla_V1_WriteResult, StoreRequestError>) { unexpected.append("answer to \(waiter)") }
    func serveRead(_ waiter: Int, from core: Result<StoreCore, StoreRequestError>) { unexpected.append("read \(waiter)") }
    func discard(_ snapshot: ReceivedSnapshot) { try? FileManager.default.removeItem(atPath: snapshot.directory) }
    func notice(_ notice: StoreLoopNotice) { if case .stalled = notice { stalls += 1 } }
}

/// Three stores, each a production `StoreLoop` over a real `StoreCore` with the production
/// Raft policy, stepped in simulated time (100 ms ticks, as a server runs). A store's loop runs
/// only at the ticks `runs` allows (a starved or stalled process); what is sent to it waits.
private final class LoopCluster {
    static let tickInterval = Duration.milliseconds(100)
    let storeIDs: [UInt64] = [1, 2, 3]
    let regions: [Flotilla_V1_Region]
    var loops: [UInt64: StoreLoop<QueueEdge>] = [:]
    var edges: [UInt64: QueueEdge] = [:]
    var inboxes: [UInt64: [Flotilla_V1_RaftMessage]] = [:]
    var tick: UInt64 = 0
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-starved-\(UUID().uuidString)").path

    init(regionCount: Int, sleepAfterQuietTicks: Int) throws {
        var regions: [Flotilla_V1_Region] = []
        for position in 0..<regionCount {
            var region = Flotilla_V1_Region()
            region.id = UInt64(position + 1)
            region.startKey = position == 0 ? Data() : Data(String(format: "k%05d", position).utf8)
            region.endKey = position == regionCount - 1 ? Data() : Data(String(format: "k%05d", position + 1).utf8)
            region.epoch.confVer = 1
            region.epoch.version = 1
            region.peers = storeIDs.map { peer(region.id * 100 + $0, store: $0, .voter) }
            regions.append(region)
        }
        self.regions = regions
        for storeID in storeIDs {
            let path = directory + "/store-\(storeID)"
            var settings = StoreSettings(snapshotDirectory: path + "/snapshots")
            settings.regionSleepAfterQuietTicks = sleepAfterQuietTicks
            let policy = RegionRaftPolicy(seed: storeID)
            let core = try StoreCore(db: try StoreDatabase.open(path: path + "/db"), storeID: storeID, settings: settings,
                                     raftConfig: { policy.config(forPeer: $0) })
            for region in regions { try core.bootstrapRegion(region) }
            loops[storeID] = StoreLoop(core: core, tickInterval: Self.tickInterval, tickCatchUpMax: 2 * policy.electionTimeoutTicks + 1)
            edges[storeID] = QueueEdge()
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func core(_ storeID: UInt64) -> StoreCore? { loops[storeID]?.core }

    /// One tick of time: every store allowed to run does as `StoreDriver.loop` does (ticks
    /// owed first, then the messages that arrived, then turns), and its messages go out.
    func step(runs: (UInt64) -> Bool = { _ in true }) throws {
        tick += 1
        let now = Self.tickInterval * Int(tick)
        for storeID in storeIDs where runs(storeID) {
            guard let loop = loops[storeID], let edge = edges[storeID] else { continue }
            _ = loop.runTicks(now: now, edge: edge)
            let arrived = inboxes[storeID] ?? []
            inboxes[storeID] = []
            for message in arrived { loop.take(.raft(message), now: now, edge: edge) }
            for _ in 0..<8 where try loop.turn(now: now, edge: edge) {}
            for (destination, message) in edge.outbox { inboxes[destination, default: []].append(message) }
            edge.outbox = []
        }
    }

    /// Each region's leader and term as the stores other than `excluded` see them, where
    /// they agree on one leader that is among them.
    func leadership(excluding excluded: UInt64) -> [UInt64: (storeID: UInt64, term: UInt64)] {
        var leaders: [UInt64: (storeID: UInt64, term: UInt64)] = [:]
        for region in regions {
            for storeID in storeIDs where storeID != excluded {
                if let status = core(storeID)?.raftStatus(region.id), status.role == .leader { leaders[region.id] = (storeID, status.term) }
            }
        }
        return leaders
    }
}

/// A store whose loop runs late (CPU starvation, a pause shorter than the catch-up bound)
/// degrades in latency, not in availability (issue 29, item 3).
@Suite("Store: a starved loop keeps its regions' leaders")
struct StarvedStoreTests {
    /// Store 1's loop runs once every 15 ticks (1.5 s, longer than the 1 s election timeout)
    /// for 450 ticks, every region awake and ticking. Its owed ticks move its clocks but cost
    /// one tick of work, so its followers never campaign for its own lateness (their leaders'
    /// heartbeats are waiting in the inbox), and no region led by a store on time changes leader
    /// or term. Break the rule (run each owed tick as a full tick) and store 1's followers
    /// campaign on its late turns.
    @Test func aLateLoopsFollowersDoNotCampaignAndLeadersElsewhereStayPut() throws {
        let cluster = try LoopCluster(regionCount: 60, sleepAfterQuietTicks: 0)
        for _ in 0..<300 where cluster.regions.contains(where: { cluster.leadership(excluding: 0)[$0.id] == nil }) {
            try cluster.step()
        }
        try #require(cluster.leadership(excluding: 0).count == cluster.regions.count, "every region elected a leader")
        for _ in 0..<50 { try cluster.step() }
        let before = cluster.leadership(excluding: 1)
        let campaignsBefore = try #require(cluster.core(1)?.campaignsStartedTotal)
        let ledElsewhere = before.count
        try #require(ledElsewhere >= 20, "enough regions led by the stores on time (\(ledElsewhere))")

        for _ in 0..<450 { try cluster.step { $0 != 1 || cluster.tick % 15 == 0 } }

        let after = cluster.leadership(excluding: 1)
        let campaigns = try #require(cluster.core(1)?.campaignsStartedTotal) - campaignsBefore
        #expect(campaigns == 0, "the late store's replicas started \(campaigns) campaigns")
        for (regionID, leader) in before {
            #expect(after[regionID]?.storeID == leader.storeID && after[regionID]?.term == leader.term,
                    "region \(regionID): led by store \(leader.storeID) in term \(leader.term), now \(String(describing: after[regionID]))")
        }
        #expect((cluster.edges[1]?.stalls ?? 0) > 0, "the late loop noticed that it stalled")
        let unexpected = cluster.edges.values.flatMap(\.unexpected)
        #expect(unexpected.isEmpty, "nothing but Raft messages: \(unexpected)")
        // On time again: every region is led, and store 1 takes part as before.
        for _ in 0..<100 { try cluster.step() }
        #expect(cluster.leadership(excluding: 0).count == cluster.regions.count, "every region led")
    }
}
