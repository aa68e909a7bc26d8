import CRocksDB
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A column family of an open `Database`. It keeps its database alive, so a handle can never
/// outlive the RocksDB instance it belongs to.
public struct ColumnFamily: @unchecked Sendable {
    /// The column family's name.
    public let name: String
    let handle: OpaquePointer
    let owner: Database
}

/// An open RocksDB database with named column families.
///
/// Thread safety: RocksDB's `DB` is safe for concurrent use, so one `Database` may be shared
/// between threads. Every C handle it owns is released exactly once, when the last reference
/// to the database (including its column families, snapshots and iterators) goes away.
public final class Database: @unchecked Sendable {
    /// The directory the database lives in.
    public let path: String
    let db: OpaquePointer
    private let nativeOptions: NativeOptions
    private let handlesByName: [String: OpaquePointer]
    // Looked up once: the hot path (puts without a column family) must not hash a String.
    private let defaultHandle: OpaquePointer
    private let defaultReadOptions: OpaquePointer
    private let syncWriteOptions: OpaquePointer
    private let asyncWriteOptions: OpaquePointer

    /// Opens (or creates) the database at `path` with the given column families.
    ///
    /// Column families that already exist on disk are opened too, even when not named, so a
    /// database written by a newer layout still opens. `default` is always present.
    /// - Throws: `RocksDBError` with RocksDB's message: a missing path without
    ///   `createIfMissing`, a database locked by another process, corrupt files.
    public init(
        path: String, columnFamilies: [String] = [], options: DatabaseOptions = DatabaseOptions()
    ) throws(RocksDBError) {
        self.path = path
        let native = NativeOptions(options)
        self.nativeOptions = native
        if options.createIfMissing {
            // RocksDB creates only the last path component; create the parents like `mkdir -p`.
            try createDirectories(path)
        }

        var names = ["default"]
        for name in (try Database.existingColumnFamilies(path: path, options: native)) + columnFamilies
        where !names.contains(name) {
            names.append(name)
        }

        var handles = [OpaquePointer?](repeating: nil, count: names.count)
        let cfOptions = [OpaquePointer?](repeating: native.options, count: names.count)
        let opened: OpaquePointer? = try withCStringArray(names) { cNames throws(RocksDBError) in
            try withErrorPointer("open(\(path))") { errorPointer in
                cfOptions.withUnsafeBufferPointer { cfOptionsBuffer in
                    handles.withUnsafeMutableBufferPointer { handleBuffer in
                        rocksdb_open_column_families(
                            native.options, path, Int32(names.count), cNames,
                            cfOptionsBuffer.baseAddress, handleBuffer.baseAddress, errorPointer)
                    }
                }
            }
        }
        guard let opened else {
            throw RocksDBError(kind: .other, operation: "open(\(path))",
                               message: "RocksDB returned no handle and no error")
        }
        db = opened
        var byName: [String: OpaquePointer] = [:]
        for (name, handle) in zip(names, handles) {
            guard let handle else {
                preconditionFailure("RocksDB opened \(path) without a handle for column family \(name)")
            }
            byName[name] = handle
        }
        handlesByName = byName
        guard let defaultHandle = byName["default"] else {
            preconditionFailure("RocksDB opened \(path) without its default column family")
        }
        self.defaultHandle = defaultHandle
        defaultReadOptions = rocksdb_readoptions_create()
        syncWriteOptions = rocksdb_writeoptions_create()
        rocksdb_writeoptions_set_sync(syncWriteOptions, 1)
        asyncWriteOptions = rocksdb_writeoptions_create()
    }

    deinit {
        for handle in handlesByName.values {
            rocksdb_column_family_handle_destroy(handle)
        }
        rocksdb_close(db)
        rocksdb_readoptions_destroy(defaultReadOptions)
        rocksdb_writeoptions_destroy(syncWriteOptions)
        rocksdb_writeoptions_destroy(asyncWriteOptions)
        _ = nativeOptions  // released after the DB that used it
    }

    /// The names of the column families stored at `path`; empty when there is no database.
    private static func existingColumnFamilies(path: String, options: NativeOptions) throws(RocksDBError) -> [String] {
        var count = 0
        var listError: UnsafeMutablePointer<CChar>? = nil
        guard let list = rocksdb_list_column_families(options.options, path, &count, &listError) else {
            if let listError {
                // No database here yet: not an error for open, which decides by createIfMissing.
                rocksdb_free(listError)
            }
            return []
        }
        defer { rocksdb_list_column_families_destroy(list, count) }
        return (0..<count).compactMap { index in list[index].map { String(cString: $0) } }
    }

