import FlotillaProto
@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import Foundation
import Testing

/// Snapshot streams prove the cluster secret: a stranger's or an altered stream is refused.
@Suite("Snapshot streams are signed")
struct SnapshotAuthenticationTests {
    static let secret = Array("snapshot-test-secret-000".utf8)

    func stream(signedWith secret: [UInt8]) throws -> [Flotilla_V1_SnapshotChunk] {
        var first = Flotilla_V1_SnapshotChunk()
        first.message.regionID = 7
        first.message.toPeer.storeID = 2
        first.pairs = (0..<3).map { index in
            var pair = Flotilla_V1_SnapshotPair()
            pair.key = Data("k\(index)".utf8)
            pair.value = Data("v\(index)".utf8)
            return pair
        }
        var last = Flotilla_V1_SnapshotChunk()
        last.last = true
        last.pairs = [first.pairs[0]]
        var signer = SnapshotAuthenticator(secret: secret)
        try signer.sign(&first, first: true)
        try signer.sign(&last, first: false)
        return [first, last]
    }

    func verify(_ chunks: [Flotilla_V1_SnapshotChunk]) -> String? {
        var checker = SnapshotAuthenticator(secret: Self.secret)
        do {
            for (position, chunk) in chunks.enumerated() { try checker.verify(chunk, first: position == 0) }
            return nil
        } catch {
            return error.reason
        }
    }

    @Test func aSignedStreamPassesAndEveryForgeryIsRefused() throws {
        let good = try stream(signedWith: Self.secret)
        #expect(verify(good) == nil)
        #expect(verify(try stream(signedWith: Array("another-clusters-secret!".utf8)))?.contains("header is not signed") == true)
        var altered = good
        altered[1].pairs[0].value = Data("forged".utf8)
        #expect(verify(altered)?.contains("do not match their MAC") == true)
        var unsigned = good
        unsigned[0].headerMac = Data()
        #expect(verify(unsigned) != nil)
        var retargeted = good
        retargeted[0].message.toPeer.storeID = 3
        #expect(verify(retargeted)?.contains("header is not signed") == true)
    }
}
