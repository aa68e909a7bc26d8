import FlotillaProto
import Foundation
import Raft
import RocksDB

// Queries: ReadIndex and lease reads, point reads and scans of an applied region, digests.

extension StoreCore {
    /// Starts a read of a region. Linearizable reads need the leader (lease or ReadIndex);
    /// follower reads ask the leader for its read index from any replica; stale reads are
    /// served by any replica from what it applied. The read appears in `readyReads` once
    /// the replica has applied far enough.
    public func proposeRead(context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> ProposalID {
        let peer: RegionPeer
        switch context.readConsistency {
        case .linearizable, .UNRECOGNIZED: peer = try leaderPeer(for: context)
        case .follower, .stale: peer = try initializedPeer(for: context)
        }
        try admitRequest()
        let id = makeProposalID()
        if context.readConsistency == .stale {
            peer.readsAwaitingApply.append((0, id))
            peersWithImmediateReads.insert(peer.region.id)
            pendingRequests += 1
            return id
        }
        var readContext: [UInt8] = []
        StoreKeys.appendBigEndian(id.value, to: &readContext)
        do {
            try peer.raft.readIndex(context: readContext)
        } catch {
            throw mapRaftError(error, peer: peer)
        }
        touchedRegions.insert(peer.region.id)
        peer.readsAwaitingIndex[readContext] = id
        pendingRequests += 1
        return id
    }

    /// Reads `key` from the region's applied data. Call for reads in `readyReads`.
    /// With `epoch` (the request's), a region that split since answers `epochNotMatch`.
    public func get(_ key: Data, regionID: UInt64, epoch: Flotilla_V1_RegionEpoch? = nil) throws -> Data? {
        guard let peer = peers[regionID], peer.isInitialized else { throw StoreRequestError.regionNotFound(regionID: regionID) }
        guard peer.region.contains(key) else {
            if let epoch, epoch.version != peer.region.epoch.version { throw StoreRequestError.epochNotMatch(current: currentRegions(of: peer)) }
            throw StoreRequestError.keyNotInRegion(key: key, region: peer.region)
        }
        recordLoad(peer, key: key)
        let value = try db.get([UInt8](key), in: dataCF).map { Data($0) }
        peer.load.readKeys += 1
        peer.load.readBytes += key.count + (value?.count ?? 0)
        return value
    }

    /// Plans a scan of the region's applied data in [start, end) (an empty end: the region's
    /// end): checks the range lies inside the region — a range reaching outside is a stale
    /// route (`keyNotInRegion`), never a clipped answer — and takes a RocksDB snapshot, so the
    /// plan can be read off the store thread with `ScanPlan.run()` while other regions write.
    public func planScan(regionID: UInt64, from start: Data, to end: Data, limit: Int, reverse: Bool,
                         epoch: Flotilla_V1_RegionEpoch? = nil) throws(StoreRequestError) -> ScanPlan {
        guard let peer = peers[regionID], peer.isInitialized else { throw .regionNotFound(regionID: regionID) }
        let region = peer.region
        let splitSince = epoch.map { $0.version != region.epoch.version } ?? false
        guard region.contains(start) else {
            throw splitSince ? .epochNotMatch(current: currentRegions(of: peer)) : .keyNotInRegion(key: start, region: region)
        }
        if (end.isEmpty && !region.endKey.isEmpty) || (!end.isEmpty && !region.endKey.isEmpty && region.endKey.lexicographicallyPrecedes(end)) {
            if splitSince { throw .epochNotMatch(current: currentRegions(of: peer)) }
            if !end.isEmpty { throw .keyNotInRegion(key: end, region: region) }
        }
        recordLoad(peer, key: start)
        let upper = end.isEmpty ? StoreKeys.dataUpperBound(region) : [UInt8](end)
        return ScanPlan(db: db, snapshot: db.makeSnapshot(), column: dataCF, lower: [UInt8](start), upper: upper,
                        limit: max(1, limit), reverse: reverse)
    }

    /// Up to `limit` pairs of the region in [start, end), read on the calling thread (tests and
    /// tools; the server reads scans off the store thread through `planScan`).
    public func scan(regionID: UInt64, from start: Data, to end: Data, limit: Int, reverse: Bool) throws -> [(Data, Data)] {
        try planScan(regionID: regionID, from: start, to: end, limit: limit, reverse: reverse).run().pairs
    }

    /// Every key the region holds here, in order (for checks and tools; not a client API).
    public func keys(in regionID: UInt64) throws -> [[UInt8]] {
        guard let peer = peers[regionID], peer.isInitialized else { throw StoreRequestError.regionNotFound(regionID: regionID) }
        let iterator = db.makeIterator(in: dataCF, lowerBound: [UInt8](peer.region.startKey),
                                       upperBound: StoreKeys.dataUpperBound(peer.region))
        iterator.seekToFirst()
        var keys: [[UInt8]] = []
        while iterator.isValid { keys.append(iterator.key); iterator.next() }
        try iterator.checkError()
        return keys
    }

    /// A digest of the region's replicated state here: its applied index, key count and an
    /// FNV-1a checksum over its data and client sessions. Replicas that applied the same
    /// index must agree.
    public func regionDigest(_ regionID: UInt64) throws -> RegionDigest {
        guard let peer = peers[regionID], peer.isInitialized else { throw StoreRequestError.regionNotFound(regionID: regionID) }
        let reader = SnapshotReader(db: db, snapshot: db.makeSnapshot(), region: peer.region, header: Flotilla_V1_RaftMessage(),
                                    chunkBytes: settings.snapshotChunkBytes)
        var keys = 0
        while let chunk = try reader.nextChunk() {
            keys += chunk.pairs.filter { $0.column == .data }.count
        }
        return RegionDigest(regionID: regionID, appliedIndex: peer.raft.appliedIndex, keyCount: keys, checksum: reader.checksum.value)
    }

    func initializedPeer(for context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> RegionPeer {
        guard let peer = peers[context.regionID], peer.isInitialized, !peer.isRemoved else {
            throw .regionNotFound(regionID: context.regionID)
        }
        if context.hasEpoch && context.epoch != peer.region.epoch { throw .epochNotMatch(current: currentRegions(of: peer)) }
        // Every request to a replica goes through here: a proposal, a read, a membership
        // change or a transfer wakes a sleeping region.
        wakeIfAsleep(peer)
        return peer
    }

    func leaderPeer(for context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> RegionPeer {
        let peer = try initializedPeer(for: context)
        guard peer.raft.role == .leader else { throw .notLeader(regionID: peer.region.id, leader: peer.leaderPeer) }
        return peer
    }

    func serveReads(_ peer: RegionPeer, output: inout StoreTurnOutput) {
        guard !peer.readsAwaitingApply.isEmpty else { return }
        let applied = peer.raft.appliedIndex
        var waiting: [(index: UInt64, id: ProposalID)] = []
        for read in peer.readsAwaitingApply {
            if read.index <= applied { output.readyReads.append((read.id, peer.region.id)) } else { waiting.append(read) }
        }
        peer.readsAwaitingApply = waiting
    }
}

/// A region replica's replicated state in brief, to compare replicas.
public struct RegionDigest: Sendable, Equatable, CustomStringConvertible {
    public let regionID: UInt64
    public let appliedIndex: UInt64
    public let keyCount: Int
    public let checksum: UInt64

    public var description: String {
        "region \(regionID) applied \(appliedIndex) keys \(keyCount) checksum \(String(checksum, radix: 16))"
    }
}
