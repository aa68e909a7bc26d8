import FlotillaProto
import Foundation
import Raft
import RocksDB

// Peer life: a replica is opened, bootstrapped, created by a leader's message, superseded by a
// newer one, destroyed when removed, and tombstoned so that no stale message brings it back.

extension StoreCore {
    func openPeer(_ state: Flotilla_V1_RegionLocalState) throws {
        let region = state.region
        guard let me = region.peer(onStore: storeID) else {
            throw StoreCorruption(region: region.id, what: "stored region has no peer on store \(storeID)")
        }
        let confState = state.hasConfState ? state.confState.core : region.confState
        let storage = try RegionRaftStorage(db: db, regionID: region.id, confState: confState)
        let applyState = try db.get(StoreKeys.applyState(region: region.id), in: metaCF)
            .map { bytes throws(StoreCorruption) in try StoredValues.decodeApplyState(bytes, region: region.id) }
        let applied = applyState?.applied ?? 0
        // A turn writes its apply before the log write that may carry the commit index of
        // what it applied; after a machine crash the apply can survive without it. Applied entries were
        // committed and are in the log: the commit index is at least the applied index.
        guard applied <= storage.lastIndex else {
            throw StoreCorruption(region: region.id, what: "applied \(applied) beyond the last log index \(storage.lastIndex)")
        }
        storage.recoverCommit(atLeast: applied)
        var config = makeRaftConfig(me.id)
        config.id = me.id
        config.appliedIndex = applied
        let peer = RegionPeer(region: region, peerID: me.id, raft: RaftNode(config: config, storage: storage),
                              storage: storage, isInitialized: true, appliedConfState: confState)
        peer.storage.snapshotPoint = SnapshotMetadata(index: applied, term: (try? storage.term(at: applied)) ?? 0, confState: confState)
        peer.confChanges = Array(state.confChanges.suffix(RegionPeer.confChangeRecordsMax))
        // Stored state is input: overlapping regions on disk are corruption, not a trap.
        let overlapping = regionMap.overlapping(start: region.startKey, end: region.endKey).filter { $0 != region.id }
        guard overlapping.isEmpty else {
            throw StoreCorruption(region: region.id, what: "stored range overlaps regions \(overlapping) held here")
        }
        insert(peer)
        regionMap.set(region)
        precondition(regionMap.range(of: region.id) != nil && peer.raft.appliedIndex == applied,
                     "region \(region.id): an opened replica is mapped and starts at its applied index")
        touchedRegions.insert(region.id)
        if peer.raft.termExhausted {
            refusalReports.append("region \(region.id): persisted term \(peer.raft.term) is at or above the limit \(RaftLimits.termMax) "
                                  + "(a forged message accepted by an earlier version?); this replica will never campaign")
        }
    }

    /// Creates a region replica from its descriptor, as every founding store of a static
    /// cluster does: the region state and a log that starts after index 1, as if restored
    /// from a snapshot holding the initial members and no data. A peer added later has an
    /// empty log, so the leader always sends it a snapshot. Does nothing when the region exists.
    public func bootstrapRegion(_ region: Flotilla_V1_Region) throws {
        try bootstrapRegions([region])
    }

    /// Regions one synced batch of `bootstrapRegions` creates, at most.
    static let bootstrapRegionsPerBatchMax = 4_096

    /// `bootstrapRegion` for many regions at once, `bootstrapRegionsPerBatchMax` to a synced
    /// write (a founding store of 100,000 regions synced each alone for a minute). A crash
    /// between batches leaves whole regions created and the rest not: the next start creates
    /// the rest. Regions that exist are skipped.
    public func bootstrapRegions(_ regions: [Flotilla_V1_Region]) throws {
        let fresh = regions.filter { peers[$0.id] == nil }
        for region in fresh where region.peer(onStore: storeID) == nil {
            throw StoreRequestError.invalidArgument(field: "region.peers", reason: "region \(region.id): no peer on store \(storeID)")
        }
        let raftCF = try db.columnFamily(StoreKeys.raftColumnFamily)
        for start in stride(from: 0, to: fresh.count, by: Self.bootstrapRegionsPerBatchMax) {
            let part = fresh[start..<min(start + Self.bootstrapRegionsPerBatchMax, fresh.count)]
            let batch = db.makeWriteBatch()
            var states: [Flotilla_V1_RegionLocalState] = []
            for region in part {
                var localState = Flotilla_V1_RegionLocalState()
                localState.region = region
                localState.state = .normal
                localState.confState = Flotilla_V1_ConfState(region.confState)
                batch.put(StoreKeys.hardState(region: region.id), StoredValues.encode(HardState(term: 1, vote: noNode, commit: 1)), in: raftCF)
                batch.put(StoreKeys.applyState(region: region.id),
                          StoredValues.encodeApplyState(applied: 1, truncatedIndex: 1, truncatedTerm: 1), in: metaCF)
                batch.put(StoreKeys.regionState(region: region.id), try localState.serializedBytes(), in: metaCF)
                states.append(localState)
            }
            try write(batch, sync: true, .bootstrap)
            for localState in states { try openPeer(localState) }
        }
        precondition(regions.allSatisfy { peers[$0.id] != nil }, "every region bootstrapped is open")
    }

