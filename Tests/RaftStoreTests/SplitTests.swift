import FlotillaProto
import Foundation
import Raft
import RaftStore
import Testing

/// Splits through a region's log on an in-process cluster, including the races TiKV met:
/// a follower that applies the split late while the new region's leader already sends to it,
/// a follower behind by a snapshot, a split racing a membership change, and crashes around
/// the split's apply.
@Suite("Region split")
struct SplitTests {
    /// New region ids for a split of a region with peers on stores 1...n: region 10 + i, peer
    /// ids (10 + i) * 100 + store, in the order of the region's peers.
    static func newRegions(_ count: Int, for region: Flotilla_V1_Region, base: UInt64 = 10) -> [Flotilla_V1_SplitRegionIDs] {
        (0..<count).map { position in
            var ids = Flotilla_V1_SplitRegionIDs()
            ids.regionID = base + UInt64(position)
            ids.peerIds = region.peers.map { (base + UInt64(position)) * 100 + $0.storeID }
            return ids
        }
    }

    /// The region holding `key` as store `storeID` knows it now.
    static func currentRegion(_ cluster: InProcessCluster, key: String, on storeID: UInt64) -> Flotilla_V1_Region? {
        guard let store = cluster.stores[storeID] else { return nil }
        return store.regionIDs.compactMap { store.region($0) }.first { $0.contains(Data(key.utf8)) }
    }

    /// Proposes at the leader of the region now holding `key` (as the leader store sees it).
    static func write(_ cluster: InProcessCluster, _ command: Flotilla_V1_WriteCommand, key: String) throws -> Result<Flotilla_V1_WriteResult, StoreRequestError> {
        for storeID in cluster.storeIDs {
            guard let region = currentRegion(cluster, key: key, on: storeID), cluster.leader(of: region.id) == storeID,
                  let store = cluster.stores[storeID] else { continue }
            let id = try store.proposeWrite(command, context: cluster.context(region.id))
            for _ in 0..<50 where cluster.completed[id] == nil { try cluster.round(tick: false) }
            return try #require(cluster.completed[id])
        }
        throw StoreRequestError.proposalDropped
    }

    /// Proposes a split at the region's leader and runs rounds until it completes.
    static func split(_ cluster: InProcessCluster, regionID: UInt64, at keys: [String], base: UInt64 = 10,
                      epoch: Flotilla_V1_RegionEpoch? = nil) throws -> Result<Flotilla_V1_WriteResult, StoreRequestError> {
        let leader = try #require(cluster.leader(of: regionID))
        let store = try #require(cluster.stores[leader])
        let region = try #require(store.region(regionID))
        let id = try store.proposeSplit(regionID: regionID, epoch: epoch ?? region.epoch, splitKeys: keys.map { Data($0.utf8) },
                                        newRegions: newRegions(keys.count, for: region, base: base))
        for _ in 0..<50 where cluster.completed[id] == nil { try cluster.round(tick: false) }
        return try #require(cluster.completed[id])
    }

    static func fill(_ cluster: InProcessCluster, keys: [String], client: UInt64 = 0) throws {
        for (position, key) in keys.enumerated() {
            let result = try write(cluster, InProcessCluster.put(key, "v-\(key)", client: client, sequence: client == 0 ? 0 : UInt64(position + 1)), key: key)
            #expect((try? result.get())?.succeeded == true, "\(key): \(result)")
        }
    }

    static let alphabet = (UInt8(ascii: "a")...UInt8(ascii: "z")).map { String(UnicodeScalar($0)) + "-key" }

