import FlotillaProto
@testable import FlotillaServer
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

    func transport(_ storeID: UInt64, ports: [UInt64: Int], clusterID: UInt64 = 5) throws -> RaftSocketTransport {
        var peers: [UInt64: HostPort] = [:]
        for (peer, port) in ports where peer != storeID { peers[peer] = HostPort("127.0.0.1:\(port)") }
        return try RaftSocketTransport(listen: HostPort("127.0.0.1:\(ports[storeID] ?? 0)")!, clusterID: clusterID, storeID: storeID,
                                       peers: peers, logger: logger)
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

        // Raw frames: not decodable, over the size limit, addressed to store 3.
        func rawExchange(_ bytes: [UInt8]) throws -> Bool {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var address = try RaftSocketTransport.resolve(HostPort("127.0.0.1:\(two.listeningPort)")!)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            #expect(connected == 0)
            _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            var timeout = timeval(tv_sec: 0, tv_usec: 10_000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let deadline = Date().addingTimeInterval(3)
            var scratch = [UInt8](repeating: 0, count: 16)
            while Date() < deadline {
                two.wait(timeoutMilliseconds: 5) { received.append($0) }
                let count = scratch.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count == 0 { return true }  // closed by the transport
            }
            return false
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

    @Test func theRaftAddressMustBeFreeAndResolvable() throws {
        let one = try transport(1, ports: [1: 0])
        let taken = HostPort("127.0.0.1:\(one.listeningPort)")!
        #expect(throws: ConfigError.self) {
            try RaftSocketTransport(listen: taken, clusterID: 5, storeID: 2, peers: [:], logger: logger)
        }
        do {
            _ = try RaftSocketTransport(listen: taken, clusterID: 5, storeID: 2, peers: [:], logger: logger)
        } catch {
            #expect(error.description.contains("cannot listen for Raft traffic on 127.0.0.1:\(one.listeningPort)"), "\(error)")
        }
        #expect(throws: ConfigError.self) {
            try RaftSocketTransport(listen: HostPort("no-such-host.invalid:1")!, clusterID: 5, storeID: 2, peers: [:], logger: logger)
        }
    }

    @Test func frameCuttingKeepsEveryMessageAndBoundsFrames() {
        let messages = (1...10).map { message(region: 1, index: UInt64($0), payloadBytes: 1_000) }
        var start = 0
        var frames: [Range<Int>] = []
        while start < messages.count {
            let end = RaftSocketTransport.frameEnd(messages, from: start, bytesTarget: 3_000)
            frames.append(start..<end)
            start = end
        }
        #expect(frames.map(\.count).reduce(0, +) == 10)
        #expect(frames.allSatisfy { $0.count >= 1 && $0.count <= 3 })
        // One message bigger than the target still goes, alone.
        #expect(RaftSocketTransport.frameEnd([message(region: 1, index: 1, payloadBytes: 10_000)], from: 0, bytesTarget: 3_000) == 1)
    }
}
