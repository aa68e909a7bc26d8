import FlotillaProto
import Foundation
import Raft
import RocksDB

/// A consistency check of one region on this replica: the check entry's index, the digest of
/// the data and sessions at that index (nil while it is computed off the store's loop), and
/// the leader's digest once its verification entry is applied. In memory only: a restart
/// forgets it (run the check again).
struct ConsistencyCheckState {
    let index: UInt64
    var digest: RegionDigest?
    var expected: (keys: UInt64, checksum: UInt64)?

    var verdict: String {
        guard let digest, let expected else { return "unverified" }
        return UInt64(digest.keyCount) == expected.keys && digest.checksum == expected.checksum ? "match" : "mismatch"
    }
}

/// The digest a replica owes for a consistency check: a RocksDB snapshot taken right after the
/// check entry applied, read off the store's loop (it reads the whole region).
public struct ConsistencyCheckTask: Sendable {
    public let regionID: UInt64
    public let index: UInt64
    let reader: SnapshotReader

    /// Reads the region's data and sessions as of the check entry (on any thread, once).
    public func digest() throws -> RegionDigest {
        var keys = 0
        while let chunk = try reader.nextChunk() {
            keys += chunk.pairs.filter { $0.column == .data }.count
        }
        return RegionDigest(regionID: regionID, appliedIndex: index, keyCount: keys, checksum: reader.checksum.value)
    }
}

