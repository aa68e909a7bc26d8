import FlotillaProto
import Foundation
import Raft
import RocksDB

// Admin commands, membership: proposing, applying and recording joint-consensus changes, and
// leader transfer.

extension StoreCore {
    /// Proposes a membership change of a region this store leads: each change names the peer
    /// (id, store, role) it adds, promotes, demotes or removes. Completes like a write once
    /// applied. Several changes at once go through a joint configuration.
    public func proposeMembershipChange(regionID: UInt64, changes: [(kind: ConfChangeKind, peer: Flotilla_V1_Peer)]) throws(StoreRequestError) -> ProposalID {
        var context = Flotilla_V1_RequestContext()
        context.regionID = regionID
        let peer = try leaderPeer(for: context)
        guard !changes.isEmpty else { throw .invalidArgument(field: "changes", reason: "empty") }
        var announced = Flotilla_V1_Region()
        announced.peers = changes.map(\.peer)
        let encodedContext: [UInt8]
        do { encodedContext = try announced.serializedBytes() } catch {
            throw .invalidArgument(field: "changes", reason: "cannot be encoded: \(error)")
        }
        // A leader is never demoted or removed by its own proposal (TiKV's pd#3499: a leader
        // demoted inside a joint configuration can lead it nowhere): move the leadership first.
        if let own = changes.first(where: { $0.peer.id == peer.peerID }), own.kind != .addVoter {
            throw .invalidArgument(field: "changes", reason: "peer \(peer.peerID) leads region \(regionID): transfer the leadership before demoting or removing it")
        }
        let change = ConfChangeV2(changes: changes.map { ConfChangeSingle($0.kind, $0.peer.id) }, context: encodedContext)
        // At most one replica of a region per store: a store tells a removed replica from its
        // successor by that (see `supersedes`).
        for (kind, added) in changes where kind != .remove {
            if let other = peer.region.peers.first(where: { $0.storeID == added.storeID && $0.id != added.id }) {
                throw .invalidArgument(field: "changes", reason: "store \(added.storeID) already holds replica \(other.id) of region \(regionID)")
            }
        }
        if let invalid = Result(catching: { () throws(RaftError) in try peer.appliedConfState.applying(change) }).failureDescription {
            throw .invalidArgument(field: "changes", reason: invalid)
        }
        try admitRequest()
        // Writes accepted before the change are proposed before it.
        proposeQueuedWrites(peer)
        let index: UInt64
        do {
            index = try peer.raft.proposeConfChange(change)
        } catch {
            throw mapRaftError(error, peer: peer)
        }
        touchedRegions.insert(peer.region.id)
        return trackWrite(peer: peer, index: index)
    }

    /// A replica's region as applied here, whether it is in a joint configuration, and its
    /// recent membership changes (nil for a region not here or not yet initialized).
    public func membership(of regionID: UInt64) -> (region: Flotilla_V1_Region, joint: Bool, confChanges: [Flotilla_V1_ConfChangeRecord])? {
        guard let peer = peers[regionID], peer.isInitialized else { return nil }
        return (peer.region, peer.appliedConfState.isJoint, peer.confChanges)
    }

    /// Hands the leadership of a region this store leads to its peer `peerID` (a voter).
    public func transferLeader(regionID: UInt64, to peerID: UInt64) throws(StoreRequestError) {
        var context = Flotilla_V1_RequestContext()
        context.regionID = regionID
        let peer = try leaderPeer(for: context)
        do { try peer.raft.transferLeader(to: peerID) } catch { throw mapRaftError(error, peer: peer) }
        touchedRegions.insert(regionID)
    }

    /// Applies a committed membership change to the region descriptor (peers, conf_ver) the
    /// same way Raft applies it to its configuration. Returns whether anything changed.
    func applyMembershipChange(_ entry: Entry, peer: RegionPeer) -> Bool {
        guard let change = ConfChangeV2(decoding: entry.data),
              let next = try? peer.appliedConfState.applying(change) else { return false }
        let announced = (try? Flotilla_V1_Region(serializedBytes: change.context))?.peers ?? []
        let confVerBefore = peer.region.epoch.confVer
        peer.appliedConfState = next
        let voters = next.voters.union(next.votersOutgoing)
        peer.region.peers = next.allNodes.sorted().compactMap { id in
            guard var described = peer.region.peer(withID: id) ?? announced.first(where: { $0.id == id }) ?? peer.knownPeers[id] else {
                return nil
            }
            described.role = voters.contains(id) ? .voter : .learner
            return described
        }
        peer.region.epoch.confVer += 1
        // The descriptor follows Raft's configuration: the same members, voters as voters, and
        // at most one replica per store (checked at proposal; see `supersedes`).
        precondition(peer.region.peers.allSatisfy { next.allNodes.contains($0.id) && ($0.role == .voter) == voters.contains($0.id) },
                     "region \(peer.region.id): descriptor peers differ from the applied configuration")
        precondition(Set(peer.region.peers.map(\.storeID)).count == peer.region.peers.count,
                     "region \(peer.region.id): two replicas on one store after index \(entry.index)")
        precondition(peer.region.epoch.confVer == confVerBefore + 1, "conf_ver moves by one per applied change")
        var record = Flotilla_V1_ConfChangeRecord()
        record.index = entry.index
        record.kind = change.isLeaveJoint ? .leaveJoint : next.isJoint ? .enterJoint : .simple
        record.confVer = peer.region.epoch.confVer
        record.peers = peer.region.peers
        if next.isJoint {
            record.incomingVoterIds = next.voters.sorted()
            record.outgoingVoterIds = next.votersOutgoing.sorted()
        }
        peer.confChanges.append(record)
        if peer.confChanges.count > RegionPeer.confChangeRecordsMax { peer.confChanges.removeFirst(peer.confChanges.count - RegionPeer.confChangeRecordsMax) }
        precondition(peer.confChanges.count <= RegionPeer.confChangeRecordsMax, "membership record over its bound")
        if !next.allNodes.contains(peer.peerID) { peer.isRemoved = true }
        return true
    }
}