    /// Names of all open column families, `default` first.
    public var columnFamilyNames: [String] {
        ["default"] + handlesByName.keys.filter { $0 != "default" }.sorted()
    }

    /// The column family named `name`.
    /// - Throws: `.invalidArgument` when the database has no such column family.
    public func columnFamily(_ name: String) throws(RocksDBError) -> ColumnFamily {
        guard let handle = handlesByName[name] else {
            throw RocksDBError(kind: .invalidArgument, operation: "columnFamily(\(name))",
                               message: "no column family named '\(name)' in \(path)")
        }
        return ColumnFamily(name: name, handle: handle, owner: self)
    }

    /// The `default` column family.
    public var defaultColumnFamily: ColumnFamily {
        ColumnFamily(name: "default", handle: defaultHandle, owner: self)
    }

    @inline(__always)
    func handle(_ columnFamily: ColumnFamily?) -> OpaquePointer {
        guard let columnFamily else { return defaultHandle }
        precondition(columnFamily.owner === self, "column family \(columnFamily.name) belongs to another database")
        return columnFamily.handle
    }

    @inline(__always)
    func writeOptions(sync: Bool) -> OpaquePointer { sync ? syncWriteOptions : asyncWriteOptions }

    // MARK: Point operations

    /// The value stored under `key`, or `nil`. Reads at `snapshot` when one is given.
    public func get(
        _ key: UnsafeRawBufferPointer, in columnFamily: ColumnFamily? = nil, snapshot: Snapshot? = nil
    ) throws(RocksDBError) -> [UInt8]? {
        let cf = handle(columnFamily)
        let readOptions = snapshot.map { snapshot in
            precondition(snapshot.owner === self, "snapshot belongs to another database")
            return snapshot.readOptions
        } ?? defaultReadOptions
        let pinned = try withErrorPointer("get") { errorPointer in
            rocksdb_get_pinned_cf(db, readOptions, cf, key.cChars, key.count, errorPointer)
        }
        guard let pinned else { return nil }
        defer { rocksdb_pinnableslice_destroy(pinned) }
        var length = 0
        let value = rocksdb_pinnableslice_value(pinned, &length)
        return copyBytes(value, count: length)
    }

    /// The value stored under `key`, or `nil`. Reads at `snapshot` when one is given.
    public func get(
        _ key: [UInt8], in columnFamily: ColumnFamily? = nil, snapshot: Snapshot? = nil
    ) throws(RocksDBError) -> [UInt8]? {
        try withBytes(key) { (raw) throws(RocksDBError) in try get(raw, in: columnFamily, snapshot: snapshot) }
    }

    /// Stores `value` under `key`. With `sync`, returns only once the WAL is on stable storage.
    public func put(
        _ key: [UInt8], _ value: [UInt8], in columnFamily: ColumnFamily? = nil, sync: Bool = false
    ) throws(RocksDBError) {
        let cf = handle(columnFamily)
        let options = writeOptions(sync: sync)
        try withBytes(key) { (rawKey) throws(RocksDBError) in
            try withBytes(value) { (rawValue) throws(RocksDBError) in
                try withErrorPointer("put") { errorPointer in
                    rocksdb_put_cf(db, options, cf, rawKey.cChars, rawKey.count,
                                   rawValue.cChars, rawValue.count, errorPointer)
                }
            }
        }
    }

    /// Removes `key`, if present.
    public func delete(
        _ key: [UInt8], in columnFamily: ColumnFamily? = nil, sync: Bool = false
    ) throws(RocksDBError) {
        let cf = handle(columnFamily)
        let options = writeOptions(sync: sync)
        try withBytes(key) { (rawKey) throws(RocksDBError) in
            try withErrorPointer("delete") { errorPointer in
                rocksdb_delete_cf(db, options, cf, rawKey.cChars, rawKey.count, errorPointer)
            }
        }
    }

    /// Removes every key in `[start, end)`. An empty or inverted range removes nothing.
    public func deleteRange(
        from start: [UInt8], to end: [UInt8], in columnFamily: ColumnFamily? = nil, sync: Bool = false
    ) throws(RocksDBError) {
        // RocksDB rejects start > end with InvalidArgument; an inverted range is empty by definition.
        guard start.lexicographicallyPrecedes(end) else { return }
        let cf = handle(columnFamily)
        let options = writeOptions(sync: sync)
        try withBytes(start) { (rawStart) throws(RocksDBError) in
            try withBytes(end) { (rawEnd) throws(RocksDBError) in
                try withErrorPointer("deleteRange") { errorPointer in
                    rocksdb_delete_range_cf(db, options, cf, rawStart.cChars, rawStart.count,
                                            rawEnd.cChars, rawEnd.count, errorPointer)
                }
            }
        }
    }

