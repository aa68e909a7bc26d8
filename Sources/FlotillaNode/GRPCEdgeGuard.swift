import GRPCNIOTransportHTTP2
import NIOCore
import NIOHPACK
import NIOHTTP2

/// Guards a gRPC server's HTTP/2 edge against what the libraries below it handle badly:
///
/// - **Headers.** grpc-swift-2 (2.4.3) traps on a negative `grpc-timeout` (`-1S` passes its
///   parser and fails a precondition), killing the process. Every stream's request headers are
///   checked here first, before the gRPC handler parses them: a `grpc-timeout` that is not 1 to
///   8 ASCII digits and a unit (`H M S m u n`, gRPC's wire format) is answered with
///   INVALID_ARGUMENT naming the header, and the handler never sees the stream.
/// - **Concurrent streams.** swift-nio-http2 treats a stream over the advertised
///   `SETTINGS_MAX_CONCURRENT_STREAMS` as a connection error (GOAWAY PROTOCOL_ERROR), failing
///   every call on the connection, where RFC 9113 §5.1.2 allows refusing that one stream. So the
///   connection is set up with a hard limit of `streamsHardMax` in swift-nio-http2 while the
///   SETTINGS frame sent to the client advertises `streamsAdvertised` (the value is rewritten
///   in the server's first frame), and a stream beyond the advertised limit is refused alone
///   with RST_STREAM REFUSED_STREAM, which gRPC clients retry. Only a client that opens more
///   than `streamsHardMax` at once loses its connection.
/// - **Message size.** A request message over the transport's `maxRequestPayloadSize` is
///   answered RESOURCE_EXHAUSTED naming the limit as soon as its length prefix arrives (the
///   transport itself closes such a stream with a bare CANCELLED).
public struct GRPCEdgeGuard: Sendable {
    /// Concurrent streams a client is told it may open on one connection.
    public var streamsAdvertised: UInt32 = 128
    /// Concurrent streams swift-nio-http2 accepts before closing the connection.
    public var streamsHardMax: UInt32 = 1_024
    /// Largest request message; set from the transport's `maxRequestPayloadSize` by `install`.
    public var messageBytesMax = Int.max

    public init() {}

    /// Installs the guard in a server transport's configuration.
    public func install(in config: inout HTTP2ServerTransport.Posix.Config) {
        precondition(streamsAdvertised > 0 && streamsAdvertised < streamsHardMax)
        config.http2.maxConcurrentStreams = Int(streamsHardMax)
        let advertised = streamsAdvertised
        let hardMax = streamsHardMax
        let messageBytesMax = min(messageBytesMax, config.rpc.maxRequestPayloadSize)
        config.channelDebuggingCallbacks.onAcceptTCPConnection = { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    HTTP2StreamLimitHandler(advertised: advertised, hardMax: hardMax), position: .first)
            }
        }
        config.channelDebuggingCallbacks.onAcceptHTTP2Stream = { stream in
            stream.eventLoop.makeCompletedFuture {
                let limiter = try stream.parent.map { try $0.pipeline.syncOperations.handler(type: HTTP2StreamLimitHandler.self) }
                let refused = limiter?.streamOpened() ?? false
                if let limiter { stream.closeFuture.whenComplete { _ in limiter.streamClosed() } }
                try stream.pipeline.syncOperations.addHandler(GRPCStreamGuardHandler(refused: refused, messageBytesMax: messageBytesMax), position: .first)
            }
        }
    }

    /// Whether `value` is a `grpc-timeout` in gRPC's wire format: 1 to 8 ASCII digits and one
    /// unit character.
    public static func isValidTimeout(_ value: String) -> Bool {
        let bytes = Array(value.utf8)
        guard (2...9).contains(bytes.count), let unit = bytes.last, "HMSmun".utf8.contains(unit) else { return false }
        return bytes.dropLast().allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
    }

    /// Why request headers must not reach the gRPC handler, or nil.
    package static func refusal(of headers: HPACKHeaders) -> String? {
        let timeouts = headers[canonicalForm: "grpc-timeout"]
        guard timeouts.count <= 1 else { return "more than one grpc-timeout header" }
        if let timeout = timeouts.first, !isValidTimeout(String(timeout)) {
            return "grpc-timeout \"\(timeout.prefix(32))\" is malformed: expected 1 to 8 digits and a unit (H, M, S, m, u, n)"
        }
        return nil
    }
}

/// Per connection, at the socket end of the pipeline: rewrites the advertised stream limit in
/// the server's first SETTINGS frame and counts the streams open on the connection.
final class HTTP2StreamLimitHandler: ChannelDuplexHandler, @unchecked Sendable {
    package typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    private let advertised: UInt32
    private let hardMax: UInt32
    private var firstWriteSeen = false
    /// Whether the client was told `advertised`: only then are streams beyond it refused.
    private(set) var rewroteLimit = false
    private(set) var openStreams = 0

    package init(advertised: UInt32, hardMax: UInt32) {
        self.advertised = advertised
        self.hardMax = hardMax
    }

    /// A stream was accepted; returns whether it must be refused (beyond the advertised limit).
    func streamOpened() -> Bool {
        openStreams += 1
        return rewroteLimit && openStreams > Int(advertised)
    }

