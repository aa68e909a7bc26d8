import FlotillaProto
import Foundation
import Raft
import RocksDB

/// A split applied this turn on this store: the region as it is now and the regions it made.
public struct AppliedSplit: Sendable {
    public let parent: Flotilla_V1_Region
    public let children: [Flotilla_V1_Region]
    /// Whether this store's replica led the region when it applied the split (its replicas of
    /// the new regions campaign at once).
    public let ledByThisStore: Bool
}

/// A new region's replica to open once the turn's writes are done.
struct PendingChild {
    let localState: Flotilla_V1_RegionLocalState
    let campaign: Bool
}

extension RegionPeer {
    /// Whether this (uninitialized) replica has heard of a leader of its region.
    var knowsALeader: Bool { raft.leader != noNode }
}

extension StoreCore {
    /// The index and term a region made by a split starts its log after: its state is the
    /// parent's range at the split, as if restored from a snapshot at this point.
    static let splitInitialIndex: UInt64 = 5

    /// Proposes splitting a region this store leads at `splitKeys`, creating the regions
    /// `newRegions` names (ids from PD's AskSplit). Completes like a write once applied.
    public func proposeSplit(regionID: UInt64, epoch: Flotilla_V1_RegionEpoch, splitKeys: [Data],
                             newRegions: [Flotilla_V1_SplitRegionIDs]) throws(StoreRequestError) -> ProposalID {
        var context = Flotilla_V1_RequestContext()
        context.regionID = regionID
        context.epoch = epoch
        let peer = try leaderPeer(for: context)
        var split = Flotilla_V1_SplitCommand()
        split.epoch = epoch
        split.splitKeys = splitKeys
        split.newRegions = newRegions
        try checkSplit(split, peer: peer)
        try admitRequest()
        var batch = Flotilla_V1_CommandBatch()
        batch.split = split
        return try proposeAdministrative(batch, peer: peer, field: "split")
    }

    /// Proposes an administrative entry (alone in its entry) for a region led here, after the
    /// writes accepted before it; completes like a write once applied.
    func proposeAdministrative(_ batch: Flotilla_V1_CommandBatch, peer: RegionPeer, field: String) throws(StoreRequestError) -> ProposalID {
        let data: [UInt8]
        do { data = try batch.serializedBytes() } catch {
            throw .invalidArgument(field: field, reason: "cannot be encoded: \(error)")
        }
        proposeQueuedWrites(peer)
        let index: UInt64
        do { index = try peer.raft.propose(data) } catch { throw mapRaftError(error, peer: peer) }
        touchedRegions.insert(peer.region.id)
        return trackWrite(peer: peer, index: index)
    }

    /// Checks a split asked by a client against the region led here (leader, epoch when the
    /// context carries one, keys, no joint configuration) and returns the region as it is now.
    public func checkSplitRequest(context: Flotilla_V1_RequestContext, keys: [Data]) throws(StoreRequestError) -> Flotilla_V1_Region {
        let peer = try leaderPeer(for: context)
        try checkSplitKeys(keys, peer: peer)
        return peer.region
    }

    /// Pairs of this store's replicas whose ranges overlap: always empty (checked by tests
    /// and simulations after every step).
    public func overlappingRegions() -> [(UInt64, UInt64)] { regionMap.overlaps() }

    /// The rules a split meets, checked when proposed and again when applied (identically on
    /// every replica: only the replicated region state is consulted).
    func checkSplit(_ split: Flotilla_V1_SplitCommand, peer: RegionPeer) throws(StoreRequestError) {
        let region = peer.region
        guard split.epoch == region.epoch else { throw .epochNotMatch(current: currentRegions(of: peer)) }
        let keys = split.splitKeys
        try checkSplitKeys(keys, peer: peer)
        guard split.newRegions.count == keys.count else {
            throw .invalidArgument(field: "new_regions", reason: "\(split.newRegions.count) new regions for \(keys.count) split keys")
        }
        var ids: Set<UInt64> = [region.id]
        for peerDescriptor in region.peers { ids.insert(peerDescriptor.id) }
        for child in split.newRegions {
            guard child.peerIds.count == region.peers.count else {
                throw .invalidArgument(field: "new_regions", reason: "region \(child.regionID) has \(child.peerIds.count) peer ids for \(region.peers.count) peers")
            }
            for id in [child.regionID] + child.peerIds {
                guard id != 0, ids.insert(id).inserted else {
                    throw .invalidArgument(field: "new_regions", reason: "id \(id) is zero or used twice")
                }
            }
        }
    }

