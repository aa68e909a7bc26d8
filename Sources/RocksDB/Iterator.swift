import CRocksDB

/// A cursor over one column family, optionally bounded to `[lowerBound, upperBound)` and
/// pinned to a snapshot. Starts unpositioned; position it with a seek.
///
/// Not thread-safe. Keeps its database (and snapshot) alive while it exists.
public final class Iterator {
    private let owner: Database
    private let snapshot: Snapshot?
    private let readOptions: OpaquePointer
    private let iterator: OpaquePointer
    // RocksDB keeps raw pointers to the bounds: they must outlive the iterator.
    private let lowerBound: PinnedBytes?
    private let upperBound: PinnedBytes?

    init(owner: Database, columnFamily: OpaquePointer, lowerBound: [UInt8]?, upperBound: [UInt8]?,
         snapshot: Snapshot?) {
        self.owner = owner
        self.snapshot = snapshot
        readOptions = rocksdb_readoptions_create()
        if let snapshot { rocksdb_readoptions_set_snapshot(readOptions, snapshot.snapshot) }
        self.lowerBound = lowerBound.map(PinnedBytes.init)
        self.upperBound = upperBound.map(PinnedBytes.init)
        if let bound = self.lowerBound {
            rocksdb_readoptions_set_iterate_lower_bound(readOptions, bound.cChars, bound.count)
        }
        if let bound = self.upperBound {
            rocksdb_readoptions_set_iterate_upper_bound(readOptions, bound.cChars, bound.count)
        }
        iterator = rocksdb_create_iterator_cf(owner.db, readOptions, columnFamily)
    }

    deinit {
        rocksdb_iter_destroy(iterator)
        rocksdb_readoptions_destroy(readOptions)
    }

    /// Whether the iterator is positioned on an entry. After it turns false, call
    /// `checkError()` to tell the end of the range from a read failure.
    public var isValid: Bool { rocksdb_iter_valid(iterator) != 0 }

    /// Positions on the first entry (at or after the lower bound).
    public func seekToFirst() { rocksdb_iter_seek_to_first(iterator) }

    /// Positions on the last entry (before the upper bound).
    public func seekToLast() { rocksdb_iter_seek_to_last(iterator) }

    /// Positions on the first entry with a key at or after `key`.
    public func seek(_ key: [UInt8]) {
        key.withUnsafeBytes { raw in rocksdb_iter_seek(iterator, raw.cChars, raw.count) }
    }

    /// Positions on the last entry with a key at or before `key`.
    public func seekForPrev(_ key: [UInt8]) {
        key.withUnsafeBytes { raw in rocksdb_iter_seek_for_prev(iterator, raw.cChars, raw.count) }
    }

    /// Moves to the next entry. Requires `isValid`.
    public func next() {
        precondition(isValid, "next() on an iterator that is not positioned")
        rocksdb_iter_next(iterator)
    }

    /// Moves to the previous entry. Requires `isValid`.
    public func previous() {
        precondition(isValid, "previous() on an iterator that is not positioned")
        rocksdb_iter_prev(iterator)
    }

    /// The current key, copied. Requires `isValid`.
    public var key: [UInt8] { withKey { [UInt8]($0) } }

    /// The current value, copied. Requires `isValid`.
    public var value: [UInt8] { withValue { [UInt8]($0) } }

    /// Calls `body` with the current key in place, valid only during the call. Requires `isValid`.
    public func withKey<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        precondition(isValid, "key read from an iterator that is not positioned")
        var length = 0
        let pointer = rocksdb_iter_key(iterator, &length)
        return try body(UnsafeRawBufferPointer(start: pointer, count: length))
    }

    /// Calls `body` with the current value in place, valid only during the call. Requires `isValid`.
    public func withValue<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        precondition(isValid, "value read from an iterator that is not positioned")
        var length = 0
        let pointer = rocksdb_iter_value(iterator, &length)
        return try body(UnsafeRawBufferPointer(start: pointer, count: length))
    }

    /// Throws the read error that stopped the iterator, if any.
    public func checkError() throws(RocksDBError) {
        try withErrorPointer("iterate") { errorPointer in rocksdb_iter_get_error(iterator, errorPointer) }
    }

    /// Collects up to `limit` entries starting at the current position, moving forward or
    /// backward, and checks for a read error at the end.
    public func collect(limit: Int = .max, reverse: Bool = false) throws(RocksDBError) -> [(key: [UInt8], value: [UInt8])] {
        var entries: [(key: [UInt8], value: [UInt8])] = []
        while isValid && entries.count < limit {
            entries.append((key, value))
            if reverse { previous() } else { next() }
        }
        try checkError()
        return entries
    }
}
