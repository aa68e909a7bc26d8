import CRocksDB

/// A consistent point-in-time view of a `Database`. Reads and iterators given this snapshot
/// see exactly the writes that completed before it was taken. Released when dropped.
///
/// Immutable once taken, so it may be shared between threads.
public final class Snapshot: @unchecked Sendable {
    let owner: Database
    let snapshot: OpaquePointer
    let readOptions: OpaquePointer

    init(owner: Database) {
        self.owner = owner
        snapshot = rocksdb_create_snapshot(owner.db)
        readOptions = rocksdb_readoptions_create()
        rocksdb_readoptions_set_snapshot(readOptions, snapshot)
    }

    deinit {
        rocksdb_readoptions_destroy(readOptions)
        rocksdb_release_snapshot(owner.db, snapshot)
    }
}
