import FlotillaProto
import Foundation
import PlacementDriver
import Testing

@Suite("PD replicated state: commands apply once, records reload to the same state")
struct ClusterStateTests {
    @Test func bootstrapHappensOnceAndTheStateReloadsFromItsRecords() throws {
        var pd = SingleMemberPD()
        let (regionID, stores) = try pd.bootstrap(stores: 3)
        #expect(pd.pd.state.isBootstrapped && pd.pd.state.bootstrapRegionID == regionID)
        #expect(pd.pd.state.stores.count == 3)

        // A second bootstrap, even a well-formed one from another store, is refused.
        let again = try pd.allocate(), peer = try pd.allocate()
        var request = Flotilla_V1_BootstrapRequest()
        request.header.clusterID = 7
        request.store = pd.pd.state.stores[stores[1]] ?? Build.store(stores[1])
        request.region = Build.region(again, "", "", peers: [Build.peer(peer, store: stores[1])])
        let before = pd.pd.state
        #expect(failure(pd.apply(Build.command { $0.bootstrap = request })) == .alreadyBootstrapped)
        #expect(pd.pd.state == before)

        let reloaded = try ClusterState.load(pd.records.map { ($0.key, $0.value) })
        #expect(reloaded == pd.pd.state)
    }

    @Test func theClusterIDIsSetOnce() {
        var state = ClusterState()
        #expect(failure(state.apply(Build.command { $0.setClusterID = 0 }).outcome) == .invalidArgument("cluster id: must not be 0"))
        #expect(state.apply(Build.command { $0.setClusterID = 5 }).writes.count == 1)
        #expect(state.apply(Build.command { $0.setClusterID = 5 }).writes.isEmpty)
        #expect(failure(state.apply(Build.command { $0.setClusterID = 6 }).outcome) == .clusterMismatch(expected: 5, got: 6))
        #expect(state.clusterID == 5)
    }

    @Test func theReservedIDBoundNeverGoesBack() {
        var state = ClusterState()
        _ = state.apply(Build.command { $0.reserveIdsThrough = 2_000 })
        let lower = state.apply(Build.command { $0.reserveIdsThrough = 1_000 })
        #expect(lower.writes.isEmpty)
        #expect(state.reservedIDsThrough == 2_000)
    }

    @Test func storesKeepTheirAddressesToThemselvesAndTombstonesStayGone() throws {
        var pd = SingleMemberPD()
        _ = try pd.bootstrap(stores: 2)
        let ids = pd.pd.state.stores.keys.sorted()
        // A new store claiming store 1's KV address, or its Raft address as a KV address.
        let newID = try pd.allocate()
        var thief = Build.store(newID)
        thief.address = pd.pd.state.stores[ids[0]]?.address ?? ""
        #expect(failure(pd.apply(Build.command { $0.putStore = thief })) == .addressInUse(address: thief.address, storeID: ids[0]))
        thief = Build.store(newID)
        thief.address = pd.pd.state.stores[ids[1]]?.raftAddress ?? ""
        guard case .failure(.addressInUse(_, ids[1])) = pd.apply(Build.command { $0.putStore = thief }) else {
            Issue.record("a KV address equal to another store's Raft address was accepted")
            return
        }
        // An id PD never handed out.
        #expect(failure(pd.apply(Build.command { $0.putStore = Build.store(999_999) })) == .invalidArgument("store.id: 999999 was not allocated by PD"))

        // Tombstone store 2: it may never be put again, and its address becomes free.
        var gone = try #require(pd.pd.state.stores[ids[1]])
        gone.state = .tombstone
        try pd.apply(Build.command { $0.putStore = gone }).get()
        var back = gone
        back.state = .up
        #expect(failure(pd.apply(Build.command { $0.putStore = back })) == .storeTombstone(ids[1]))
        var reuse = Build.store(newID)
        reuse.address = gone.address
        reuse.raftAddress = gone.raftAddress
        try pd.apply(Build.command { $0.putStore = reuse }).get()
    }

