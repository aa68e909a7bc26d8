/// The log as one node sees it: a persisted prefix in `storage` followed by an unstable tail
/// (entries or a snapshot handed out in a `Ready` and not yet persisted), plus the commit and
/// apply positions.
struct RaftLog {
    let storage: any RaftLogStorage
    /// Index of the first unstable entry; everything before it is in storage.
    private(set) var unstableOffset: UInt64
    private(set) var unstableEntries: [Entry] = []
    /// A snapshot received from the leader, to be persisted and installed.
    private(set) var unstableSnapshot: Snapshot?
    private(set) var committed: UInt64
    private(set) var applied: UInt64

    init(storage: any RaftLogStorage) {
        self.storage = storage
        unstableOffset = storage.lastIndex + 1
        // Everything before the first entry is in the snapshot, which is applied by definition.
        committed = storage.firstIndex - 1
        applied = storage.firstIndex - 1
    }

    var firstIndex: UInt64 {
        if let snapshot = unstableSnapshot { return snapshot.metadata.index + 1 }
        return storage.firstIndex
    }

    var lastIndex: UInt64 {
        if !unstableEntries.isEmpty { return unstableOffset + UInt64(unstableEntries.count) - 1 }
        if let snapshot = unstableSnapshot { return snapshot.metadata.index }
        return storage.lastIndex
    }

    /// The last index known to be on stable storage.
    var stableLastIndex: UInt64 { unstableSnapshot == nil ? unstableOffset - 1 : 0 }

    var lastTerm: UInt64 { (try? term(at: lastIndex)) ?? 0 }

    func term(at index: UInt64) throws(RaftError) -> UInt64 {
        if let snapshot = unstableSnapshot, index == snapshot.metadata.index { return snapshot.metadata.term }
        if index >= unstableOffset {
            if index > lastIndex { throw .unavailable }
            if unstableEntries.isEmpty { throw .unavailable }
            return unstableEntries[Int(index - unstableOffset)].term
        }
        if unstableSnapshot != nil {
            // Below a pending snapshot, nothing is known any more.
            throw .compacted
        }
        return try storage.term(at: index)
    }

    func matchesTerm(_ index: UInt64, _ term: UInt64) -> Bool {
        guard let found = try? self.term(at: index) else { return false }
        return found == term
    }

    /// Whether a candidate whose last entry is `lastTerm`/`lastIndex` is at least as
    /// up-to-date as this log (§5.4.1).
    func isUpToDate(lastIndex candidateIndex: UInt64, lastTerm candidateTerm: UInt64) -> Bool {
        candidateTerm > lastTerm || (candidateTerm == lastTerm && candidateIndex >= lastIndex)
    }

    /// Entries in `[low, lastIndex]`, at most `maxBytes` (at least one).
    func entries(from low: UInt64, maxBytes: Int) throws(RaftError) -> [Entry] {
        if low > lastIndex { return [] }
        if low < firstIndex { throw .compacted }
        var result: [Entry] = []
        var bytes = 0
        if low < unstableOffset {
            result = try storage.entries(from: low, to: min(unstableOffset, lastIndex + 1), maxBytes: maxBytes)
            bytes = result.reduce(0) { $0 + $1.sizeBytes }
            if result.last.map({ $0.index + 1 < unstableOffset }) ?? true { return result }
        }
        let start = max(low, unstableOffset)
        for entry in unstableEntries[Int(start - unstableOffset)...] {
            if !result.isEmpty && bytes + entry.sizeBytes > maxBytes { break }
            bytes += entry.sizeBytes
            result.append(entry)
        }
        return result
    }

    /// Appends entries the leader created. Returns the new last index.
    mutating func append(_ entries: [Entry]) -> UInt64 {
        guard let first = entries.first else { return lastIndex }
        precondition(first.index > committed, "append at \(first.index) would overwrite committed \(committed)")
        truncateAndAppend(entries)
        return lastIndex
    }

    /// A follower's append: if the entry at `index` has `logTerm`, appends what conflicts or is
    /// new and advances the commit index. Returns the last new index, or nil on mismatch.
    mutating func maybeAppend(index: UInt64, logTerm: UInt64, commit: UInt64, entries: [Entry]) -> UInt64? {
        guard matchesTerm(index, logTerm) else { return nil }
        let lastNewIndex = index + UInt64(entries.count)
        if let conflict = firstConflict(entries) {
            precondition(conflict.index > committed, "conflict at \(conflict.index) with committed \(committed)")
            truncateAndAppend(Array(entries[Int(conflict.index - (index + 1))...]))
        }
        self.commit(to: min(commit, lastNewIndex))
        return lastNewIndex
    }

    /// The first entry whose index is new or whose term differs from ours.
    private func firstConflict(_ entries: [Entry]) -> Entry? {
        for entry in entries where !matchesTerm(entry.index, entry.term) { return entry }
        return nil
    }

    private mutating func truncateAndAppend(_ entries: [Entry]) {
        guard let first = entries.first else { return }
        let after = first.index
        if after == unstableOffset + UInt64(unstableEntries.count) {
            unstableEntries.append(contentsOf: entries)
        } else if after <= unstableOffset {
            // Replaces persisted entries too: storage truncates when these are written.
            unstableOffset = after
            unstableEntries = entries
        } else {
            unstableEntries.removeSubrange(Int(after - unstableOffset)...)
            unstableEntries.append(contentsOf: entries)
        }
    }

    mutating func commit(to index: UInt64) {
        if index > committed {
            precondition(index <= lastIndex, "commit \(index) beyond last index \(lastIndex)")
            committed = index
        }
    }

    /// Whether `index` at `term` can be committed: only entries of the current term are
    /// committed by counting replicas (§5.4.2).
    mutating func maybeCommit(index: UInt64, term currentTerm: UInt64) -> Bool {
        guard index > committed, (try? term(at: index)) == currentTerm else { return false }
        commit(to: index)
        return true
    }

    mutating func applied(to index: UInt64) {
        precondition(index <= committed && index >= applied, "applied \(index) outside [\(applied), \(committed)]")
        applied = index
    }

    /// Committed entries that are persisted and not yet applied.
    func entriesToApply(maxBytes: Int) -> [Entry] {
        let high = min(committed, stableLastIndex)
        guard high > applied else { return [] }
        guard let entries = try? entries(from: applied + 1, maxBytes: maxBytes) else { return [] }
        return entries.filter { $0.index <= high }
    }

    /// The unstable entries, to persist.
    var entriesToPersist: [Entry] { unstableEntries }

    /// Marks entries up to `index` (with `term`) as persisted.
    mutating func stable(to index: UInt64, term: UInt64) {
        guard index >= unstableOffset, (try? self.term(at: index)) == term else { return }
        let count = Int(index - unstableOffset + 1)
        guard count <= unstableEntries.count else { return }
        unstableEntries.removeFirst(count)
        unstableOffset = index + 1
    }

    /// Takes a leader's snapshot as the new base of the log.
    mutating func restore(_ snapshot: Snapshot) {
        committed = snapshot.metadata.index
        unstableOffset = snapshot.metadata.index + 1
        unstableEntries = []
        unstableSnapshot = snapshot
    }

    mutating func snapshotPersisted(index: UInt64) {
        guard let snapshot = unstableSnapshot, snapshot.metadata.index == index else { return }
        unstableSnapshot = nil
        applied = max(applied, index)
    }
}
