import FlotillaProto
import Foundation
import Raft
import RocksDB

// What a store tells PD about the regions it leads.

extension StoreCore {
    /// What a region's leader reports to PD: every region this store leads, with its leader
    /// peer, the peers still catching up (pending: never matched, or behind the leader's
    /// first log index, so they need a snapshot) and the peers not heard from for
    /// `peerDownTicks` (down).
    public func leaderReports() -> [LeaderReport] {
        peers.keys.sorted().compactMap { regionID in
            guard let peer = peers[regionID], peer.isInitialized, peer.raft.role == .leader,
                  let me = peer.region.peer(withID: peer.peerID) else { return nil }
            let matches = peer.raft.matchIndexes
            let silent = peer.raft.silentTicks
            let pending = peer.region.peers.filter { other in
                guard other.id != peer.peerID else { return false }
                let match = matches[other.id] ?? 0
                return match == 0 || match < peer.storage.firstIndex
            }
            let down = peer.region.peers.filter { other in
                other.id != peer.peerID && (silent[other.id] ?? 0) >= settings.peerDownTicks
            }
            return (peer.region, me, pending, down, peer.appliedConfState.isJoint, sleepingRegions[regionID] != nil)
        }
    }
}
