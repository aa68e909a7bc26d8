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
            let persisted = node.storage.hardState
            let changesVoteOrTerm = ready.hardState.map { $0.term != persisted.term || $0.vote != persisted.vote } ?? false
            // Readys that cast a vote or move the term are where a write-ordering bug makes two
            // leaders: crash on them often, on either side of the write.
            let voteCrash = faultsEnabled && changesVoteOrTerm && chance(options.voteCrashProbability)
            let voteCrashBeforeWrite = voteCrash && chance(0.5)
            let crashBetweenWriteAndSend = faultsEnabled
                && ((voteCrash && !voteCrashBeforeWrite) || chance(justElected ? options.newLeaderCrashProbability : options.crashProbability / 4))
            let sendEarly = voteCrashBeforeWrite || (!crashBetweenWriteAndSend && chance(0.5))
            if sendEarly { for message in ready.messagesNow { send(message) } }
            if voteCrashBeforeWrite {
                note("\(id) sent what may leave early; its term/vote \(persisted.term)/\(persisted.vote) → \(ready.hardState.map { "\($0.term)/\($0.vote)" } ?? "") is not written")
                crash(id, fault: "crash: before persisting a vote or term change")
                quickRestartAt[id] = clock + ticks(from: 1, to: 4)
                return
            }
            if faultsEnabled && chance(options.crashProbability / 2) {
                crash(id, fault: "crash: before persisting a Ready")
                return
            }
            if let snapshot = ready.snapshotToInstall {
                guard snapshot.metadata.index > node.appliedIndex else {
                    throw failure("node \(id) installs snapshot \(snapshot.metadata.index)@\(snapshot.metadata.term) over its state machine at applied index \(node.appliedIndex): applied state would go back")
                }
                (node.lastWriteIndex, node.lastWriteValue) = Self.decodeRegister(snapshot.data)
                node.appliedIndex = snapshot.metadata.index
                note("\(id) installs snapshot \(snapshot.metadata.index)@\(snapshot.metadata.term)")
            }
            do {
                try node.storage.persist(ready)
            } catch {
                throw failure("node \(id)'s Ready asked storage for what no correct node does: \(error)")
            }
            if crashBetweenWriteAndSend {
                crash(id, fault: voteCrash ? "crash: after persisting a vote or term change, before sending" : "crash: after writing a Ready, before sending\(justElected ? " (just elected)" : "")")
                if voteCrash { quickRestartAt[id] = clock + ticks(from: 1, to: 4) }
                return
            }
            if sendEarly { for message in ready.messagesAfterPersist { send(message) } }
            if let soft = ready.softState, soft.role == .leader {
                leaderSince[id] = clock
                report.elections += 1
                note("\(id) leads term \(raft.term)")
            }
            if let soft = ready.softState, soft.role == .candidate || soft.role == .preCandidate, faultsEnabled,
               let leaderID = leaders.first(where: { $0 != id }),
               raft.lastIndex >= nodes[leaderID]?.raft?.lastIndex ?? .max,
               chance(options.deafenLeaderInElectionProbability) {
                // An asymmetric partition at the worst moment: the leader still sends, hears
                // nothing, and so cannot learn that an election is under way.
                let until = clock + ticks(from: UInt64(options.electionTimeoutTicks), to: UInt64(4 * options.electionTimeoutTicks))
                timedCuts.append((until, Set(aliveIDs.filter { $0 != leaderID }.map { [$0, leaderID] })))
                note("\(id) campaigns; leader \(leaderID) hears nothing until t\(until)")
                count("leader deafened while another node campaigns")
            }

            let confBefore = raft.confState
            for entry in ready.committedEntries {
                guard entry.index == node.appliedIndex + 1 else {
                    throw failure("node \(id) applies \(entry.index) after \(node.appliedIndex)")
                }
                let position = Int(entry.index) - 1
                if position < appliedSequence.count {
                    let agreed = appliedSequence[position]
                    guard agreed.term == entry.term && agreed.data == entry.data else {
                        throw failure("node \(id) applies \(Self.describe(entry)) but \(Self.describe(Entry(term: agreed.term, index: entry.index, kind: entry.kind, data: agreed.data))) was applied there before")
                    }
                } else {
                    guard position == appliedSequence.count else {
                        throw failure("node \(id) applies \(entry.index) while the highest index applied anywhere is \(appliedSequence.count)")
                    }
                    appliedSequence.append((entry.term, entry.data))
                    committedByTerm.append(raft.term)
                }
                if entry.kind == .normal && entry.data.count == 8 {
                    let value = Self.decodeValue(entry.data)
                    node.lastWriteIndex = entry.index
                    node.lastWriteValue = value
                    if let invocation = writeInvocations[value], invocation.node == id {
                        acknowledgedWrites.append((clock, max(entry.index, acknowledgedWrites.last?.highestIndex ?? 0)))
                        writeInvocations[value] = nil
                        report.writesAcknowledged += 1
                    }
                }
                node.appliedIndex = entry.index
            }
            // Late senders apply before they send: a leader that dies right after applying a
            // commit takes its next appends with it.
            if !sendEarly {
                if faultsEnabled && raft.role == .leader && !ready.committedEntries.isEmpty
                    && chance(options.crashAfterCommitProbability) {
                    crash(id, fault: "crash: leader right after applying a commit, before sending")
                    return
                }
            }
            for readState in ready.readStates {
                node.pendingReads.append((readState, readInvocations[readState.context] ?? clock))
            }
            let committedBefore = raft.committedIndex
            raft.advance(ready)
            if !confBefore.isJoint && raft.confState.isJoint,
               let entering = ready.committedEntries.last(where: { $0.kind == .confChange }) {
                jointEntryIndexes.insert(entering.index)
                if raft.role == .leader && faultsEnabled && chance(options.jointCutProbability) {
                    cutFromOneHalf(id, conf: raft.confState)
                }
            }
            guard raft.committedIndex >= committedBefore else {
                throw failure("node \(id)'s commit index went back from \(committedBefore) to \(raft.committedIndex)")
            }
            if !sendEarly {
                for message in ready.messagesNow + ready.messagesAfterPersist { send(message) }
            }
            node.raft = raft
            roles[id] = raft.role
            try serveReads(&node)
            if node.appliedIndex >= node.storage.snapshot().metadata.index + options.snapshotEveryEntries {
                let data = Self.encodeWrite(node.lastWriteIndex) + Self.encodeWrite(node.lastWriteValue)
                try? node.storage.createSnapshot(at: node.appliedIndex, confState: raft.confState, data: data)
            }
            nodes[id] = node
        }
    }

    /// A leader that just entered a joint configuration loses, for one to four election
    /// timeouts, enough members of one half (outgoing or incoming) that this half has no
    /// majority it can reach, while the other half keeps one: only a leader that counts both
    /// majorities stops committing, and only elections that need both keep one leader.
    mutating func cutFromOneHalf(_ leaderID: NodeID, conf: ConfState) {
        let halves = [("outgoing", conf.votersOutgoing, conf.voters), ("incoming", conf.voters, conf.votersOutgoing)]
        guard let (name, half, other) = pick(halves) else { return }
        // Members of this half only go first, then shared ones, never the leader.
        let only = half.subtracting(other).subtracting([leaderID]).sorted().shuffled(using: &random)
        let shared = half.intersection(other).subtracting([leaderID]).sorted().shuffled(using: &random)
        let majority = half.count / 2 + 1
        let cutCount = half.count - majority + 1
        let cutOff = Array((only + shared).prefix(cutCount))
        guard cutOff.count == cutCount else { return }
        let reachableOther = other.subtracting(cutOff)
        guard reachableOther.count >= other.count / 2 + 1 else { return }
        let until = clock + ticks(from: UInt64(options.electionTimeoutTicks), to: UInt64(4 * options.electionTimeoutTicks))
        cut(leaderID, from: cutOff, until: until)
        note("leader \(leaderID) entered a joint configuration (\(conf.votersOutgoing.sorted()) → \(conf.voters.sorted())) and is cut from \(cutOff) of its \(name) half until t\(until)")
        count("leader cut from the \(name) half of a joint configuration")
    }

    static func describe(_ entry: Entry) -> String {
        let payload = entry.data.prefix(16).map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        return "\(entry.index)@\(entry.term) \(entry.kind) [\(payload)\(entry.data.count > 16 ? "…(\(entry.data.count) bytes)" : "")]"
    }

    /// Serves confirmed reads whose index is applied, and checks each against real time: it
    /// must see every write acknowledged before the read was invoked.
    mutating func serveReads(_ node: inout SimulatedNode) throws(SimulationFailure) {
        var waiting: [(readState: ReadState, invokedAt: UInt64)] = []
        for read in node.pendingReads {
            guard read.readState.index <= node.appliedIndex else { waiting.append(read); continue }
            let mustSee = highestIndexAcknowledged(before: read.invokedAt)
            guard node.lastWriteIndex >= mustSee else {
                throw failure("stale read at node \(node.id): read invoked at t\(read.invokedAt) saw the write at index \(node.lastWriteIndex), but the write at index \(mustSee) was acknowledged before (read index \(read.readState.index))")
            }
            report.readsChecked += 1
        }
        node.pendingReads = waiting
    }

    /// The highest log index of the writes acknowledged before tick `tick`.
    func highestIndexAcknowledged(before tick: UInt64) -> UInt64 {
        // Acknowledgements are recorded in tick order; find the first at or after `tick`.
        var low = 0
        var high = acknowledgedWrites.count
        while low < high {
            let middle = (low + high) / 2
            if acknowledgedWrites[middle].at < tick { low = middle + 1 } else { high = middle }
        }
        return low == 0 ? 0 : acknowledgedWrites[low - 1].highestIndex
    }

    mutating func checkInvariants() throws(SimulationFailure) {
        for id in leaders {
            guard let raft = nodes[id]?.raft else { continue }
            if let other = leaderOfTerm[raft.term], other != id {
                throw failure("two leaders in term \(raft.term): \(other) and \(id)")
            }
            leaderOfTerm[raft.term] = id
            // Leader completeness: every applied (hence committed) entry is in the leader's
            // log. Walked in index order, so a seed always reports the same entry.
            // A leader never drops an entry of its log while it leads, so each (leader, term)
            // is checked once for every entry applied since its last check.
            let checked = completenessChecked[id].flatMap { $0.term == raft.term ? $0.upTo : nil } ?? 0
            var index = max(raft.firstIndex, checked + 1, 1)
            completenessChecked[id] = (raft.term, UInt64(appliedSequence.count))
            while index <= UInt64(appliedSequence.count) {
                let position = Int(index) - 1
                if committedByTerm[position] < raft.term {
                    let agreed = appliedSequence[position]
                    guard let term = try? raft.term(at: index) else {
                        throw failure("leader \(id) of term \(raft.term) lacks committed entry \(index)@\(agreed.term) (its log ends at \(raft.lastIndex))")
                    }
                    guard term == agreed.term else {
                        throw failure("leader \(id) of term \(raft.term) has \(index)@\(term), committed was \(index)@\(agreed.term)")
                    }
                }
                index += 1
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
                        throw failure("log matching: nodes \(a) and \(b) agree at \(index) but differ at \(check): \(Self.describe(entryA)) vs \(Self.describe(entryB))")
                    }
                    check += 1
                }
            }
        }
    }
}