    /// Replicas here that have not heard from a leader for `minTicks` (candidates for a check
    /// with PD: a replica removed while it could not hear of it never hears again), with their
    /// peer id and the conf_ver they know.
    public func silentReplicas(minTicks: UInt64) -> [(regionID: UInt64, peerID: UInt64, confVer: UInt64)] {
        peers.keys.sorted().compactMap { regionID in
            guard let peer = peers[regionID], !peer.isRemoved, peer.raft.ticksSinceLeaderContact >= minTicks else { return nil }
            return (regionID, peer.peerID, peer.region.epoch.confVer)
        }
    }

    /// Destroys the replica `peerID` of `regionID` here (at the end of the next turn) when the
    /// region, as of `confVer` newer than this replica knows, no longer lists it: peer ids are
    /// never reused, so a replica once removed is never a member again. Returns whether it will.
    @discardableResult
    public func destroyIfRemoved(regionID: UInt64, peerID: UInt64, region current: Flotilla_V1_Region) -> Bool {
        guard let held = peers[regionID], held.peerID == peerID, current.id == regionID,
              current.epoch.confVer > held.region.epoch.confVer, !current.peers.contains(where: { $0.id == peerID }) else { return false }
        supersededRegions.insert(regionID)
        touchedRegions.insert(regionID)
        if !held.isRemoved {
            held.isRemoved = true
            report(refusedMessage: "replica \(peerID) is no longer a member (conf_ver \(current.epoch.confVer) > \(held.region.epoch.confVer)): destroying it",
                   regionID: regionID)
        }
        return true
    }

    /// A message to a newer replica of a region on this store than the one here, from a newer
    /// configuration, shows the one here was removed while it could not hear of it (stopped,
    /// cut off): peer ids are never reused and a region has at most one replica per store.
    /// The old replica is destroyed at the end of the next turn (a tombstone, its data gone);
    /// the leader's next message then creates the new one. Without this the old replica
    /// swallows every message for the new one and the move never finishes.
    func supersedes(_ message: Flotilla_V1_RaftMessage) -> Bool {
        guard let held = peers[message.regionID], message.toPeer.storeID == storeID, message.toPeer.id > held.peerID,
              message.epoch.confVer > held.region.epoch.confVer else { return false }
        supersededRegions.insert(message.regionID)
        touchedRegions.insert(message.regionID)
        if !held.isRemoved {
            held.isRemoved = true
            report(refusedMessage: "replica \(held.peerID) was removed from the region (a message for its successor \(message.toPeer.id) arrived): destroying it",
                   regionID: message.regionID)
        }
        return true
    }

