import Raft

extension Simulation {
    /// Persists, sends and applies what one node's Ready says, the way a store would, in one of
    /// the valid orders, with crash points between the steps.
    mutating func processReady(_ id: NodeID) throws(SimulationFailure) {
        var rounds = 0
        while rounds < 8, var raft = nodes[id]?.raft, raft.hasReady, var node = nodes[id] {
            rounds += 1
            let ready = raft.ready()
            // A leader's early messages may leave before its write (as a store does) or after
            // it (as a simpler store would); both orders are valid, and a crash can fall between
            // the write and the send. New leaders crash most often: they leave entries on their
            // own disk that nobody else has, the seed of logs that diverge across terms.
            let justElected = ready.softState?.role == .leader
            let crashBetweenWriteAndSend = faultsEnabled
                && chance(justElected ? options.newLeaderCrashProbability : options.crashProbability / 4)
            let sendEarly = !crashBetweenWriteAndSend && chance(0.5)
            if sendEarly { for message in ready.messagesNow { send(message) } }
            if faultsEnabled && chance(options.crashProbability / 2) {
                note("crash \(id) before persisting \(ready.entriesToPersist.count) entries")
                crash(id)
                return
            }
            if let snapshot = ready.snapshotToInstall {
                node.storage.applySnapshot(snapshot)
                (node.lastWriteIndex, node.lastWriteValue) = Self.decodeRegister(snapshot.data)
                node.appliedIndex = snapshot.metadata.index
                note("\(id) installs snapshot \(snapshot.metadata.index)@\(snapshot.metadata.term)")
            }
            node.storage.append(ready.entriesToPersist)
            if let hardState = ready.hardState { node.storage.setHardState(hardState) }
            if crashBetweenWriteAndSend {
                note("crash \(id) after writing its Ready, before sending\(justElected ? " (just elected)" : "")")
                crash(id)
                return
            }
            if sendEarly { for message in ready.messagesAfterPersist { send(message) } }
            if let soft = ready.softState, soft.role == .leader {
                leaderSince[id] = clock
                note("\(id) leads term \(raft.term)")
            }

            for entry in ready.committedEntries {
                guard entry.index == node.appliedIndex + 1 else {
                    throw failure("node \(id) applies \(entry.index) after \(node.appliedIndex)")
                }
                if let agreed = appliedSequence[entry.index] {
                    guard agreed.term == entry.term && agreed.data == entry.data else {
                        throw failure("node \(id) applies \(entry) at \(entry.index) but \(agreed.term) was applied there before")
                    }
                } else {
                    appliedSequence[entry.index] = (entry.term, entry.data)
                    committedByTerm[entry.index] = raft.term
                }
                if entry.kind == .normal && entry.data.count == 8 {
                    let value = Self.decodeValue(entry.data)
                    node.lastWriteIndex = entry.index
                    node.lastWriteValue = value
                    if let invocation = writeInvocations[value], invocation.node == id {
                        acknowledgedWrites.append((clock, entry.index))
                        writeInvocations[value] = nil
                        writesAcknowledged += 1
                    }
                }
                node.appliedIndex = entry.index
            }
            // Late senders apply before they send: a leader that dies right after applying a
            // commit takes its next appends with it.
            if !sendEarly {
                if faultsEnabled && raft.role == .leader && !ready.committedEntries.isEmpty
                    && chance(options.crashAfterCommitProbability) {
                    note("crash \(id) right after applying up to \(node.appliedIndex), before sending")
                    crash(id)
                    return
                }
                for message in ready.messagesNow + ready.messagesAfterPersist { send(message) }
            }
            for readState in ready.readStates {
                node.pendingReads.append((readState, readInvocations[readState.context] ?? clock))
            }
            raft.advance(ready)
            node.raft = raft
            try serveReads(&node)
            if node.appliedIndex >= node.storage.snapshot().metadata.index + options.snapshotEveryEntries {
                let data = Self.encodeWrite(node.lastWriteIndex) + Self.encodeWrite(node.lastWriteValue)
                try? node.storage.createSnapshot(at: node.appliedIndex, confState: raft.confState, data: data)
            }
            nodes[id] = node
        }
    }

    /// Serves confirmed reads whose index is applied, and checks each against real time: it
    /// must see every write acknowledged before the read was invoked.
    mutating func serveReads(_ node: inout SimulatedNode) throws(SimulationFailure) {
        var waiting: [(readState: ReadState, invokedAt: UInt64)] = []
        for read in node.pendingReads {
            guard read.readState.index <= node.appliedIndex else { waiting.append(read); continue }
            let mustSee = acknowledgedWrites.filter { $0.at < read.invokedAt }.map(\.index).max() ?? 0
            guard node.lastWriteIndex >= mustSee else {
                throw failure("stale read at node \(node.id): read invoked at t\(read.invokedAt) saw the write at index \(node.lastWriteIndex), but the write at index \(mustSee) was acknowledged before (read index \(read.readState.index))")
            }
            readsChecked += 1
        }
        node.pendingReads = waiting
    }

    mutating func checkInvariants() throws(SimulationFailure) {
        for id in leaders {
            guard let raft = nodes[id]?.raft else { continue }
            if let other = leaderOfTerm[raft.term], other != id {
                throw failure("two leaders in term \(raft.term): \(other) and \(id)")
            }
            leaderOfTerm[raft.term] = id
            // Leader completeness: every applied (hence committed) entry is in the leader's log.
            for (index, agreed) in appliedSequence where index >= raft.firstIndex && (committedByTerm[index] ?? .max) < raft.term {
                guard let term = try? raft.term(at: index) else {
                    throw failure("leader \(id) of term \(raft.term) lacks committed entry \(index)")
                }
                guard term == agreed.term else {
                    throw failure("leader \(id) of term \(raft.term) has \(index)@\(term), committed was \(index)@\(agreed.term)")
                }
            }
        }
        if clock % 5 == 0 { try checkLogMatching() }
    }

    /// If two logs hold an entry with the same index and term, they are identical up to it.
    mutating func checkLogMatching() throws(SimulationFailure) {
        let ids = aliveIDs
        var logs: [NodeID: (first: UInt64, entries: [Entry])] = [:]
        for id in ids {
            guard let raft = nodes[id]?.raft, let entries = try? raft.entries(from: raft.firstIndex) else { continue }
            logs[id] = (raft.firstIndex, entries)
        }
        for (position, a) in ids.enumerated() {
            for b in ids[(position + 1)...] {
                guard let logA = logs[a], let logB = logs[b] else { continue }
                let low = max(logA.first, logB.first)
                let high = min(logA.first + UInt64(logA.entries.count), logB.first + UInt64(logB.entries.count))
                guard low < high else { continue }
                var index = high - 1
                while index >= low && logA.entries[Int(index - logA.first)].term != logB.entries[Int(index - logB.first)].term {
                    if index == low { break }
                    index -= 1
                }
                guard logA.entries[Int(index - logA.first)].term == logB.entries[Int(index - logB.first)].term else { continue }
                var check = low
                while check <= index {
                    let entryA = logA.entries[Int(check - logA.first)]
                    let entryB = logB.entries[Int(check - logB.first)]
                    if entryA != entryB {
                        throw failure("log matching: nodes \(a) and \(b) agree at \(index) but differ at \(check): \(entryA) vs \(entryB)")
                    }
                    check += 1
                }
            }
        }
    }
}
