import FlotillaProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization

/// Why a request on a command stream got no answer.
struct CommandChannelError: Error, CustomStringConvertible {
    let description: String
}

/// The client's long-lived command stream to one store (`KV.Commands`): requests from any
/// task are queued and written many per message — everything queued while the previous
/// message was being written goes in the next — and answers are matched back by id. A broken
/// stream fails every request in flight (the caller retries, with the same write tags) and is
/// reopened with jittered backoff. Each request has a deadline; a reaper fails it when passed.
final class CommandChannel: Sendable {
    private struct Pending {
        let continuation: CheckedContinuation<Flotilla_V1_CommandResponseItem, Error>
        let deadline: ContinuousClock.Instant
    }

    private struct State {
        var outgoing: [Flotilla_V1_CommandRequestItem] = []
        var pending: [UInt64: Pending] = [:]
        var writer: CheckedContinuation<[Flotilla_V1_CommandRequestItem]?, Never>?
        var nextID: UInt64 = 1
        var closed = false
    }

    let storeID: UInt64
    private let client: GRPCClient<HTTP2ClientTransport.Posix>
    private let state = Mutex(State())
    /// Most requests in one message.
    private let itemsPerMessageMax = 1_024
    /// Bytes of requests coalesced into one message: the server refuses a message over
    /// `KVLimits.requestMessageBytesMax`, which would fail every request in it.
    static let messageBytesBudget = KVLimits.requestMessageBytesMax - (64 << 10)

    init(storeID: UInt64, client: GRPCClient<HTTP2ClientTransport.Posix>) {
        self.storeID = storeID
        self.client = client
    }

    /// Sends one request and waits for its answer, until `deadline`.
    func call(deadline: ContinuousClock.Instant, _ fill: (inout Flotilla_V1_CommandRequestItem) -> Void) async throws -> Flotilla_V1_CommandResponseItem {
        var item = Flotilla_V1_CommandRequestItem()
        fill(&item)
        let request = item
        let bytes = request.bytesEstimate
        guard bytes <= Self.messageBytesBudget else {
            throw FlotillaClientError.rejected("a request of about \(bytes) bytes is over the \(KVLimits.requestMessageBytesMax)-byte message limit")
        }
        return try await withCheckedThrowingContinuation { continuation in
            let (writer, batch, refused) = state.withLock { state -> (CheckedContinuation<[Flotilla_V1_CommandRequestItem]?, Never>?, [Flotilla_V1_CommandRequestItem], Bool) in
                guard !state.closed else { return (nil, [], true) }
                var item = request
                item.id = state.nextID
                state.nextID += 1
                state.pending[item.id] = Pending(continuation: continuation, deadline: deadline)
                state.outgoing.append(item)
                guard let writer = state.writer else { return (nil, [], false) }
                state.writer = nil
                return (writer, take(&state), false)
            }
            if refused { continuation.resume(throwing: CommandChannelError(description: "client closed")) }
            writer?.resume(returning: batch)
        }
    }

