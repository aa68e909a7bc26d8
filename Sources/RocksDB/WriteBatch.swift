import CRocksDB

/// A set of puts and deletes across column families that `Database.write` applies atomically.
///
/// Not thread-safe: build it on one thread, then hand it to `write`. Reusable after `clear()`.
public final class WriteBatch {
    let batch: OpaquePointer
    let owner: Database

    init(owner: Database) {
        self.owner = owner
        batch = rocksdb_writebatch_create()
    }

    deinit { rocksdb_writebatch_destroy(batch) }

    /// Number of operations in the batch.
    public var count: Int { Int(rocksdb_writebatch_count(batch)) }

    /// Size of the batch's serialized representation, in bytes.
    public var dataSizeBytes: Int {
        var size = 0
        _ = rocksdb_writebatch_data(batch, &size)
        return size
    }

    /// Removes every operation, keeping the allocated buffer.
    public func clear() { rocksdb_writebatch_clear(batch) }

    /// Adds a put of `value` under `key`, from raw buffers (copied into the batch).
    public func put(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer, in columnFamily: ColumnFamily? = nil) {
        rocksdb_writebatch_put_cf(batch, owner.handle(columnFamily), key.cChars, key.count,
                                  value.cChars, value.count)
    }

    /// Adds a put of `value` under `key`.
    public func put(_ key: [UInt8], _ value: [UInt8], in columnFamily: ColumnFamily? = nil) {
        key.withUnsafeBytes { rawKey in
            value.withUnsafeBytes { rawValue in put(rawKey, rawValue, in: columnFamily) }
        }
    }

    /// Adds a delete of `key`.
    public func delete(_ key: [UInt8], in columnFamily: ColumnFamily? = nil) {
        let cf = owner.handle(columnFamily)
        key.withUnsafeBytes { rawKey in
            rocksdb_writebatch_delete_cf(batch, cf, rawKey.cChars, rawKey.count)
        }
    }

    /// Adds a delete of every key in `[start, end)`. An empty or inverted range adds nothing.
    public func deleteRange(from start: [UInt8], to end: [UInt8], in columnFamily: ColumnFamily? = nil) {
        guard start.lexicographicallyPrecedes(end) else { return }
        let cf = owner.handle(columnFamily)
        start.withUnsafeBytes { rawStart in
            end.withUnsafeBytes { rawEnd in
                rocksdb_writebatch_delete_range_cf(batch, cf, rawStart.cChars, rawStart.count,
                                                   rawEnd.cChars, rawEnd.count)
            }
        }
    }
}