extension StoreCore {
    /// Proposes a consistency check of a region led here: every replica applying the entry
    /// digests its state at its index. Completes like a write once applied here; the result's
    /// `state_machine_reply` is empty and the index is `consistencyCheckIndex(of:)`.
    public func proposeConsistencyCheck(context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> ProposalID {
        var command = Flotilla_V1_ConsistencyCheckCommand()
        command.verifyIndex = 0
        return try proposeConsistencyCommand(command, context: context)
    }

    /// The index of the newest consistency check this replica applied (0: none).
    public func consistencyCheckIndex(of regionID: UInt64) -> UInt64 {
        peers[regionID]?.consistencyCheck?.index ?? 0
    }

    private func proposeConsistencyCommand(_ command: Flotilla_V1_ConsistencyCheckCommand,
                                           context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> ProposalID {
        let peer = try leaderPeer(for: context)
        try admitRequest()
        var batch = Flotilla_V1_CommandBatch()
        batch.consistencyCheck = command
        return try proposeAdministrative(batch, peer: peer, field: "consistency_check")
    }

    /// Records the digest a check task computed. When this replica leads the region, returns
    /// the verification to propose (the leader's digest); a replica that already applied the
    /// leader's digest compares now.
    public func recordConsistencyDigest(_ digest: RegionDigest) -> Flotilla_V1_ConsistencyCheckCommand? {
        guard let peer = peers[digest.regionID], var check = peer.consistencyCheck, check.index == digest.appliedIndex else { return nil }
        check.digest = digest
        peer.consistencyCheck = check
        compareConsistency(peer)
        guard peer.raft.role == .leader else { return nil }
        var verify = Flotilla_V1_ConsistencyCheckCommand()
        verify.verifyIndex = digest.appliedIndex
        verify.keys = UInt64(digest.keyCount)
        verify.checksum = digest.checksum
        return verify
    }

    /// Proposes the leader's digest of a check (fire and forget: a lost proposal leaves the
    /// check unverified, and the command line compares the digests itself).
    public func proposeConsistencyVerification(_ command: Flotilla_V1_ConsistencyCheckCommand, regionID: UInt64) throws(StoreRequestError) {
        var context = Flotilla_V1_RequestContext()
        context.regionID = regionID
        // Nobody waits for its answer: the driver drops completions it does not know.
        _ = try proposeConsistencyCommand(command, context: context)
    }

    /// Alarms raised since the last call: replicas whose digest differs from the leader's.
    public func takeConsistencyAlarms() -> [String] {
        defer { consistencyAlarms = [] }
        return consistencyAlarms
    }

    /// Applies a check entry at `index`. A digest request flushes the turn's apply batch (with
    /// this region's sessions, state and applied index, so what is on disk is exactly the
    /// region at `index`) and snapshots the database for the digest.
    func applyConsistencyCheck(_ command: Flotilla_V1_ConsistencyCheckCommand, peer: RegionPeer, index: UInt64,
                               batch: inout ApplyBatch, sessionsWritten: inout Set<UInt64>, regionStateChanged: Bool,
                               output: inout StoreTurnOutput) throws {
        if command.verifyIndex != 0 {
            guard var check = peer.consistencyCheck, check.index == command.verifyIndex else { return }
            check.expected = (command.keys, command.checksum)
            peer.consistencyCheck = check
            compareConsistency(peer)
            return
        }
        for client in sessionsWritten.sorted() {
            guard let session = peer.sessions[client] else { continue }
            batch.batch.put(StoreKeys.session(region: peer.region.id, client: client), try session.serializedBytes(), in: metaCF)
        }
        sessionsWritten = []
        if regionStateChanged {
            batch.batch.put(StoreKeys.regionState(region: peer.region.id), try peer.localState.serializedBytes(), in: metaCF)
        }
        batch.batch.put(StoreKeys.applyState(region: peer.region.id),
                        StoredValues.encodeApplyState(applied: index, truncatedIndex: peer.storage.truncatedIndex,
                                                      truncatedTerm: peer.storage.truncatedTerm),
                        in: metaCF)
        output.recordsWritten += batch.batch.count
        try write(batch.batch, sync: false, .consistencyCheck)
        batch.batch.clear()
        let reader = SnapshotReader(db: db, snapshot: db.makeSnapshot(), region: peer.region, header: Flotilla_V1_RaftMessage(),
                                    chunkBytes: settings.snapshotChunkBytes)
        peer.consistencyCheck = ConsistencyCheckState(index: index)
        output.consistencyChecks.append(ConsistencyCheckTask(regionID: peer.region.id, index: index, reader: reader))
    }

    private func compareConsistency(_ peer: RegionPeer) {
        guard let check = peer.consistencyCheck, let digest = check.digest, let expected = check.expected else { return }
        guard check.verdict == "mismatch" else { return }
        consistencyMismatches += 1
        consistencyAlarms.append("region \(peer.region.id) replica \(peer.peerID) on store \(storeID) DIVERGES from its leader at index \(check.index): "
            + "here \(digest.keyCount) keys checksum \(String(digest.checksum, radix: 16)), leader \(expected.keys) keys checksum \(String(expected.checksum, radix: 16))")
    }
}

extension StoreCore {
    /// The newest consistency check of a region here, as reported in its status.
    public func consistencyCheckResult(of regionID: UInt64) -> Flotilla_V1_ConsistencyCheckResult? {
        guard let check = peers[regionID]?.consistencyCheck else { return nil }
        var result = Flotilla_V1_ConsistencyCheckResult()
        result.index = check.index
        result.computed = check.digest != nil
        result.keys = UInt64(check.digest?.keyCount ?? 0)
        result.checksum = check.digest?.checksum ?? 0
        result.verdict = check.verdict
        return result
    }
}

/// A region's data and client sessions as of one RocksDB snapshot at `appliedIndex`, read in
/// bounded chunks for a backup (on any thread, by one reader at a time).
public struct RegionBackupReader: Sendable {
    public let region: Flotilla_V1_Region
    public let appliedIndex: UInt64
    let reader: SnapshotReader

    /// The next chunk's pairs (nil after the last).
    public func nextPairs() throws -> [Flotilla_V1_SnapshotPair]? {
        try reader.nextChunk().map(\.pairs)
    }

    public var pairCount: UInt64 { reader.pairCount }
    public var checksum: UInt64 { reader.checksum.value }
}

extension StoreCore {
    /// Opens a backup of a region initialized here at what it applied so far. Call it from a
    /// read confirmed by the region's leader (a read index), so the data holds every write
    /// acknowledged before the read began.
    public func openBackupReader(regionID: UInt64) throws(StoreRequestError) -> RegionBackupReader {
        guard let peer = peers[regionID], peer.isInitialized, !peer.isRemoved else { throw .regionNotFound(regionID: regionID) }
        let reader = SnapshotReader(db: db, snapshot: db.makeSnapshot(), region: peer.region, header: Flotilla_V1_RaftMessage(),
                                    chunkBytes: settings.snapshotChunkBytes)
        return RegionBackupReader(region: peer.region, appliedIndex: peer.raft.appliedIndex, reader: reader)
    }
}