    /// Applies every operation of `batch` atomically: after a crash either all of them are
    /// visible or none is. With `sync`, returns only once the batch is on stable storage.
    public func write(_ batch: WriteBatch, sync: Bool) throws(RocksDBError) {
        precondition(batch.owner === self, "write batch was built for another database")
        let options = writeOptions(sync: sync)
        try withErrorPointer("write") { errorPointer in
            rocksdb_write(db, options, batch.batch, errorPointer)
        }
    }

    /// A new, empty write batch for this database.
    public func makeWriteBatch() -> WriteBatch { WriteBatch(owner: self) }

    // MARK: Snapshots and iterators

    /// A consistent point-in-time view for reads and iterators, released when dropped.
    public func makeSnapshot() -> Snapshot { Snapshot(owner: self) }

    /// An iterator over `columnFamily`, restricted to `[lowerBound, upperBound)` when given,
    /// reading at `snapshot` when given. It starts unpositioned: call a seek first.
    public func makeIterator(
        in columnFamily: ColumnFamily? = nil,
        lowerBound: [UInt8]? = nil,
        upperBound: [UInt8]? = nil,
        snapshot: Snapshot? = nil
    ) -> Iterator {
        if let snapshot { precondition(snapshot.owner === self, "snapshot belongs to another database") }
        return Iterator(owner: self, columnFamily: handle(columnFamily),
                        lowerBound: lowerBound, upperBound: upperBound, snapshot: snapshot)
    }

    // MARK: Maintenance

    /// Flushes the memtable of `columnFamily` to an SST file and waits for it.
    public func flush(_ columnFamily: ColumnFamily? = nil) throws(RocksDBError) {
        let cf = handle(columnFamily)
        let flushOptions = rocksdb_flushoptions_create()
        defer { rocksdb_flushoptions_destroy(flushOptions) }
        rocksdb_flushoptions_set_wait(flushOptions, 1)
        try withErrorPointer("flush") { errorPointer in
            rocksdb_flush_cf(db, flushOptions, cf, errorPointer)
        }
    }

    /// Writes RocksDB's write-ahead log buffer to its file (with `manualWALFlush`, unsynced
    /// writes wait in that buffer); with `sync`, also syncs it. Crash tests use it to keep what
    /// a process crash (not a power loss) keeps: every write made, synced or not.
    public func flushWAL(sync: Bool) throws(RocksDBError) {
        try withErrorPointer("flush WAL") { errorPointer in
            rocksdb_flush_wal(db, sync ? 1 : 0, errorPointer)
        }
    }

    /// Compacts the keys in `[start, end)` of `columnFamily`; `nil` bounds are open.
    public func compactRange(
        in columnFamily: ColumnFamily? = nil, from start: [UInt8]? = nil, to end: [UInt8]? = nil
    ) {
        let cf = handle(columnFamily)
        withOptionalBytes(start) { rawStart in
            withOptionalBytes(end) { rawEnd in
                rocksdb_compact_range_cf(db, cf, rawStart?.cChars, rawStart?.count ?? 0,
                                         rawEnd?.cChars, rawEnd?.count ?? 0)
            }
        }
    }

    /// The approximate on-disk size in bytes of the keys in `[start, end)` of each range, from
    /// SST metadata (unflushed memtable data is not counted).
    public func approximateSizes(
        in columnFamily: ColumnFamily? = nil, ranges: [(start: [UInt8], end: [UInt8])]
    ) throws(RocksDBError) -> [UInt64] {
        guard !ranges.isEmpty else { return [] }
        let cf = handle(columnFamily)
        let starts = ranges.map { PinnedBytes($0.start) }
        let ends = ranges.map { PinnedBytes($0.end) }
        let startPointers: [UnsafePointer<CChar>?] = starts.map { $0.cChars }
        let endPointers: [UnsafePointer<CChar>?] = ends.map { $0.cChars }
        let startLengths = starts.map { $0.count }
        let endLengths = ends.map { $0.count }
        var sizes = [UInt64](repeating: 0, count: ranges.count)
        // The pointers borrow the pinned copies: keep those alive until the call returns.
        try withExtendedLifetime((starts, ends)) { () throws(RocksDBError) in
            try withErrorPointer("approximateSizes") { errorPointer in
                rocksdb_approximate_sizes_cf(db, cf, Int32(ranges.count), startPointers, startLengths,
                                             endPointers, endLengths, &sizes, errorPointer)
            }
        }
        return sizes
    }

