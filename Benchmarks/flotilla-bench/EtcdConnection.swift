import Foundation
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import SwiftProtobuf

/// A unary gRPC call to etcd that did not succeed: its gRPC status, or a broken connection.
struct EtcdCallError: Error, CustomStringConvertible {
    /// gRPC status code (14: unavailable); nil when the connection failed under the call.
    let status: Int?
    let message: String
    /// Worth another try on another connection: the member was unavailable or the
    /// connection went away.
    var isRetriable: Bool { status == nil || status == 14 }
    var description: String { "etcd call failed: \(status.map { "gRPC status \($0)" } ?? "connection lost"): \(message)" }
}

/// One HTTP/2 connection to an etcd member that carries unary gRPC calls, each on a stream of
/// its own. It exists because of etcd's pings: etcd's gRPC server sends PING frames to
/// estimate bandwidth, hundreds a second on a busy connection, and swift-nio-http2's default
/// limit on inbound control frames (200 per 30 s), which grpc-swift-nio-transport's client
/// keeps and does not let a caller change, closes the connection with ENHANCE_YOUR_CALM — the
/// old driver reconnected dozens of times a run. Here the limit is `controlFramesPerSecondMax`.
final class EtcdConnection: Sendable {
    /// Inbound PING/SETTINGS frames allowed per second (etcd's bandwidth-estimation pings).
    static let controlFramesPerSecondMax = 100_000
    /// Largest response message accepted (etcd's default request limit is 1.5 MiB; ranges of
    /// the benchmark are far smaller).
    static let responseBytesMax = 16 << 20

    private let channel: any Channel
    private let multiplexer: NIOHTTP2Handler.AsyncStreamMultiplexer<Void>
    private let authority: String

    private init(channel: any Channel, multiplexer: NIOHTTP2Handler.AsyncStreamMultiplexer<Void>, authority: String) {
        self.channel = channel
        self.multiplexer = multiplexer
        self.authority = authority
    }

    /// Whether the connection is still up (a closed one is replaced by the caller).
    var isActive: Bool { channel.isActive }

    static func connect(host: String, port: Int, group: any EventLoopGroup) async throws -> EtcdConnection {
        var configuration = NIOHTTP2Handler.Configuration()
        configuration.connection.controlFrameRateLimit.maximumCount = controlFramesPerSecondMax
        configuration.connection.controlFrameRateLimit.windowLength = .seconds(1)
        configuration.connection.initialSettings = [
            HTTP2Setting(parameter: .enablePush, value: 0),
            HTTP2Setting(parameter: .initialWindowSize, value: 1 << 20),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 16_384),
        ]
        configuration.connection.targetWindowSize = 8 << 20
        configuration.stream.targetWindowSize = 1 << 20
        let http2 = configuration
        let (channel, multiplexer) = try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .connect(host: host, port: port) { channel in
                channel.configureAsyncHTTP2Pipeline(mode: .client, configuration: http2) { stream in
                    stream.eventLoop.makeSucceededVoidFuture()
                }.map { (channel as any Channel, $0) }
            }
        return EtcdConnection(channel: channel, multiplexer: multiplexer, authority: "\(host):\(port)")
    }

    func close() {
        channel.close(promise: nil)
    }

    /// Calls `path` (for example `/etcdserverpb.KV/Put`) with `request`; returns the response.
    func unary<Response: SwiftProtobuf.Message>(_ path: String, _ request: some SwiftProtobuf.Message,
                                                as _: Response.Type = Response.self) async throws -> Response {
        let body: [UInt8] = try request.serializedBytes()
        var frame = channel.allocator.buffer(capacity: 5 + body.count)
        frame.writeInteger(UInt8(0))
        frame.writeInteger(UInt32(body.count))
        frame.writeBytes(body)
        let headers = HPACKHeaders([(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
                                    ("content-type", "application/grpc"), ("te", "trailers")])
        let stream: NIOAsyncChannel<HTTP2Frame.FramePayload, HTTP2Frame.FramePayload>
        do {
            stream = try await multiplexer.openStream { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<HTTP2Frame.FramePayload, HTTP2Frame.FramePayload>(wrappingChannelSynchronously: channel)
                }
            }
        } catch {
            throw EtcdCallError(status: nil, message: "\(error)")
        }
        let (status, message, received) = try await stream.executeThenClose { inbound, outbound in
            try await outbound.write(.headers(.init(headers: headers)))
            try await outbound.write(.data(.init(data: .byteBuffer(frame), endStream: true)))
            var received = channel.allocator.buffer(capacity: 256)
            var status: Int?
            var message = ""
            do {
                for try await payload in inbound {
                    switch payload {
                    case .data(let data):
                        guard case .byteBuffer(var bytes) = data.data else { continue }
                        guard received.readableBytes + bytes.readableBytes <= Self.responseBytesMax + 5 else {
                            throw EtcdCallError(status: 8, message: "response over \(Self.responseBytesMax) bytes")
                        }
                        received.writeBuffer(&bytes)
                    case .headers(let frame):
                        // Response headers, or trailers (also a trailers-only response).
                        if let code = frame.headers.first(name: "grpc-status") {
                            status = Int(code) ?? 2
                            message = frame.headers.first(name: "grpc-message") ?? ""
                        }
                    case .rstStream(let code):
                        throw EtcdCallError(status: nil, message: "stream reset: \(code)")
                    default:
                        continue
                    }
                }
            } catch let error as EtcdCallError {
                throw error
            } catch {
                throw EtcdCallError(status: nil, message: "\(error)")
            }
            return (status, message, received)
        }
        guard let status else { throw EtcdCallError(status: nil, message: "the stream ended without a gRPC status") }
        guard status == 0 else { throw EtcdCallError(status: status, message: message) }
        var bytes = received
        guard let compressed = bytes.readInteger(as: UInt8.self), let length = bytes.readInteger(as: UInt32.self),
              compressed == 0, Int(length) == bytes.readableBytes, let payload = bytes.readBytes(length: Int(length)) else {
            throw EtcdCallError(status: 13, message: "malformed gRPC response framing (\(received.readableBytes) bytes)")
        }
        return try Response(serializedBytes: payload)
    }
}
