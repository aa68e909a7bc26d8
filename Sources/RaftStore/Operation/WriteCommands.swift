import FlotillaProto
import Foundation
import Raft
import RocksDB

// Write commands: admission, batching queued writes into entries, validation, apply, and the
// client sessions that make a retried (client, sequence) apply once.

extension StoreCore {
    /// Accepts a client write to a region this store leads. The next turn proposes it, with
    /// every other write the region received meanwhile, in one Raft entry (TiKV batches its
    /// proposals the same way): the log write, the replication messages and the apply state
    /// are paid once per entry, not once per write.
    public func proposeWrite(_ command: Flotilla_V1_WriteCommand, context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> ProposalID {
        let peer = try leaderPeer(for: context)
        try admitRequest()
        try validate(command, in: peer.region)
        let data: [UInt8]
        do { data = try command.serializedBytes() } catch {
            throw .invalidArgument(field: "command", reason: "cannot be encoded: \(error)")
        }
        // One write is one Raft entry at most, so it always fits an append and a frame.
        guard data.count <= KVLimits.commandBytesMax else {
            throw .invalidArgument(field: "request", reason: "the write encodes to \(data.count) bytes, more than the \(KVLimits.commandBytesMax)-byte limit of one Raft entry")
        }
        if let key = command.puts.first?.key ?? command.deletes.first ?? (command.hasCompareAndSwap ? command.compareAndSwap.key : nil) {
            recordLoad(peer, key: key)
        }
        let id = makeProposalID()
        peer.queuedWrites.append((data, id))
        pendingRequests += 1
        touchedRegions.insert(peer.region.id)
        return id
    }

    /// Proposes the region's queued writes as `CommandBatch` entries (bounded by
    /// `commandsPerEntryMax` and `entryBytesMax`; a larger command goes alone). Writes Raft
    /// refuses are reported by the next turn.
    func proposeQueuedWrites(_ peer: RegionPeer) {
        guard !peer.queuedWrites.isEmpty else { return }
        let queued = peer.queuedWrites
        peer.queuedWrites = []
        var start = 0
        while start < queued.count {
            var end = start
            var bytes = 0
            while end < queued.count, end - start < settings.commandsPerEntryMax,
                  end == start || bytes + queued[end].command.count + 11 <= settings.entryBytesMax {
                bytes += queued[end].command.count + 11
                end += 1
            }
            // Every entry carries at least one write, and only the first may pass the entry limit.
            precondition(end > start && (end - start == 1 || bytes <= settings.entryBytesMax), "a command batch outside its bounds")
            var entry: [UInt8] = []
            entry.reserveCapacity(bytes)
            for item in queued[start..<end] { CommandBatchEncoding.append(item.command, to: &entry) }
            let ids = queued[start..<end].map(\.id)
            do {
                let index = try peer.raft.propose(entry)
                peer.pendingWrites[index] = (peer.raft.term, ids)
            } catch {
                let refusal = mapRaftError(error, peer: peer)
                refusedQueuedWrites += ids.map { ($0, refusal) }
            }
            start = end
        }
    }

    func admitRequest() throws(StoreRequestError) {
        guard pendingRequests < settings.maxPendingRequests else {
            throw .serverIsBusy(reason: "\(pendingRequests) requests in flight on store \(storeID) (limit \(settings.maxPendingRequests))")
        }
    }

    func trackWrite(peer: RegionPeer, index: UInt64) -> ProposalID {
        let id = makeProposalID()
        peer.pendingWrites[index] = (peer.raft.term, [id])
        pendingRequests += 1
        return id
    }

    /// The rules every write meets: one kind of operation, keys within bounds and inside the
    /// region. Checked when a write is accepted and again when it is applied.
    func validate(_ command: Flotilla_V1_WriteCommand, in region: Flotilla_V1_Region) throws(StoreRequestError) {
        let kinds = [!command.puts.isEmpty, !command.deletes.isEmpty, command.hasDeleteRange, command.hasCompareAndSwap,
                     !command.stateMachineCommand.isEmpty]
        guard kinds.filter({ $0 }).count == 1 else {
            throw .invalidArgument(field: "command", reason: "exactly one of puts, deletes, delete_range, compare_and_swap, state_machine_command must be set")
        }
        guard command.stateMachineCommand.isEmpty || stateMachine != nil else {
            throw .invalidArgument(field: "command", reason: "state_machine_command: this store's regions run KV commands only")
        }
        for key in command.puts.map(\.key) + command.deletes + (command.hasCompareAndSwap ? [command.compareAndSwap.key] : []) {
            guard key.count <= StoreKeys.dataKeyBytesMax else {
                throw .invalidArgument(field: "key", reason: "\(key.count) bytes, more than \(StoreKeys.dataKeyBytesMax)")
            }
            guard region.contains(key) else { throw .keyNotInRegion(key: key, region: region) }
        }
        if command.hasDeleteRange {
            let range = command.deleteRange
            guard range.endKey.isEmpty || range.startKey.lexicographicallyPrecedes(range.endKey) || range.startKey == range.endKey else {
                throw .invalidArgument(field: "delete_range", reason: "start key after end key")
            }
            guard region.contains(range.startKey) else { throw .keyNotInRegion(key: range.startKey, region: region) }
            // An empty end is "to the end of the key space": inside only the last region.
            guard region.endKey.isEmpty || (!range.endKey.isEmpty && !region.endKey.lexicographicallyPrecedes(range.endKey)) else {
                throw .keyNotInRegion(key: range.endKey, region: region)
            }
        }
    }

    /// Applies one command, or answers a retry from the client's session (Raft thesis §6.3,
    /// with many writes of a client in flight at once). The session changes in memory; the
    /// caller writes the sessions named in `sessionsWritten` once the entries are applied.
    func applyCommand(_ command: Flotilla_V1_WriteCommand, peer: RegionPeer, index: UInt64, batch: inout ApplyBatch,
                      sessionsWritten: inout Set<UInt64>) throws -> Flotilla_V1_WriteResult {
        var session: Flotilla_V1_ClientSession? = nil
        if command.clientID != 0 {
            switch try sessionAnswer(to: command, peer: peer) {
            case .answered(let result): return result
            case .apply(let known): session = known
            }
        }
        let result = try applyMutation(command, peer: peer, index: index, batch: &batch)
        if var session {
            try record(result, of: command, in: &session, index: index)
            peer.sessions[command.clientID] = session
            sessionsWritten.insert(command.clientID)
        }
        return result
    }

    /// What a client's session says about a command: answered already (a late duplicate, a
    /// retry with its first reply, or another payload under a used sequence), or to apply.
    private enum SessionAnswer {
        case answered(Flotilla_V1_WriteResult)
        case apply(Flotilla_V1_ClientSession)
    }

    private func sessionAnswer(to command: Flotilla_V1_WriteCommand, peer: RegionPeer) throws -> SessionAnswer {
        let known = try loadSession(peer: peer, client: command.clientID)
        if command.sequence < known.ackedBelow {
            // The client has had this write's answer and moved on: a late duplicate.
            var stale = Flotilla_V1_WriteResult()
            stale.staleDuplicate = true
            return .answered(stale)
        }
        if let kept = known.replies.first(where: { $0.sequence == command.sequence }) {
            // Another write under a sequence already used: refused, not silently dropped.
            if kept.payloadDigest != 0 && kept.payloadDigest != command.payloadDigest {
                var mismatch = Flotilla_V1_WriteResult()
                mismatch.payloadMismatch = true
                return .answered(mismatch)
            }
            // A retry: the first reply, not a second application.
            return .answered((try? Flotilla_V1_WriteResult(serializedBytes: kept.reply)) ?? Flotilla_V1_WriteResult())
        }
        return .apply(known)
    }

    /// The command's effect on the region's data, staged in `batch`.
    private func applyMutation(_ command: Flotilla_V1_WriteCommand, peer: RegionPeer, index: UInt64,
                               batch: inout ApplyBatch) throws -> Flotilla_V1_WriteResult {
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
        return result
    }

    /// Keeps the command's reply in its client's session for retries; bounded by
    /// `sessionRepliesMax` (the oldest replies go, and their writes are never applied again).
    private func record(_ result: Flotilla_V1_WriteResult, of command: Flotilla_V1_WriteCommand,
                        in session: inout Flotilla_V1_ClientSession, index: UInt64) throws {
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
            let dropped = replies.count - settings.sessionRepliesMax
            session.ackedBelow = replies[dropped - 1].sequence + 1
            replies.removeFirst(dropped)
        }
        precondition(replies.count <= settings.sessionRepliesMax && replies.allSatisfy { $0.sequence >= session.ackedBelow },
                     "a session keeps at most its bound of replies, none below what the client acknowledged")
        session.replies = replies
        session.lastUsedIndex = index
    }

    func loadSession(peer: RegionPeer, client: UInt64) throws -> Flotilla_V1_ClientSession {
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
    func expireSessions(peer: RegionPeer, at index: UInt64, batch: WriteBatch) throws {
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
}

/// `CommandBatch` written by hand from commands already encoded: a repeated message field is
/// the concatenation of (tag, length, bytes) per element, so the batch costs one copy.
enum CommandBatchEncoding {
    /// Field 1, wire type 2 (length-delimited).
    static let commandsTag: UInt8 = 0x0A

    static func append(_ command: [UInt8], to entry: inout [UInt8]) {
        entry.append(commandsTag)
        var length = UInt64(command.count)
        while length >= 0x80 {
            entry.append(UInt8(truncatingIfNeeded: length) | 0x80)
            length >>= 7
        }
        entry.append(UInt8(length))
        entry.append(contentsOf: command)
    }
}
