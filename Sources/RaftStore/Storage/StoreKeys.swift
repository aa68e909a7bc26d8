import FlotillaProto
import Raft

/// The key layout of a store's RocksDB (see docs/architecture.md):
///
/// | CF | key | value |
/// |---|---|---|
/// | `raft` | region_id (8 B BE) · 0x01 · index (8 B BE) | log entry |
/// | `raft` | region_id · 0x02 | hard state |
/// | `meta` | 0x02 · region_id | apply state (applied index, truncated index and term) |
///
/// Big-endian integers make byte order equal numeric order, so a region's log is one
/// contiguous, ordered key range.
public enum StoreKeys {
    public static let raftColumnFamily = "raft"
    public static let metaColumnFamily = "meta"

    static let logEntryTag: UInt8 = 0x01
    static let hardStateTag: UInt8 = 0x02
    static let applyStatePrefix: UInt8 = 0x02

    public static func logEntry(region: UInt64, index: UInt64) -> [UInt8] {
        var key = [UInt8]()
        key.reserveCapacity(17)
        appendBigEndian(region, to: &key)
        key.append(logEntryTag)
        appendBigEndian(index, to: &key)
        precondition(key.count == 17, "a log key is region · tag · index, 17 bytes")
        return key
    }

    /// The first key after every log entry of `region`.
    public static func logEnd(region: UInt64) -> [UInt8] {
        var key = [UInt8]()
        appendBigEndian(region, to: &key)
        key.append(logEntryTag + 1)
        return key
    }

    public static func hardState(region: UInt64) -> [UInt8] {
        var key = [UInt8]()
        appendBigEndian(region, to: &key)
        key.append(hardStateTag)
        return key
    }

    static let regionStatePrefix: UInt8 = 0x01
    static let sessionPrefix: UInt8 = 0x03

    /// Meta CF: this store's identity (`StoreIdent`).
    public static let storeIdent: [UInt8] = Array("store_ident".utf8)

    /// Meta CF: the region descriptor and peer state (`RegionLocalState`).
    public static func regionState(region: UInt64) -> [UInt8] {
        var key: [UInt8] = [regionStatePrefix]
        appendBigEndian(region, to: &key)
        return key
    }

    /// Meta CF: the first key of a region's client sessions.
    public static func sessionsStart(region: UInt64) -> [UInt8] {
        var key: [UInt8] = [sessionPrefix]
        appendBigEndian(region, to: &key)
        return key
    }

    /// Meta CF: the first key after a region's client sessions.
    public static func sessionsEnd(region: UInt64) -> [UInt8] {
        var key: [UInt8] = [sessionPrefix]
        appendBigEndian(region, to: &key)
        key.append(0xFF)
        appendBigEndian(UInt64.max, to: &key)
        return key
    }

    /// The longest user key a store accepts.
    public static let dataKeyBytesMax = KVLimits.keyBytesMax

    /// Default CF: the exclusive upper bound of a region's user keys. For the last region (an
    /// empty end key) a key above every valid user key (longer than `dataKeyBytesMax`).
    public static func dataUpperBound(_ region: Flotilla_V1_Region) -> [UInt8] {
        region.endKey.isEmpty ? [UInt8](repeating: 0xFF, count: dataKeyBytesMax + 1) : [UInt8](region.endKey)
    }

    /// Meta CF: a client's session in a region.
    public static func session(region: UInt64, client: UInt64) -> [UInt8] {
        var key: [UInt8] = [sessionPrefix]
        appendBigEndian(region, to: &key)
        appendBigEndian(client, to: &key)
        return key
    }

    public static func applyState(region: UInt64) -> [UInt8] {
        var key: [UInt8] = [applyStatePrefix]
        appendBigEndian(region, to: &key)
        return key
    }

    /// The index encoded in a log entry key, or nil when the key is not one.
    static func index(ofLogKey key: UnsafeRawBufferPointer, region: UInt64) -> UInt64? {
        guard key.count == 17, key[8] == logEntryTag, readBigEndian(key, at: 0) == region else { return nil }
        return readBigEndian(key, at: 9)
    }