    @Test func malformedStoresAreRefusedNamingTheField() throws {
        var pd = SingleMemberPD()
        _ = try pd.bootstrap(stores: 1)
        let id = try pd.allocate()
        let cases: [(String, (inout Flotilla_V1_Store) -> Void)] = [
            ("store.address", { $0.address = "" }),
            ("store.address", { $0.address = "localhost" }),
            ("store.address", { $0.address = "h:0" }),
            ("store.address", { $0.address = "h:65536" }),
            ("store.address", { $0.address = ":80" }),
            ("store.address", { $0.address = String(repeating: "a", count: 300) + ":1" }),
            ("store.raft_address", { $0.raftAddress = "h:-1" }),
            ("store.labels", { $0.labels = (0..<17).map { i in var l = Flotilla_V1_StoreLabel(); l.key = "k\(i)"; return l } }),
            ("store.labels", { var l = Flotilla_V1_StoreLabel(); l.key = ""; $0.labels = [l] }),
            ("store.labels", { var l = Flotilla_V1_StoreLabel(); l.key = "zone"; $0.labels = [l, l] }),
        ]
        for (field, mutate) in cases {
            var store = Build.store(id)
            mutate(&store)
            guard case .failure(.invalidArgument(let message)) = pd.apply(Build.command { $0.putStore = store }) else {
                Issue.record("a malformed store was accepted (\(field))")
                continue
            }
            #expect(message.hasPrefix(field))
        }
        #expect(pd.pd.state.stores[id] == nil)
    }

    @Test func persistedRoutesFollowEpochsAndDropWhatWasReplaced() throws {
        var pd = SingleMemberPD()
        let (regionID, stores) = try pd.bootstrap(stores: 1)
        let peer = try #require(pd.pd.state.routes.region(id: regionID)?.region.peers.first)
        let childID = try pd.allocate(), childPeer = try pd.allocate()
        // A split reported: the child replaces the whole-range parent, then the parent shrinks.
        let child = Build.region(childID, "m", "", version: 2, peers: [Build.peer(childPeer, store: stores[0])])
        try pd.apply(Build.command { $0.putRegion = child }).get()
        #expect(pd.records[PDRecordKeys.region(regionID)] == nil)
        let left = Build.region(regionID, "", "m", version: 2, peers: [peer])
        try pd.apply(Build.command { $0.putRegion = left }).get()
        // The stale whole-range parent is refused.
        let parent = Build.region(regionID, "", "", version: 1, peers: [peer])
        #expect(failure(pd.apply(Build.command { $0.putRegion = parent })) == .staleRegion(current: left))
        let reloaded = try ClusterState.load(pd.records.map { ($0.key, $0.value) })
        #expect(reloaded.routes.all.map(\.region) == [left, child])
    }

    @Test func corruptRecordsAreReportedNotLoaded() {
        let bad: [[(key: Data, value: Data)]] = [
            [(Data(), Data())],
            [(Data([0x01]), Data([1, 2, 3]))],
            [(Data([0x7f]), Data())],
            [(PDRecordKeys.store(3), Data([0xff, 0xff, 0xff]))],
            [(PDRecordKeys.store(3), (try? Build.store(4).serializedData()) ?? Data())],
        ]
        for records in bad {
            #expect(throws: ClusterState.CorruptRecord.self) { try ClusterState.load(records) }
        }
    }

    /// Routes persisted without the bootstrap record are corruption: a PD that loaded them
    /// would let a second bootstrap add a route beside them.
    @Test func routesWithoutABootstrapRecordAreRefused() throws {
        var pd = SingleMemberPD()
        _ = try pd.bootstrap(stores: 1)
        let records = pd.records.filter { $0.key != PDRecordKeys.bootstrapped }.map { ($0.key, $0.value) }
        #expect(throws: ClusterState.CorruptRecord.self) { try ClusterState.load(records) }
        #expect(try ClusterState.load(pd.records.map { ($0.key, $0.value) }).isBootstrapped)
    }
}
