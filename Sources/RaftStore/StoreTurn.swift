import FlotillaProto
import Foundation
import Raft
import RocksDB

extension StoreCore {
    /// One turn of the store loop: collect every region's Ready, write all their log entries
    /// and hard states in one batch with one sync, hand out their messages, then apply
    /// committed commands (data, apply state and sessions in one atomic batch).
    public func runTurn() throws -> StoreTurnOutput {
        var output = StoreTurnOutput()
        var readies: [(peer: RegionPeer, ready: Ready, staged: RegionRaftStorage.StagedWrite)] = []
        let logBatch = db.makeWriteBatch()
        for regionID in peers.keys.sorted() {
            guard let peer = peers[regionID], peer.raft.hasReady else { continue }
            let ready = peer.raft.ready()
            readies.append((peer, ready, peer.storage.stage(ready, into: logBatch)))
            if !ready.entriesToPersist.isEmpty || ready.hardState != nil || ready.snapshotToInstall != nil {
                output.regionsInLogBatch += 1
            }
        }
        guard !readies.isEmpty else { return output }
        if logBatch.count > 0 {
            try db.write(logBatch, sync: true)
            output.logSyncs = 1
        }
        for item in readies { item.peer.storage.commit(item.staged) }

        // Messages: everything is persisted now, so both kinds may go.
        for item in readies {
            for message in item.ready.messagesNow + item.ready.messagesAfterPersist {
                guard let to = item.peer.region.peer(withID: message.to),
                      let from = item.peer.region.peer(withID: message.from) else { continue }
                var wire = Flotilla_V1_RaftMessage()
                wire.regionID = item.peer.region.id
                wire.fromPeer = from
                wire.toPeer = to
                wire.epoch = item.peer.region.epoch
                wire.message = Flotilla_V1_RaftCoreMessage(message)
                output.messagesByStore[to.storeID, default: []].append(wire)
            }
        }

        // Apply.
        let applyBatch = db.makeWriteBatch()
        for item in readies {
            try apply(item.ready, to: item.peer, batch: applyBatch, output: &output)
        }
        if applyBatch.count > 0 { try db.write(applyBatch, sync: false) }
        for item in readies {
            item.peer.raft.advance(item.ready)
            if let last = item.ready.committedEntries.last {
                item.peer.persistedApplied = max(item.peer.persistedApplied, last.index)
            }
            if item.ready.softState.map({ $0.role != .leader }) == true {
                failPendingAfterLosingLeadership(item.peer, output: &output)
            }
            serveReads(item.peer, output: &output)
        }
        return output
    }

    private func apply(_ ready: Ready, to peer: RegionPeer, batch: WriteBatch, output: inout StoreTurnOutput) throws {
        for readState in ready.readStates {
            if let id = peer.readsAwaitingIndex.removeValue(forKey: readState.context) {
                peer.readsAwaitingApply.append((readState.index, id))
            }
        }
        guard let last = ready.committedEntries.last else { return }
        for entry in ready.committedEntries {
            let pending = peer.pendingWrites.removeValue(forKey: entry.index)
            if let pending, pending.term != entry.term {
                output.completedWrites.append((pending.id, .failure(.proposalDropped)))
            }
            // Entries applied before a restart are replayed through Raft but change no data.
            guard entry.index > peer.persistedApplied, entry.kind == .normal, !entry.data.isEmpty else { continue }
            let command = try Flotilla_V1_WriteCommand(serializedBytes: entry.data)
            let result = try applyCommand(command, peer: peer, index: entry.index, batch: batch)
            if let pending, pending.term == entry.term {
                output.completedWrites.append((pending.id, .success(result)))
            }
        }
        let truncated = (peer.storage.truncatedIndex, peer.storage.truncatedTerm)
        batch.put(StoreKeys.applyState(region: peer.region.id),
                  StoredValues.encodeApplyState(applied: last.index, truncatedIndex: truncated.0, truncatedTerm: truncated.1),
                  in: try db.columnFamily(StoreKeys.metaColumnFamily))
    }

