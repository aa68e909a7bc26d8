import FlotillaProto
import Foundation
import PlacementDriver
import Testing

@Suite("PD routing table: epochs decide, ranges never overlap")
struct RegionTreeTests {
    let p1 = Build.peer(11, store: 1), p2 = Build.peer(12, store: 2)

    @Test func lookupsByKeyIdAndRange() {
        var tree = RegionTree()
        tree.update(Build.info(Build.region(1, "", "g", peers: [p1])))
        tree.update(Build.info(Build.region(2, "g", "p", peers: [p1])))
        tree.update(Build.info(Build.region(3, "p", "", peers: [p1])))
        #expect(tree.region(containing: Data()).map(\.region.id) == 1)
        #expect(tree.region(containing: Data("f".utf8)).map(\.region.id) == 1)
        #expect(tree.region(containing: Data("g".utf8)).map(\.region.id) == 2)
        #expect(tree.region(containing: Data("zzz".utf8)).map(\.region.id) == 3)
        #expect(tree.region(id: 2)?.region.startKey == Data("g".utf8))
        #expect(tree.regions(from: Data("h".utf8), to: Data("q".utf8), limit: 10).map(\.region.id) == [2, 3])
        #expect(tree.regions(from: Data(), to: Data(), limit: 2).map(\.region.id) == [1, 2])
        #expect(tree.regions(from: Data("g".utf8), to: Data("p".utf8), limit: 10).map(\.region.id) == [2])
    }

    @Test func aKeyInAGapHasNoRegion() {
        var tree = RegionTree()
        tree.update(Build.info(Build.region(1, "a", "c", peers: [p1])))
        #expect(tree.region(containing: Data("c".utf8)) == nil)
        #expect(tree.region(containing: Data()) == nil)
    }

    @Test func aStaleHeartbeatNeverOverwritesANewerRegion() {
        var tree = RegionTree()
        let current = Build.region(1, "", "", version: 3, confVer: 5, peers: [p1, p2])
        tree.update(Build.info(current))
        // Older by conf_ver (a peer list from before the last membership change).
        #expect(tree.update(Build.info(Build.region(1, "", "", version: 3, confVer: 4, peers: [p1]))) == .stale(current: current))
        // Older by version, newer by conf_ver: still stale (either part older is enough).
        #expect(tree.update(Build.info(Build.region(1, "", "", version: 2, confVer: 9, peers: [p1]))) == .stale(current: current))
        #expect(tree.region(id: 1)?.region == current)
        // The same meta with a new leader refreshes the leader only.
        #expect(tree.update(Build.info(current, leader: p2)) == .sameMeta)
        #expect(tree.region(id: 1)?.leader == p2)
    }

    @Test func aSplitReplacesTheParentAndTheUnsplitParentIsThenStale() {
        var tree = RegionTree()
        let parent = Build.region(1, "", "", version: 1, peers: [p1])
        tree.update(Build.info(parent))
        // The split's children report first: the right half overlaps the parent with a newer
        // version and replaces it.
        let left = Build.region(1, "", "m", version: 2, peers: [p1])
        let right = Build.region(2, "m", "", version: 2, peers: [Build.peer(21, store: 1)])
        #expect(tree.update(Build.info(right)) == .changed(removed: [1]))
        #expect(tree.update(Build.info(left)) == .changed(removed: []))
        // A late heartbeat of the unsplit parent (version 1, all keys) is refused.
        #expect(tree.update(Build.info(parent)) == .stale(current: left))
        #expect(tree.all.map(\.region.id) == [1, 2])
        #expect(tree.region(containing: Data("z".utf8))?.region.id == 2)
    }

    @Test func anOverlappingOlderRegionIsRefusedAndNothingChanges() {
        var tree = RegionTree()
        let right = Build.region(2, "m", "", version: 2, peers: [p1])
        tree.update(Build.info(right))
        let staleOther = Build.region(5, "k", "n", version: 1, peers: [p1])
        #expect(tree.update(Build.info(staleOther)) == .stale(current: right))
        #expect(tree.all.map(\.region.id) == [2])
        #expect(tree.region(id: 5) == nil)
    }

    @Test func aRegionThatMovesItsRangeIsReindexed() {
        var tree = RegionTree()
        tree.update(Build.info(Build.region(1, "a", "m", version: 1, peers: [p1])))
        tree.update(Build.info(Build.region(1, "a", "f", version: 2, peers: [p1])))
        #expect(tree.region(containing: Data("g".utf8)) == nil)
        #expect(tree.region(containing: Data("b".utf8))?.region.id == 1)
        #expect(tree.count == 1)
        #expect(tree.remove(id: 1) != nil)
        #expect(tree.count == 0 && tree.all.isEmpty)
    }

    /// Random splits reported in random order: whatever order heartbeats arrive in, the tree
    /// never holds overlapping ranges and ends at the newest layout.
    @Test func randomSplitHistoriesInAnyOrderEndAtTheNewestLayout() {
        var generator = SplitMix(seed: 42)
        for _ in 0..<200 {
            // Build a history: region 1 over everything, then splits at random keys.
            var layout: [Flotilla_V1_Region] = [Build.region(1, "", "", version: 1, peers: [p1])]
            var reports = layout
            var nextID: UInt64 = 2
            for _ in 0..<6 {
                let index = Int(generator.next() % UInt64(layout.count))
                var parent = layout[index]
                let key = Data([UInt8(generator.next() % 250) + 1, UInt8(generator.next() % 250)])
                guard parent.contains(key), key != parent.startKey else { continue }
                var child = parent
                child.id = nextID
                nextID += 1
                child.startKey = key
                child.epoch.version += 1
                parent.endKey = key
                parent.epoch.version += 1
                layout[index] = parent
                layout.insert(child, at: index + 1)
                reports += [parent, child]
            }
            reports.shuffle(using: &generator)
            var tree = RegionTree()
            for region in reports { tree.update(Build.info(region)) }
            // The newest version of every region whose report was not refused; re-sending the
            // final layout (as the next heartbeats would) always converges.
            for region in layout { tree.update(Build.info(region)) }
            #expect(tree.all.map(\.region) == layout)
            let all = tree.all
            for (a, b) in zip(all, all.dropFirst()) {
                #expect(KeyOrder.compare(a.region.endKey, b.region.startKey) <= 0)
            }
        }
    }
}

/// A small seeded generator for the tests (SplitMix64).
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
