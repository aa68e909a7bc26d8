import RocksDB

/// The batches the crash test writes and checks: shared by the writer process and the test so
/// both agree on exactly what a whole batch is.
public enum CrashWorkload {
    public static let columnFamilies = ["raft", "meta"]

    /// Entries of batch `index`, by column family: four user keys, one log entry, one apply
    /// record, and the "applied" pointer that always names the newest batch.
    public static func entries(index: Int) -> [(columnFamily: String, key: [UInt8], value: [UInt8])] {
        let tag = Array("batch-\(index)-".utf8)
        let padding = [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 100)
        var entries: [(String, [UInt8], [UInt8])] = []
        for part in 0..<4 {
            entries.append(("default", Array("user/\(index)/\(part)".utf8), tag + padding))
        }
        entries.append(("raft", logKey(index), tag + padding))
        entries.append(("meta", Array("apply/\(index)".utf8), tag))
        entries.append(("meta", appliedKey, Array("\(index)".utf8)))
        return entries
    }

    /// Key of the single record that names the newest batch written.
    public static let appliedKey = Array("applied".utf8)

    /// Raft-CF key of batch `index`: big-endian so keys sort by index.
    public static func logKey(_ index: Int) -> [UInt8] {
        withUnsafeBytes(of: UInt64(index).bigEndian) { Array("log/".utf8) + Array($0) }
    }

    /// Adds batch `index` to `batch`.
    public static func fill(_ batch: WriteBatch, index: Int, db: Database) throws {
        for entry in entries(index: index) {
            batch.put(entry.key, entry.value, in: try db.columnFamily(entry.columnFamily))
        }
    }
}