    /// Applies one command, or answers a retry from the client's session.
    private func applyCommand(_ command: Flotilla_V1_WriteCommand, peer: RegionPeer, index: UInt64, batch: WriteBatch) throws -> Flotilla_V1_WriteResult {
        let metaCF = try db.columnFamily(StoreKeys.metaColumnFamily)
        var session: Flotilla_V1_ClientSession? = nil
        if command.clientID != 0 {
            session = try loadSession(peer: peer, client: command.clientID)
            if let known = session, command.sequence <= known.lastSequence {
                // A retry: the first reply, not a second application.
                return (try? Flotilla_V1_WriteResult(serializedBytes: known.lastReply)) ?? Flotilla_V1_WriteResult()
            }
        }
        var result = Flotilla_V1_WriteResult()
        result.succeeded = true
        if !command.puts.isEmpty {
            for pair in command.puts { batch.put([UInt8](pair.key), [UInt8](pair.value)) }
        } else if !command.deletes.isEmpty {
            for key in command.deletes { batch.delete([UInt8](key)) }
        } else if command.hasDeleteRange {
            let end = command.deleteRange.endKey.isEmpty ? peer.region.endKey : command.deleteRange.endKey
            if end.isEmpty {
                // To the end of the key space: delete up to the largest possible key, then it.
                let iterator = db.makeIterator(lowerBound: [UInt8](command.deleteRange.startKey))
                iterator.seekToFirst()
                while iterator.isValid { batch.delete(iterator.key); iterator.next() }
                try iterator.checkError()
            } else {
                batch.deleteRange(from: [UInt8](command.deleteRange.startKey), to: [UInt8](end))
            }
        } else if command.hasCompareAndSwap {
            // The comparison must see earlier commands of this batch: write them first.
            if batch.count > 0 {
                try db.write(batch, sync: false)
                batch.clear()
            }
            let cas = command.compareAndSwap
            let current = try db.get([UInt8](cas.key))
            result.previousExists = current != nil
            result.previousValue = Data(current ?? [])
            let matches = cas.expectExists ? current.map { Data($0) == cas.expectedValue } ?? false : current == nil
            result.succeeded = matches
            if matches {
                if cas.deleteKey { batch.delete([UInt8](cas.key)) } else { batch.put([UInt8](cas.key), [UInt8](cas.newValue)) }
            }
        }
        if var session {
            session.lastSequence = command.sequence
            session.lastReply = try result.serializedData()
            session.lastUsedIndex = index
            peer.sessions[command.clientID] = session
            batch.put(StoreKeys.session(region: peer.region.id, client: command.clientID), try session.serializedBytes(), in: metaCF)
        }
        return result
    }

    private func loadSession(peer: RegionPeer, client: UInt64) throws -> Flotilla_V1_ClientSession {
        if let cached = peer.sessions[client] { return cached }
        let stored = try db.get(StoreKeys.session(region: peer.region.id, client: client), in: try db.columnFamily(StoreKeys.metaColumnFamily))
        let session = try stored.map { try Flotilla_V1_ClientSession(serializedBytes: $0) } ?? Flotilla_V1_ClientSession()
        peer.sessions[client] = session
        return session
    }

    private func failPendingAfterLosingLeadership(_ peer: RegionPeer, output: inout StoreTurnOutput) {
        // Writes may still commit under the next leader, but this store can no longer tell
        // when; the client retries with the same sequence and the session answers.
        for (_, pending) in peer.pendingWrites.sorted(by: { $0.key < $1.key }) {
            output.completedWrites.append((pending.id, .failure(.notLeader(regionID: peer.region.id, leader: peer.region.peer(withID: peer.raft.leader)))))
        }
        peer.pendingWrites = [:]
        let error = StoreRequestError.notLeader(regionID: peer.region.id, leader: peer.region.peer(withID: peer.raft.leader))
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
}
