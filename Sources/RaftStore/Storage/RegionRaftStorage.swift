import Raft
import RocksDB

/// One region's Raft log and hard state in the store's shared RocksDB, read by `RaftNode`
/// through `RaftLogStorage`.
///
/// Writes are staged into a write batch that the store shares across all regions ready in one
/// loop turn (group commit: one batch, one sync); the in-memory view moves forward only when
/// `commit(_:)` is called after that batch was written. A bounded tail of recent entries is
/// cached, so appends and term lookups on the hot path do not read RocksDB.
public final class RegionRaftStorage: RaftLogStorage {
    public let regionID: UInt64
    private let db: Database
    private let raftCF: ColumnFamily
    private let metaCF: ColumnFamily

    public private(set) var hardState: HardState
    /// The configuration this region's replica was created with or last restored from.
    public private(set) var confState: ConfState
    /// Everything at or below this index is compacted (in a snapshot); its term is kept.
    public private(set) var truncatedIndex: UInt64
    public private(set) var truncatedTerm: UInt64
    public private(set) var lastIndex: UInt64
    /// Recent entries, contiguous, the last one at `lastIndex` (when not empty).
    private var cache: [Entry] = []
    private let cacheEntriesMax: Int

    /// Opens the stored state of `regionID`; a region with nothing stored starts empty with
    /// `confState`.
    public init(db: Database, regionID: UInt64, confState: ConfState, cacheEntriesMax: Int = 1_024) throws {
        self.db = db
        self.regionID = regionID
        self.confState = confState
        self.cacheEntriesMax = cacheEntriesMax
        raftCF = try db.columnFamily(StoreKeys.raftColumnFamily)
        metaCF = try db.columnFamily(StoreKeys.metaColumnFamily)
        hardState = try db.get(StoreKeys.hardState(region: regionID), in: raftCF)
            .map { bytes throws(StoreCorruption) in try StoredValues.decodeHardState(bytes, region: regionID) } ?? HardState()
        let applyState = try db.get(StoreKeys.applyState(region: regionID), in: metaCF)
            .map { bytes throws(StoreCorruption) in try StoredValues.decodeApplyState(bytes, region: regionID) }
        truncatedIndex = applyState?.truncatedIndex ?? 0
        truncatedTerm = applyState?.truncatedTerm ?? 0
        // The last log key of the region, if any, is the one just before the log's end.
        let iterator = db.makeIterator(in: raftCF, lowerBound: StoreKeys.logEntry(region: regionID, index: 0),
                                       upperBound: StoreKeys.logEnd(region: regionID))
        iterator.seekToLast()
        if iterator.isValid {
            let region = regionID
            guard let index = iterator.withKey({ StoreKeys.index(ofLogKey: $0, region: region) }) else {
                throw StoreCorruption(region: regionID, what: "a key in the log range is not a log key")
            }
            lastIndex = index
        } else {
            try iterator.checkError()
            lastIndex = truncatedIndex
        }
        guard lastIndex >= truncatedIndex else {
            throw StoreCorruption(region: regionID, what: "last index \(lastIndex) below truncated index \(truncatedIndex)")
        }
        guard hardState.commit <= lastIndex else {
            throw StoreCorruption(region: regionID, what: "commit \(hardState.commit) beyond last index \(lastIndex)")
        }
    }

    /// Raises the commit index read at open to `index` (an applied index: committed, and in
    /// the log). The next hard state write persists it.
    public func recoverCommit(atLeast index: UInt64) {
        precondition(index <= lastIndex, "region \(regionID): commit \(index) beyond last index \(lastIndex)")
        if hardState.commit < index { hardState.commit = index }
    }

    // MARK: RaftLogStorage

    public func initialState() -> (hardState: HardState, confState: ConfState) { (hardState, confState) }

    public var firstIndex: UInt64 { truncatedIndex + 1 }

