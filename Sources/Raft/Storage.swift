/// What a Raft node reads from stable storage. The application writes to it (entries, hard
/// state, snapshots) while handling a `Ready`, then calls `advance`.
public protocol RaftLogStorage: AnyObject {
    /// The persisted hard state and the configuration at the last snapshot or conf change.
    func initialState() -> (hardState: HardState, confState: ConfState)
    /// Entries in `[low, high)`, at most `maxBytes` in total (at least one entry).
    func entries(from low: UInt64, to high: UInt64, maxBytes: Int) throws(RaftError) -> [Entry]
    /// The term of the entry at `index`; the snapshot's term at `firstIndex - 1`.
    func term(at index: UInt64) throws(RaftError) -> UInt64
    /// The first index still held as an entry (snapshot index + 1).
    var firstIndex: UInt64 { get }
    /// The last persisted index (the snapshot index when no entry follows it).
    var lastIndex: UInt64 { get }
    /// The most recent snapshot.
    func snapshot() -> Snapshot
}

/// A write that no correct Raft node asks for, refused by `MemoryStorage`: the refused write
/// changes nothing (`persist` stops at the first refused part of a Ready, keeping the parts
/// before it). The simulator reports it with its seed instead of trapping.
public struct StorageViolation: Error, Equatable, CustomStringConvertible, Sendable {
    public let description: String
}

/// An in-memory `RaftLogStorage` for tests and the simulator. It models exactly what survives
/// a crash: whatever was written to it. It refuses writes no correct node makes (a gap in the
/// log, an append below the snapshot, a snapshot or term or commit index going backwards, a
/// second vote in one term) with a `StorageViolation`.
public final class MemoryStorage: RaftLogStorage {
    public private(set) var hardState = HardState()
    private var latestSnapshot = Snapshot()
    /// entries[0] is the entry at latestSnapshot.metadata.index + 1.
    private var storedEntries: [Entry] = []

    public init(confState: ConfState = ConfState()) {
        latestSnapshot.metadata.confState = confState
    }

    public func initialState() -> (hardState: HardState, confState: ConfState) {
        (hardState, latestSnapshot.metadata.confState)
    }

    public var firstIndex: UInt64 { latestSnapshot.metadata.index + 1 }
    public var lastIndex: UInt64 { latestSnapshot.metadata.index + UInt64(storedEntries.count) }

    public func term(at index: UInt64) throws(RaftError) -> UInt64 {
        let snapshotIndex = latestSnapshot.metadata.index
        if index == snapshotIndex { return latestSnapshot.metadata.term }
        if index < snapshotIndex { throw .compacted }
        if index > lastIndex { throw .unavailable }
        return storedEntries[Int(index - snapshotIndex - 1)].term
    }

    public func entries(from low: UInt64, to high: UInt64, maxBytes: Int) throws(RaftError) -> [Entry] {
        if low < firstIndex { throw .compacted }
        if high > lastIndex + 1 { throw .unavailable }
        var result: [Entry] = []
        var bytes = 0
        var index = low
        while index < high {
            let entry = storedEntries[Int(index - firstIndex)]
            if !result.isEmpty && bytes + entry.sizeBytes > maxBytes { break }
            bytes += entry.sizeBytes
            result.append(entry)
            index += 1
        }
        return result
    }

    public func snapshot() -> Snapshot { latestSnapshot }

    /// Makes this the storage of a founding member of a new group: entry 1 (term 1) adds the
    /// initial voters, already committed. Any node that replays the log from the start, founding
    /// or added later, builds the same configuration history from it.
    public func bootstrap(voters: Set<NodeID>) {
        precondition(lastIndex == 0 && hardState == HardState(), "bootstrap of a storage that is in use")
        let change = ConfChangeV2(changes: voters.sorted().map { ConfChangeSingle(.addVoter, $0) })
        storedEntries = [Entry(term: 1, index: 1, kind: .confChange, data: change.encoded())]
        hardState = HardState(term: 1, vote: noNode, commit: 1)
    }

    /// Persists `hardState`. The term never goes back, a term holds at most one vote, and the
    /// commit index never goes back.
    public func setHardState(_ newState: HardState) throws(StorageViolation) {
        if newState.term < hardState.term {
            throw StorageViolation(description: "hard state term goes backwards: \(hardState.term) → \(newState.term)")
        }
        if newState.term == hardState.term && hardState.vote != noNode && newState.vote != hardState.vote {
            throw StorageViolation(description: "a second vote in term \(newState.term): \(hardState.vote) → \(newState.vote)")
        }
        if newState.commit < hardState.commit {
            throw StorageViolation(description: "hard state commit goes backwards: \(hardState.commit) → \(newState.commit)")
        }
        hardState = newState
    }

    /// Carries out what a `Ready` asks to persist, in order: the snapshot to install, the
    /// entries, the hard state.
    public func persist(_ ready: Ready) throws(StorageViolation) {
        if let snapshot = ready.snapshotToInstall { try applySnapshot(snapshot) }
        try append(ready.entriesToPersist)
        if let hardState = ready.hardState { try setHardState(hardState) }
    }

    /// Persists `entries`, replacing any stored entries at or after the first one's index.
    /// The entries must be consecutive and start within or right after the stored log.
    public func append(_ entries: [Entry]) throws(StorageViolation) {
        guard let first = entries.first else { return }
        if first.index < firstIndex {
            throw StorageViolation(description: "append below the snapshot: entry \(first.index), first index \(firstIndex)")
        }
        if first.index > lastIndex + 1 {
            throw StorageViolation(description: "append leaves a gap: entry \(first.index) after last index \(lastIndex)")
        }
        for (offset, entry) in entries.enumerated() where entry.index != first.index + UInt64(offset) {
            throw StorageViolation(description: "append of entries out of sequence: \(entry.index) at position \(offset) after \(first.index)")
        }
        storedEntries.removeSubrange(Int(first.index - firstIndex)...)
        storedEntries.append(contentsOf: entries)
    }

    /// Replaces the whole log with `snapshot` (a follower installing a leader's snapshot).
    /// A snapshot older than the one held, or at or below the commit index, is refused.
    public func applySnapshot(_ snapshot: Snapshot) throws(StorageViolation) {
        if snapshot.metadata.index < latestSnapshot.metadata.index {
            throw StorageViolation(description: "snapshot goes backwards: \(snapshot.metadata.index) after \(latestSnapshot.metadata.index)")
        }
        if snapshot.metadata.index <= hardState.commit && hardState.commit > 0 && lastIndex >= hardState.commit {
            throw StorageViolation(description: "snapshot at \(snapshot.metadata.index) installed over committed entries (commit \(hardState.commit)): committed entries would be lost")
        }
        latestSnapshot = snapshot
        storedEntries = []
    }

    /// Records a snapshot the application took at `index` and drops the entries it covers.
    public func createSnapshot(at index: UInt64, confState: ConfState, data: [UInt8]) throws(RaftError) {
        if index <= latestSnapshot.metadata.index { return }
        let snapshotTerm = try term(at: index)
        compactEntries(upTo: index)
        latestSnapshot = Snapshot(metadata: SnapshotMetadata(index: index, term: snapshotTerm, confState: confState), data: data)
    }

    private func compactEntries(upTo index: UInt64) {
        let drop = Int(index - latestSnapshot.metadata.index)
        storedEntries.removeFirst(min(drop, storedEntries.count))
    }
}
