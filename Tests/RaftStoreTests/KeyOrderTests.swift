import FlotillaProto
import Foundation
import RaftStore
import Testing

@Suite("Key order and digests over Data storage")
struct KeyOrderTests {
    /// memcmp order equals `lexicographicallyPrecedes` (byte order, shorter prefix first),
    /// over random keys with shared prefixes and slices (Data with a non-zero start index).
    @Test func keyOrderMatchesLexicographicOrder() {
        var random = SystemRandomNumberGenerator()
        let alphabet: [UInt8] = [0x00, 0x01, 0x61, 0x62, 0x7F, 0x80, 0xFF]
        func key() -> Data {
            let bytes = (0..<Int.random(in: 0...6, using: &random)).map { _ in alphabet.randomElement(using: &random) ?? 0 }
            // Half of them as a slice of a longer buffer.
            if Bool.random(using: &random) { return Data([0x55, 0x55] + bytes + [0x55]).dropFirst(2).dropLast() }
            return Data(bytes)
        }
        for _ in 0..<20_000 {
            let a = key()
            let b = key()
            let order = KeyOrder.compare(a, b)
            #expect((order < 0) == a.lexicographicallyPrecedes(b), "\(Array(a)) vs \(Array(b))")
            #expect((order == 0) == (a == b), "\(Array(a)) vs \(Array(b))")
        }
    }

    @Test func dataDigestEqualsTheByteByByteDigest() {
        for length in [0, 1, 7, 100, 4_097] {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            var viaData = FNV1a64()
            viaData.add(Data([9] + bytes).dropFirst())
            var viaBytes = FNV1a64()
            viaBytes.add(bytes as [UInt8])
            #expect(viaData == viaBytes)
        }
    }
}