    public func term(at index: UInt64) throws(RaftError) -> UInt64 {
        if index == truncatedIndex { return truncatedTerm }
        if index < truncatedIndex { throw .compacted }
        if index > lastIndex { throw .unavailable }
        if let cached = cachedEntry(at: index) { return cached.term }
        return try readEntry(at: index).term
    }

    public func entries(from low: UInt64, to high: UInt64, maxBytes: Int) throws(RaftError) -> [Entry] {
        if low <= truncatedIndex { throw .compacted }
        if high > lastIndex + 1 { throw .unavailable }
        var result: [Entry] = []
        var bytes = 0
        var index = low
        // Below the cache: one bounded scan of RocksDB.
        let cacheStart = cache.first?.index ?? (lastIndex + 1)
        if index < min(high, cacheStart) {
            let iterator = db.makeIterator(in: raftCF, lowerBound: StoreKeys.logEntry(region: regionID, index: index),
                                           upperBound: StoreKeys.logEntry(region: regionID, index: min(high, cacheStart)))
            iterator.seekToFirst()
            while iterator.isValid {
                let entry: Entry
                do {
                    entry = try StoredValues.decodeEntry(iterator.value, index: index, region: regionID)
                } catch {
                    preconditionFailure("\(error)")
                }
                if !result.isEmpty && bytes + entry.sizeBytes > maxBytes { return result }
                bytes += entry.sizeBytes
                result.append(entry)
                index += 1
                iterator.next()
            }
            precondition(index == min(high, cacheStart), "region \(regionID): log has a hole at \(index)")
        }
        while index < high {
            guard let entry = cachedEntry(at: index) else { preconditionFailure("region \(regionID): cache lost entry \(index)") }
            if !result.isEmpty && bytes + entry.sizeBytes > maxBytes { break }
            bytes += entry.sizeBytes
            result.append(entry)
            index += 1
        }
        return result
    }

    /// What a snapshot taken now would hold: the store moves it to the applied index, term and
    /// configuration after every apply (the data is then exactly that state).
    public var snapshotPoint = SnapshotMetadata(index: 0, term: 0, confState: ConfState())

    /// The region's snapshot metadata (`snapshotPoint`). Its data is read by the store from a
    /// RocksDB snapshot of the region's key range when the message is sent.
    public func snapshot() -> Raft.Snapshot {
        Raft.Snapshot(metadata: snapshotPoint)
    }

    // MARK: Writes, staged into a shared batch

    /// What a staged write will change in memory once its batch is written.
    public struct StagedWrite {
        fileprivate var hardState: HardState?
        fileprivate var entries: [Entry] = []
        fileprivate var snapshot: SnapshotMetadata?
    }

    /// Adds this region's part of a `Ready` (entries, hard state, snapshot metadata) to `batch`.
    public func stage(_ ready: Ready, into batch: WriteBatch) -> StagedWrite {
        var staged = StagedWrite()
        if let snapshot = ready.snapshotToInstall {
            // The log restarts after the snapshot: drop every stored entry.
            batch.deleteRange(from: StoreKeys.logEntry(region: regionID, index: 0), to: StoreKeys.logEnd(region: regionID), in: raftCF)
            batch.put(StoreKeys.applyState(region: regionID),
                      StoredValues.encodeApplyState(applied: snapshot.metadata.index, truncatedIndex: snapshot.metadata.index,
                                                    truncatedTerm: snapshot.metadata.term), in: metaCF)
            staged.snapshot = snapshot.metadata
        }
        if let first = ready.entriesToPersist.first, let last = ready.entriesToPersist.last {
            for entry in ready.entriesToPersist {
                batch.put(StoreKeys.logEntry(region: regionID, index: entry.index), StoredValues.encode(entry), in: raftCF)
            }
            // New entries replace a conflicting suffix: remove stored ones past the new end.
            let previousLast = staged.snapshot?.index ?? lastIndex
            if first.index <= previousLast && last.index < previousLast {
                batch.deleteRange(from: StoreKeys.logEntry(region: regionID, index: last.index + 1),
                                  to: StoreKeys.logEnd(region: regionID), in: raftCF)
            }
            staged.entries = ready.entriesToPersist
        }
        if let hardState = ready.hardState {
            // Term and vote must survive a crash; the commit index need not (Raft learns it
            // again, and the store raises it to the applied index at open). A hard state whose
            // term and vote are unchanged is not written: with one write per entry, writing it
            // cost a memtable insert per region per turn for nothing. The stored commit is a
            // lower bound, written whenever term or vote change.
            if hardState.term != self.hardState.term || hardState.vote != self.hardState.vote {
                batch.put(StoreKeys.hardState(region: regionID), StoredValues.encode(hardState), in: raftCF)
            }
            staged.hardState = hardState
        }
        return staged
    }

