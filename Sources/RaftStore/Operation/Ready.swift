import FlotillaProto
import Foundation
import Raft
import RocksDB

// The turn (TiKV's operation/ready): every ready region's log write in one synced batch, its
// messages sent before or after it, committed entries applied in one atomic batch.

extension StoreCore {
    /// One turn of the store loop: propose the writes queued per region (one entry each),
    /// collect every region's Ready, apply committed commands (data, apply state, region state
    /// and sessions in one atomic batch), write all regions' log entries and hard states in
    /// one batch with one sync, install received snapshots, hand out messages and snapshots
    /// to send, then truncate logs past their thresholds.
    ///
    /// With `sendBeforeSync`, leaders' appends and heartbeats (which Raft allows to go before
    /// the leader's own write) are handed to it before the sync, so followers persist in
    /// parallel with the leader; without it, every message is in the output.
    ///
    /// Committed entries are applied before the log write: they were persisted by earlier
    /// turns, so their answers need not wait for this turn's sync. (Applying on another
    /// thread while the log syncs was tried and measured slower: RocksDB queues the apply
    /// write behind the synced one anyway, and the hand-off costs two thread wake-ups.)
    ///
    /// The batch is synced when it holds entries, a snapshot marker, or a term or vote
    /// change; a batch that only moves commit indexes is written without a sync (a commit
    /// index lost in a crash is learnt again from the leader; RocksDB recovers a prefix of
    /// its log, so an applied index never survives without the commit before it).
    ///
    /// With `completeBeforeSync`, writes answered by this turn's apply are handed to it as
    /// soon as the apply batch is written, before the log write; without it they are in the
    /// output.
    public func runTurn(sendBeforeSync: (([UInt64: [Flotilla_V1_RaftMessage]]) -> Void)? = nil,
                        completeBeforeSync: (([(id: ProposalID, result: Result<Flotilla_V1_WriteResult, StoreRequestError>)]) -> Void)? = nil) throws -> StoreTurnOutput {
        precondition(pendingRequests >= 0, "pending request count negative before a turn")
        var output = StoreTurnOutput()
        expireSilentStores(output: &output)
        let logBatch = db.makeWriteBatch()
        let (readies, mustSync) = try collectReadies(into: logBatch, output: &output)
        output.completedWrites += refusedQueuedWrites.map { ($0.id, .failure($0.error)) }
        refusedQueuedWrites = []
        sendEarly(readies, sendBeforeSync: sendBeforeSync, output: &output)
        let splitChildren = try applyCommitted(readies, completeBeforeSync: completeBeforeSync, output: &output)
        try persistLog(logBatch, sync: mustSync, readies, output: &output)
        // Messages that had to wait for the write.
        for item in readies {
            for message in item.ready.messagesAfterPersist { addOutgoing(message, from: item.peer, to: &output) }
        }
        flushStoreHeartbeats(output: &output)
        advance(readies, output: &output)
        try finishTurn(readies, splitChildren: splitChildren, output: &output)
        pendingRequests -= output.completedWrites.count + output.readyReads.count + output.failedReads.count
        precondition(pendingRequests >= 0, "pending request count went negative")
        return output
    }

    /// A region's Ready in this turn, with the log write staged for it.
    typealias TurnReady = (peer: RegionPeer, ready: Ready, staged: RegionRaftStorage.StagedWrite)

    /// Proposes each touched region's queued writes and stages its Ready into `logBatch`;
    /// says whether the batch must be synced (entries, a snapshot, or a term or vote change).
    private func collectReadies(into logBatch: WriteBatch, output: inout StoreTurnOutput) throws -> (readies: [TurnReady], mustSync: Bool) {
        var readies: [TurnReady] = []
        var mustSync = false
        let candidates = touchedRegions.sorted()
        touchedRegions = []
        for regionID in candidates {
            guard let peer = peers[regionID] else { continue }
            proposeQueuedWrites(peer)
            guard peer.raft.hasReady else { continue }
            let ready = peer.raft.ready()
            if let snapshot = ready.snapshotToInstall {
                try stageSnapshotInstall(snapshot.metadata, peer: peer, into: logBatch)
            }
            if !ready.entriesToPersist.isEmpty || ready.snapshotToInstall != nil
                || ready.hardState.map({ $0.term != peer.storage.hardState.term || $0.vote != peer.storage.hardState.vote }) == true {
                mustSync = true
                output.regionsInLogBatch += 1
            }
            readies.append((peer, ready, peer.storage.stage(ready, into: logBatch)))
            peer.logBytesSinceTruncation += ready.entriesToPersist.reduce(0) { $0 + $1.sizeBytes }
        }
        return (readies, mustSync)
    }

