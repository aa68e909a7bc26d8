import CRocksDB

/// Block compression for SST files. Opening fails with `.invalidArgument` when the linked
/// RocksDB was built without the chosen codec.
public enum Compression: String, Sendable, CaseIterable {
    case none, snappy, lz4, zstd

    var cValue: Int32 {
        switch self {
        case .none: Int32(rocksdb_no_compression)
        case .snappy: Int32(rocksdb_snappy_compression)
        case .lz4: Int32(rocksdb_lz4_compression)
        case .zstd: Int32(rocksdb_zstd_compression)
        }
    }
}

/// How a database is opened and tuned. The same table options apply to every column family.
public struct DatabaseOptions: Sendable {
    /// Create the database directory and files when they do not exist.
    public var createIfMissing = true
    /// Create column families named at open that the database does not have yet.
    public var createMissingColumnFamilies = true
    /// Shared LRU block cache for all column families, in bytes.
    public var blockCacheBytes = 64 << 20
    /// Memtable size per column family before it is flushed, in bytes.
    public var writeBufferBytes = 32 << 20
    /// Compression of SST blocks.
    public var compression = Compression.lz4
    /// Bits per key of the full bloom filter in every SST file; `nil` for no filter.
    public var bloomFilterBitsPerKey: Double? = 10
    /// Upper bound on concurrent flushes and compactions.
    public var maxBackgroundJobs = 2
    /// Maximum number of open files; -1 keeps every file open.
    public var maxOpenFiles = -1
    /// Data block size, in bytes.
    public var blockSizeBytes = 16 << 10
    /// Keep unsynced writes in RocksDB's own buffer until a synced write (or a flush) instead
    /// of handing each to the OS: the files on disk then hold exactly what a power loss would
    /// leave. For crash simulations, which copy the files as a crash image; slower otherwise.
    public var manualWALFlush = false
    /// Background compactions (off only for simulations that copy the files while open).
    public var autoCompactions = true

    public init() {}
}

/// Owns the C option objects built from a `DatabaseOptions` and releases them once.
final class NativeOptions {
    let options: OpaquePointer
    private let tableOptions: OpaquePointer
    private let cache: OpaquePointer

    init(_ settings: DatabaseOptions) {
        precondition(settings.blockCacheBytes >= 0 && settings.writeBufferBytes > 0,
                     "cache and write buffer sizes must be positive")
        options = rocksdb_options_create()
        rocksdb_options_set_create_if_missing(options, settings.createIfMissing ? 1 : 0)
        rocksdb_options_set_create_missing_column_families(
            options, settings.createMissingColumnFamilies ? 1 : 0)
        rocksdb_options_set_write_buffer_size(options, settings.writeBufferBytes)
        rocksdb_options_set_compression(options, settings.compression.cValue)
        rocksdb_options_set_max_background_jobs(options, Int32(settings.maxBackgroundJobs))
        rocksdb_options_set_max_open_files(options, Int32(settings.maxOpenFiles))
        rocksdb_options_set_manual_wal_flush(options, settings.manualWALFlush ? 1 : 0)
        rocksdb_options_set_disable_auto_compactions(options, settings.autoCompactions ? 0 : 1)

        tableOptions = rocksdb_block_based_options_create()
        cache = rocksdb_cache_create_lru(settings.blockCacheBytes)
        rocksdb_block_based_options_set_block_cache(tableOptions, cache)
        rocksdb_block_based_options_set_block_size(tableOptions, settings.blockSizeBytes)
        if let bits = settings.bloomFilterBitsPerKey {
            // The table options take ownership of the policy (RocksDB resets a shared_ptr).
            rocksdb_block_based_options_set_filter_policy(
                tableOptions, rocksdb_filterpolicy_create_bloom_full(bits))
        }
        rocksdb_options_set_block_based_table_factory(options, tableOptions)
    }

    deinit {
        rocksdb_options_destroy(options)
        rocksdb_block_based_options_destroy(tableOptions)
        rocksdb_cache_destroy(cache)
    }
}
