import Crypto
import FlotillaProto
import Foundation
import RaftStore

/// Snapshots travel on gRPC, not on the authenticated Raft port, so their streams prove the
/// cluster secret themselves: the first chunk carries an HMAC-SHA256 of its header (checked
/// before anything is written to disk), the last an HMAC over the header MAC and every pair
/// (checked before the snapshot is handed to the store). A snapshot from a client without the
/// secret, or altered on the way, is refused.
package struct SnapshotAuthenticator {
    private let key: SymmetricKey
    private var pairs: HMAC<SHA256>

    package init(secret: [UInt8]) {
        key = SymmetricKey(data: secret)
        pairs = HMAC<SHA256>(key: key)
        pairs.update(data: Array("flotilla-snapshot-pairs".utf8))
    }

    func headerMAC(of header: Flotilla_V1_RaftMessage) throws -> Data {
        Data(HMAC<SHA256>.authenticationCode(for: Array("flotilla-snapshot-header".utf8) + (try header.serializedBytes() as [UInt8]), using: key))
    }

    /// Feeds a chunk's pairs (and, for the first, its header MAC) to the running MAC.
    package mutating func add(_ chunk: Flotilla_V1_SnapshotChunk) {
        if !chunk.headerMac.isEmpty { pairs.update(data: chunk.headerMac) }
        for pair in chunk.pairs {
            var lengths: [UInt8] = [UInt8(truncatingIfNeeded: pair.column.rawValue)]
            withUnsafeBytes(of: UInt64(pair.key.count).bigEndian) { lengths += $0 }
            pairs.update(data: lengths)
            pairs.update(data: pair.key)
            pairs.update(data: withUnsafeBytes(of: UInt64(pair.value.count).bigEndian) { Array($0) })
            pairs.update(data: pair.value)
        }
    }

    /// The MAC of everything added so far.
    func finalMAC() -> Data { Data(pairs.finalize()) }

    /// Signs a chunk on its way out: the header MAC on the first, the final MAC on the last.
    package mutating func sign(_ chunk: inout Flotilla_V1_SnapshotChunk, first: Bool) throws {
        if first { chunk.headerMac = try headerMAC(of: chunk.message) }
        add(chunk)
        if chunk.last { chunk.mac = finalMAC() }
    }

    /// Checks a chunk on its way in; throws naming what does not match.
    package mutating func verify(_ chunk: Flotilla_V1_SnapshotChunk, first: Bool) throws(SnapshotTransferError) {
        if first {
            guard let expected = try? headerMAC(of: chunk.message), Self.equal(expected, chunk.headerMac) else {
                throw SnapshotTransferError(reason: "the snapshot's header is not signed with the cluster secret")
            }
        } else if !chunk.headerMac.isEmpty {
            throw SnapshotTransferError(reason: "a header MAC on a chunk after the first")
        }
        add(chunk)
        if chunk.last {
            guard Self.equal(finalMAC(), chunk.mac) else {
                throw SnapshotTransferError(reason: "the snapshot's pairs do not match their MAC (altered, or not from this cluster)")
            }
        } else if !chunk.mac.isEmpty {
            throw SnapshotTransferError(reason: "a MAC on a chunk before the last")
        }
    }

    /// Constant-time comparison.
    package static func equal(_ lhs: Data, _ rhs: Data) -> Bool {
        guard lhs.count == rhs.count else { return false }
        return zip(lhs, rhs).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}