    /// Moves the in-memory view forward after the batch holding `staged` was written.
    public func commit(_ staged: StagedWrite) {
        if let snapshot = staged.snapshot {
            truncatedIndex = snapshot.index
            truncatedTerm = snapshot.term
            lastIndex = snapshot.index
            confState = snapshot.confState
            snapshotPoint = snapshot
            cache = []
        }
        if let first = staged.entries.first, let last = staged.entries.last {
            precondition(first.index > truncatedIndex && first.index <= lastIndex + 1,
                         "region \(regionID): append at \(first.index) outside (\(truncatedIndex), \(lastIndex + 1)]")
            if let cacheStart = cache.first?.index, first.index >= cacheStart, first.index <= cacheStart + UInt64(cache.count) {
                cache.removeSubrange(Int(first.index - cacheStart)...)
                cache.append(contentsOf: staged.entries)
            } else {
                cache = staged.entries
            }
            if cache.count > cacheEntriesMax { cache.removeFirst(cache.count - cacheEntriesMax) }
            lastIndex = last.index
        }
        if let hardState = staged.hardState { self.hardState = hardState }
    }

    /// Stages the removal of log entries up to `index` (applied and covered by the state
    /// machine), recording the truncated index and term in the apply state.
    public func stageCompaction(upTo index: UInt64, applied: UInt64, into batch: WriteBatch) throws(RaftError) -> (index: UInt64, term: UInt64) {
        precondition(index <= applied, "compacting unapplied entries")
        let term = try term(at: index)
        batch.deleteRange(from: StoreKeys.logEntry(region: regionID, index: 0),
                          to: StoreKeys.logEntry(region: regionID, index: index + 1), in: raftCF)
        batch.put(StoreKeys.applyState(region: regionID),
                  StoredValues.encodeApplyState(applied: applied, truncatedIndex: index, truncatedTerm: term), in: metaCF)
        return (index, term)
    }

    /// Moves the in-memory view after a staged compaction was written.
    public func commitCompaction(index: UInt64, term: UInt64) {
        guard index > truncatedIndex else { return }
        precondition(index <= lastIndex, "region \(regionID): compacting to \(index), past the last entry \(lastIndex)")
        truncatedIndex = index
        truncatedTerm = term
        if let cacheStart = cache.first?.index, index >= cacheStart {
            cache.removeFirst(min(cache.count, Int(index - cacheStart + 1)))
        }
    }

    // MARK: Reads

    private func cachedEntry(at index: UInt64) -> Entry? {
        guard let start = cache.first?.index, index >= start, index < start + UInt64(cache.count) else { return nil }
        return cache[Int(index - start)]
    }

    private func readEntry(at index: UInt64) throws(RaftError) -> Entry {
        let value: [UInt8]?
        do {
            value = try db.get(StoreKeys.logEntry(region: regionID, index: index), in: raftCF)
        } catch {
            preconditionFailure("region \(regionID): reading log entry \(index) failed: \(error)")
        }
        guard let value else { preconditionFailure("region \(regionID): log entry \(index) missing below last index \(lastIndex)") }
        do {
            return try StoredValues.decodeEntry(value, index: index, region: regionID)
        } catch {
            preconditionFailure("\(error)")
        }
    }
}
