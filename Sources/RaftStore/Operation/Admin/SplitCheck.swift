import FlotillaProto
import Foundation
import RocksDB

/// When a region is split on its own: by size (past `regionMaxSizeBytes`, into pieces of about
/// `regionSplitSizeBytes`, as TiKV's 144 and 96 MiB) and by load (more than
/// `loadSplitRequestsPerSecond` for `loadSplitSeconds` in a row, at a key that balances the
/// sampled requests).
public struct SplitTriggers: Sendable, Equatable {
    public var regionMaxSizeBytes: Int = 144 << 20
    public var regionSplitSizeBytes: Int = 96 << 20
    /// A leader checks a region's size once this many bytes were written to it since its last
    /// check (and once after the store starts).
    public var splitCheckDiffBytes: Int = 6 << 20
    /// 0: no load split.
    public var loadSplitRequestsPerSecond: Int = 3_000
    public var loadSplitSeconds: Int = 10

    public init() {}

    /// Limits a config may set: sizes from 4 KiB to 1 TiB, split size at most the max size,
    /// 1 to 3,600 seconds.
    public func validated() throws(StoreRequestError) -> SplitTriggers {
        let sizes = 4_096...(1 << 40)
        guard sizes.contains(regionMaxSizeBytes), sizes.contains(regionSplitSizeBytes), regionSplitSizeBytes <= regionMaxSizeBytes else {
            throw .invalidArgument(field: "region-split-size", reason: "region sizes must be 4 KiB to 1 TiB, split size at most max size (\(regionSplitSizeBytes) > \(regionMaxSizeBytes)?)")
        }
        guard (1...(1 << 40)).contains(splitCheckDiffBytes) else {
            throw .invalidArgument(field: "split-check-diff", reason: "must be 1 byte to 1 TiB")
        }
        guard loadSplitRequestsPerSecond >= 0, (1...3_600).contains(loadSplitSeconds) else {
            throw .invalidArgument(field: "load-split", reason: "requests per second ≥ 0, seconds 1 to 3600")
        }
        return self
    }
}

/// A size check of one region over a RocksDB snapshot taken on the store thread: read on any
/// thread, it sums the region's keys and values and picks split keys every
/// `regionSplitSizeBytes` when the region is past `regionMaxSizeBytes`.
public struct SplitCheckPlan: @unchecked Sendable {
    // RocksDB's DB and snapshots are thread-safe.
    let db: Database
    let snapshot: RocksDB.Snapshot
    public let region: Flotilla_V1_Region

    /// What the check found.
    public struct Outcome: Sendable, Equatable {
        public var sizeBytes: UInt64 = 0
        public var keys: UInt64 = 0
        /// Empty when the region is within its size (at most `KVLimits.splitKeysMax`).
        public var splitKeys: [Data] = []
    }

    public func run(_ triggers: SplitTriggers) throws -> Outcome {
        let iterator = db.makeIterator(lowerBound: [UInt8](region.startKey), upperBound: StoreKeys.dataUpperBound(region), snapshot: snapshot)
        iterator.seekToFirst()
        var outcome = Outcome()
        var boundaries: [Data] = []
        var sinceBoundary = 0
        while iterator.isValid {
            let bytes = iterator.withKey { $0.count } + iterator.withValue { $0.count }
            // A boundary is the first key of the next piece, never the region's start.
            if sinceBoundary >= triggers.regionSplitSizeBytes && outcome.keys > 0 && boundaries.count < KVLimits.splitKeysMax {
                boundaries.append(iterator.withKey { Data($0) })
                sinceBoundary = 0
            }
            sinceBoundary += bytes
            outcome.sizeBytes += UInt64(bytes)
            outcome.keys += 1
            iterator.next()
        }
        try iterator.checkError()
        if outcome.sizeBytes > UInt64(triggers.regionMaxSizeBytes) {
            // A last piece much smaller than a split piece joins the one before it.
            if sinceBoundary < triggers.regionSplitSizeBytes / 2, boundaries.count > 1 { boundaries.removeLast() }
            outcome.splitKeys = boundaries
        }
        // Split keys are strictly inside the region, increasing, and bounded (a proposal
        // refuses anything else; this pairs with that check).
        precondition(outcome.splitKeys.count <= KVLimits.splitKeysMax
                     && outcome.splitKeys.allSatisfy { region.contains($0) && $0 != region.startKey }
                     && zip(outcome.splitKeys, outcome.splitKeys.dropFirst()).allSatisfy { $0.lexicographicallyPrecedes($1) },
                     "region \(region.id): split check found keys outside its range or out of order")
        return outcome
    }
}

