import FlotillaProto
import Foundation
import Raft
import RocksDB

// Log GC: truncating a region's applied log once it passes the count or size threshold.

extension StoreCore {
    /// Truncates the logs of regions holding more applied entries (or bytes) than the
    /// thresholds. A leader keeps what its followers still need unless the log grew past
    /// twice the threshold (a follower that far behind gets a snapshot instead).
    func truncateLogs(_ candidates: [RegionPeer], output: inout StoreTurnOutput) throws {
        let batch = db.makeWriteBatch()
        var truncations: [(peer: RegionPeer, index: UInt64, term: UInt64)] = []
        for peer in candidates where peer.isInitialized {
            let applied = peer.raft.appliedIndex
            let truncated = peer.storage.truncatedIndex
            guard applied > truncated else { continue }
            let overCount = applied - truncated > settings.logGCCountThreshold
            let overSize = peer.logBytesSinceTruncation > settings.logGCSizeThresholdBytes
            guard overCount || overSize else { continue }
            var target = applied
            if peer.raft.role == .leader {
                let needed = peer.raft.replicationStates.filter { $0.key != peer.peerID && $0.value.state != .snapshot }
                    .map(\.value.match).min() ?? applied
                let overHard = applied - truncated > 2 * settings.logGCCountThreshold
                    || peer.logBytesSinceTruncation > 2 * settings.logGCSizeThresholdBytes
                if !overHard { target = min(target, needed) }
            }
            guard target > truncated else { continue }
            precondition(target <= applied, "region \(peer.region.id): truncating to \(target), past applied \(applied)")
            let (index, term) = try peer.storage.stageCompaction(upTo: target, applied: applied, into: batch)
            truncations.append((peer, index, term))
        }
        guard !truncations.isEmpty else { return }
        try write(batch, sync: false, .logTruncation)
        output.recordsWritten += batch.count
        for truncation in truncations {
            let peer = truncation.peer
            let before = peer.storage.lastIndex - peer.storage.truncatedIndex
            let kept = peer.storage.lastIndex - truncation.index
            precondition(truncation.index <= peer.raft.appliedIndex && truncation.index > peer.storage.truncatedIndex,
                         "region \(peer.region.id): truncation to \(truncation.index) outside (\(peer.storage.truncatedIndex), \(peer.raft.appliedIndex)]")
            peer.storage.commitCompaction(index: truncation.index, term: truncation.term)
            peer.logBytesSinceTruncation = before == 0 ? 0 : Int(Double(peer.logBytesSinceTruncation) * Double(kept) / Double(before))
        }
        output.logsTruncated += truncations.count
    }
}
