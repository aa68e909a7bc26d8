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

/// An in-memory `RaftLogStorage` for tests and the simulator. It models exactly what survives
/// a crash: whatever was written to it.
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
        append([Entry(term: 1, index: 1, kind: .confChange, data: change.encoded())])
        hardState = HardState(term: 1, vote: noNode, commit: 1)
    }

    /// Persists `hardState`.
    public func setHardState(_ hardState: HardState) { self.hardState = hardState }

    /// Carries out what a `Ready` asks to persist, in order: the snapshot to install, the
    /// entries, the hard state.
    public func persist(_ ready: Ready) {
        if let snapshot = ready.snapshotToInstall { applySnapshot(snapshot) }
        append(ready.entriesToPersist)
        if let hardState = ready.hardState { setHardState(hardState) }
    }

    /// Persists `entries`, replacing any stored entries at or after the first one's index.
    public func append(_ entries: [Entry]) {
        guard let first = entries.first else { return }
        precondition(first.index >= firstIndex, "append below the snapshot: \(first.index) < \(firstIndex)")
        precondition(first.index <= lastIndex + 1, "append leaves a gap: \(first.index) > \(lastIndex + 1)")
        storedEntries.removeSubrange(Int(first.index - firstIndex)...)
        storedEntries.append(contentsOf: entries)
    }

    /// Replaces the whole log with `snapshot` (a follower installing a leader's snapshot).
    public func applySnapshot(_ snapshot: Snapshot) {
        precondition(snapshot.metadata.index >= latestSnapshot.metadata.index, "snapshot goes backwards")
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