/// A region's requests over one interval as its leader saw them: how many, and a uniform
/// sample of their keys (reservoir), to split a hot region where its load divides.
public struct RegionLoad: Sendable {
    public let region: Flotilla_V1_Region
    public let requests: Int
    public let sampledKeys: [Data]
    /// Keys and bytes (keys and values) read by point reads and written by applied writes.
    public var readKeys = 0
    public var readBytes = 0
    public var writtenKeys = 0
    public var writtenBytes = 0

    static let samplesMax = 64

    public init(region: Flotilla_V1_Region, requests: Int, sampledKeys: [Data]) {
        self.region = region
        self.requests = requests
        self.sampledKeys = sampledKeys
    }

    /// The sampled key that best balances the samples before it against those from it on, if
    /// any divides them at all: never the region's start, and never inside one hot key (a key
    /// all samples share gives none).
    public var balancedSplitKey: Data? {
        let sorted = sampledKeys.sorted { $0.lexicographicallyPrecedes($1) }
        var best: (key: Data, imbalance: Int)?
        var position = 0
        while position < sorted.count {
            let key = sorted[position]
            // Samples before `key` go left; `key` and after go right.
            let left = position
            let right = sorted.count - position
            if left > 0, region.startKey.lexicographicallyPrecedes(key), region.contains(key) {
                let imbalance = abs(left - right)
                if best.map({ imbalance < $0.imbalance }) ?? true { best = (key, imbalance) }
            }
            while position < sorted.count && sorted[position] == key { position += 1 }
        }
        precondition(best.map { region.contains($0.key) && $0.key != region.startKey } ?? true, "a load split key inside the region")
        return best?.key
    }
}

/// Per-region request counting between two `takeRegionLoads()`.
struct LoadCounter {
    var requests = 0
    var readKeys = 0
    var readBytes = 0
    var writtenKeys = 0
    var writtenBytes = 0
    var samples: [Data] = []
    /// A deterministic generator for the reservoir (no need for unpredictability here).
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15

    mutating func record(_ key: Data) {
        requests += 1
        if samples.count < RegionLoad.samplesMax {
            samples.append(key)
            return
        }
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        let slot = Int((state >> 33) % UInt64(requests))
        if slot < RegionLoad.samplesMax { samples[slot] = key }
        precondition(samples.count == RegionLoad.samplesMax, "the load sample stays at its bound")
    }
}

extension StoreCore {
    /// Size checks due: regions led here written past `splitCheckDiffBytes` since their last
    /// check (or never checked since the store started), each as a plan to run off the store
    /// thread. Their counters restart.
    public func splitCheckPlans(diffBytes: Int) -> [SplitCheckPlan] {
        var plans: [SplitCheckPlan] = []
        for regionID in peers.keys.sorted() {
            guard let peer = peers[regionID], peer.isInitialized, !peer.isRemoved, peer.raft.role == .leader,
                  peer.bytesWrittenSinceSplitCheck >= diffBytes || !peer.sizeCheckedOnce else { continue }
            precondition(peer.region.id == regionID, "peers are keyed by their region's id")
            peer.bytesWrittenSinceSplitCheck = 0
            peer.sizeCheckedOnce = true
            plans.append(SplitCheckPlan(db: db, snapshot: db.makeSnapshot(), region: peer.region))
        }
        return plans
    }

    /// Counts a request to a region led here, with its key (load split).
    func recordLoad(_ peer: RegionPeer, key: Data) {
        peer.load.record(key)
    }

    /// The requests each region led here received since the last call, and the keys and bytes
    /// read and written; the counters restart (on every replica).
    public func takeRegionLoads() -> [RegionLoad] {
        var loads: [RegionLoad] = []
        for regionID in peers.keys.sorted() {
            guard let peer = peers[regionID] else { continue }
            let counted = peer.load
            guard counted.requests > 0 || counted.readKeys > 0 || counted.writtenKeys > 0 else { continue }
            if peer.isInitialized && peer.raft.role == .leader {
                var load = RegionLoad(region: peer.region, requests: counted.requests, sampledKeys: counted.samples)
                load.readKeys = counted.readKeys
                load.readBytes = counted.readBytes
                load.writtenKeys = counted.writtenKeys
                load.writtenBytes = counted.writtenBytes
                loads.append(load)
            }
            peer.load = LoadCounter()
        }
        return loads
    }
}
