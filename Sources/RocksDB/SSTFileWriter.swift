import CRocksDB

/// Writes a sorted SST file that `Database.ingestExternalFiles` can add to a column family,
/// used to ship and install region snapshots without going through the write path.
///
/// Keys must be added in strictly increasing order; RocksDB rejects anything else with a
/// `.corruption` error. Not thread-safe.
public final class SSTFileWriter {
    /// Where the file is written.
    public let path: String
    private let nativeOptions: NativeOptions
    private let envOptions: OpaquePointer
    private let writer: OpaquePointer
    private var finished = false

    /// Creates the file at `path`, using the table options (compression, bloom filter) of
    /// `options` so the file matches the database it will be ingested into.
    public init(path: String, options: DatabaseOptions = DatabaseOptions()) throws(RocksDBError) {
        self.path = path
        nativeOptions = NativeOptions(options)
        envOptions = rocksdb_envoptions_create()
        writer = rocksdb_sstfilewriter_create(envOptions, nativeOptions.options)
        // Every stored property is set, so a throw here still runs deinit, which frees both.
        try withErrorPointer("sstOpen(\(path))") { errorPointer in
            rocksdb_sstfilewriter_open(writer, path, errorPointer)
        }
    }

    deinit {
        rocksdb_sstfilewriter_destroy(writer)
        rocksdb_envoptions_destroy(envOptions)
    }

    /// Adds `value` under `key`; `key` must sort after every key added before.
    public func put(_ key: [UInt8], _ value: [UInt8]) throws(RocksDBError) {
        try requireOpen("sstPut")
        try withBytes(key) { (rawKey) throws(RocksDBError) in
            try withBytes(value) { (rawValue) throws(RocksDBError) in
                try withErrorPointer("sstPut(\(path))") { errorPointer in
                    rocksdb_sstfilewriter_put(writer, rawKey.cChars, rawKey.count,
                                              rawValue.cChars, rawValue.count, errorPointer)
                }
            }
        }
    }

    /// Adds a deletion of `key`; `key` must sort after every key added before.
    public func delete(_ key: [UInt8]) throws(RocksDBError) {
        try requireOpen("sstDelete")
        try withBytes(key) { (rawKey) throws(RocksDBError) in
            try withErrorPointer("sstDelete(\(path))") { errorPointer in
                rocksdb_sstfilewriter_delete(writer, rawKey.cChars, rawKey.count, errorPointer)
            }
        }
    }

    /// Current size of the file being written, in bytes.
    public var fileSizeBytes: UInt64 {
        var size: UInt64 = 0
        rocksdb_sstfilewriter_file_size(writer, &size)
        return size
    }

    /// Completes and syncs the file. Fails with `.invalidArgument` when no key was added.
    public func finish() throws(RocksDBError) {
        try requireOpen("sstFinish")
        try withErrorPointer("sstFinish(\(path))") { errorPointer in
            rocksdb_sstfilewriter_finish(writer, errorPointer)
        }
        finished = true
    }

    private func requireOpen(_ operation: String) throws(RocksDBError) {
        if finished {
            throw RocksDBError(kind: .invalidArgument, operation: "\(operation)(\(path))",
                               message: "the SST file is already finished")
        }
    }
}
