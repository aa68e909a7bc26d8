import FlotillaProto
@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import Foundation
import FuzzSupport
import Raft
import Testing

/// The Raft port's frame codec without a socket: what is encoded decodes to the same batches
/// however the bytes arrive, limits hold on both sides, and mutated streams are refused with a
/// reason or wait for more, never crash.
@Suite("Raft frame codec")
struct RaftFrameCodecTests {
    static func limits(frameBytesMax: Int = 64 << 10, target: Int = 8 << 10) -> RaftTransportLimits {
        var limits = RaftTransportLimits()
        limits.receivedFrameBytesMax = frameBytesMax
        limits.sentFrameBytesTarget = target
        return limits
    }

    let sender = RaftFrameCodec(clusterID: 9, storeID: 1, limits: Self.limits())
    let receiver = RaftFrameCodec(clusterID: 9, storeID: 2, limits: Self.limits())

    static func messages(_ random: inout SplitMix64, count: Int, payloadBytesMax: Int = 3_000) -> [Flotilla_V1_RaftMessage] {
        (0..<count).map { index in
            var message = Flotilla_V1_RaftMessage()
            message.regionID = UInt64.random(in: 1...1_000, using: &random)
            message.message.index = UInt64(index)
            message.message.term = UInt64.random(in: 1...9, using: &random)
            var entry = Flotilla_V1_RaftEntry()
            entry.index = UInt64(index)
            entry.data = Data((0..<Int.random(in: 0...payloadBytesMax, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) })
            message.message.entries = [entry]
            return message
        }
    }

    /// Decodes everything `stream` holds, fed in chunks of the given sizes.
    func decodeAll(_ stream: [UInt8], chunks: [Int], fromPeer peer: UInt64 = 1) -> (batches: [Flotilla_V1_RaftMessageBatch], refusal: String?) {
        var buffer: [UInt8] = []
        var start = 0
        var fed = 0
        var batches: [Flotilla_V1_RaftMessageBatch] = []
        var chunkIndex = 0
        while fed < stream.count {
            let size = max(1, chunks.isEmpty ? stream.count : chunks[chunkIndex % chunks.count])
            chunkIndex += 1
            buffer += stream[fed..<min(stream.count, fed + size)]
            fed = min(stream.count, fed + size)
            reading: while true {
                switch receiver.decode(buffer, start: &start, fromPeer: peer) {
                case .needMore: break reading
                case .frame(let batch): batches.append(batch)
                case .refused(let reason): return (batches, reason)
                }
            }
        }
        return (batches, nil)
    }

    @Test func whatIsEncodedDecodesTheSameHoweverTheBytesArrive() throws {
        var random = SplitMix64(seed: Mutator.seed(default: 28))
        for round in 0..<Mutator.iterations(default: 60) {
            let sent = Self.messages(&random, count: Int.random(in: 1...40, using: &random))
            var stream: [UInt8] = []
            let encoded = sender.encode(sent, to: 2, roomBytes: .max, into: &stream)
            #expect(encoded.messages == sent.count && encoded.droppedMessages == 0 && encoded.problems.isEmpty)
            let chunks = (0..<5).map { _ in Int.random(in: 1...9_000, using: &random) }
            let (batches, refusal) = decodeAll(stream, chunks: chunks)
            #expect(refusal == nil, "round \(round): \(refusal ?? "")")
            #expect(batches.count == encoded.frames)
            #expect(batches.flatMap(\.messages) == sent, "round \(round): the messages came back changed")
            #expect(batches.allSatisfy { $0.clusterID == 9 && $0.fromStoreID == 1 && $0.toStoreID == 2 })
        }
    }