    /// A peer for a region this store does not have, when `message` is a leader's message to
    /// a member on this store, the region was not removed from here at a later epoch, and no
    /// replica here holds part of its range at the same or a newer epoch. (A replica holding
    /// it at an older epoch is a region that has not applied its split yet: the new peer is
    /// created and waits, uninitialized, until that split replaces it.)
    func createPeer(for message: Flotilla_V1_RaftMessage, kind: MessageKind) -> RegionPeer? {
        guard message.regionID != 0, message.toPeer.storeID == storeID, message.toPeer.id != 0 else { return nil }
        let overlapping = regionMap.overlapping(start: message.startKey, end: message.endKey).filter { $0 != message.regionID }
        // A new region's first election (its replica on the split leader's store campaigns at
        // once, usually before the other stores applied the split): the vote is kept and
        // carried into the region when the split here creates it.
        let firstElectionOfSplit = (kind == .requestVote || kind == .requestPreVote)
            && message.message.term == Self.splitInitialIndex + 1
            && !overlapping.isEmpty && overlapping.allSatisfy { (peers[$0]?.region.epoch.version ?? .max) < message.epoch.version }
        guard [.appendEntries, .heartbeat, .installSnapshot].contains(kind) || firstElectionOfSplit else { return nil }
        if let stored = try? db.get(StoreKeys.regionState(region: message.regionID), in: metaCF),
           let state = try? Flotilla_V1_RegionLocalState(serializedBytes: stored),
           state.state == .tombstone,
           state.region.epoch.confVer >= message.epoch.confVer || state.region.peer(withID: message.toPeer.id) != nil
            || message.toPeer.id <= state.removedPeerID {
            // Removed from here: only a successor (a newer peer id, at a newer conf_ver) is made.
            return nil
        }
        for other in overlapping {
            if let held = peers[other], held.region.epoch.version >= message.epoch.version { return nil }
        }
        guard let storage = try? RegionRaftStorage(db: db, regionID: message.regionID, confState: ConfState()),
              storage.lastIndex == 0 else { return nil }
        var region = Flotilla_V1_Region()
        region.id = message.regionID
        region.epoch = message.epoch
        region.peers = [message.toPeer, message.fromPeer]
        var config = makeRaftConfig(message.toPeer.id)
        config.id = message.toPeer.id
        let peer = RegionPeer(region: region, peerID: message.toPeer.id, raft: RaftNode(config: config, storage: storage),
                              storage: storage, isInitialized: false, appliedConfState: ConfState())
        // Created for the new region's first election: it never had a leader, so no lease
        // binds this replica and it may vote at once.
        if firstElectionOfSplit { peer.raft.waiveStartupLease() }
        insert(peer)
        touchedRegions.insert(region.id)
        return peer
    }

    /// Destroys replicas removed from their region once they no longer lead: a tombstone
    /// (so old messages do not recreate them), and their log, state, sessions and data gone.
    func destroyRemovedPeers(_ candidates: [RegionPeer], output: inout StoreTurnOutput) throws {
        for peer in candidates where peer.isRemoved && peer.raft.role != .leader {
            let regionID = peer.region.id
            precondition(peers[regionID] === peer, "region \(regionID): destroying a replica the store no longer holds")
            failPending(peer, error: .regionNotFound(regionID: regionID), output: &output)
            for read in peer.readsAwaitingApply { output.failedReads.append((read.id, .regionNotFound(regionID: regionID))) }
            peer.readsAwaitingApply = []
            var tombstone = peer.localState
            tombstone.state = .tombstone
            // The region no longer lists this replica: the tombstone names it, so no message to
            // it (or to an older peer of the region here) creates a replica again.
            tombstone.removedPeerID = peer.peerID
            let raftCF = try db.columnFamily(StoreKeys.raftColumnFamily)
            let batch = db.makeWriteBatch()
            batch.put(StoreKeys.regionState(region: regionID), try tombstone.serializedBytes(), in: metaCF)
            batch.deleteRange(from: StoreKeys.logEntry(region: regionID, index: 0), to: StoreKeys.logEnd(region: regionID), in: raftCF)
            batch.delete(StoreKeys.hardState(region: regionID), in: raftCF)
            batch.delete(StoreKeys.applyState(region: regionID), in: metaCF)
            batch.deleteRange(from: StoreKeys.sessionsStart(region: regionID), to: StoreKeys.sessionsEnd(region: regionID), in: metaCF)
            // Only an initialized replica owns a range: an uninitialized one (created by a
            // leader's message, removed before its snapshot came) has none, and its empty
            // bounds would name every key on the store (found by the cluster simulation, seed 6).
            if peer.isInitialized {
                batch.deleteRange(from: [UInt8](peer.region.startKey), to: StoreKeys.dataUpperBound(peer.region), in: dataCF)
            }
            try write(batch, sync: true, .replicaDestroy)
            output.logSyncs += 1
            if let received = peer.receivedSnapshot { removeStagedSnapshot(received.directory) }
            removePeer(regionID)
            regionMap.remove(regionID)
            precondition(regionMap.range(of: regionID) == nil, "region \(regionID): a destroyed replica's range is still mapped")
        }
    }
}
