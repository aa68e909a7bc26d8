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
}