    /// The split keys' rules (1 to `splitKeysMax`, each 1 to `keyBytesMax` bytes, strictly
    /// increasing, strictly inside the region) and no joint configuration.
    func checkSplitKeys(_ keys: [Data], peer: RegionPeer) throws(StoreRequestError) {
        let region = peer.region
        guard !keys.isEmpty else { throw .invalidArgument(field: "split_keys", reason: "no split key") }
        guard keys.count <= KVLimits.splitKeysMax else {
            throw .invalidArgument(field: "split_keys", reason: "\(keys.count) keys, more than \(KVLimits.splitKeysMax)")
        }
        for (position, key) in keys.enumerated() {
            guard !key.isEmpty, key.count <= KVLimits.keyBytesMax else {
                throw .invalidArgument(field: "split_keys", reason: "key \(position) is \(key.count) bytes (1 to \(KVLimits.keyBytesMax))")
            }
            guard region.startKey.lexicographicallyPrecedes(key), region.contains(key) else {
                throw .invalidArgument(field: "split_keys", reason: "key \(key.hexDescription) is not strictly inside region \(region.id) [\(region.startKey.hexDescription), \(region.endKey.hexDescription))")
            }
            if position > 0 && !keys[position - 1].lexicographicallyPrecedes(key) {
                throw .invalidArgument(field: "split_keys", reason: "keys must be strictly increasing (key \(position) is not after key \(position - 1))")
            }
        }
        guard peer.appliedConfState.votersOutgoing.isEmpty else {
            throw .serverIsBusy(reason: "region \(region.id) is in a joint configuration; split it once the membership change is done")
        }
    }

    /// The region and the regions a split of it made (those this store holds), for
    /// `EpochNotMatch`: a client updates its routes from them without asking PD.
    func currentRegions(of peer: RegionPeer) -> [Flotilla_V1_Region] {
        [peer.region] + peer.splitChildren.map { made in peers[made.id].flatMap { $0.isInitialized ? $0.region : nil } ?? made }
    }

    /// Applies a committed split to the region: the region shrinks and each new region's
    /// state (region, apply and Raft state, and a copy of the client sessions) goes into the
    /// same batch. Returns nil when the split was refused (the same on every replica).
    func applySplit(_ split: Flotilla_V1_SplitCommand, peer: RegionPeer, batch: inout ApplyBatch,
                    pendingChildren: inout [PendingChild]) throws -> StoreRequestError? {
        do { try checkSplit(split, peer: peer) } catch {
            // A joint configuration is replicated state too: refused alike everywhere.
            return error
        }
        let oldEnd = peer.region.endKey
        let keys = split.splitKeys
        let version = peer.region.epoch.version + UInt64(keys.count)
        let sessions = try allSessions(peer)
        let childrenBefore = pendingChildren.count
        let children = Self.splitChildren(of: peer.region, split, version: version)
        // The parent and its new regions tile the old range exactly, in key order.
        precondition(children.count == keys.count && children.first?.startKey == keys[0] && children.last?.endKey == oldEnd,
                     "region \(peer.region.id): split into \(children.count) regions for \(keys.count) keys does not tile the old range")
        precondition(zip(children, children.dropFirst()).allSatisfy { $0.endKey == $1.startKey }, "region \(peer.region.id): split regions leave a gap")
        peer.region.endKey = keys[0]
        peer.region.epoch.version = version
        peer.sizeCheckedOnce = false  // its size is measured again
        peer.splitChildren = children
        regionMap.set(peer.region)
        let ledHere = peer.raft.role == .leader
        for child in children {
            // A replica of the new region this store already holds (initialized from a
            // snapshot while this replica of the parent lagged) or removed from here keeps its
            // own state; a removed one's keys belong to no replica here any more.
            if let existing = peers[child.id], existing.isInitialized { continue }
            if let stored = try db.get(StoreKeys.regionState(region: child.id), in: metaCF),
               let state = try? Flotilla_V1_RegionLocalState(serializedBytes: stored), state.state == .tombstone {
                batch.deleteRange(from: [UInt8](child.startKey), to: StoreKeys.dataUpperBound(child))
                continue
            }
            guard let me = child.peer(onStore: storeID) else { continue }
            let localState = try stageChild(child, replica: me.id, sessions: sessions, into: &batch)
            pendingChildren.append(PendingChild(localState: localState, campaign: ledHere))
        }
        precondition(pendingChildren[childrenBefore...].allSatisfy { $0.localState.region.epoch.version == version }, "a split's regions carry its version")
        appliedSplits.append(AppliedSplit(parent: peer.region, children: children, ledByThisStore: ledHere))
        return nil
    }