    /// Leaders' appends and heartbeats may go before their own write. They are converted (and
    /// snapshots read) now, before this turn applies anything, so a snapshot's data is exactly
    /// the state its metadata names.
    private func sendEarly(_ readies: [TurnReady], sendBeforeSync: (([UInt64: [Flotilla_V1_RaftMessage]]) -> Void)?,
                           output: inout StoreTurnOutput) {
        var early = StoreTurnOutput()
        for item in readies {
            for message in item.ready.messagesNow { addOutgoing(message, from: item.peer, to: &early) }
        }
        output.snapshotsToSend += early.snapshotsToSend
        if let sendBeforeSync {
            if !early.messagesByStore.isEmpty { sendBeforeSync(early.messagesByStore) }
        } else {
            output.messagesByStore = early.messagesByStore
        }
    }

    /// Committed entries were persisted by earlier turns: they are applied (and their writes
    /// answered) in one atomic batch before this turn's log write, which then syncs.
    private func applyCommitted(_ readies: [TurnReady],
                                completeBeforeSync: (([(id: ProposalID, result: Result<Flotilla_V1_WriteResult, StoreRequestError>)]) -> Void)?,
                                output: inout StoreTurnOutput) throws -> [PendingChild] {
        var applyBatch = ApplyBatch(db.makeWriteBatch())
        var splitChildren: [PendingChild] = []
        for item in readies {
            try apply(item.ready, to: item.peer, batch: &applyBatch, pendingChildren: &splitChildren, output: &output)
        }
        if applyBatch.batch.count > 0 { try write(applyBatch.batch, sync: false, .apply) }
        if settings.injectedFault == .afterSplitApply && !appliedSplits.isEmpty { throw InjectedFault(fault: .afterSplitApply) }
        output.recordsWritten += applyBatch.batch.count
        if let completeBeforeSync, !output.completedWrites.isEmpty {
            pendingRequests -= output.completedWrites.count
            completeBeforeSync(output.completedWrites)
            output.completedWrites = []
        }
        return splitChildren
    }

    /// Writes the turn's log batch (synced when it must be), then installs the snapshots it
    /// marked and drops received ones Raft did not take.
    private func persistLog(_ logBatch: WriteBatch, sync mustSync: Bool, _ readies: [TurnReady], output: inout StoreTurnOutput) throws {
        let logWrite: Bool = logBatch.count > 0
        if logWrite { try write(logBatch, sync: mustSync, .log(synced: mustSync)) }
        output.recordsWritten += logBatch.count
        if logWrite && mustSync { output.logSyncs = 1 }
        for item in readies {
            item.peer.storage.commit(item.staged)
            if item.ready.snapshotToInstall != nil {
                try completeSnapshotInstall(item.peer, output: &output)
            } else if let received = item.peer.receivedSnapshot {
                // Raft did not take it (it had the entries already): drop the files.
                removeStagedSnapshot(received.directory)
                item.peer.receivedSnapshot = nil
            }
        }
    }

