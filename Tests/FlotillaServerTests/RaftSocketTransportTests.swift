import FlotillaCluster
import FlotillaProto
@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import Foundation
import Logging
import Testing

/// Two or three transports in one process on loopback, pumped by the test as store threads
/// would pump them.
@Suite("Raft transport over TCP")
struct RaftSocketTransportTests {
    let logger = Logger(label: "test")

    func message(region: UInt64, index: UInt64, payloadBytes: Int = 16) -> Flotilla_V1_RaftMessage {
        var message = Flotilla_V1_RaftMessage()
        message.regionID = region
        message.message.index = index
        var entry = Flotilla_V1_RaftEntry()
        entry.index = index
        entry.data = Data((0..<payloadBytes).map { UInt8(truncatingIfNeeded: $0 &+ Int(index)) })
        message.message.entries = [entry]
        return message
    }

    static let secret = Array("the-cluster-secret-of-the-tests".utf8)

    func transport(_ storeID: UInt64, ports: [UInt64: Int], clusterID: UInt64 = 5, secret: [UInt8] = Self.secret,
                   limits: RaftTransportLimits = RaftTransportLimits()) throws -> RaftSocketTransport {
        var peers: [UInt64: HostPort] = [:]
        for (peer, port) in ports where peer != storeID { peers[peer] = HostPort("127.0.0.1:\(port)") }
        return try RaftSocketTransport(listen: HostPort("127.0.0.1:\(ports[storeID] ?? 0)")!, clusterID: clusterID, storeID: storeID,
                                       peers: peers, secret: secret, limits: limits, logger: logger)
    }

    /// Pumps every transport until `done` or the time limit.
    func pump(_ transports: [RaftSocketTransport], seconds: Double = 5, into received: inout [Flotilla_V1_RaftMessageBatch],
              until done: ([Flotilla_V1_RaftMessageBatch]) -> Bool) {
        let deadline = Date().addingTimeInterval(seconds)
        while !done(received) && Date() < deadline {
            for transport in transports { transport.wait(timeoutMilliseconds: 5) { received.append($0) } }
        }
    }

    @Test func framesArriveInOrderWithTheirSenderAndBigMessagesArriveWhole() throws {
        let ports: [UInt64: Int] = [1: try freeLoopbackPort(), 2: try freeLoopbackPort()]
        let one = try transport(1, ports: ports)
        let two = try transport(2, ports: ports)
        // Small frames, then one message far bigger than a socket buffer (partial writes and reads).
        for index in 1...20 { one.send([2: [message(region: 7, index: UInt64(index))]]) }
        one.send([2: [message(region: 7, index: 21, payloadBytes: 6 << 20)]])
        var received: [Flotilla_V1_RaftMessageBatch] = []
        pump([one, two], into: &received) { $0.flatMap(\.messages).count == 21 }
        let messages = received.flatMap(\.messages)
        #expect(messages.map(\.message.index) == Array(1...21))
        #expect(received.allSatisfy { $0.fromStoreID == 1 && $0.toStoreID == 2 && $0.clusterID == 5 })
        #expect(messages.last == message(region: 7, index: 21, payloadBytes: 6 << 20))
        #expect(one.droppedMessages == 0 && two.framesReceived == received.count)
    }

    @Test func messagesToAStoreThatIsDownAreDroppedAndTheLinkComesBackWhenItStarts() throws {
        let ports: [UInt64: Int] = [1: try freeLoopbackPort(), 2: try freeLoopbackPort()]
        let one = try transport(1, ports: ports)
        var received: [Flotilla_V1_RaftMessageBatch] = []
        // Store 2 is not listening: the connection is refused and what was sent is dropped.
        one.send([2: [message(region: 1, index: 1)]])
        pump([one], seconds: 0.3, into: &received) { _ in false }
        one.send([2: [message(region: 1, index: 2)]])
        #expect(one.droppedMessages >= 1)
        // Store 2 starts: after the backoff, messages flow again.
        let two = try transport(2, ports: ports)
        let deadline = Date().addingTimeInterval(5)
        var index: UInt64 = 100
        while received.isEmpty && Date() < deadline {
            index += 1
            one.send([2: [message(region: 1, index: index)]])
            pump([one, two], seconds: 0.05, into: &received) { !$0.isEmpty }
        }
        #expect(!received.isEmpty, "the link reconnected")
        #expect(received.flatMap(\.messages).allSatisfy { $0.message.index > 100 })
    }