    /// Keeps the stream open until `close()`, reopening it after failures.
    func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.reapExpired() }
            group.addTask { await self.connectionLoop() }
            await group.waitForAll()
        }
    }

    func close() {
        let (writer, failed) = state.withLock { state -> (CheckedContinuation<[Flotilla_V1_CommandRequestItem]?, Never>?, [Pending]) in
            state.closed = true
            let writer = state.writer
            state.writer = nil
            let failed = Array(state.pending.values)
            state.pending = [:]
            state.outgoing = []
            return (writer, failed)
        }
        writer?.resume(returning: nil)
        for pending in failed { pending.continuation.resume(throwing: CommandChannelError(description: "client closed")) }
    }

    private var isClosed: Bool { state.withLock { $0.closed } }

    private func connectionLoop() async {
        var backoffMilliseconds = 20
        while !isClosed {
            var problem = "stream ended"
            do {
                var options = CallOptions.defaults
                options.waitForReady = false
                options.maxResponseMessageBytes = 256 << 20
                options.maxRequestMessageBytes = KVLimits.requestMessageBytesMax
                try await Flotilla_V1_KV.Client(wrapping: client).commands(request: StreamingClientRequest { writer in
                    while let items = await self.nextOutgoing() {
                        var message = Flotilla_V1_CommandRequest()
                        message.items = items
                        try await writer.write(message)
                    }
                }, options: options) { response in
                    for try await message in response.messages {
                        for item in message.items { self.resolve(item) }
                    }
                }
                backoffMilliseconds = 20
            } catch {
                problem = "store \(storeID): \(error)"
            }
            failInFlight(problem)
            if isClosed { return }
            try? await Task.sleep(for: .milliseconds(backoffMilliseconds + Int.random(in: 0...backoffMilliseconds / 2)))
            backoffMilliseconds = min(backoffMilliseconds * 2, 1_000)
        }
    }

    /// The next requests to write (waits for one); nil once closed or cancelled.
    private func nextOutgoing() async -> [Flotilla_V1_CommandRequestItem]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let immediate = state.withLock { state -> [Flotilla_V1_CommandRequestItem]?? in
                    if state.closed || Task.isCancelled { return .some(nil) }
                    if !state.outgoing.isEmpty { return .some(take(&state)) }
                    state.writer = continuation
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let writer = state.withLock { state -> CheckedContinuation<[Flotilla_V1_CommandRequestItem]?, Never>? in
                defer { state.writer = nil }
                return state.writer
            }
            writer?.resume(returning: nil)
        }
    }

    /// The next message's requests: as many queued as fit `itemsPerMessageMax` and
    /// `messageBytesBudget` (at least one).
    private func take(_ state: inout State) -> [Flotilla_V1_CommandRequestItem] {
        var count = 0
        var bytes = 0
        while count < min(state.outgoing.count, itemsPerMessageMax) {
            let itemBytes = state.outgoing[count].bytesEstimate
            if count > 0 && bytes + itemBytes > Self.messageBytesBudget { break }
            bytes += itemBytes
            count += 1
        }
        let batch = Array(state.outgoing.prefix(count))
        state.outgoing.removeFirst(count)
        return batch
    }

    private func resolve(_ item: Flotilla_V1_CommandResponseItem) {
        let pending = state.withLock { $0.pending.removeValue(forKey: item.id) }
        pending?.continuation.resume(returning: item)
    }

    /// The stream broke: nothing written on it will be answered, nothing queued was sent.
    private func failInFlight(_ problem: String) {
        let failed = state.withLock { state -> [Pending] in
            let failed = Array(state.pending.values)
            state.pending = [:]
            state.outgoing = []
            return failed
        }
        for pending in failed { pending.continuation.resume(throwing: CommandChannelError(description: problem)) }
    }

    private func reapExpired() async {
        while !isClosed {
            try? await Task.sleep(for: .milliseconds(50))
            let now = ContinuousClock.now
            let expired = state.withLock { state -> [Pending] in
                let ids = state.pending.filter { $0.value.deadline <= now }.map(\.key)
                return ids.compactMap { state.pending.removeValue(forKey: $0) }
            }
            for pending in expired {
                pending.continuation.resume(throwing: CommandChannelError(description: "store \(storeID) did not answer in time"))
            }
        }
    }
}

extension Flotilla_V1_CommandRequestItem {
    /// An upper estimate of this request's encoded size (keys, values and a fixed overhead per
    /// field), cheap enough for every request.
    var bytesEstimate: Int {
        let payload: Int
        switch request {
        case .get(let request): payload = request.key.count
        case .batchGet(let request): payload = request.keys.reduce(0) { $0 + $1.count + 4 }
        case .put(let request): payload = request.key.count + request.value.count
        case .batchPut(let request): payload = request.pairs.reduce(0) { $0 + $1.key.count + $1.value.count + 12 }
        case .delete(let request): payload = request.key.count
        case .deleteRange(let request): payload = request.startKey.count + request.endKey.count
        case .scan(let request): payload = request.startKey.count + request.endKey.count
        case .compareAndSwap(let request): payload = request.key.count + request.expectedValue.count + request.newValue.count
        case nil: payload = 0
        }
        return payload + 128
    }
}
