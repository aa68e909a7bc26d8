import RocksDB

/// The store's disk policy: which column families its RocksDB holds and how it is tuned. The
/// server opens its database through here and never chooses RocksDB settings itself.
///
/// Tried and measured (issue 13, `flotilla-bench write-path`): a 4 MiB memtable for the
/// `meta` column family (apply states and sessions, overwritten by every write) instead of
/// 32 MiB, and 4 MiB for every column family. Neither moved the CPU per write beyond the
/// run-to-run spread (±10 %), so the defaults stay.
public enum StoreDatabase {
    /// The options a store's RocksDB opens with.
    public static var options: DatabaseOptions { DatabaseOptions() }

    /// Opens (or creates) a store's RocksDB at `path` with its column families.
    /// `tuning` overrides the options (simulations keep unsynced writes in RocksDB's buffer).
    public static func open(path: String, tuning: DatabaseOptions = options) throws(RocksDBError) -> Database {
        try Database(path: path, columnFamilies: [StoreKeys.raftColumnFamily, StoreKeys.metaColumnFamily], options: tuning)
    }
}
