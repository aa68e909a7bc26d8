import Crypto
import FlotillaCluster
import Foundation

/// The Raft port's handshake: before any frame is read, both ends prove they know the cluster
/// secret, with HMAC-SHA256 over fresh nonces from both sides (so no answer can be replayed).
///
///     acceptor → connector  challenge: "FLR1" · acceptor nonce (32 B)                 36 B
///     connector → acceptor  hello: "FLR1" · cluster id · from store · to store (8 B BE each)
///                           · connector nonce (32 B) · HMAC("flotilla-raft-connector" …) 92 B
///     acceptor → connector  proof: HMAC("flotilla-raft-acceptor" …)                   32 B
///
/// Both MACs cover both nonces, the cluster id and the two store ids. A connector that gets a
/// wrong proof closes without sending a frame; an acceptor that gets a wrong hello closes
/// without reading one. Fixed sizes: nothing is buffered beyond the step being read.
package struct RaftHandshake {
    static let magic: [UInt8] = Array("FLR1".utf8)
    static let nonceBytes = 32
    package static let challengeBytes = 4 + nonceBytes
    package static let helloBytes = 4 + 24 + nonceBytes + 32
    package static let proofBytes = 32
    /// Bytes of a cluster secret (read from the cluster file's `secretFile`).
    static let secretBytesMin = ClusterSecret.bytesMin
    package static let secretBytesMax = ClusterSecret.bytesMax

    package let key: SymmetricKey

    package init(secret: [UInt8]) { key = SymmetricKey(data: secret) }

    package static func nonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<nonceBytes).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    struct Hello: Equatable {
        var clusterID: UInt64
        var fromStoreID: UInt64
        var toStoreID: UInt64
        var nonce: [UInt8]
        var mac: [UInt8]
    }

    func mac(role: String, acceptorNonce: [UInt8], connectorNonce: [UInt8], clusterID: UInt64, from: UInt64, to: UInt64) -> [UInt8] {
        var message = Array("flotilla-raft-\(role)".utf8)
        message += acceptorNonce
        message += connectorNonce
        for value in [clusterID, from, to] { withUnsafeBytes(of: value.bigEndian) { message += $0 } }
        return Array(HMAC<SHA256>.authenticationCode(for: message, using: key))
    }

    package static func challenge(nonce: [UInt8]) -> [UInt8] { magic + nonce }

    /// The acceptor's nonce from a challenge, or nil when it is not one.
    package static func parseChallenge(_ bytes: ArraySlice<UInt8>) -> [UInt8]? {
        guard bytes.count == challengeBytes, Array(bytes.prefix(4)) == magic else { return nil }
        return Array(bytes.dropFirst(4))
    }

    package func hello(acceptorNonce: [UInt8], clusterID: UInt64, from: UInt64, to: UInt64, nonce: [UInt8]) -> [UInt8] {
        var bytes = Self.magic
        for value in [clusterID, from, to] { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
        bytes += nonce
        bytes += mac(role: "connector", acceptorNonce: acceptorNonce, connectorNonce: nonce, clusterID: clusterID, from: from, to: to)
        return bytes
    }

    static func parseHello(_ bytes: ArraySlice<UInt8>) -> Hello? {
        guard bytes.count == helloBytes, Array(bytes.prefix(4)) == magic else { return nil }
        let body = Array(bytes)
        func integer(at offset: Int) -> UInt64 { body[offset..<(offset + 8)].reduce(0) { $0 << 8 | UInt64($1) } }
        return Hello(clusterID: integer(at: 4), fromStoreID: integer(at: 12), toStoreID: integer(at: 20),
                     nonce: Array(body[28..<60]), mac: Array(body[60..<92]))
    }

    /// Whether `mac` is the expected one, compared in constant time.
    package func verify(_ mac: [UInt8], role: String, acceptorNonce: [UInt8], connectorNonce: [UInt8], clusterID: UInt64, from: UInt64, to: UInt64) -> Bool {
        let expected = self.mac(role: role, acceptorNonce: acceptorNonce, connectorNonce: connectorNonce, clusterID: clusterID, from: from, to: to)
        guard mac.count == expected.count else { return false }
        return zip(mac, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}
