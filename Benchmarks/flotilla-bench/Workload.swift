import ArgumentParser
import Foundation

/// The operations a workload mixes (YCSB's core operations).
enum OperationKind: String, CaseIterable, Codable, Sendable {
    case read, update, insert, scan
    case readModifyWrite = "read-modify-write"
}

/// How keys are picked (YCSB's request distributions).
enum KeyDistribution: String, Codable, Sendable, CaseIterable, ExpressibleByArgument {
    /// Every record equally likely.
    case uniform
    /// Zipfian with θ = 0.99 over the records, popular items scattered over the key space.
    case zipfian
    /// Zipfian over insertion order: the newest records are the most popular.
    case latest
}

/// Proportions of each operation and the key distribution: a YCSB core workload or a custom mix.
struct WorkloadMix: Codable, Sendable, Equatable {
    var proportions: [OperationKind: Double]
    var distribution: KeyDistribution
    /// Scans read a uniform number of records in 1...maxScanLength.
    var maxScanLength = 100

    static let namedWorkloads = ["a", "b", "c", "d", "e", "f", "write-only"]

    /// YCSB core workloads A–F and write-only.
    static func named(_ name: String) -> WorkloadMix? {
        switch name.lowercased() {
        case "a": WorkloadMix(proportions: [.read: 0.5, .update: 0.5], distribution: .zipfian)
        case "b": WorkloadMix(proportions: [.read: 0.95, .update: 0.05], distribution: .zipfian)
        case "c": WorkloadMix(proportions: [.read: 1.0], distribution: .zipfian)
        case "d": WorkloadMix(proportions: [.read: 0.95, .insert: 0.05], distribution: .latest)
        case "e": WorkloadMix(proportions: [.scan: 0.95, .insert: 0.05], distribution: .zipfian)
        case "f": WorkloadMix(proportions: [.read: 0.5, .readModifyWrite: 0.5], distribution: .zipfian)
        case "write-only": WorkloadMix(proportions: [.update: 1.0], distribution: .uniform)
        default: nil
        }
    }

    /// The operation for a uniform draw in [0, 1).
    func operation(for draw: Double) -> OperationKind {
        var cumulative = 0.0
        let total = proportions.values.reduce(0, +)
        for kind in OperationKind.allCases {
            cumulative += (proportions[kind] ?? 0) / total
            if draw < cumulative { return kind }
        }
        return OperationKind.allCases.last { (proportions[$0] ?? 0) > 0 } ?? .read
    }
}

/// Keys of the benchmark: `prefix` followed by 16 hex digits of a hash of the record number,
/// so records (and inserts) spread evenly over the key space and over regions split on it.
struct KeySpace: Sendable {
    let prefix: String

    func key(_ recordNumber: UInt64) -> Data {
        Data((prefix + Self.hex(Self.fnv1a(recordNumber))).utf8)
    }

    /// Split keys cutting this key space into `regions` ranges of equal share: 4 hex digits
    /// of the hash up to 65,536 regions, 8 beyond (at most `splitRegionsMax`).
    func splitKeys(regions: Int) -> [String] {
        guard regions > 1 else { return [] }
        precondition(regions <= Self.splitRegionsMax, "regions beyond the split keys' resolution")
        let digits = regions <= 1 << 16 ? 4 : 8
        let span = UInt64(1) << (4 * digits)
        return (1..<regions).map { index in
            prefix + String(format: "%0\(digits)llx", UInt64(index) * span / UInt64(regions))
        }
    }

    /// The most regions `splitKeys` cuts the key space into.
    static let splitRegionsMax = 1_000_000

    static func fnv1a(_ value: UInt64) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        withUnsafeBytes(of: value.littleEndian) { bytes in
            for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        }
        return hash
    }

    static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

/// A small, fast, seedable generator (SplitMix64); one per worker.
struct BenchRandom: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

/// Zipfian ranks over [0, itemCount) with skew θ (Gray et al., "Quickly generating
/// billion-record synthetic databases", as YCSB does): rank 0 is the most popular.
struct ZipfianRanks: Sendable {
    let itemCount: UInt64
    let theta: Double
    private let zetaN: Double
    private let alpha: Double
    private let eta: Double

    init(itemCount: UInt64, theta: Double = 0.99) {
        precondition(itemCount > 0, "zipfian over no items")
        self.itemCount = itemCount
        self.theta = theta
        var zeta = 0.0
        for item in 1...itemCount { zeta += 1 / pow(Double(item), theta) }
        zetaN = zeta
        let zeta2 = 1 + 1 / pow(2, theta)
        alpha = 1 / (1 - theta)
        eta = (1 - pow(2 / Double(itemCount), 1 - theta)) / (1 - zeta2 / zetaN)
    }

    func rank(_ random: inout BenchRandom) -> UInt64 {
        let u = random.unit()
        let uz = u * zetaN
        if uz < 1 { return 0 }
        if uz < 1 + pow(0.5, theta) { return min(1, itemCount - 1) }
        return min(itemCount - 1, UInt64(Double(itemCount) * pow(eta * u - eta + 1, alpha)))
    }
}

/// Picks record numbers for a workload's operations.
struct KeyChooser: Sendable {
    let distribution: KeyDistribution
    let recordCount: UInt64
    private let zipfian: ZipfianRanks?

    init(distribution: KeyDistribution, recordCount: UInt64) {
        self.distribution = distribution
        self.recordCount = recordCount
        zipfian = distribution == .uniform ? nil : ZipfianRanks(itemCount: recordCount)
    }

    /// A record among the first `inserted` ones (records loaded plus inserts so far).
    func choose(_ random: inout BenchRandom, inserted: UInt64) -> UInt64 {
        let available = max(1, inserted)
        switch distribution {
        case .uniform:
            return random.next() % available
        case .zipfian:
            // Scrambled: popular ranks land on scattered records.
            let rank = zipfian?.rank(&random) ?? 0
            return KeySpace.fnv1a(rank) % available
        case .latest:
            let rank = zipfian?.rank(&random) ?? 0
            return available - 1 - min(rank, available - 1)
        }
    }
}
