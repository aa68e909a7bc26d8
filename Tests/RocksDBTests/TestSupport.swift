import Foundation
import RocksDB

/// A fresh directory under the system temp dir, removed when the test is done with it.
final class TemporaryDirectory {
    let path: String

    init(_ label: String = "rocksdb") {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("flotilla-\(label)-\(UUID().uuidString)").path
    }

    func child(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

extension Array where Element == UInt8 {
    /// The UTF-8 bytes of a string, for readable keys in tests.
    init(_ string: String) { self = Array(string.utf8) }
}

/// A small deterministic generator (SplitMix64) so property tests replay from a seed.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func openDatabase(_ directory: TemporaryDirectory, columnFamilies: [String] = ["raft", "meta"],
                  options: DatabaseOptions = DatabaseOptions()) throws -> Database {
    try Database(path: directory.child("db"), columnFamilies: columnFamilies, options: options)
}
