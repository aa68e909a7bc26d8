import FlotillaProto

/// The Raft port's frames, apart from sockets: a 4-byte big-endian length, then a
/// `RaftMessageBatch` of many regions' messages, stamped with the cluster and both store ids.
///
/// Guarantees: encoding never makes a frame over `frameBytesMax` (the messages of one that
/// would be are counted as dropped), nor queues past the room it is given; decoding reads a
/// length, refuses one over `frameBytesMax` before buffering the body, and delivers a batch
/// only when it decodes and names this cluster, this store and the authenticated peer.
/// Whatever the bytes, decoding answers `needMore`, a frame or a refusal with its reason.
package struct RaftFrameCodec {
    static let lengthBytes = 4
    package let clusterID: UInt64
    package let storeID: UInt64
    /// Largest frame body sent or accepted.
    package let frameBytesMax: Int
    /// Outgoing messages are cut into frames of about this many bytes.
    let frameBytesTarget: Int

    package init(clusterID: UInt64, storeID: UInt64, limits: RaftTransportLimits) {
        precondition(limits.receivedFrameBytesMax > 0 && limits.receivedFrameBytesMax <= Int(UInt32.max),
                     "the frame limit must fit the 4-byte length")
        precondition(limits.sentFrameBytesTarget > 0, "a frame target must be positive")
        self.clusterID = clusterID
        self.storeID = storeID
        frameBytesMax = limits.receivedFrameBytesMax
        frameBytesTarget = limits.sentFrameBytesTarget
    }

    // MARK: Encoding

    /// What `encode` did with one destination's messages.
    package struct Encoded: Equatable {
        var frames = 0
        var messages = 0
        /// Messages not queued: their frame was over the limit, did not encode, or did not fit.
        var droppedMessages = 0
        /// Reasons worth a log line (a frame over the limit or one that did not encode).
        var problems: [String] = []
    }

    /// Appends `messages` to `destination` as frames to `output`, never past `roomBytes` more
    /// bytes; frames that do not fit are dropped whole (Raft retransmits).
    package func encode(_ messages: [Flotilla_V1_RaftMessage], to destination: UInt64, roomBytes: Int, into output: inout [UInt8]) -> Encoded {
        var result = Encoded()
        var room = roomBytes
        var start = 0
        while start < messages.count {
            let end = Self.frameEnd(messages, from: start, bytesTarget: frameBytesTarget)
            precondition(end > start && end <= messages.count, "a frame holds at least one message")
            var batch = Flotilla_V1_RaftMessageBatch()
            batch.clusterID = clusterID
            batch.fromStoreID = storeID
            batch.toStoreID = destination
            batch.messages = Array(messages[start..<end])
            let count = end - start
            start = end
            let payload: [UInt8]
            do { payload = try batch.serializedBytes() } catch {
                result.problems.append("a frame to store \(destination) did not encode: \(error)")
                result.droppedMessages += count
                continue
            }
            guard payload.count <= frameBytesMax else {
                // Cannot happen for requests within `KVLimits`; said loudly if it does.
                result.problems.append("a frame of \(payload.count) bytes to store \(destination) is over the \(frameBytesMax)-byte limit")
                result.droppedMessages += count
                continue
            }
            guard payload.count + Self.lengthBytes <= room else {
                result.droppedMessages += count
                continue
            }
            let length = UInt32(payload.count)
            output.append(contentsOf: [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)])
            output.append(contentsOf: payload)
            room -= payload.count + Self.lengthBytes
            result.frames += 1
            result.messages += count
        }
        precondition(result.messages + result.droppedMessages == messages.count, "every message is queued or counted as dropped")
        return result
    }

    /// The end of the frame that starts at `start`: messages up to about `bytesTarget` bytes
    /// (at least one, whatever its size).
    package static func frameEnd(_ messages: [Flotilla_V1_RaftMessage], from start: Int, bytesTarget: Int) -> Int {
        var bytes = 0
        var end = start
        while end < messages.count {
            let message = messages[end]
            let size = 96 + message.message.context.count + message.message.entries.reduce(0) { $0 + $1.data.count + 24 }
            if end > start && bytes + size > bytesTarget { break }
            bytes += size
            end += 1
        }
        return end
    }

    // MARK: Decoding

    /// One step of reading frames from a connection's buffered bytes.
    package enum Decoded {
        /// The buffer ends inside a frame: read more.
        case needMore
        /// A whole frame that belongs here.
        case frame(Flotilla_V1_RaftMessageBatch)
        /// A frame no correct peer sends: close the connection.
        case refused(reason: String)
    }

    /// Reads the frame starting at `start` in `input` from authenticated peer `peerStoreID`,
    /// moving `start` past it when it is whole (also when it is refused).
    package func decode(_ input: [UInt8], start: inout Int, fromPeer peerStoreID: UInt64?) -> Decoded {
        precondition(start >= 0 && start <= input.count, "the read position is inside the buffer")
        guard input.count - start >= Self.lengthBytes else { return .needMore }
        let length = Int(input[start]) << 24 | Int(input[start + 1]) << 16 | Int(input[start + 2]) << 8 | Int(input[start + 3])
        guard length <= frameBytesMax else {
            return .refused(reason: "a frame of \(length) bytes is over the \(frameBytesMax)-byte limit")
        }
        guard input.count - start - Self.lengthBytes >= length else { return .needMore }
        let body = (start + Self.lengthBytes)..<(start + Self.lengthBytes + length)
        start = body.upperBound
        let batch: Flotilla_V1_RaftMessageBatch
        do {
            batch = try Flotilla_V1_RaftMessageBatch(serializedBytes: Array(input[body]))
        } catch {
            return .refused(reason: "an undecodable frame: \(error)")
        }
        guard batch.clusterID == clusterID else {
            return .refused(reason: "a frame from cluster \(batch.clusterID), this is cluster \(clusterID)")
        }
        guard batch.toStoreID == storeID, batch.fromStoreID == peerStoreID else {
            return .refused(reason: "a frame from store \(batch.fromStoreID) to store \(batch.toStoreID) does not belong here (store \(storeID))")
        }
        return .frame(batch)
    }
}
