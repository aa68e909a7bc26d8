import FlotillaProto
import Foundation
import PlacementDriver
import Testing

@Suite("PD leader: ids, heartbeats, the replica checker and operators, as scenarios")
struct PlacementDriverTests {
    @Test func idsNeverRepeatAcrossFailovers() throws {
        // Three members apply the same log; leadership moves around after every few ids.
        // Small batches, so a leader often hands out the last ids of what it reserved.
        var timings = PDTimings()
        timings.idBatch = 10
        var members = (0..<3).map { _ in PlacementDriver(timings: timings) }
        var log: [Flotilla_V1_PDCommand] = []
        var handedOut: Set<UInt64> = []
        var now: UInt64 = 0
        for round in 0..<12 {
            let leader = round % 3
            now += 10_000
            for index in members.indices where index != leader { members[index].becomeFollower(nowMs: now) }
            members[leader].becomeLeader(nowMs: now)
            // The leader hands out a few ids; only some of its batch is used before it fails.
            for _ in 0..<(round % 4 + 1) {
                var allocated: UInt64?
                for _ in 0..<2 where allocated == nil {
                    switch try members[leader].allocateIDs(count: 7) {
                    case .ids(let first, let count):
                        allocated = first
                        for id in first..<(first + UInt64(count)) {
                            #expect(handedOut.insert(id).inserted, "id \(id) handed out twice")
                        }
                    case .reserve(let command):
                        log.append(command)
                        for index in members.indices { _ = members[index].apply(command) }
                    }
                }
                #expect(allocated != nil)
            }
        }
        // A member restarted from the records holds the same bound.
        #expect(members.allSatisfy { $0.state.reservedIDsThrough == members[0].state.reservedIDsThrough })
        #expect(handedOut.max() ?? 0 <= members[0].state.reservedIDsThrough)
    }

