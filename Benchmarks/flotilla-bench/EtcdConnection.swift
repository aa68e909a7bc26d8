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
        // One handler per call on the stream's channel: it sends, gathers and completes a
        // promise on the event loop, so a call costs two hops between the loop and the task.
        let promise = channel.eventLoop.makePromise(of: UnaryCallHandler.Outcome.self)
        let requestFrame = frame
        do {
            try await multiplexer.openStream { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandler(UnaryCallHandler(headers: headers, body: requestFrame, promise: promise))
                }
            }
        } catch {
            promise.fail(EtcdCallError(status: nil, message: "\(error)"))
        }
        let (status, message, received) = try await promise.futureResult.get()
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

/// The handler of one unary call's stream: writes the request when the stream is up, gathers
/// the response's messages and trailers, and completes `promise` once (at the trailers, or when
/// the stream closes or fails).
private final class UnaryCallHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload
    typealias Outcome = (status: Int?, message: String, received: ByteBuffer)

    private let headers: HPACKHeaders
    private let body: ByteBuffer
    private let promise: EventLoopPromise<Outcome>
    private var received = ByteBuffer()
    private var status: Int?
    private var message = ""
    private var sent = false
    private var completed = false

    init(headers: HPACKHeaders, body: ByteBuffer, promise: EventLoopPromise<Outcome>) {
        self.headers = headers
        self.body = body
        self.promise = promise
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { send(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        send(context)
        context.fireChannelActive()
    }

    private func send(_ context: ChannelHandlerContext) {
        guard !sent else { return }
        sent = true
        context.write(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(body), endStream: true))), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .data(let frame):
            guard case .byteBuffer(var bytes) = frame.data else { return }
            guard received.readableBytes + bytes.readableBytes <= EtcdConnection.responseBytesMax + 5 else {
                fail(EtcdCallError(status: 8, message: "response over \(EtcdConnection.responseBytesMax) bytes"), context: context)
                return
            }
            received.writeBuffer(&bytes)
        case .headers(let frame):
            // Response headers, or trailers (also a trailers-only response).
            if let code = frame.headers.first(name: "grpc-status") {
                status = Int(code) ?? 2
                message = frame.headers.first(name: "grpc-message") ?? ""
            }
            if frame.endStream { complete() }
        case .rstStream(let code):
            fail(EtcdCallError(status: nil, message: "stream reset: \(code)"), context: context)
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        complete()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(EtcdCallError(status: nil, message: "\(error)"), context: context)
    }

    private func complete() {
        guard !completed else { return }
        completed = true
        promise.succeed((status, message, received))
    }

    private func fail(_ error: EtcdCallError, context: ChannelHandlerContext) {
        if !completed {
            completed = true
            promise.fail(error)
        }
        context.close(promise: nil)
    }
}