    /// Every replica of every region agrees (same applied index: same digest), and no store
    /// holds overlapping ranges.
    static func expectReplicasAgree(_ cluster: InProcessCluster, _ regionIDs: [UInt64], sourceLocation: SourceLocation = #_sourceLocation) {
        for regionID in regionIDs {
            let digests = cluster.digests(regionID)
            #expect(digests.count == 3, "region \(regionID) on every store: \(digests)", sourceLocation: sourceLocation)
            #expect(Set(digests.values.map(\.checksum)).count == 1, "region \(regionID) replicas agree: \(digests)", sourceLocation: sourceLocation)
        }
        for storeID in cluster.storeIDs {
            #expect(cluster.stores[storeID]?.overlappingRegions().isEmpty == true, "store \(storeID) holds overlapping ranges",
                    sourceLocation: sourceLocation)
        }
    }

    @Test func splitShrinksTheRegionAndTheNewRegionsServeAtOnce() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        try Self.fill(cluster, keys: Self.alphabet)
        let leader = try #require(cluster.leader(of: 1))
        #expect(try Self.split(cluster, regionID: 1, at: ["h", "p"]).get().succeeded)
        // The new regions' replicas on the parent leader's store campaigned at once.
        for _ in 0..<5 where cluster.leader(of: 10) == nil || cluster.leader(of: 11) == nil { try cluster.round(tick: false) }
        #expect(cluster.leader(of: 10) == leader && cluster.leader(of: 11) == leader, "new regions elected without an election timeout")
        try cluster.rounds(3)
        for storeID in cluster.storeIDs {
            let store = try #require(cluster.stores[storeID])
            #expect(store.regionIDs == [1, 10, 11])
            let ranges = store.regionIDs.compactMap { store.region($0) }.map { "[\(String(decoding: $0.startKey, as: UTF8.self)),\(String(decoding: $0.endKey, as: UTF8.self)))@v\($0.epoch.version)" }
            #expect(ranges == ["[,h)@v3", "[h,p)@v3", "[p,)@v3"], "store \(storeID)")
            #expect(cluster.splitsApplied[storeID]?.count == 1)
        }
        #expect(try cluster.stores[leader]?.keys(in: 10).count == 8, "h..o: no data moved, the keys are the new region's")
        try Self.fill(cluster, keys: ["a-new", "k-new", "x-new"])
        try cluster.rounds(3)
        Self.expectReplicasAgree(cluster, [1, 10, 11])
        // The parent refuses keys it gave away, naming the regions that hold them now.
        var command = InProcessCluster.put("x-late", "v")
        command.clientID = 0
        var context = cluster.context(1)
        context.epoch = try #require(cluster.stores[leader]?.region(1)?.epoch)
        #expect(throws: StoreRequestError.self) { try cluster.stores[leader]?.proposeWrite(command, context: context) }
        var stale = cluster.context(1)
        stale.epoch = cluster.regions[0].epoch
        do {
            _ = try cluster.stores[leader]?.proposeWrite(command, context: stale)
            Issue.record("a stale epoch was accepted")
        } catch .epochNotMatch(let current) {
            #expect(current.map(\.id) == [1, 10, 11], "EpochNotMatch carries the regions split from it")
        } catch { Issue.record("\(error)") }
    }

    @Test func aWriteAppliedBeforeTheSplitAndRetriedAfterItAppliesOnce() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        // A compare-and-swap that only succeeds once: a second application would fail.
        var cas = Flotilla_V1_WriteCommand()
        cas.compareAndSwap.key = Data("x-account".utf8)
        cas.compareAndSwap.expectExists = false
        cas.compareAndSwap.newValue = Data("100".utf8)
        cas.clientID = 42
        cas.sequence = 7
        cas.firstIncompleteSequence = 7
        #expect(try Self.write(cluster, cas, key: "x-account").get().succeeded)
        #expect(try Self.split(cluster, regionID: 1, at: ["m"]).get().succeeded)
        try cluster.rounds(5)
        let retried = try Self.write(cluster, cas, key: "x-account").get()
        #expect(retried.succeeded, "the retry in the new region gets the first reply")
        #expect(Self.currentRegion(cluster, key: "x-account", on: 1)?.id == 10)
        // A new write of the same client continues its session in the new region.
        var next = cas
        next.sequence = 8
        next.compareAndSwap.newValue = Data("200".utf8)
        #expect(try Self.write(cluster, next, key: "x-account").get().succeeded == false, "the key exists: a real second CAS fails")
        try cluster.rounds(3)
        Self.expectReplicasAgree(cluster, [1, 10])
    }

    @Test func writesAcceptedBeforeTheSplitForTheOtherHalfGetEpochNotMatch() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        let leader = try #require(cluster.leader(of: 1))
        let store = try #require(cluster.stores[leader])
        let region = try #require(store.region(1))
        var context = cluster.context(1)
        context.epoch = region.epoch
        // The split goes first in the log; the write, accepted against the old range, after it.
        let splitID = try store.proposeSplit(regionID: 1, epoch: region.epoch, splitKeys: [Data("m".utf8)],
                                             newRegions: Self.newRegions(1, for: region))
        let writeID = try store.proposeWrite(InProcessCluster.put("z-late", "v"), context: context)
        for _ in 0..<30 where cluster.completed[writeID] == nil { try cluster.round(tick: false) }
        #expect((try? cluster.completed[splitID]?.get())?.succeeded == true)
        switch cluster.completed[writeID] {
        case .failure(.epochNotMatch(let current))?: #expect(current.map(\.id) == [1, 10])
        case let other: Issue.record("expected EpochNotMatch, got \(String(describing: other))")
        }
        try cluster.rounds(3)
        #expect(try cluster.stores[leader]?.get(Data("z-late".utf8), regionID: 10) == nil, "not applied anywhere")
    }

    @Test func badSplitsAreRefusedWithAReasonAndChangeNothing() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["c", "x"])
        try cluster.rounds(40)
        let leader = try #require(cluster.leader(of: 2))
        let store = try #require(cluster.stores[leader])
        let region = try #require(store.region(2))  // [c, x)
        func refusal(_ keys: [String], ids: [Flotilla_V1_SplitRegionIDs]? = nil, epoch: Flotilla_V1_RegionEpoch? = nil,
                     regionID: UInt64 = 2) -> StoreRequestError? {
            do {
                _ = try store.proposeSplit(regionID: regionID, epoch: epoch ?? region.epoch, splitKeys: keys.map { Data($0.utf8) },
                                           newRegions: ids ?? Self.newRegions(keys.count, for: region))
                return nil
            } catch { return error }
        }
        func expectInvalid(_ error: StoreRequestError?, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
            guard case .invalidArgument(_, let reason)? = error else {
                Issue.record("expected invalid argument (\(fragment)), got \(String(describing: error))", sourceLocation: sourceLocation)
                return
            }
            #expect(reason.contains(fragment), "\(reason)", sourceLocation: sourceLocation)
        }
        expectInvalid(refusal([]), "no split key")
        expectInvalid(refusal(["a"]), "not strictly inside")
        expectInvalid(refusal(["y"]), "not strictly inside")
        expectInvalid(refusal(["c"]), "not strictly inside")  // the region's start
        expectInvalid(refusal(["x"]), "not strictly inside")  // its end
        expectInvalid(refusal(["m", "f"]), "strictly increasing")
        expectInvalid(refusal(["m", "m"]), "strictly increasing")
        expectInvalid(refusal([""]), "bytes")
        expectInvalid(refusal(["m"], ids: []), "new regions")
        expectInvalid(refusal(["m"], ids: Self.newRegions(1, for: region, base: 2)), "used twice")  // region 2's own id
        var shortIDs = Self.newRegions(1, for: region)
        shortIDs[0].peerIds.removeLast()
        expectInvalid(refusal(["m"], ids: shortIDs), "peer ids")
        expectInvalid(refusal(Array(repeating: "m", count: KVLimits.splitKeysMax + 1)), "more than")
        var staleEpoch = region.epoch
        staleEpoch.version -= 1
        if case .epochNotMatch? = refusal(["m"], epoch: staleEpoch) {} else { Issue.record("stale epoch accepted") }
        if case .regionNotFound? = refusal(["m"], regionID: 99) {} else { Issue.record("unknown region accepted") }
        try cluster.rounds(5)
        #expect(store.regionIDs == [1, 2, 3] && store.region(2) == region, "nothing changed")
    }

    @Test func aFollowerThatAppliesTheSplitLateKeepsTheNewRegionsMessages() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        try Self.fill(cluster, keys: Self.alphabet, client: 5)
        let leader = try #require(cluster.leader(of: 1))
        let late = try #require(cluster.storeIDs.last { $0 != leader })
        // The late store hears nothing of region 1 (the parent) until released; the new
        // region's leader reaches it at once.
        cluster.holdBack = { destination, message in destination == late && message.regionID == 1 }
        #expect(try Self.split(cluster, regionID: 1, at: ["m"]).get().succeeded)
        try cluster.rounds(30)
        #expect(cluster.stores[late]?.regionIDs == [1], "the late store has not split its replica")
        #expect(try Self.write(cluster, InProcessCluster.put("q-during", "v"), key: "q-during").get().succeeded,
                "the new region serves with two of three replicas")
        #expect(cluster.stores[late]?.overlappingRegions().isEmpty == true, "no snapshot of the new region was installed over the parent")
        #expect(cluster.snapshotsInstalled[late, default: 0] == 0)
        cluster.releaseHeld()
        try cluster.rounds(40)
        #expect(cluster.stores[late]?.regionIDs == [1, 10], "the early replica was replaced by the split's")
        #expect(cluster.snapshotsInstalled[late, default: 0] == 0, "caught up from the log, no snapshot")
        Self.expectReplicasAgree(cluster, [1, 10])
        #expect(cluster.digests(10)[late]?.keyCount == 15, "m..z plus the write during the split")
    }

    @Test func theNewRegionElectsAtOnceEvenBeforeItsFollowersApplyTheSplit() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        try Self.fill(cluster, keys: Self.alphabet)
        let leader = try #require(cluster.leader(of: 1))
        let leaderStore = try #require(cluster.stores[leader])
        // From the moment the leader has applied the split, the followers hear nothing more of
        // the parent: the new region's first election reaches replicas its votes create.
        cluster.holdBack = { destination, message in
            message.regionID == 1 && destination != leader && leaderStore.region(10) != nil
        }
        let region = try #require(leaderStore.region(1))
        let id = try leaderStore.proposeSplit(regionID: 1, epoch: region.epoch, splitKeys: [Data("m".utf8)],
                                              newRegions: Self.newRegions(1, for: region))
        for _ in 0..<20 where cluster.completed[id] == nil { try cluster.round(tick: false) }
        for _ in 0..<6 where cluster.leader(of: 10) == nil { try cluster.round(tick: false) }
        #expect(cluster.leader(of: 10) == leader, "elected without a tick")
        let followers = cluster.storeIDs.filter { $0 != leader }
        #expect(followers.allSatisfy { cluster.stores[$0]?.regionIDs == [1] }, "the followers have not applied the split yet")
        cluster.releaseHeld()
        try cluster.rounds(20)
        Self.expectReplicasAgree(cluster, [1, 10])
        #expect(try Self.write(cluster, InProcessCluster.put("x-after", "v"), key: "x-after").get().succeeded)
    }

    @Test func aFollowerBehindBySnapshotsGetsTheSplitRegions() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [], settings: { _, settings in
            settings.logGCCountThreshold = 10
        })
        try cluster.rounds(40)
        let leader = try #require(cluster.leader(of: 1))
        let behind = try #require(cluster.storeIDs.last { $0 != leader })
        cluster.crash(behind)
        try Self.fill(cluster, keys: Self.alphabet, client: 9)
        #expect(try Self.split(cluster, regionID: 1, at: ["g", "s"]).get().succeeded)
        try Self.fill(cluster, keys: (0..<30).map { "b\($0)" } + (0..<30).map { "k\($0)" } + (0..<30).map { "t\($0)" })
        try cluster.rounds(5)
        try cluster.restart(behind)
        try cluster.rounds(80)
        #expect(cluster.stores[behind]?.regionIDs == [1, 10, 11])
        #expect(cluster.snapshotsInstalled[behind, default: 0] >= 3, "each region came by snapshot")
        Self.expectReplicasAgree(cluster, [1, 10, 11])
    }

    @Test func aSplitRacingAMembershipChangeIsRefusedByEpoch() throws {
        let cluster = try InProcessCluster(storeCount: 4, splitKeys: [], replicas: 3)
        try cluster.rounds(40)
        let leader = try #require(cluster.leader(of: 1))
        let store = try #require(cluster.stores[leader])
        let region = try #require(store.region(1))
        var learner = Flotilla_V1_Peer()
        learner.id = 104
        learner.storeID = 4
        learner.role = .learner
        let changeID = try store.proposeMembershipChange(regionID: 1, changes: [(.addLearner, learner)])
        // Planned against the epoch before the change; committed after it.
        let splitID = try store.proposeSplit(regionID: 1, epoch: region.epoch, splitKeys: [Data("m".utf8)],
                                             newRegions: Self.newRegions(1, for: region))
        for _ in 0..<30 where cluster.completed[splitID] == nil { try cluster.round(tick: false) }
        #expect((try? cluster.completed[changeID]?.get())?.succeeded == true)
        guard case .failure(.epochNotMatch)? = cluster.completed[splitID] else {
            Issue.record("the stale split was applied: \(String(describing: cluster.completed[splitID]))")
            return
        }
        try cluster.rounds(20)
        for storeID in cluster.storeIDs.prefix(3) { #expect(cluster.stores[storeID]?.regionIDs == [1]) }
        #expect(store.region(1)?.epoch.version == region.epoch.version, "nothing split")
    }

    @Test func aStoreCrashingInsideTheTurnThatAppliesTheSplitRecoversIt() throws {
        for fault in [StoreFault.afterSplitApply, .beforeSplitRegionsOpen] {
            for crashLeader in [false, true] {
                var faulty: UInt64 = 0
                let cluster = try InProcessCluster(storeCount: 3, splitKeys: []) { storeID, settings in
                    if storeID == faulty { settings.injectedFault = fault }
                }
                try cluster.rounds(40)
                try Self.fill(cluster, keys: Self.alphabet, client: 8)
                let leader = try #require(cluster.leader(of: 1))
                let target = crashLeader ? leader : try #require(cluster.storeIDs.first { $0 != leader })
                let context = "\(fault), \(crashLeader ? "leader" : "follower")"
                faulty = target
                cluster.crash(target)
                try cluster.restart(target)
                try cluster.rounds(40)  // a leader again (maybe another one)
                let splitLeader = try #require(cluster.leader(of: 1))
                let region = try #require(cluster.stores[splitLeader]?.region(1))
                _ = try cluster.stores[splitLeader]?.proposeSplit(regionID: 1, epoch: region.epoch, splitKeys: [Data("m".utf8)],
                                                                 newRegions: Self.newRegions(1, for: region))
                var failed = false
                for _ in 0..<40 where !failed {
                    do { try cluster.round() } catch is InjectedFault { failed = true }
                }
                #expect(failed, "\(context): the turn hit the injected crash")
                cluster.crash(target)
                faulty = 0
                try cluster.restart(target)
                try cluster.rounds(60)
                for storeID in cluster.storeIDs {
                    #expect(cluster.stores[storeID]?.regionIDs == [1, 10], "\(context): store \(storeID)")
                }
                Self.expectReplicasAgree(cluster, [1, 10])
                #expect(try Self.write(cluster, InProcessCluster.put("z-after", "v"), key: "z-after").get().succeeded, "\(context)")
            }
        }
    }

    @Test func aStoreRestartedAtEachPointAroundTheSplitRecoversTheSameRegions() throws {
        for crashAfterRounds in 0..<4 {
            let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
            try cluster.rounds(40)
            try Self.fill(cluster, keys: Self.alphabet, client: 3)
            let leader = try #require(cluster.leader(of: 1))
            let region = try #require(cluster.stores[leader]?.region(1))
            let splitID = try #require(try cluster.stores[leader]?.proposeSplit(regionID: 1, epoch: region.epoch, splitKeys: [Data("m".utf8)],
                                                                               newRegions: Self.newRegions(1, for: region)))
            // Crash every store at once, a few turns into the split.
            for _ in 0..<crashAfterRounds { try cluster.round(tick: false) }
            for storeID in cluster.storeIDs { cluster.crash(storeID) }
            for storeID in cluster.storeIDs { try cluster.restart(storeID) }
            try cluster.rounds(80)
            let regionIDs = try #require(cluster.stores[1]?.regionIDs)
            for storeID in cluster.storeIDs {
                #expect(cluster.stores[storeID]?.regionIDs == regionIDs, "crash after \(crashAfterRounds) rounds: every store agrees")
            }
            if regionIDs == [1, 10] {
                Self.expectReplicasAgree(cluster, [1, 10])
                #expect(try Self.write(cluster, InProcessCluster.put("z-after", "v"), key: "z-after").get().succeeded)
            } else {
                #expect(regionIDs == [1], "crash after \(crashAfterRounds) rounds: \(regionIDs)")
                #expect(cluster.completed[splitID] == nil || (try? cluster.completed[splitID]?.get()) != nil)
            }
            let all = try cluster.storeIDs.map { storeID in
                try regionIDs.reduce(into: [[UInt8]: [UInt8]]()) { result, id in
                    guard let region = cluster.stores[storeID]?.region(id) else { return }
                    result.merge(try cluster.dump(storeID, region: region)) { first, _ in first }
                }
            }
            #expect(all.allSatisfy { $0.count == 26 }, "crash after \(crashAfterRounds) rounds: every key is held once: \(all.map(\.count))")
        }
    }
}