    /// Tells Raft each Ready is done, checks it agrees on what was applied, fails a former
    /// leader's pending requests and serves the reads that became ready.
    private func advance(_ readies: [TurnReady], output: inout StoreTurnOutput) {
        for item in readies {
            let peer = item.peer
            if let last = item.ready.committedEntries.last {
                peer.storage.snapshotPoint = SnapshotMetadata(index: last.index, term: last.term, confState: peer.appliedConfState)
            }
            let appliedBefore = peer.raft.appliedIndex
            peer.raft.advance(item.ready)
            if let last = item.ready.committedEntries.last {
                // The pair of the apply-order check: Raft agrees on what was applied, and on
                // the configuration the store recorded with it.
                precondition(peer.raft.appliedIndex == last.index && appliedBefore < last.index,
                             "region \(peer.region.id): Raft applied \(peer.raft.appliedIndex), the store \(last.index)")
                precondition(peer.raft.confState == peer.appliedConfState,
                             "region \(peer.region.id): Raft's configuration \(peer.raft.confState) differs from the applied one \(peer.appliedConfState)")
            }
            if item.ready.softState.map({ $0.role != .leader }) == true {
                failPending(peer, error: .notLeader(regionID: peer.region.id, leader: peer.leaderPeer), output: &output)
            }
            serveReads(peer, output: &output)
            // Advancing may leave more to do (a leader commits once its own write is done).
            if peer.raft.hasReady { touchedRegions.insert(peer.region.id) }
        }
        for regionID in peersWithImmediateReads.sorted() {
            if let peer = peers[regionID] { serveReads(peer, output: &output) }
        }
        peersWithImmediateReads = []
    }

    /// After the log is on disk: opens the regions splits made, destroys removed replicas and
    /// truncates logs past their thresholds.
    private func finishTurn(_ readies: [TurnReady], splitChildren: [PendingChild], output: inout StoreTurnOutput) throws {
        if settings.injectedFault == .beforeSplitRegionsOpen && !splitChildren.isEmpty { throw InjectedFault(fault: .beforeSplitRegionsOpen) }
        try openSplitChildren(splitChildren)
        output.splits = appliedSplits
        appliedSplits = []
        let superseded = supersededRegions.sorted().compactMap { regionID in peers[regionID] }.filter { peer in !readies.contains { $0.peer === peer } }
        supersededRegions = []
        try destroyRemovedPeers(readies.map(\.peer) + superseded, output: &output)
        try truncateLogs(readies.map(\.peer), output: &output)
    }

    func addOutgoing(_ message: Message, from peer: RegionPeer, to output: inout StoreTurnOutput) {
        guard let to = peer.peer(withID: message.to), let from = peer.peer(withID: message.from) else { return }
        var wire = Flotilla_V1_RaftMessage()
        wire.regionID = peer.region.id
        wire.fromPeer = from
        wire.toPeer = to
        wire.epoch = peer.region.epoch
        wire.startKey = peer.region.startKey
        wire.endKey = peer.region.endKey
        wire.message = Flotilla_V1_RaftCoreMessage(message)
        if message.kind == .installSnapshot {
            // The data is read from a RocksDB snapshot taken now: nothing was applied since
            // Raft took the snapshot point, so data and metadata are the same state.
            wire.region = peer.region
            output.snapshotsToSend.append(OutgoingSnapshot(
                reader: SnapshotReader(db: db, snapshot: db.makeSnapshot(), region: peer.region, header: wire,
                                       chunkBytes: settings.snapshotChunkBytes)))
            return
        }
        output.messagesByStore[to.storeID, default: []].append(wire)
    }