    func streamClosed() { openStreams -= 1 }

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !firstWriteSeen else { return context.write(data, promise: promise) }
        firstWriteSeen = true
        var buffer = unwrapOutboundIn(data)
        rewroteLimit = Self.rewriteMaxConcurrentStreams(in: &buffer, from: hardMax, to: advertised)
        context.write(wrapOutboundOut(buffer), promise: promise)
    }

    /// In a buffer starting with a SETTINGS frame, replaces a MAX_CONCURRENT_STREAMS value of
    /// `from` by `to`. Returns whether it did.
    static func rewriteMaxConcurrentStreams(in buffer: inout ByteBuffer, from: UInt32, to: UInt32) -> Bool {
        let start = buffer.readerIndex
        guard let length = buffer.getInteger(at: start, as: UInt32.self).map({ Int($0 >> 8) }),
              buffer.getInteger(at: start + 3, as: UInt8.self) == 0x4,   // SETTINGS
              buffer.getInteger(at: start + 4, as: UInt8.self).map({ $0 & 0x1 == 0 }) == true,  // not an ACK
              length % 6 == 0, buffer.readableBytes >= 9 + length else { return false }
        var offset = start + 9
        while offset < start + 9 + length {
            if buffer.getInteger(at: offset, as: UInt16.self) == 0x3, buffer.getInteger(at: offset + 2, as: UInt32.self) == from {
                buffer.setInteger(to, at: offset + 2)
                return true
            }
            offset += 6
        }
        return false
    }
}

/// Per stream, in front of the gRPC handler: refuses a stream beyond the connection's limit,
/// and answers request headers the gRPC library must not parse with INVALID_ARGUMENT.
final class GRPCStreamGuardHandler: ChannelDuplexHandler, RemovableChannelHandler {
    package typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload
    typealias OutboundIn = HTTP2Frame.FramePayload
    package typealias OutboundOut = HTTP2Frame.FramePayload

    private var refused: Bool
    /// Largest gRPC message accepted: a longer one is answered RESOURCE_EXHAUSTED naming the
    /// limit (the transport would close the stream with a bare CANCELLED).
    private let messageBytesMax: Int
    /// The stream was answered here: nothing more reaches the gRPC handler.
    private var answered = false
    /// Response headers already went out (then an answer here is trailers only).
    private var responseHeadersSent = false
    /// Where the request's gRPC framing stands: bytes of the current message still to come,
    /// and the bytes of a 5-byte message prefix read so far.
    private var messageBytesRemaining = 0
    private var prefix: [UInt8] = []

    package init(refused: Bool, messageBytesMax: Int) {
        self.refused = refused
        self.messageBytesMax = messageBytesMax
    }

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .headers = unwrapOutboundIn(data) { responseHeadersSent = true }
        context.write(data, promise: promise)
    }

    package func channelActive(context: ChannelHandlerContext) {
        if refused { refuse(context: context) }
        context.fireChannelActive()
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        if refused && context.channel.isActive { refuse(context: context) }
    }

    private func refuse(context: ChannelHandlerContext) {
        guard !answered else { return }
        answered = true
        context.writeAndFlush(wrapOutboundOut(.rstStream(.refusedStream)), promise: nil)
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            if let reason = GRPCEdgeGuard.refusal(of: headers.headers) {
                return answer(context: context, status: 3, reason)  // INVALID_ARGUMENT
            }
        case .data(let frame):
            if case .byteBuffer(let buffer) = frame.data, let length = oversizedMessageLength(in: buffer) {
                return answer(context: context, status: 8,  // RESOURCE_EXHAUSTED
                              "a request message of \(length) bytes is larger than the \(messageBytesMax)-byte limit")
            }
        default:
            break
        }
        context.fireChannelRead(data)
    }

    /// Follows the gRPC framing (1-byte flag, 4-byte length, message) across DATA frames;
    /// returns the announced length of a message over the limit, or nil.
    private func oversizedMessageLength(in buffer: ByteBuffer) -> Int? {
        var view = buffer.readableBytesView[...]
        while !view.isEmpty {
            if messageBytesRemaining > 0 {
                let skipped = min(messageBytesRemaining, view.count)
                messageBytesRemaining -= skipped
                view = view.dropFirst(skipped)
                continue
            }
            let needed = 5 - prefix.count
            prefix += view.prefix(needed)
            view = view.dropFirst(needed)
            guard prefix.count == 5 else { break }
            let length = prefix[1...4].reduce(0) { $0 << 8 | Int($1) }
            prefix = []
            if length > messageBytesMax { return length }
            messageBytesRemaining = length
        }
        return nil
    }

    /// Answers the stream here with a gRPC status and closes it.
    private func answer(context: ChannelHandlerContext, status: Int, _ reason: String) {
        answered = true
        var trailers = HPACKHeaders()
        if !responseHeadersSent {
            trailers.add(name: ":status", value: "200")
            trailers.add(name: "content-type", value: "application/grpc")
        }
        trailers.add(name: "grpc-status", value: "\(status)")
        trailers.add(name: "grpc-message", value: Self.percentEncoded(reason))
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true)))).whenComplete { _ in
            bound.value.close(promise: nil)
        }
    }

    /// gRPC's percent-encoding of `grpc-message`: printable ASCII but `%` as is, the rest as %XX.
    static func percentEncoded(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            if byte >= 0x20 && byte <= 0x7E && byte != UInt8(ascii: "%") {
                result.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                result += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return result
    }
}

private extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
