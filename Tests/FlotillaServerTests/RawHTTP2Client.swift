@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import Foundation
import NIOCore
import NIOHPACK

/// An HTTP/2 client written by hand over a socket, so tests can send what a well-behaved client
/// library never would: malformed headers, more streams than advertised. Reads poll (1 ms) and
/// the waiting is async, so a test never holds a thread of the cooperative pool that the
/// in-process server it talks to needs (on two cores the pool has two).
final class RawHTTP2Client {
    struct Frame {
        var type: UInt8
        var flags: UInt8
        var stream: UInt32
        var payload: [UInt8]
        /// A HEADERS frame's block, decoded once as it arrived (HPACK is stateful).
        var headers: HPACKHeaders?
    }

    let fd: Int32
    private var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
    private var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
    private var input: [UInt8] = []
    private(set) var nextStream: UInt32 = 1
    /// The server's SETTINGS, by parameter.
    private(set) var serverSettings: [UInt16: UInt32] = [:]

    /// Connects, sends the preface, and takes and acknowledges the server's SETTINGS.
    static func connect(port: Int) async throws -> RawHTTP2Client {
        let client = try RawHTTP2Client(port: port)
        let deadline = Date().addingTimeInterval(10)
        while client.serverSettings.isEmpty && Date() < deadline {
            client.takeSettings()
            if client.serverSettings.isEmpty { try? await Task.sleep(for: .milliseconds(5)) }
        }
        return client
    }

    private init(port: Int) throws {
        fd = try connectLoopback(port: port, receiveTimeoutMicroseconds: 1_000)
        write(Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8))
        writeFrame(type: 0x4, flags: 0, stream: 0, payload: [])
    }

    private func takeSettings() {
        do {
            for frame in readFrames() where frame.type == 0x4 && frame.flags & 1 == 0 {
                for offset in stride(from: 0, to: frame.payload.count - 5, by: 6) {
                    let id = UInt16(frame.payload[offset]) << 8 | UInt16(frame.payload[offset + 1])
                    let value = frame.payload[(offset + 2)..<(offset + 6)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                    serverSettings[id] = value
                }
                writeFrame(type: 0x4, flags: 0x1, stream: 0, payload: [])
            }
        }
    }

    deinit { close(fd) }

    func write(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func writeFrame(type: UInt8, flags: UInt8, stream: UInt32, payload: [UInt8]) {
        let length = UInt32(payload.count)
        var bytes: [UInt8] = [UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type, flags]
        bytes += [UInt8(stream >> 24 & 0x7F), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream & 0xFF)]
        write(bytes + payload)
    }

    /// Opens a stream with a gRPC request to `path` with `extra` headers; with `message`, sends
    /// it as one length-prefixed gRPC message and ends the stream. Returns the stream id.
    @discardableResult
    func request(path: String, extra: [(String, String)] = [], message: [UInt8]? = []) throws -> UInt32 {
        var headers = HPACKHeaders([(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
                                    ("content-type", "application/grpc"), ("te", "trailers")])
        for (name, value) in extra { headers.add(name: name, value: value) }
        var block = ByteBufferAllocator().buffer(capacity: 256)
        try encoder.encode(headers: headers, to: &block)
        let stream = nextStream
        nextStream += 2
        writeFrame(type: 0x1, flags: message == nil ? 0x4 : 0x4, stream: stream, payload: Array(block.readableBytesView))
        if let message {
            let length = UInt32(message.count)
            let body: [UInt8] = [0, UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)] + message
            writeFrame(type: 0x0, flags: 0x1, stream: stream, payload: body)
        }
        return stream
    }

    /// Frames that arrived within the socket's short timeout (headers decoded on the way, so
    /// the HPACK state stays in step).
    func readFrames() -> [Frame] {
        var scratch = [UInt8](repeating: 0, count: 64 << 10)
        let got = scratch.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if got > 0 { input += scratch[0..<got] }
        var frames: [Frame] = []
        while input.count >= 9 {
            let length = Int(input[0]) << 16 | Int(input[1]) << 8 | Int(input[2])
            guard input.count >= 9 + length else { break }
            let stream = (UInt32(input[5]) << 24 | UInt32(input[6]) << 16 | UInt32(input[7]) << 8 | UInt32(input[8])) & 0x7FFF_FFFF
            var frame = Frame(type: input[3], flags: input[4], stream: stream, payload: Array(input[9..<(9 + length)]))
            if frame.type == 0x1 {
                var buffer = ByteBufferAllocator().buffer(bytes: frame.payload)
                frame.headers = try? decoder.decodeHeaders(from: &buffer)
            }
            frames.append(frame)
            input.removeFirst(9 + length)
        }
        return frames
    }

    /// Reads until `done` says so or `seconds` pass; returns every frame read.
    func collect(seconds: Double = 10, until done: ([Frame]) -> Bool) async -> [Frame] {
        var frames: [Frame] = []
        let deadline = Date().addingTimeInterval(seconds)
        while !done(frames) && Date() < deadline {
            let new = readFrames()
            frames += new
            if new.isEmpty { try? await Task.sleep(for: .milliseconds(2)) }
        }
        return frames
    }
}