    /// Applies `ready`'s committed entries to `batch`, in log order and each once, and
    /// answers the writes proposed here; the apply state (and the region state and sessions
    /// they changed) go in the same batch.
    func apply(_ ready: Ready, to peer: RegionPeer, batch: inout ApplyBatch, pendingChildren: inout [PendingChild],
               output: inout StoreTurnOutput) throws {
        for readState in ready.readStates {
            if let id = peer.readsAwaitingIndex.removeValue(forKey: readState.context) {
                peer.readsAwaitingApply.append((readState.index, id))
            }
        }
        guard let last = ready.committedEntries.last else { return }
        var regionStateChanged = false
        var sessionsWritten: Set<UInt64> = []
        // Entries apply in log order, each once: the first follows what was applied.
        var expectedIndex = peer.raft.appliedIndex + 1
        precondition(ready.snapshotToInstall == nil, "region \(peer.region.id): committed entries handed out with a snapshot to install")
        for entry in ready.committedEntries {
            precondition(entry.index == expectedIndex, "region \(peer.region.id): applying entry \(entry.index), expected \(expectedIndex)")
            expectedIndex += 1
            let pending = peer.pendingWrites.removeValue(forKey: entry.index)
            // Proposed here in another term: the entry at this index is someone else's.
            let mine = pending.flatMap { $0.term == entry.term ? $0.ids : nil } ?? []
            if let pending, pending.term != entry.term {
                output.completedWrites += pending.ids.map { ($0, .failure(.proposalDropped)) }
            }
            var outcome = EntryOutcome()
            switch entry.kind {
            case .normal where !entry.data.isEmpty:
                // Leaders propose only valid commands, but the log is input too (a forged or
                // corrupt entry): what does not decode is applied as nothing, and a command
                // breaking a rule is refused, identically on every replica. Never a failed turn.
                guard let decoded = try? Flotilla_V1_CommandBatch(serializedBytes: entry.data) else {
                    report(problem: "entry \(entry.index) does not decode as commands; applied as nothing", regionID: peer.region.id)
                    output.completedWrites += mine.map { ($0, .failure(.proposalDropped)) }
                    continue
                }
                outcome = try applyCommands(decoded, at: entry.index, peer: peer, batch: &batch, pendingChildren: &pendingChildren,
                                            sessionsWritten: &sessionsWritten, regionStateChanged: &regionStateChanged, output: &output)
            case .confChange:
                regionStateChanged = applyMembershipChange(entry, peer: peer) || regionStateChanged
            default:
                break
            }
            if entry.index % settings.sessionSweepIntervalEntries == 0 {
                try expireSessions(peer: peer, at: entry.index, batch: batch.batch)
            }
            answer(mine, with: outcome, at: entry.index, peer: peer, output: &output)
        }
        // A session touched by many writes of this turn is written once.
        for client in sessionsWritten.sorted() {
            guard let session = peer.sessions[client] else { continue }
            batch.batch.put(StoreKeys.session(region: peer.region.id, client: client), try session.serializedBytes(), in: metaCF)
        }
        output.entriesApplied += ready.committedEntries.count
        if regionStateChanged {
            batch.batch.put(StoreKeys.regionState(region: peer.region.id), try peer.localState.serializedBytes(), in: metaCF)
        }
        precondition(expectedIndex == last.index + 1, "region \(peer.region.id): applied through \(expectedIndex - 1), recording \(last.index)")
        batch.batch.put(StoreKeys.applyState(region: peer.region.id),
                        StoredValues.encodeApplyState(applied: last.index, truncatedIndex: peer.storage.truncatedIndex,
                                                      truncatedTerm: peer.storage.truncatedTerm),
                        in: metaCF)
    }

    /// What applying one entry gave: a result per command, and why commands were refused, by
    /// position (empty for an entry that answers its proposals with plain success).
    struct EntryOutcome {
        var results: [Flotilla_V1_WriteResult] = []
        var refusals: [Int: StoreRequestError] = [:]
    }

    /// Applies one entry's command batch: a consistency check, a split, or client commands.
    private func applyCommands(_ decoded: Flotilla_V1_CommandBatch, at index: UInt64, peer: RegionPeer, batch: inout ApplyBatch,
                               pendingChildren: inout [PendingChild], sessionsWritten: inout Set<UInt64>,
                               regionStateChanged: inout Bool, output: inout StoreTurnOutput) throws -> EntryOutcome {
        var outcome = EntryOutcome()
        if decoded.hasConsistencyCheck {
            if decoded.commands.isEmpty && !decoded.hasSplit {
                try applyConsistencyCheck(decoded.consistencyCheck, peer: peer, index: index, batch: &batch,
                                          sessionsWritten: &sessionsWritten, regionStateChanged: regionStateChanged, output: &output)
            } else {
                report(problem: "consistency check at entry \(index) shares its entry; applied as nothing", regionID: peer.region.id)
            }
            var done = Flotilla_V1_WriteResult()
            done.succeeded = true
            outcome.results = [done]
            return outcome
        }
        if decoded.hasSplit {
            let refusal = decoded.commands.isEmpty
                ? try applySplit(decoded.split, peer: peer, batch: &batch, pendingChildren: &pendingChildren)
                : .invalidArgument(field: "split", reason: "a split entry carries commands")
            guard let refusal else {
                regionStateChanged = true
                return outcome
            }
            // A stale epoch is a race lost (a membership change or another split came
            // first); anything else only a forged entry carries.
            if case .epochNotMatch = refusal {} else {
                report(problem: "split at entry \(index) refused: \(refusal)", regionID: peer.region.id)
            }
            var refused = Flotilla_V1_WriteResult()
            refused.refused = refusal.description
            outcome.results = [refused]
            outcome.refusals[0] = refusal
            return outcome
        }
        outcome.results.reserveCapacity(decoded.commands.count)
        for command in decoded.commands {
            do {
                try validate(command, in: peer.region)
            } catch {
                var refused = Flotilla_V1_WriteResult()
                refused.refused = error.description
                outcome.refusals[outcome.results.count] = error
                outcome.results.append(refused)
                continue
            }
            outcome.results.append(try applyCommand(command, peer: peer, index: index, batch: &batch, sessionsWritten: &sessionsWritten))
        }
        return outcome
    }