    @Test func aFollowerRefusesWhatOnlyTheLeaderServes() {
        var pd = PlacementDriver()
        #expect(throws: PDFailure.notLeader(leaderAddress: "")) { try pd.allocateIDs(count: 1) }
        #expect(throws: PDFailure.notLeader(leaderAddress: "")) {
            try pd.storeHeartbeat(storeID: 1, stats: Flotilla_V1_StoreStats(), nowMs: 0)
        }
    }

    @Test func anotherClustersRequestsAreRefused() throws {
        var single = SingleMemberPD()
        _ = try single.bootstrap(clusterID: 7, stores: 1)
        var header = Flotilla_V1_PDRequestHeader()
        header.clusterID = 8
        #expect(throws: PDFailure.clusterMismatch(expected: 7, got: 8)) { try single.pd.check(header: header) }
        header.clusterID = 0
        #expect(throws: PDFailure.clusterMismatch(expected: 7, got: 0)) { try single.pd.check(header: header) }
        try single.pd.check(header: header, allowUnknown: true)
    }

    @Test func heartbeatsFromUnknownStoresOrForUnknownStoresPeersAreRefused() throws {
        var single = SingleMemberPD()
        let (regionID, stores) = try single.bootstrap(stores: 1)
        let region = try #require(single.pd.regions.region(id: regionID)).region
        #expect(throws: PDFailure.unknownStore(99)) {
            try single.pd.storeHeartbeat(storeID: 99, stats: Flotilla_V1_StoreStats(), nowMs: single.nowMs)
        }
        var moved = region
        moved.peers.append(Build.peer(555, store: 42))
        moved.epoch.confVer += 1
        #expect(throws: PDFailure.unknownStore(42)) { try single.heartbeat(Build.info(moved)) }
        // From a store that is not the leader's.
        var request = Build.heartbeat(Build.info(region), clusterID: 7)
        request.storeID = stores[0] + 1
        #expect(throws: PDFailure.self) { try single.pd.regionHeartbeat(request, nowMs: single.nowMs) }
        // A region id PD never handed out (a forged or foreign region).
        var foreign = region
        foreign.id = single.pd.state.reservedIDsThrough + 1
        #expect(throws: PDFailure.unknownRegion(foreign.id)) { try single.heartbeat(Build.info(foreign)) }
        // A pending peer that is not the region's.
        #expect(throws: PDFailure.self) { try single.heartbeat(Build.info(region, pending: [Build.peer(999, store: stores[0])])) }
        // A malformed region: two peers on one store.
        var doubled = region
        doubled.peers.append(Build.peer(556, store: stores[0]))
        #expect(throws: PDFailure.self) { try single.heartbeat(Build.info(doubled)) }
        #expect(single.pd.regions.region(id: regionID)?.region == region)
    }

    @Test func aStaleRegionHeartbeatIsRefusedWithPDsRegion() throws {
        var single = SingleMemberPD()
        let (regionID, _) = try single.bootstrap(stores: 1)
        var region = try #require(single.pd.regions.region(id: regionID)).region
        region.epoch.confVer = 3
        _ = try single.heartbeat(Build.info(region))
        var old = region
        old.epoch.confVer = 2
        #expect(throws: PDFailure.staleRegion(current: region)) { try single.heartbeat(Build.info(old)) }
        #expect(single.pd.state.routes.region(id: regionID)?.region == region, "the changed route was persisted")
    }

    /// One store bootstraps, two join: the replica checker brings the region to three voters,
    /// one learner at a time, each promoted only after it caught up.
    @Test func oneStoreThenTwoMoreEndWithThreeVoters() throws {
        var single = SingleMemberPD()
        let (regionID, stores) = try single.bootstrap(stores: 3)
        var region = try #require(single.pd.regions.region(id: regionID)).region
        try single.storeHeartbeats(stores, regionCounts: [stores[0]: 1])
        // Before one heartbeat round has passed, the new leader schedules nothing.
        #expect(try single.heartbeat(Build.info(region)) == nil)
        single.nowMs += single.pd.timings.scheduleDelayMs
        try single.storeHeartbeats(stores, regionCounts: [stores[0]: 1])

        var transcript: [String] = []
        for _ in 0..<10 {
            let voters = region.peers.filter { $0.role == .voter }.count
            if voters == 3 { break }
            guard let step = try single.heartbeat(Build.info(region)) else {
                Issue.record("no step for a region with \(voters) voters")
                break
            }
            transcript.append(step.description)
            // The leader carries the step out; the next heartbeat shows it.
            switch step {
            case .addLearner(let peer):
                region.peers.append(peer)
                region.epoch.confVer += 1
                // Catching up: reported pending once (no step re-sent), then caught up.
                #expect(try single.heartbeat(Build.info(region, pending: [peer])) == nil)
            case .promoteLearner(let peer):
                region.peers = region.peers.map { $0.id == peer.id ? Build.peer(peer.id, store: peer.storeID) : $0 }
                region.epoch.confVer += 1
            default:
                Issue.record("unexpected step \(step)")
            }
            single.nowMs += 1_000
            // Stores heartbeat every second (a store silent for 3 s gets no work).
            try single.storeHeartbeats(stores, regionCounts: [stores[0]: 1])
        }
        #expect(region.peers.filter { $0.role == .voter }.map(\.storeID).sorted() == stores.sorted())
        #expect(transcript.count == 4)
        #expect(transcript.filter { $0.hasPrefix("add learner") }.count == 2)
        // The heartbeat after the last promotion ends the second operator; nothing follows.
        #expect(try single.heartbeat(Build.info(region)) == nil)
        #expect(single.pd.operators.history.map(\.status) == [.succeeded, .succeeded])
    }

    /// Which store gets the new replica, given a table of stores.
    @Test func theReplicaCheckerPicksTheLeastLoadedStoreThatCanTakeOne() {
        func view(_ id: UInt64, regions: UInt64, state: Flotilla_V1_StoreState = .up,
                  liveness: Flotilla_V1_StoreLiveness = .up, busy: Bool = false) -> StoreView {
            var store = Build.store(id)
            store.state = state
            var stats = Flotilla_V1_StoreStats()
            stats.regionCount = regions
            stats.busy = busy
            return StoreView(store: store, liveness: liveness, stats: stats)
        }
        let settings = Flotilla_V1_SchedulerSettings.defaults
        let region = Build.info(Build.region(1, "", "", peers: [Build.peer(11, store: 1)]))
        let table: [(String, [StoreView], ReplicaChecker.Plan?)] = [
            ("fewest regions wins", [view(1, regions: 9), view(2, regions: 5), view(3, regions: 3)], .addReplica(storeID: 3)),
            ("ties go to the lower id", [view(1, regions: 9), view(2, regions: 3), view(3, regions: 3)], .addReplica(storeID: 2)),
            ("down, disconnected, offline and busy stores take nothing",
             [view(1, regions: 9), view(2, regions: 0, liveness: .down), view(3, regions: 0, liveness: .disconnected),
              view(4, regions: 0, state: .offline), view(5, regions: 0, busy: true), view(6, regions: 50)], .addReplica(storeID: 6)),
            ("nothing can take it", [view(1, regions: 9), view(2, regions: 0, liveness: .down)], nil),
        ]
        for (name, views, expected) in table {
            let stores = Dictionary(uniqueKeysWithValues: views.map { ($0.store.id, $0) })
            #expect(ReplicaChecker.check(region, stores: stores, settings: settings) == expected, "\(name)")
        }
        // Enough voters: nothing; a learner present: promoted rather than another added.
        let full = Build.info(Build.region(1, "", "", peers: [Build.peer(11, store: 1), Build.peer(12, store: 2), Build.peer(13, store: 3)]))
        let stores = Dictionary(uniqueKeysWithValues: (1...4).map { ($0, view($0, regions: 1)) })
        #expect(ReplicaChecker.check(full, stores: stores, settings: settings) == nil)
        let learner = Build.peer(14, store: 4, learner: true)
        let withLearner = Build.info(Build.region(1, "", "", peers: [Build.peer(11, store: 1), learner]))
        #expect(ReplicaChecker.check(withLearner, stores: stores, settings: settings) == .promote(learner))
        // A voter on a down store does not count.
        var downTable = stores
        downTable[3] = view(3, regions: 1, liveness: .down)
        #expect(ReplicaChecker.check(full, stores: downTable, settings: settings) == .replace(full.region.peers[2], storeID: 4))
    }

    @Test func anOperatorTimesOutAndIsRecorded() throws {
        var single = SingleMemberPD()
        let (regionID, stores) = try single.bootstrap(stores: 2)
        let region = try #require(single.pd.regions.region(id: regionID)).region
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = regionID
        request.addPeerStoreID = stores[1]
        let op = try single.pd.addOperator(request, newPeerID: try single.allocate(), nowMs: single.nowMs)
        #expect(op.steps.count == 2)
        // At most one operator per region.
        #expect(throws: PDFailure.operatorRunning(regionID: regionID, operatorID: op.id)) {
            try single.pd.addOperator(request, newPeerID: 1, nowMs: single.nowMs)
        }
        guard case .addLearner = try single.heartbeat(Build.info(region)) else {
            Issue.record("the first step was not sent")
            return
        }
        single.nowMs += single.pd.timings.operatorStepTimeoutMs + 1
        single.pd.tick(nowMs: single.nowMs)
        #expect(single.pd.operators.running.isEmpty)
        let ended = try #require(single.pd.operators.history.last)
        #expect(ended.status == .timedOut)
        #expect(ended.reason.contains("step 1 of 2"))
        #expect(ended.info(nowMs: single.nowMs).status == .timedOut)
    }

    @Test func cancelAndASplitEndOperators() throws {
        var single = SingleMemberPD()
        let (regionID, stores) = try single.bootstrap(stores: 2)
        var region = try #require(single.pd.regions.region(id: regionID)).region
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = regionID
        request.addPeerStoreID = stores[1]
        _ = try single.pd.addOperator(request, newPeerID: try single.allocate(), nowMs: single.nowMs)
        try single.pd.cancelOperator(regionID: regionID, nowMs: single.nowMs)
        #expect(single.pd.operators.history.last?.status == .cancelled)
        #expect(throws: PDFailure.self) { try single.pd.cancelOperator(regionID: regionID, nowMs: single.nowMs) }

        _ = try single.pd.addOperator(request, newPeerID: try single.allocate(), nowMs: single.nowMs)
        region.epoch.version += 1
        region.endKey = Data("m".utf8)
        #expect(try single.heartbeat(Build.info(region)) == nil)
        #expect(single.pd.operators.history.last?.status == .failed)
        #expect(single.pd.operators.history.last?.reason.contains("split") == true)
    }

    @Test func aSplitOperatorIsSentUntilTheHeartbeatShowsTheSplitThenSucceeds() throws {
        var single = SingleMemberPD()
        let (regionID, _) = try single.bootstrap(stores: 1)
        var region = try #require(single.pd.regions.region(id: regionID)).region
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = regionID
        request.split.splitKeys = [Data("g".utf8), Data("p".utf8)]
        let op = try single.pd.addOperator(request, newPeerID: nil, nowMs: single.nowMs)
        #expect(op.steps == [.splitRegion(keys: [Data("g".utf8), Data("p".utf8)])])
        // Repeated in every answer until the split shows (the store proposes it once).
        for _ in 0..<2 {
            guard case .splitRegion(let keys)? = try single.heartbeat(Build.info(region)) else {
                Issue.record("the split step was not sent")
                return
            }
            #expect(keys.count == 2)
        }
        // The leader asks for ids: a region id and one peer id per peer, for each new region.
        #expect(try single.pd.idsForSplit(of: region, splitCount: 2) == 4)
        var older = region
        older.epoch.version = 0
        #expect(throws: PDFailure.staleRegion(current: region)) { try single.pd.idsForSplit(of: older, splitCount: 1) }
        #expect(throws: PDFailure.self) { try single.pd.idsForSplit(of: region, splitCount: 0) }
        #expect(throws: PDFailure.self) { try single.pd.idsForSplit(of: region, splitCount: UInt32(KVLimits.splitKeysMax + 1)) }
        var unknown = region
        unknown.id = 4242
        #expect(throws: PDFailure.unknownRegion(4242)) { try single.pd.idsForSplit(of: unknown, splitCount: 1) }
        // The parent's heartbeat after the split: smaller, version + 2.
        region.epoch.version += 2
        region.endKey = Data("g".utf8)
        #expect(try single.heartbeat(Build.info(region)) == nil)
        #expect(single.pd.operators.running.isEmpty)
        #expect(single.pd.operators.history.last?.status == .succeeded)
        #expect(single.pd.regions.region(containing: Data("a".utf8))?.region == region)
    }

    @Test func endedOperatorsGoIntoTheReplicatedHistoryAndSurviveALeaderChange() throws {
        var single = SingleMemberPD()
        let (regionID, stores) = try single.bootstrap(stores: 2)
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = regionID
        request.addPeerStoreID = stores[1]
        let op = try single.pd.addOperator(request, newPeerID: try single.allocate(), nowMs: single.nowMs)
        #expect(single.pd.operatorRecords(nowMs: single.nowMs).isEmpty, "a running operator is not recorded")
        try single.pd.cancelOperator(regionID: regionID, nowMs: single.nowMs)
        let records = single.pd.operatorRecords(nowMs: single.nowMs)
        #expect(records.map(\.recordOperator.id) == [op.id] && records[0].recordOperator.status == .cancelled)
        for command in records { try single.apply(command).get() }
        #expect(single.pd.operatorRecords(nowMs: single.nowMs).isEmpty, "recorded once applied")
        // A restart (the state reloaded from its records) and another leader in a later term:
        // the history is there, and new operator ids never repeat the old ones.
        let reloaded = try ClusterState.load(single.records.map { ($0.key, $0.value) })
        #expect(reloaded.operatorHistory[op.id]?.status == .cancelled)
        var next = PlacementDriver(state: reloaded)
        next.becomeLeader(nowMs: 5_000, term: 7)
        #expect(next.operatorInfos(includeHistory: true, nowMs: 5_000).map(\.id) == [op.id])
        let later = try next.addOperator(request, newPeerID: 999, nowMs: 5_000)
        #expect(later.id == 7 << 32 | 1 && later.id != op.id)
        // Bounded: beyond the limit the oldest go, from state and records alike.
        var bounded = ClusterState()
        var kept: [Data: Data] = [:]
        for id in 1...UInt64(PDLimits.operatorHistoryMax + 5) {
            var info = Flotilla_V1_OperatorInfo()
            info.id = id
            info.status = .succeeded
            for write in bounded.apply(Build.command { $0.recordOperator = info }).writes {
                switch write {
                case .put(let key, let value): kept[key] = value
                case .delete(let key): kept[key] = nil
                }
            }
        }
        #expect(bounded.operatorHistory.count == PDLimits.operatorHistoryMax && kept.count == PDLimits.operatorHistoryMax)
        #expect(bounded.operatorHistory[1] == nil && bounded.operatorHistory[UInt64(PDLimits.operatorHistoryMax + 5)] != nil)
        var running = Flotilla_V1_OperatorInfo()
        running.id = 42
        #expect(throws: PDFailure.self) { try bounded.apply(Build.command { $0.recordOperator = running }).outcome.get() }
    }

    @Test func badSplitKeysAreRefusedAndStartNothing() throws {
        var single = SingleMemberPD()
        let (regionID, _) = try single.bootstrap(stores: 1)
        let region = try #require(single.pd.regions.region(id: regionID)).region
        // The bootstrapped region covers every key: give the checks a bounded one too.
        let bounded = Build.region(99, "c", "x", peers: region.peers)
        func refusal(_ keys: [String], in region: Flotilla_V1_Region) -> String? {
            do { try PDValidation.check(splitKeys: keys.map { Data($0.utf8) }, in: region); return nil } catch { return "\(error)" }
        }
        for (keys, fragment) in [([], "1 to"), ([""], "bytes"), (["c"], "strictly inside"), (["x"], "strictly inside"),
                                 (["a"], "strictly inside"), (["y"], "strictly inside"), (["m", "m"], "strictly increasing"),
                                 (["m", "f"], "strictly increasing")] {
            #expect(refusal(keys, in: bounded)?.contains(fragment) == true, "\(keys): \(String(describing: refusal(keys, in: bounded)))")
        }
        #expect(refusal(["m"], in: bounded) == nil)
        #expect(refusal(Array(repeating: "m", count: KVLimits.splitKeysMax + 1), in: region)?.contains("1 to") == true)
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = regionID
        request.split.splitKeys = []
        #expect(throws: PDFailure.self) { try single.pd.addOperator(request, newPeerID: nil, nowMs: single.nowMs) }
        request.split.splitKeys = [Data()]
        #expect(throws: PDFailure.self) { try single.pd.addOperator(request, newPeerID: nil, nowMs: single.nowMs) }
        #expect(single.pd.operators.running.isEmpty)
    }

    @Test func adminOperatorsAreCheckedAgainstTheRegion() throws {
        var single = SingleMemberPD()
        let (regionID, stores) = try single.bootstrap(stores: 2)
        func add(_ body: (inout Flotilla_V1_AddOperatorRequest) -> Void) throws -> Operator {
            var request = Flotilla_V1_AddOperatorRequest()
            request.regionID = regionID
            body(&request)
            return try single.pd.addOperator(request, newPeerID: 900, nowMs: single.nowMs)
        }
        #expect(throws: PDFailure.unknownRegion(4242)) { try add { $0.regionID = 4242; $0.addPeerStoreID = stores[1] } }
        #expect(throws: PDFailure.unknownStore(77)) { try add { $0.addPeerStoreID = 77 } }
        #expect(throws: PDFailure.self) { try add { $0.addPeerStoreID = stores[0] } }       // already there
        #expect(throws: PDFailure.self) { try add { $0.removePeerStoreID = stores[0] } }    // the leader, only voter
        #expect(throws: PDFailure.self) { try add { $0.removePeerStoreID = stores[1] } }    // no peer there
        #expect(throws: PDFailure.self) { try add { $0.transferLeaderStoreID = stores[1] } } // no voter there
        #expect(throws: PDFailure.self) { try add { _ in } }                                   // no kind
        #expect(single.pd.operators.running.isEmpty)
    }

    @Test func storesGoDisconnectedThenDownWithoutHeartbeats() throws {
        var single = SingleMemberPD()
        let (_, stores) = try single.bootstrap(stores: 1)
        try single.storeHeartbeats(stores)
        #expect(single.pd.liveness(ofStore: stores[0], nowMs: single.nowMs) == .up)
        let disconnected = single.nowMs + single.pd.timings.storeDisconnectMs + 1
        #expect(single.pd.liveness(ofStore: stores[0], nowMs: disconnected) == .disconnected)
        let down = single.nowMs + single.pd.state.settings.maxStoreDownTimeSeconds * 1000 + 1
        #expect(single.pd.liveness(ofStore: stores[0], nowMs: down) == .down)
        #expect(single.pd.storeInfo(id: stores[0], nowMs: down)?.liveness == .down)
    }

    @Test func settingsAreBounded() throws {
        var single = SingleMemberPD()
        var settings = Flotilla_V1_SchedulerSettings.defaults
        settings.maxReplicas = 0
        #expect(throws: PDFailure.self) { try single.apply(Build.command { $0.setSettings = settings }).get() }
        settings.maxReplicas = 8
        #expect(throws: PDFailure.self) { try single.apply(Build.command { $0.setSettings = settings }).get() }
        settings = .defaults
        settings.maxStoreDownTimeSeconds = 0
        #expect(throws: PDFailure.self) { try single.apply(Build.command { $0.setSettings = settings }).get() }
        for change in [{ (s: inout Flotilla_V1_SchedulerSettings) in s.balanceTolerancePercent = 101 },
                       { (s: inout Flotilla_V1_SchedulerSettings) in s.storeLimit = PDLimits.storeLimitMax + 1 },
                       { (s: inout Flotilla_V1_SchedulerSettings) in s.isolationLabel = String(repeating: "z", count: PDLimits.labelKeyBytesMax + 1) }] {
            settings = .defaults
            change(&settings)
            #expect(throws: PDFailure.self) { try single.apply(Build.command { $0.setSettings = settings }).get() }
        }
        settings = .defaults
        settings.maxReplicas = 5
        try single.apply(Build.command { $0.setSettings = settings }).get()
        #expect(single.pd.state.settings.maxReplicas == 5)
    }

    @Test func allocationCountsAreBounded() throws {
        var single = SingleMemberPD()
        #expect(throws: PDFailure.self) { try single.pd.allocateIDs(count: 0) }
        #expect(throws: PDFailure.self) { try single.pd.allocateIDs(count: PDLimits.idsPerAllocationMax + 1) }
        let first = try single.allocate(PDLimits.idsPerAllocationMax)
        #expect(try single.allocate() == first + UInt64(PDLimits.idsPerAllocationMax))
    }
}
