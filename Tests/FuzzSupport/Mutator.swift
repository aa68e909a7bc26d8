import Raft

/// Seeded mutations of valid inputs, for fuzz tests of every decoder that reads bytes from
/// outside: bit flips, byte changes, truncation, inserted random or duplicated bytes, and
/// extreme varints (2^64−1), one to four at a time.
public struct Mutator {
    public var random: SplitMix64

    public init(seed: UInt64) { random = SplitMix64(seed: seed) }

    /// Iterations for one fuzz test: `FLOTILLA_FUZZ_ITERATIONS` when set, else `default`.
    public static func iterations(default count: Int) -> Int {
        Int(environment("FLOTILLA_FUZZ_ITERATIONS") ?? "") ?? count
    }

    /// The seed of a run: `FLOTILLA_FUZZ_SEED` when set (to replay), else `default`.
    public static func seed(default value: UInt64) -> UInt64 {
        UInt64(environment("FLOTILLA_FUZZ_SEED") ?? "") ?? value
    }

    private static func environment(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        return String(cString: value)
    }

    public mutating func mutate(_ bytes: [UInt8]) -> [UInt8] {
        var result = bytes
        for _ in 0..<Int.random(in: 1...4, using: &random) {
            let position = result.isEmpty ? 0 : Int.random(in: 0..<result.count, using: &random)
            switch Int.random(in: 0..<7, using: &random) {
            case 0 where !result.isEmpty: result[position] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &random)
            case 1 where !result.isEmpty: result[position] = UInt8.random(in: 0...255, using: &random)
            case 2: result = Array(result.prefix(position))
            case 3: result.insert(contentsOf: (0..<Int.random(in: 1...8, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }, at: position)
            case 4 where !result.isEmpty: result.insert(contentsOf: result[position...].prefix(16), at: position)
            case 5: result.insert(contentsOf: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], at: position)
            default: if !result.isEmpty { result.remove(at: position) }
            }
        }
        return result
    }

    public mutating func pick<T>(_ choices: [T]) -> T { choices[Int.random(in: 0..<choices.count, using: &random)] }

    public mutating func chance(_ oneIn: Int) -> Bool { Int.random(in: 0..<oneIn, using: &random) == 0 }
}

#if canImport(Glibc)
import Glibc
#endif