    static func appendBigEndian(_ value: UInt64, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    static func readBigEndian(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> UInt64 {
        precondition(offset >= 0 && offset + 8 <= bytes.count, "an 8-byte read inside the buffer")
        var value: UInt64 = 0
        for position in offset..<(offset + 8) { value = value << 8 | UInt64(bytes[position]) }
        return value
    }

    static func readBigEndian(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        bytes.withUnsafeBytes { readBigEndian($0, at: offset) }
    }
}

/// Why stored Raft state could not be read back. Never silently repaired: a store that finds
/// one refuses to start the region.
public struct StoreCorruption: Error, Sendable, CustomStringConvertible {
    public let region: UInt64
    public let what: String

    public var description: String { "region \(region): corrupt stored state: \(what)" }
}

/// Binary forms of what the Raft CF and the apply state hold.
enum StoredValues {
    /// Entry value: kind (1 B) · term (8 B BE) · data. The index is in the key.
    static func encode(_ entry: Entry) -> [UInt8] {
        var bytes = [UInt8]()
        bytes.reserveCapacity(9 + entry.data.count)
        bytes.append(entry.kind.rawValue)
        StoreKeys.appendBigEndian(entry.term, to: &bytes)
        bytes.append(contentsOf: entry.data)
        precondition(bytes.count == 9 + entry.data.count, "an entry value is kind · term · data")
        return bytes
    }

    static func decodeEntry(_ bytes: [UInt8], index: UInt64, region: UInt64) throws(StoreCorruption) -> Entry {
        guard bytes.count >= 9, let kind = EntryKind(rawValue: bytes[0]) else {
            throw StoreCorruption(region: region, what: "log entry \(index) is malformed (\(bytes.count) bytes)")
        }
        return Entry(term: StoreKeys.readBigEndian(bytes, at: 1), index: index, kind: kind, data: Array(bytes[9...]))
    }

    static func encode(_ hardState: HardState) -> [UInt8] {
        var bytes = [UInt8]()
        StoreKeys.appendBigEndian(hardState.term, to: &bytes)
        StoreKeys.appendBigEndian(hardState.vote, to: &bytes)
        StoreKeys.appendBigEndian(hardState.commit, to: &bytes)
        precondition(bytes.count == 24, "a hard state is 24 bytes")
        return bytes
    }

    static func decodeHardState(_ bytes: [UInt8], region: UInt64) throws(StoreCorruption) -> HardState {
        guard bytes.count == 24 else { throw StoreCorruption(region: region, what: "hard state is \(bytes.count) bytes, not 24") }
        return HardState(term: StoreKeys.readBigEndian(bytes, at: 0), vote: StoreKeys.readBigEndian(bytes, at: 8),
                         commit: StoreKeys.readBigEndian(bytes, at: 16))
    }

    /// Apply state: applied index · truncated index · truncated term (8 B BE each).
    static func encodeApplyState(applied: UInt64, truncatedIndex: UInt64, truncatedTerm: UInt64) -> [UInt8] {
        // The log is truncated only through what was applied (pairs with LogGC's check).
        precondition(truncatedIndex <= applied, "truncated \(truncatedIndex) past applied \(applied)")
        var bytes = [UInt8]()
        StoreKeys.appendBigEndian(applied, to: &bytes)
        StoreKeys.appendBigEndian(truncatedIndex, to: &bytes)
        StoreKeys.appendBigEndian(truncatedTerm, to: &bytes)
        return bytes
    }

    static func decodeApplyState(_ bytes: [UInt8], region: UInt64) throws(StoreCorruption) -> (applied: UInt64, truncatedIndex: UInt64, truncatedTerm: UInt64) {
        guard bytes.count == 24 else { throw StoreCorruption(region: region, what: "apply state is \(bytes.count) bytes, not 24") }
        return (StoreKeys.readBigEndian(bytes, at: 0), StoreKeys.readBigEndian(bytes, at: 8), StoreKeys.readBigEndian(bytes, at: 16))
    }
}