@Suite("Split triggers and many splits")
struct SplitTriggerTests {
    @Test func aSizeCheckSplitsPastTheMaxSizeIntoPiecesOfTheSplitSize() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        // 100 keys of ~1 KiB: about 100 KiB.
        let value = String(repeating: "v", count: 1_000)
        for index in 0..<100 {
            #expect(try SplitTests.write(cluster, InProcessCluster.put(String(format: "key-%03d", index), value), key: String(format: "key-%03d", index)).get().succeeded)
        }
        let leader = try #require(cluster.leader(of: 1))
        var triggers = SplitTriggers()
        triggers.regionMaxSizeBytes = 60_000
        triggers.regionSplitSizeBytes = 30_000
        let plans = try #require(cluster.stores[leader]?.splitCheckPlans(diffBytes: 1_000_000))
        #expect(plans.count == 1, "every led region is checked once after start")
        let outcome = try plans[0].run(triggers)
        #expect(outcome.keys == 100)
        #expect(outcome.sizeBytes == 100 * (7 + 1_000))
        // Pieces of ~30 KB: boundaries after 30 keys each; the 10-key tail joins the last piece.
        #expect(outcome.splitKeys.map { String(decoding: $0, as: UTF8.self) } == ["key-030", "key-060"])
        #expect(cluster.stores[leader]?.splitCheckPlans(diffBytes: 1_000_000).isEmpty == true, "not checked again without writes")
        triggers.regionMaxSizeBytes = 200_000
        #expect(try plans[0].run(triggers).splitKeys.isEmpty, "within its max size: no split")
        // Writes count toward the next check.
        for index in 0..<3 { _ = try SplitTests.write(cluster, InProcessCluster.put("more-\(index)", value), key: "more-\(index)") }
        #expect(cluster.stores[leader]?.splitCheckPlans(diffBytes: 3_000).count == 1)
    }

    @Test func theLoadSplitKeyBalancesTheSamplesAndNeverCutsOneHotKey() throws {
        var region = Flotilla_V1_Region()
        region.id = 1
        region.startKey = Data("a".utf8)
        func load(_ keys: [String]) -> RegionLoad {
            RegionLoad(region: region, requests: keys.count, sampledKeys: keys.map { Data($0.utf8) })
        }
        #expect(load(["b", "c", "d", "e"]).balancedSplitKey == Data("d".utf8))
        #expect(load(["h", "h", "h", "h"]).balancedSplitKey == nil, "one hot key: nothing divides it")
        #expect(load(["a", "a", "a", "b"]).balancedSplitKey == Data("b".utf8))
        #expect(load(["a", "a", "a"]).balancedSplitKey == nil, "never at the region's start")
        #expect(load(["x", "y", "y", "y", "y", "z"]).balancedSplitKey == Data("y".utf8))
        #expect(load([]).balancedSplitKey == nil)
    }

    @Test func aStoreCountsRequestsPerRegionItLeads() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["m"])
        try cluster.rounds(40)
        for key in ["b", "c", "n"] { _ = try SplitTests.write(cluster, InProcessCluster.put(key, "v"), key: key) }
        let leader = try #require(cluster.leader(of: 1))
        let loads = try #require(cluster.stores[leader]?.takeRegionLoads())
        let first = try #require(loads.first { $0.region.id == 1 })
        #expect(first.requests == 2 && Set(first.sampledKeys) == [Data("b".utf8), Data("c".utf8)])
        #expect(first.writtenKeys == 2 && first.writtenBytes == 4, "b=v and c=v applied")
        #expect(cluster.stores[leader]?.takeRegionLoads().isEmpty == true, "counters restart")
        _ = try cluster.stores[leader]?.get(Data("b".utf8), regionID: 1)
        let read = try #require(cluster.stores[leader]?.takeRegionLoads().first { $0.region.id == 1 })
        #expect(read.readKeys == 1 && read.readBytes == 2)
    }

    @Test func aLeaderReportsAPeerItHasNotHeardFromAsDown() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [], settings: { _, settings in settings.peerDownTicks = 30 })
        try cluster.rounds(40)
        let leader = try #require(cluster.leader(of: 1))
        let follower = try #require(cluster.storeIDs.first { $0 != leader })
        #expect(cluster.stores[leader]?.leaderReports().first?.down.isEmpty == true)
        cluster.crash(follower)
        try cluster.rounds(20)
        #expect(cluster.stores[leader]?.leaderReports().first?.down.isEmpty == true, "silent for less than the down time")
        try cluster.rounds(15)
        #expect(cluster.stores[leader]?.leaderReports().first?.down.map(\.storeID) == [follower])
        try cluster.restart(follower)
        try cluster.rounds(10)
        #expect(cluster.stores[leader]?.leaderReports().first?.down.isEmpty == true, "heard from again")
    }

    /// One region split into 1,000 by 16 splits of up to 64 keys, with writes between them;
    /// then every region is scanned and the union equals what was written, each key once.
    @Test func oneRegionBecomesAThousandUnderWritesAndAFullScanEqualsWhatWasWritten() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        var written: [String: String] = [:]
        var nextRegionID: UInt64 = 1_000
        var client: UInt64 = 1
        var regionCount = 1
        while regionCount < 1_000 {
            // Writes spread over the key space, through whichever region holds each key now.
            for _ in 0..<20 {
                let key = String(format: "k%05d", Int.random(in: 0..<100_000))
                let value = "v\(client)"
                #expect(try SplitTests.write(cluster, InProcessCluster.put(key, value, client: 1, sequence: client), key: key).get().succeeded)
                written[key] = value
                client += 1
            }
            // Split the region holding the largest untouched range at up to 64 keys.
            let leaderID = try #require(cluster.leader(of: 1))
            let leaderStore = try #require(cluster.stores[leaderID])
            let last = try #require(leaderStore.regionIDs.compactMap { leaderStore.region($0) }.first { $0.endKey.isEmpty })
            let start = last.startKey.isEmpty ? 0 : (Int(String(decoding: last.startKey.dropFirst(), as: UTF8.self)) ?? 0)
            let count = min(64, 1_000 - regionCount)
            let keys = (1...count).map { String(format: "k%05d", start + $0 * 90) }
            let result = try SplitTests.split(cluster, regionID: last.id, at: keys, base: nextRegionID)
            #expect((try? result.get())?.succeeded == true, "\(result)")
            nextRegionID += UInt64(count)
            regionCount += count
            try cluster.rounds(2)
        }
        try cluster.rounds(10)
        for storeID in cluster.storeIDs {
            let store = try #require(cluster.stores[storeID])
            #expect(store.regionIDs.count == 1_000, "store \(storeID)")
            #expect(store.overlappingRegions().isEmpty)
            var scanned: [String: String] = [:]
            var pairs = 0
            for region in store.regionIDs.compactMap({ store.region($0) }) {
                for (key, value) in try store.scan(regionID: region.id, from: region.startKey, to: region.endKey, limit: 100_000, reverse: false) {
                    scanned[String(decoding: key, as: UTF8.self)] = String(decoding: value, as: UTF8.self)
                    pairs += 1
                }
            }
            #expect(pairs == written.count, "store \(storeID): every key once")
            #expect(scanned == written, "store \(storeID): the full scan equals what was written")
        }
    }
}
