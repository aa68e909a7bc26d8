import FlotillaProto
import Foundation
import Raft
import RocksDB

// Snapshots: taking one in, staging, installing under an `applying` marker, completing after a restart.

extension StoreCore {
    /// Delivers a snapshot received in full (its SST files staged in `received.directory`).
    /// Returns false when it is not for a peer here; the caller then removes the files.
    public func stepSnapshot(_ received: ReceivedSnapshot) -> Bool {
        let message = received.header
        if let refusal = refusalOfSnapshot(message) {
            report(refusedMessage: "snapshot at index \(message.message.snapshot.index) refused: \(refusal)", regionID: message.regionID)
            removeStagedSnapshot(received.directory)
            return true
        }
        guard let core = message.message.core, core.kind == .installSnapshot, core.snapshot != nil, !supersedes(message),
              let peer = peers[message.regionID] ?? createPeer(for: message, kind: core.kind),
              message.toPeer.id == peer.peerID, !peer.isRemoved else { return false }
        if message.fromPeer.id != 0 { peer.knownPeers[message.fromPeer.id] = message.fromPeer }
        if let previous = peer.receivedSnapshot { removeStagedSnapshot(previous.directory) }
        wakeIfAsleep(peer)
        peer.receivedSnapshot = received
        if let refusal = peer.raft.step(core) {
            report(refusal: refusal, regionID: peer.region.id)
            peer.receivedSnapshot = nil
            removeStagedSnapshot(received.directory)
            return true
        }
        touchedRegions.insert(peer.region.id)
        return true
    }

    /// Why a snapshot may not be installed here (nil: it may). Its region must be what the
    /// message names, not older (by epoch) than the replica here, and its range must overlap
    /// no other replica on this store, initialized or about to be: one holding a newer epoch
    /// makes the snapshot stale; one holding an older epoch has not applied the split (or the
    /// removal) that gave the range away yet, and the snapshot waits for it (its leader sends
    /// again).
    func refusalOfSnapshot(_ message: Flotilla_V1_RaftMessage) -> String? {
        let incoming = message.region
        guard incoming.id == message.regionID, incoming.epoch == message.epoch else {
            return "its region descriptor (id \(incoming.id)) does not match the message (region \(message.regionID))"
        }
        guard incoming.endKey.isEmpty || incoming.startKey.lexicographicallyPrecedes(incoming.endKey) else {
            return "its range is empty or inverted"
        }
        if let local = peers[incoming.id], local.isInitialized {
            let epoch = local.region.epoch
            if incoming.epoch.version < epoch.version || incoming.epoch.confVer < epoch.confVer {
                return "its epoch (conf_ver \(incoming.epoch.confVer), version \(incoming.epoch.version)) is older than the replica's here (\(epoch.confVer), \(epoch.version))"
            }
        }
        for other in regionMap.overlapping(start: incoming.startKey, end: incoming.endKey) where other != incoming.id {
            let newer = (peers[other]?.region.epoch.version ?? 0) >= incoming.epoch.version
            return newer ? "region \(other) here holds part of its range at a newer epoch (the snapshot is stale)"
                         : "region \(other) here still holds part of its range (waiting for it to split or go)"
        }
        for (other, peer) in peers where other != incoming.id {
            guard let pending = peer.receivedSnapshot?.header.region else { continue }
            let overlaps = (pending.endKey.isEmpty || incoming.startKey.lexicographicallyPrecedes(pending.endKey))
                && (incoming.endKey.isEmpty || pending.startKey.lexicographicallyPrecedes(incoming.endKey))
            if overlaps { return "region \(other) here is installing a snapshot of an overlapping range" }
        }
        return nil
    }
}

extension StoreCore {
    /// Adds to the turn's log batch the `applying` marker of a snapshot Raft handed out, and
    /// the removal of the peer's old data range when the region's range changed.
    func stageSnapshotInstall(_ metadata: SnapshotMetadata, peer: RegionPeer, into batch: WriteBatch) throws {
        guard let received = peer.receivedSnapshot, received.header.message.snapshot.index == metadata.index else {
            preconditionFailure("region \(peer.region.id): Raft installs snapshot \(metadata.index) that was not received")
        }
        var state = Flotilla_V1_RegionLocalState()
        state.region = received.header.region
        state.state = .applying
        state.confState = Flotilla_V1_ConfState(metadata.confState)
        var snapshot = Flotilla_V1_SnapshotMetadata()
        snapshot.index = metadata.index
        snapshot.term = metadata.term
        snapshot.confState = state.confState
        state.applyingSnapshot = snapshot
        state.applyingDirectory = received.directory
        batch.put(StoreKeys.regionState(region: peer.region.id), try state.serializedBytes(), in: metaCF)
        if peer.isInitialized && (peer.region.startKey != state.region.startKey || peer.region.endKey != state.region.endKey) {
            batch.deleteRange(from: [UInt8](peer.region.startKey), to: StoreKeys.dataUpperBound(peer.region), in: dataCF)
        }
    }