    /// The approximate on-disk size in bytes of the keys in `[start, end)`.
    public func approximateSize(
        in columnFamily: ColumnFamily? = nil, from start: [UInt8], to end: [UInt8]
    ) throws(RocksDBError) -> UInt64 {
        try approximateSizes(in: columnFamily, ranges: [(start, end)])[0]
    }

    /// A RocksDB property such as `rocksdb.stats` or `rocksdb.estimate-num-keys`, or `nil` when
    /// the property is unknown.
    public func property(_ name: String, in columnFamily: ColumnFamily? = nil) -> String? {
        let cf = handle(columnFamily)
        guard let value = rocksdb_property_value_cf(db, cf, name) else { return nil }
        defer { rocksdb_free(value) }
        return String(cString: value)
    }

    /// An integer RocksDB property such as `rocksdb.estimate-num-keys`, or `nil` when unknown.
    public func integerProperty(_ name: String, in columnFamily: ColumnFamily? = nil) -> UInt64? {
        let cf = handle(columnFamily)
        var value: UInt64 = 0
        return rocksdb_property_int_cf(db, cf, name, &value) == 0 ? value : nil
    }

    /// Writes a consistent copy of the whole database to `directory` (which must not exist),
    /// hard-linking SST files where the file system allows. Used for backups.
    public func createCheckpoint(at directory: String) throws(RocksDBError) {
        let checkpoint = try withErrorPointer("checkpoint(\(directory))") { errorPointer in
            rocksdb_checkpoint_object_create(db, errorPointer)
        }
        guard let checkpoint else {
            throw RocksDBError(kind: .other, operation: "checkpoint(\(directory))",
                               message: "RocksDB returned no checkpoint object")
        }
        defer { rocksdb_checkpoint_object_destroy(checkpoint) }
        try withErrorPointer("checkpoint(\(directory))") { errorPointer in
            // log_size_for_flush 0: always flush memtables so the copy needs no WAL replay.
            rocksdb_checkpoint_create(checkpoint, directory, 0, errorPointer)
        }
    }

    /// Adds SST files built by `SSTFileWriter` to `columnFamily`, atomically. Keys in the
    /// files replace overlapping keys in the database. With `moveFiles`, the files are
    /// hard-linked or moved instead of copied.
    public func ingestExternalFiles(
        _ paths: [String], into columnFamily: ColumnFamily? = nil, moveFiles: Bool = false
    ) throws(RocksDBError) {
        guard !paths.isEmpty else { return }
        let cf = handle(columnFamily)
        let ingestOptions = rocksdb_ingestexternalfileoptions_create()
        defer { rocksdb_ingestexternalfileoptions_destroy(ingestOptions) }
        rocksdb_ingestexternalfileoptions_set_move_files(ingestOptions, moveFiles ? 1 : 0)
        try withCStringArray(paths) { (cPaths) throws(RocksDBError) in
            try withErrorPointer("ingestExternalFiles") { errorPointer in
                rocksdb_ingest_external_file_cf(db, cf, cPaths, paths.count, ingestOptions, errorPointer)
            }
        }
    }
}

/// Creates `path` and its missing parents, like `mkdir -p`.
func createDirectories(_ path: String) throws(RocksDBError) {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for component in path.split(separator: "/") {
        prefix += component
        if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
            let reason = String(cString: strerror(errno))
            throw RocksDBError(kind: .ioError, operation: "open(\(path))",
                               message: "cannot create directory \(prefix): \(reason)")
        }
        prefix += "/"
    }
}

/// Calls `body` with a C array of C strings that stay valid for the call.
func withCStringArray<R>(
    _ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) throws(RocksDBError) -> R
) throws(RocksDBError) -> R {
    let copies: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    defer { copies.forEach { free($0) } }
    let pointers: [UnsafePointer<CChar>?] = copies.map { $0.map { UnsafePointer($0) } }
    let result: Result<R, RocksDBError> = pointers.withUnsafeBufferPointer { buffer in
        guard let base = buffer.baseAddress else {
            preconditionFailure("withCStringArray needs at least one string")
        }
        do throws(RocksDBError) { return .success(try body(base)) } catch { return .failure(error) }
    }
    return try result.get()
}

/// Calls `body` with the bytes of `bytes`, or with `nil` when it is `nil`.
func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawBufferPointer?) -> R) -> R {
    guard let bytes else { return body(nil) }
    return bytes.withUnsafeBytes { body($0) }
}