    @Test func framesFromAnotherClusterOrForAnotherStoreAreRefusedAndTheirConnectionClosed() throws {
        let ports: [UInt64: Int] = [1: try freeLoopbackPort(), 2: try freeLoopbackPort(), 3: try freeLoopbackPort()]
        let two = try transport(2, ports: ports)
        let foreign = try transport(1, ports: ports, clusterID: 99)
        var received: [Flotilla_V1_RaftMessageBatch] = []
        foreign.send([2: [message(region: 1, index: 1)]])
        pump([foreign, two], seconds: 0.5, into: &received) { _ in false }
        #expect(received.isEmpty, "a frame of cluster 99 is not delivered")

        // Raw frames after a valid handshake: not decodable, over the size limit, addressed to store 3.
        func rawExchange(_ bytes: [UInt8]) throws -> Bool {
            let peer = try RawRaftPeer(port: two.listeningPort)
            try peer.handshake(clusterID: 5, from: 1, to: 2, secret: Self.secret) { two.wait(timeoutMilliseconds: 5) { received.append($0) } }
            peer.write(bytes)
            return peer.waitUntilClosed { two.wait(timeoutMilliseconds: 5) { received.append($0) } }
        }
        #expect(try rawExchange([0, 0, 0, 3, 0xFF, 0xFF, 0xFF]), "an undecodable frame closes the connection")
        #expect(try rawExchange([0x7F, 0xFF, 0xFF, 0xFF]), "a frame over the limit closes the connection")
        var misaddressed = Flotilla_V1_RaftMessageBatch()
        misaddressed.clusterID = 5
        misaddressed.fromStoreID = 1
        misaddressed.toStoreID = 3
        misaddressed.messages = [message(region: 1, index: 1)]
        let payload: [UInt8] = try misaddressed.serializedBytes()
        let length = UInt32(payload.count)
        #expect(try rawExchange([UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)] + payload),
                "a frame for store 3 closes the connection")
        #expect(received.isEmpty, "nothing refused was delivered")
        #expect(two.framesReceived == 0)
    }

    @Test func aStoreWithoutTheSecretIsRefusedBeforeAnyFrameIsRead() throws {
        let ports: [UInt64: Int] = [1: try freeLoopbackPort(), 2: try freeLoopbackPort()]
        let two = try transport(2, ports: ports)
        let impostor = try transport(1, ports: ports, secret: Array("not-the-cluster-secret!!".utf8))
        var received: [Flotilla_V1_RaftMessageBatch] = []
        for index in 1...5 {
            impostor.send([2: [message(region: 1, index: UInt64(index))]])
            pump([impostor, two], seconds: 0.2, into: &received) { _ in false }
        }
        #expect(received.isEmpty)
        #expect(two.connectionsRefused >= 1)
        #expect(impostor.connectionsRefused == 0 || impostor.droppedMessages > 0)

        // Raw: a hello with a forged MAC, and garbage in place of a hello.
        let forged: ([UInt8]) -> [UInt8] = RawRaftPeer.hello(clusterID: 5, from: 1, to: 2, secret: Array("guess-guess-guess-guess".utf8))
        let garbage: ([UInt8]) -> [UInt8] = { _ in [UInt8](repeating: 0xFF, count: RaftHandshake.helloBytes) }
        for hello in [forged, garbage] {
            let peer = try RawRaftPeer(port: two.listeningPort)
            let challenge = peer.read(RaftHandshake.challengeBytes) { two.wait(timeoutMilliseconds: 5) { received.append($0) } }
            #expect(challenge.count == RaftHandshake.challengeBytes)
            peer.write(hello(challenge))
            #expect(peer.waitUntilClosed { two.wait(timeoutMilliseconds: 5) { received.append($0) } })
        }
        #expect(received.isEmpty)
    }

    @Test func aConnectorChecksTheAcceptorsProof() throws {
        // A listener that answers the hello with a wrong proof: the connector sends no frame.
        let ports: [UInt64: Int] = [1: try freeLoopbackPort(), 2: try freeLoopbackPort()]
        let one = try transport(1, ports: ports)
        let listener = try RawRaftListener(port: ports[2] ?? 0)
        one.send([2: [message(region: 1, index: 1)]])
        var received: [Flotilla_V1_RaftMessageBatch] = []
        let peer = try #require(listener.accept { one.wait(timeoutMilliseconds: 5) { received.append($0) } })
        peer.write(RaftHandshake.challenge(nonce: RaftHandshake.nonce()))
        let hello = peer.read(RaftHandshake.helloBytes) { one.wait(timeoutMilliseconds: 5) { received.append($0) } }
        #expect(hello.count == RaftHandshake.helloBytes)
        peer.write([UInt8](repeating: 7, count: RaftHandshake.proofBytes))
        #expect(peer.waitUntilClosed { one.wait(timeoutMilliseconds: 5) { received.append($0) } }, "the connector closes on a wrong proof")
        #expect(one.connectionsRefused == 1)
        #expect(one.framesSent >= 1 && one.droppedMessages >= 1, "the queued frame was never written")
    }

    @Test func slowIdleAndSurplusPeersAreCutOff() throws {
        var limits = RaftTransportLimits()
        limits.handshakeTimeoutMilliseconds = 300
        limits.idleTimeoutMilliseconds = 600
        limits.inboundConnectionsMax = 4
        let two = try transport(2, ports: [1: try freeLoopbackPort(), 2: 0], limits: limits)
        var received: [Flotilla_V1_RaftMessageBatch] = []
        let pump = { two.wait(timeoutMilliseconds: 5) { received.append($0) } }
        // A peer that connects and never says hello.
        let silent = try RawRaftPeer(port: two.listeningPort)
        #expect(silent.waitUntilClosed(seconds: 3, pump: pump), "handshake timeout")
        // An authenticated peer that sends half a frame and stalls: its buffer is freed.
        let stalled = try RawRaftPeer(port: two.listeningPort)
        try stalled.handshake(clusterID: 5, from: 1, to: 2, secret: Self.secret, pump: pump)
        stalled.write([0x00, 0x10, 0x00, 0x00] + [UInt8](repeating: 1, count: 1_000))
        #expect(stalled.waitUntilClosed(seconds: 3, pump: pump), "a stalled frame times out")
        // More connections than the bound: the surplus is closed at once.
        let crowd = try (0..<6).map { _ in try RawRaftPeer(port: two.listeningPort) }
        for _ in 0..<20 { pump() }
        let closed = crowd.filter { $0.waitUntilClosed(seconds: 0.05, pump: pump) }.count
        #expect(closed >= 2, "at most 4 inbound connections at once")
        // The last refusals may still be in the accept loop on a machine busy with other tests.
        let deadline = ContinuousClock.now + .seconds(5)
        while two.connectionsRefused < 4 && ContinuousClock.now < deadline { pump() }
        #expect(two.connectionsRefused >= 4)
        #expect(received.isEmpty)
    }

    @Test func partialFramesBeyondTheInboundByteBoundCloseTheirConnection() throws {
        var limits = RaftTransportLimits()
        limits.inboundBufferedBytesMax = 1 << 20
        let two = try transport(2, ports: [1: try freeLoopbackPort(), 2: 0], limits: limits)
        let pump = { two.wait(timeoutMilliseconds: 5) { _ in } }
        let peer = try RawRaftPeer(port: two.listeningPort)
        try peer.handshake(clusterID: 5, from: 1, to: 2, secret: Self.secret, pump: pump)
        // A frame that announces 4 MiB and sends 1.5 MiB of it: over the 1 MiB bound.
        peer.write([0x00, 0x40, 0x00, 0x00] + [UInt8](repeating: 3, count: 3 << 19))
        #expect(peer.waitUntilClosed(seconds: 3, pump: pump))
        #expect(two.connectionsRefused == 1)
    }

    @Test func theRaftAddressMustBeFreeAndResolvable() throws {
        let one = try transport(1, ports: [1: 0])
        let taken = HostPort("127.0.0.1:\(one.listeningPort)")!
        #expect(throws: ConfigError.self) {
            try RaftSocketTransport(listen: taken, clusterID: 5, storeID: 2, peers: [:], secret: Self.secret, logger: logger)
        }
        do {
            _ = try RaftSocketTransport(listen: taken, clusterID: 5, storeID: 2, peers: [:], secret: Self.secret, logger: logger)
        } catch {
            #expect(error.description.contains("cannot listen for Raft traffic on 127.0.0.1:\(one.listeningPort)"), "\(error)")
        }
        #expect(throws: ConfigError.self) {
            try RaftSocketTransport(listen: HostPort("no-such-host.invalid:1")!, clusterID: 5, storeID: 2, peers: [:], secret: Self.secret, logger: logger)
        }
    }

    @Test func frameCuttingKeepsEveryMessageAndBoundsFrames() {
        let messages = (1...10).map { message(region: 1, index: UInt64($0), payloadBytes: 1_000) }
        var start = 0
        var frames: [Range<Int>] = []
        while start < messages.count {
            let end = RaftFrameCodec.frameEnd(messages, from: start, bytesTarget: 3_000)
            frames.append(start..<end)
            start = end
        }
        #expect(frames.map(\.count).reduce(0, +) == 10)
        #expect(frames.allSatisfy { $0.count >= 1 && $0.count <= 3 })
        // One message bigger than the target still goes, alone.
        #expect(RaftFrameCodec.frameEnd([message(region: 1, index: 1, payloadBytes: 10_000)], from: 0, bytesTarget: 3_000) == 1)
    }
}
