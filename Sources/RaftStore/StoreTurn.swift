import FlotillaProto
import Foundation
import Raft
import RocksDB

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
        var readies: [(peer: RegionPeer, ready: Ready, staged: RegionRaftStorage.StagedWrite)] = []
        let logBatch = db.makeWriteBatch()
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
        output.completedWrites += refusedQueuedWrites.map { ($0.id, .failure($0.error)) }
        refusedQueuedWrites = []
        // Leaders' appends and heartbeats may go before their own write. They are converted
        // (and snapshots read) now, before this turn applies anything, so a snapshot's data is
        // exactly the state its metadata names.
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

        // Committed entries were persisted by earlier turns: they are applied (and their
        // writes answered) before this turn's log write, which then syncs on this thread.
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

        // Messages that had to wait for the write.
        for item in readies {
            for message in item.ready.messagesAfterPersist { addOutgoing(message, from: item.peer, to: &output) }
        }

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
        // New regions open once the split that made them and this turn's log are on disk.
        if settings.injectedFault == .beforeSplitRegionsOpen && !splitChildren.isEmpty { throw InjectedFault(fault: .beforeSplitRegionsOpen) }
        try openSplitChildren(splitChildren)
        output.splits = appliedSplits
        appliedSplits = []
        let superseded = supersededRegions.sorted().compactMap { regionID in peers[regionID] }.filter { peer in !readies.contains { $0.peer === peer } }
        supersededRegions = []
        try destroyRemovedPeers(readies.map(\.peer) + superseded, output: &output)
        try truncateLogs(readies.map(\.peer), output: &output)
        pendingRequests -= output.completedWrites.count + output.readyReads.count + output.failedReads.count
        precondition(pendingRequests >= 0, "pending request count went negative")
        return output
    }

    private func addOutgoing(_ message: Message, from peer: RegionPeer, to output: inout StoreTurnOutput) {
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

    private func apply(_ ready: Ready, to peer: RegionPeer, batch: inout ApplyBatch, pendingChildren: inout [PendingChild],
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
            var results: [Flotilla_V1_WriteResult] = []
            /// Why commands of this entry were refused, by position.
            var refusals: [Int: StoreRequestError] = [:]
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
                if decoded.hasConsistencyCheck {
                    if decoded.commands.isEmpty && !decoded.hasSplit {
                        try applyConsistencyCheck(decoded.consistencyCheck, peer: peer, index: entry.index, batch: &batch,
                                                  sessionsWritten: &sessionsWritten, regionStateChanged: regionStateChanged,
                                                  output: &output)
                    } else {
                        report(problem: "consistency check at entry \(entry.index) shares its entry; applied as nothing", regionID: peer.region.id)
                    }
                    results = [Flotilla_V1_WriteResult()]
                    results[0].succeeded = true
                } else if decoded.hasSplit {
                    let refusal = decoded.commands.isEmpty
                        ? try applySplit(decoded.split, peer: peer, batch: &batch, pendingChildren: &pendingChildren)
                        : .invalidArgument(field: "split", reason: "a split entry carries commands")
                    if let refusal {
                        // A stale epoch is a race lost (a membership change or another split
                        // came first); anything else only a forged entry carries.
                        if case .epochNotMatch = refusal {} else {
                            report(problem: "split at entry \(entry.index) refused: \(refusal)", regionID: peer.region.id)
                        }
                        var refused = Flotilla_V1_WriteResult()
                        refused.refused = refusal.description
                        results = [refused]
                        refusals[0] = refusal
                    } else {
                        regionStateChanged = true
                    }
                }
                let commands = decoded.hasSplit || decoded.hasConsistencyCheck ? [] : decoded.commands
                results.reserveCapacity(commands.count)
                for command in commands {
                    do {
                        try validate(command, in: peer.region)
                    } catch {
                        var refused = Flotilla_V1_WriteResult()
                        refused.refused = error.description
                        refusals[results.count] = error
                        results.append(refused)
                        continue
                    }
                    results.append(try applyCommand(command, peer: peer, index: entry.index, batch: &batch,
                                                    sessionsWritten: &sessionsWritten))
                }
            case .confChange:
                regionStateChanged = applyMembershipChange(entry, peer: peer) || regionStateChanged
            default:
                break
            }
            if entry.index % settings.sessionSweepIntervalEntries == 0 {
                try expireSessions(peer: peer, at: entry.index, batch: batch.batch)
            }
            guard !mine.isEmpty else { continue }
            if results.isEmpty {
                var done = Flotilla_V1_WriteResult()
                done.succeeded = true
                output.completedWrites += mine.map { ($0, .success(done)) }
                continue
            }
            guard results.count == mine.count else {
                // Our proposal's index and term now hold other commands: only forged input does that.
                report(problem: "entry \(entry.index) carries \(results.count) commands, proposed here with \(mine.count)", regionID: peer.region.id)
                output.completedWrites += mine.map { ($0, .failure(.proposalDropped)) }
                continue
            }
            for (position, (id, result)) in zip(mine, results).enumerated() {
                if let refusal = refusals[position] {
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

    /// Applies a committed membership change to the region descriptor (peers, conf_ver) the
    /// same way Raft applies it to its configuration. Returns whether anything changed.
    private func applyMembershipChange(_ entry: Entry, peer: RegionPeer) -> Bool {
        guard let change = ConfChangeV2(decoding: entry.data),
              let next = try? peer.appliedConfState.applying(change) else { return false }
        let announced = (try? Flotilla_V1_Region(serializedBytes: change.context))?.peers ?? []
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
        if !next.allNodes.contains(peer.peerID) { peer.isRemoved = true }
        return true
    }

    /// Applies one command, or answers a retry from the client's session (Raft thesis §6.3,
    /// with many writes of a client in flight at once). The session changes in memory; the
    /// caller writes the sessions named in `sessionsWritten` once the entries are applied.
    private func applyCommand(_ command: Flotilla_V1_WriteCommand, peer: RegionPeer, index: UInt64, batch: inout ApplyBatch,
                              sessionsWritten: inout Set<UInt64>) throws -> Flotilla_V1_WriteResult {
        var session: Flotilla_V1_ClientSession? = nil
        if command.clientID != 0 {
            let known = try loadSession(peer: peer, client: command.clientID)
            if command.sequence < known.ackedBelow {
                // The client has had this write's answer and moved on: a late duplicate.
                var stale = Flotilla_V1_WriteResult()
                stale.staleDuplicate = true
                return stale
            }
            if let kept = known.replies.first(where: { $0.sequence == command.sequence }) {
                // Another write under a sequence already used: refused, not silently dropped.
                if kept.payloadDigest != 0 && kept.payloadDigest != command.payloadDigest {
                    var mismatch = Flotilla_V1_WriteResult()
                    mismatch.payloadMismatch = true
                    return mismatch
                }
                // A retry: the first reply, not a second application.
                return (try? Flotilla_V1_WriteResult(serializedBytes: kept.reply)) ?? Flotilla_V1_WriteResult()
            }
            session = known
        }
        var result = Flotilla_V1_WriteResult()
        result.succeeded = true
        if !command.stateMachineCommand.isEmpty, let stateMachine {
            let (reply, writes) = stateMachine.apply(command: command.stateMachineCommand, regionID: peer.region.id, index: index)
            result.stateMachineReply = reply
            for write in writes {
                // The machine's records stay inside its region, like any write.
                switch write {
                case .put(let key, let value):
                    precondition(peer.region.contains(key) && key.count <= StoreKeys.dataKeyBytesMax, "a state machine wrote outside its region")
                    batch.put(key, value)
                case .delete(let key):
                    precondition(peer.region.contains(key), "a state machine deleted outside its region")
                    batch.delete(key)
                }
            }
        } else if !command.puts.isEmpty {
            for pair in command.puts {
                batch.put(pair.key, pair.value)
                peer.bytesWrittenSinceSplitCheck += pair.key.count + pair.value.count
                peer.load.writtenBytes += pair.key.count + pair.value.count
            }
            peer.load.writtenKeys += command.puts.count
        } else if !command.deletes.isEmpty {
            for key in command.deletes { batch.delete(key) }
            peer.load.writtenKeys += command.deletes.count
        } else if command.hasDeleteRange {
            let end = command.deleteRange.endKey.isEmpty ? StoreKeys.dataUpperBound(peer.region) : [UInt8](command.deleteRange.endKey)
            batch.deleteRange(from: [UInt8](command.deleteRange.startKey), to: end)
        } else if command.hasCompareAndSwap {
            // The comparison sees the commands before it in this turn's (unwritten) batch.
            let cas = command.compareAndSwap
            let current = try batch.value(of: cas.key, in: db)
            result.previousExists = current != nil
            result.previousValue = current ?? Data()
            let matches = cas.expectExists ? current == cas.expectedValue : current == nil
            result.succeeded = matches
            if matches {
                if cas.deleteKey { batch.delete(cas.key) } else { batch.put(cas.key, cas.newValue) }
                peer.bytesWrittenSinceSplitCheck += cas.key.count + cas.newValue.count
                peer.load.writtenKeys += 1
                peer.load.writtenBytes += cas.key.count + cas.newValue.count
            }
        }
        if var session {
            if command.firstIncompleteSequence > 0 {
                session.ackedBelow = max(session.ackedBelow, min(command.firstIncompleteSequence, command.sequence))
            }
            var reply = Flotilla_V1_SessionReply()
            reply.sequence = command.sequence
            reply.reply = try result.serializedData()
            reply.payloadDigest = command.payloadDigest
            var replies = session.replies.filter { $0.sequence >= session.ackedBelow }
            replies.insert(reply, at: replies.firstIndex { $0.sequence > command.sequence } ?? replies.endIndex)
            if replies.count > settings.sessionRepliesMax {
                // Bounded: forget the oldest replies; their writes are never applied again.
                let dropped = replies.count - settings.sessionRepliesMax
                session.ackedBelow = replies[dropped - 1].sequence + 1
                replies.removeFirst(dropped)
            }
            session.replies = replies
            session.lastUsedIndex = index
            peer.sessions[command.clientID] = session
            sessionsWritten.insert(command.clientID)
        }
        return result
    }

    private func loadSession(peer: RegionPeer, client: UInt64) throws -> Flotilla_V1_ClientSession {
        if let cached = peer.sessions[client] { return cached }
        let stored = try db.get(StoreKeys.session(region: peer.region.id, client: client), in: metaCF)
        let session = try stored.map { try Flotilla_V1_ClientSession(serializedBytes: $0) } ?? Flotilla_V1_ClientSession()
        peer.sessions[client] = session
        return session
    }

    /// Deletes the sessions of clients that wrote nothing in the region for
    /// `sessionExpiryEntries` entries. Runs at fixed indexes, so every replica expires the
    /// same sessions at the same point of the log. A write retried after its session expired
    /// is treated as new.
    private func expireSessions(peer: RegionPeer, at index: UInt64, batch: WriteBatch) throws {
        guard index > settings.sessionExpiryEntries else { return }
        let horizon = index - settings.sessionExpiryEntries
        let regionID = peer.region.id
        var sessions = peer.sessions
        let iterator = db.makeIterator(in: metaCF, lowerBound: StoreKeys.sessionsStart(region: regionID),
                                       upperBound: StoreKeys.sessionsEnd(region: regionID))
        iterator.seekToFirst()
        while iterator.isValid {
            let key = iterator.key
            let client = StoreKeys.readBigEndian(key, at: 9)
            if sessions[client] == nil { sessions[client] = try Flotilla_V1_ClientSession(serializedBytes: iterator.value) }
            iterator.next()
        }
        try iterator.checkError()
        for (client, session) in sessions where session.lastUsedIndex < horizon {
            batch.delete(StoreKeys.session(region: regionID, client: client), in: metaCF)
            peer.sessions[client] = nil
        }
    }

    func failPending(_ peer: RegionPeer, error: StoreRequestError, output: inout StoreTurnOutput) {
        // Writes may still commit under the next leader, but this store can no longer tell
        // when; the client retries with the same sequence and the session answers.
        for (_, pending) in peer.pendingWrites.sorted(by: { $0.key < $1.key }) {
            output.completedWrites += pending.ids.map { ($0, .failure(error)) }
        }
        peer.pendingWrites = [:]
        output.completedWrites += peer.queuedWrites.map { ($0.id, .failure(error)) }
        peer.queuedWrites = []
        for id in peer.readsAwaitingIndex.values.sorted() { output.failedReads.append((id, error)) }
        peer.readsAwaitingIndex = [:]
    }

    private func serveReads(_ peer: RegionPeer, output: inout StoreTurnOutput) {
        guard !peer.readsAwaitingApply.isEmpty else { return }
        let applied = peer.raft.appliedIndex
        var waiting: [(index: UInt64, id: ProposalID)] = []
        for read in peer.readsAwaitingApply {
            if read.index <= applied { output.readyReads.append((read.id, peer.region.id)) } else { waiting.append(read) }
        }
        peer.readsAwaitingApply = waiting
    }

    // MARK: Log truncation

    /// Truncates the logs of regions holding more applied entries (or bytes) than the
    /// thresholds. A leader keeps what its followers still need unless the log grew past
    /// twice the threshold (a follower that far behind gets a snapshot instead).
    private func truncateLogs(_ candidates: [RegionPeer], output: inout StoreTurnOutput) throws {
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

    // MARK: Removed peers

    /// Destroys replicas removed from their region once they no longer lead: a tombstone
    /// (so old messages do not recreate them), and their log, state, sessions and data gone.
    private func destroyRemovedPeers(_ candidates: [RegionPeer], output: inout StoreTurnOutput) throws {
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
            peers[regionID] = nil
            regionMap.remove(regionID)
            precondition(regionMap.range(of: regionID) == nil, "region \(regionID): a destroyed replica's range is still mapped")
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

    private static func contains(_ start: [UInt8], _ end: [UInt8], _ key: [UInt8]) -> Bool {
        !key.lexicographicallyPrecedes(start) && key.lexicographicallyPrecedes(end)
    }
}