    /// The regions a split makes of `parent`: one per split key, from it to the next (the last
    /// to the parent's end), each with the parent's members under the split's new ids.
    private static func splitChildren(of parent: Flotilla_V1_Region, _ split: Flotilla_V1_SplitCommand,
                                      version: UInt64) -> [Flotilla_V1_Region] {
        let keys = split.splitKeys
        return split.newRegions.enumerated().map { position, ids in
            var child = Flotilla_V1_Region()
            child.id = ids.regionID
            child.startKey = keys[position]
            child.endKey = position + 1 < keys.count ? keys[position + 1] : parent.endKey
            child.epoch.confVer = parent.epoch.confVer
            child.epoch.version = version
            child.peers = zip(parent.peers, ids.peerIds).map { parentPeer, id in
                var childPeer = parentPeer
                childPeer.id = id
                return childPeer
            }
            return child
        }
    }

    /// Stages a new region's replica here in the apply batch: its descriptor, its apply and
    /// hard state at `splitInitialIndex`, and the parent's client sessions.
    private func stageChild(_ child: Flotilla_V1_Region, replica replicaID: UInt64, sessions: [(UInt64, Flotilla_V1_ClientSession)],
                            into batch: inout ApplyBatch) throws -> Flotilla_V1_RegionLocalState {
        let raftCF = try db.columnFamily(StoreKeys.raftColumnFamily)
        var localState = Flotilla_V1_RegionLocalState()
        localState.region = child
        localState.state = .normal
        localState.confState = Flotilla_V1_ConfState(child.confState)
        batch.batch.put(StoreKeys.regionState(region: child.id), try localState.serializedBytes(), in: metaCF)
        let initial = Self.splitInitialIndex
        batch.batch.put(StoreKeys.applyState(region: child.id),
                        StoredValues.encodeApplyState(applied: initial, truncatedIndex: initial, truncatedTerm: initial), in: metaCF)
        // A replica its leader created early (by a message, before this split) may have
        // voted: its term and vote are kept.
        var hardState = HardState(term: initial, vote: noNode, commit: initial)
        if let early = peers[child.id], early.peerID == replicaID, early.raft.term > initial {
            hardState.term = early.raft.term
            hardState.vote = early.raft.vote
        }
        precondition(hardState.term >= initial && hardState.commit == initial, "a new region's replica starts at the split's initial index")
        batch.batch.put(StoreKeys.hardState(region: child.id), StoredValues.encode(hardState), in: raftCF)
        for (client, session) in sessions {
            batch.batch.put(StoreKeys.session(region: child.id, client: client), try session.serializedBytes(), in: metaCF)
        }
        return localState
    }

    /// Every client session of the region: those on disk, overlaid with those changed in
    /// memory and not yet written.
    private func allSessions(_ peer: RegionPeer) throws -> [(UInt64, Flotilla_V1_ClientSession)] {
        var sessions: [UInt64: Flotilla_V1_ClientSession] = [:]
        let regionID = peer.region.id
        let iterator = db.makeIterator(in: metaCF, lowerBound: StoreKeys.sessionsStart(region: regionID),
                                       upperBound: StoreKeys.sessionsEnd(region: regionID))
        iterator.seekToFirst()
        while iterator.isValid {
            let client = StoreKeys.readBigEndian(iterator.key, at: 9)
            sessions[client] = try Flotilla_V1_ClientSession(serializedBytes: iterator.value)
            iterator.next()
        }
        try iterator.checkError()
        for (client, session) in peer.sessions { sessions[client] = session }
        return sessions.sorted { $0.key < $1.key }
    }

    /// Opens the replicas of regions split this turn, once the turn's writes are on disk. A
    /// replica created early by a message is replaced in place: its term and vote were
    /// carried into the new state, and its leader resends what it refused.
    func openSplitChildren(_ children: [PendingChild]) throws {
        for child in children {
            let regionID = child.localState.region.id
            var heardOfLeader = false
            if let early = peers[regionID] {
                heardOfLeader = early.knowsALeader
                if let received = early.receivedSnapshot { removeStagedSnapshot(received.directory) }
                removePeer(regionID)
            }
            try openPeer(child.localState)
            guard let opened = peers[regionID] else { continue }
            // The new region has had no leader (unless an early replica here heard of one):
            // its replicas vote at once, so the campaign below wins in one round trip.
            if !heardOfLeader { opened.raft.waiveStartupLease() }
            if child.campaign {
                opened.raft.campaign()
                touchedRegions.insert(regionID)
            }
        }
    }
}

extension Data {
    /// The bytes in hexadecimal, for messages.
    var hexDescription: String { isEmpty ? "\"\"" : map { String(format: "%02x", $0) }.joined() }
}