    /// Installs the snapshot whose marker the turn's log batch wrote, and moves the peer to it.
    func completeSnapshotInstall(_ peer: RegionPeer, output: inout StoreTurnOutput) throws {
        guard let received = peer.receivedSnapshot else { preconditionFailure("snapshot install without files") }
        var state = Flotilla_V1_RegionLocalState()
        state.region = received.header.region
        state.state = .applying
        state.confState = received.header.message.snapshot.confState
        state.applyingDirectory = received.directory
        if settings.injectedFault == .afterSnapshotMarker { throw InjectedFault(fault: .afterSnapshotMarker) }
        try finishSnapshotInstall(state)
        output.logSyncs += 1
        output.snapshotsInstalled += 1
        failPending(peer, error: .notLeader(regionID: peer.region.id, leader: peer.leaderPeer), output: &output)
        peer.region = received.header.region
        peer.splitChildren = []
        regionMap.set(peer.region)
        peer.isInitialized = true
        peer.appliedConfState = state.confState.core
        // The membership record starts again here: the changes before the snapshot are in
        // the leader's record, not in the snapshot.
        peer.confChanges = []
        peer.sessions = [:]
        peer.receivedSnapshot = nil
        peer.logBytesSinceTruncation = 0
        precondition(regionMap.range(of: peer.region.id)?.start == peer.region.startKey,
                     "region \(peer.region.id): an installed snapshot's range is the one mapped")
        try restoreStateMachine(peer.region.id)
    }

    /// The install itself, also run on restart for a region left `applying`: clear the
    /// region's data and sessions, ingest the staged SST files, mark the region normal (synced),
    /// then remove the files. Every step may be repeated after a crash.
    func finishSnapshotInstall(_ state: Flotilla_V1_RegionLocalState) throws {
        let region = state.region
        let directory = state.applyingDirectory
        guard FileManager.default.fileExists(atPath: directory) else {
            throw StoreCorruption(region: region.id, what: "snapshot files \(directory) of an interrupted install are missing")
        }
        let clear = db.makeWriteBatch()
        clear.deleteRange(from: [UInt8](region.startKey), to: StoreKeys.dataUpperBound(region), in: dataCF)
        clear.deleteRange(from: StoreKeys.sessionsStart(region: region.id), to: StoreKeys.sessionsEnd(region: region.id), in: metaCF)
        try write(clear, sync: false, .snapshotClear)
        let files = ReceivedSnapshot(header: Flotilla_V1_RaftMessage(), directory: directory)
        if FileManager.default.fileExists(atPath: files.dataFile) {
            try ingest(files.dataFile, into: dataCF)
        }
        if FileManager.default.fileExists(atPath: files.sessionsFile) {
            try ingest(files.sessionsFile, into: metaCF)
        }
        if settings.injectedFault == .afterSnapshotIngest { throw InjectedFault(fault: .afterSnapshotIngest) }
        var normal = state
        normal.state = .normal
        normal.clearApplyingSnapshot()
        normal.applyingDirectory = ""
        let mark = db.makeWriteBatch()
        mark.put(StoreKeys.regionState(region: region.id), try normal.serializedBytes(), in: metaCF)
        try write(mark, sync: true, .snapshotMark)
        removeStagedSnapshot(directory)
    }

    func removeStagedSnapshot(_ directory: String) {
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Removes staged snapshot directories no region refers to (left by a crash mid-transfer).
    func removeStagedSnapshots(except inUse: Set<String>) throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: settings.snapshotDirectory)
        for name in names where !inUse.contains(settings.snapshotDirectory + "/" + name) {
            removeStagedSnapshot(settings.snapshotDirectory + "/" + name)
        }
    }
}