    /// Answers the writes proposed here as entry `index` (`mine`) from what applying it gave.
    private func answer(_ mine: [ProposalID], with outcome: EntryOutcome, at index: UInt64, peer: RegionPeer, output: inout StoreTurnOutput) {
        guard !mine.isEmpty else { return }
        if outcome.results.isEmpty {
            var done = Flotilla_V1_WriteResult()
            done.succeeded = true
            output.completedWrites += mine.map { ($0, .success(done)) }
            return
        }
        guard outcome.results.count == mine.count else {
            // Our proposal's index and term now hold other commands: only forged input does that.
            report(problem: "entry \(index) carries \(outcome.results.count) commands, proposed here with \(mine.count)", regionID: peer.region.id)
            output.completedWrites += mine.map { ($0, .failure(.proposalDropped)) }
            return
        }
        for (position, (id, result)) in zip(mine, outcome.results).enumerated() {
            if let refusal = outcome.refusals[position] {
                // A key outside the region at apply: the region split after the write was
                // accepted. Nothing was applied; the client retries in the new region.
                if case .keyNotInRegion = refusal {
                    output.completedWrites.append((id, .failure(.epochNotMatch(current: currentRegions(of: peer)))))
                } else {
                    output.completedWrites.append((id, .failure(refusal)))
                }
            } else if result.staleDuplicate {
                output.completedWrites.append((id, .failure(.invalidArgument(
                    field: "context.sequence", reason: "this write was answered before and its reply forgotten; it was not applied again"))))
            } else if result.payloadMismatch {
                output.completedWrites.append((id, .failure(.invalidArgument(
                    field: "context.sequence", reason: "this (client id, sequence) was already used for a different write; not applied"))))
            } else {
                output.completedWrites.append((id, .success(result)))
            }
        }
    }

}

/// The batch a turn applies committed commands into, with what it has written so far so that
/// a compare-and-swap sees earlier commands of the same turn: the batch is written to RocksDB
/// only at the end, atomically with the apply state, so a crash never keeps half a turn.
struct ApplyBatch {
    let batch: WriteBatch
    /// Keys written by this batch: their value, or nil once deleted.
    private var written: [Data: Data?] = [:]
    /// Ranges deleted by this batch (keys written after the deletion are in `written`).
    private var deletedRanges: [(start: [UInt8], end: [UInt8])] = []

    init(_ batch: WriteBatch) { self.batch = batch }

    mutating func put(_ key: Data, _ value: Data) {
        batch.put([UInt8](key), [UInt8](value))
        written[key] = .some(value)
    }

    mutating func delete(_ key: Data) {
        batch.delete([UInt8](key))
        written[key] = .some(nil)
    }

    mutating func deleteRange(from start: [UInt8], to end: [UInt8]) {
        batch.deleteRange(from: start, to: end)
        written = written.filter { key, _ in !Self.contains(start, end, [UInt8](key)) }
        deletedRanges.append((start, end))
    }

    /// The key's value as of everything in this batch, over what `db` holds.
    func value(of key: Data, in db: Database) throws -> Data? {
        if let known = written[key] { return known }
        let bytes = [UInt8](key)
        if deletedRanges.contains(where: { Self.contains($0.start, $0.end, bytes) }) { return nil }
        return try db.get(bytes).map { Data($0) }
    }

    static func contains(_ start: [UInt8], _ end: [UInt8], _ key: [UInt8]) -> Bool {
        !key.lexicographicallyPrecedes(start) && key.lexicographicallyPrecedes(end)
    }
}
