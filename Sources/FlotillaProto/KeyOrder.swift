import Foundation

/// Byte-wise key order (RocksDB's default comparator) over `Data`, by `memcmp` on the
/// storage: `lexicographicallyPrecedes` walks `Data`'s iterator a byte at a time.
public enum KeyOrder {
    /// Negative, zero or positive as `a` sorts before, equal to, or after `b`.
    public static func compare(_ a: Data, _ b: Data) -> Int {
        a.withUnsafeBytes { left in
            b.withUnsafeBytes { right in
                let common = min(left.count, right.count)
                if common > 0, let l = left.baseAddress, let r = right.baseAddress {
                    let order = memcmp(l, r, common)
                    if order != 0 { return Int(order) }
                }
                return left.count - right.count
            }
        }
    }

    /// A key for a message: text when it is printable ASCII, else hexadecimal (at most 64
    /// bytes shown).
    public static func printable(_ key: Data) -> String {
        if key.isEmpty { return "\"\"" }
        if key.count <= 64, key.allSatisfy({ (0x21...0x7E).contains($0) }) { return String(decoding: key, as: UTF8.self) }
        return "0x" + key.prefix(64).map { String(format: "%02x", $0) }.joined() + (key.count > 64 ? "…" : "")
    }
}

extension Flotilla_V1_Region {
    /// Whether `key` lies in [start_key, end_key) (an empty end key: to the end).
    public func contains(_ key: Data) -> Bool {
        KeyOrder.compare(key, startKey) >= 0 && (endKey.isEmpty || KeyOrder.compare(key, endKey) < 0)
    }

    /// Whether the region's range and [start, end) share a key (an empty end: to the end).
    public func overlaps(start: Data, end: Data) -> Bool {
        (end.isEmpty || KeyOrder.compare(startKey, end) < 0) && (endKey.isEmpty || KeyOrder.compare(start, endKey) < 0)
    }
}

extension Flotilla_V1_RegionEpoch {
    /// Whether this epoch is older than `other` in either part: a region described with it
    /// was since split or merged (version) or changed membership (conf_ver).
    public func isStale(comparedTo other: Flotilla_V1_RegionEpoch) -> Bool {
        version < other.version || confVer < other.confVer
    }
}