    @Test func encodingKeepsToTheRoomAndTheFrameLimit() {
        var random = SplitMix64(seed: 7)
        let sent = Self.messages(&random, count: 30, payloadBytesMax: 2_000)
        var stream: [UInt8] = []
        let encoded = sender.encode(sent, to: 2, roomBytes: 10_000, into: &stream)
        #expect(stream.count <= 10_000)
        #expect(encoded.messages + encoded.droppedMessages == sent.count && encoded.droppedMessages > 0)
        #expect(encoded.problems.isEmpty, "a full queue drops quietly (Raft retransmits)")

        // One message over the frame limit is dropped with a reason; the others still go.
        var big = sent[0]
        big.message.entries[0].data = Data(count: 70 << 10)
        var output: [UInt8] = []
        let withBig = sender.encode([sent[1], big, sent[2]], to: 2, roomBytes: .max, into: &output)
        #expect(withBig.droppedMessages == 1 && withBig.problems.count == 1 && withBig.messages == 2, "\(withBig)")
        #expect(decodeAll(output, chunks: []).batches.flatMap(\.messages) == [sent[1], sent[2]])
    }

    @Test func aLengthOverTheLimitIsRefusedBeforeItsBodyArrives() {
        var start = 0
        let header: [UInt8] = [0x00, 0x01, 0x00, 0x01]  // 65,537 > 64 KiB
        guard case .refused(let reason) = receiver.decode(header, start: &start, fromPeer: 1) else {
            Issue.record("an over-limit length was not refused")
            return
        }
        #expect(reason.contains("over the 65536-byte limit"), "\(reason)")
        var partial = 0
        if case .needMore = receiver.decode([0, 0, 0, 10, 1, 2], start: &partial, fromPeer: 1) {} else {
            Issue.record("a partial frame was not waited for")
        }
        #expect(partial == 0, "a partial frame moves nothing")
    }

    @Test func framesForAnotherClusterStoreOrPeerAreRefused() {
        var random = SplitMix64(seed: 3)
        let sent = Self.messages(&random, count: 2)
        let cases: [(RaftFrameCodec, UInt64, UInt64, String)] = [
            (RaftFrameCodec(clusterID: 8, storeID: 1, limits: Self.limits()), 2, 1, "from cluster 8, this is cluster 9"),
            (sender, 3, 1, "to store 3 does not belong here"),
            (sender, 2, 4, "from store 1 to store 2 does not belong here"),
        ]
        for (codec, destination, peer, expected) in cases {
            var stream: [UInt8] = []
            _ = codec.encode(sent, to: destination, roomBytes: .max, into: &stream)
            let (batches, refusal) = decodeAll(stream, chunks: [], fromPeer: peer)
            #expect(batches.isEmpty && refusal?.contains(expected) == true, "\(refusal ?? "nothing refused")")
        }
    }

    /// Mutated streams: each read step answers needMore, a frame that belongs here, or a
    /// refusal; the read position only moves forward and stays inside the buffer.
    @Test func mutatedStreamsAreRefusedOrWaitedForNeverCrash() {
        var mutator = Mutator(seed: Mutator.seed(default: 2_028))
        var random = SplitMix64(seed: 11)
        let sent = Self.messages(&random, count: 12, payloadBytesMax: 400)
        var stream: [UInt8] = []
        _ = sender.encode(sent, to: 2, roomBytes: .max, into: &stream)
        var outcomes: [String: Int] = [:]
        for _ in 0..<Mutator.iterations(default: 3_000) {
            let mutant = mutator.mutate(stream)
            var start = 0
            var steps = 0
            reading: while steps < 1_000 {
                steps += 1
                let before = start
                switch receiver.decode(mutant, start: &start, fromPeer: 1) {
                case .needMore:
                    outcomes["needMore", default: 0] += 1
                    break reading
                case .frame(let batch):
                    #expect(batch.clusterID == 9 && batch.toStoreID == 2 && batch.fromStoreID == 1)
                    outcomes["frame", default: 0] += 1
                case .refused:
                    outcomes["refused", default: 0] += 1
                    break reading
                }
                #expect(start > before && start <= mutant.count)
            }
            #expect(steps < 1_000)
        }
        #expect(outcomes["refused", default: 0] > 0 && outcomes["needMore", default: 0] > 0, "\(outcomes)")
    }
}
