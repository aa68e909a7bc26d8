import FlotillaProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOPosix
import RaftStore
import Synchronization

/// Inbound store-to-store Raft traffic: one long-lived client stream per peer store, each
/// frame a batch of many regions' messages. Frames from another cluster or for another store
/// are refused with a logged reason.
public struct RaftTransportService: Flotilla_V1_RaftTransport.SimpleServiceProtocol {
    let clusterID: UInt64
    let storeID: UInt64
    let knownStores: Set<UInt64>
    let driver: StoreDriver
    let logger: Logger
    /// Where incoming snapshots are staged as SST files.
    let snapshotDirectory: String
    /// Snapshots received at once; more are refused (the leader retries later).
    let receivesMax: Int
    private let receiving = ReceiveCount()

    public init(clusterID: UInt64, storeID: UInt64, knownStores: Set<UInt64>, driver: StoreDriver, logger: Logger,
                snapshotDirectory: String, receivesMax: Int = 4) {
        self.clusterID = clusterID
        self.storeID = storeID
        self.knownStores = knownStores
        self.driver = driver
        self.logger = logger
        self.snapshotDirectory = snapshotDirectory
        self.receivesMax = receivesMax
    }

    private final class ReceiveCount: Sendable {
        let value = Atomic<Int>(0)
    }

    public func raft(request: RPCAsyncSequence<Flotilla_V1_RaftMessageBatch, any Error>, context: ServerContext) async throws -> Flotilla_V1_RaftTransportDone {
        for try await batch in request {
            guard batch.clusterID == clusterID else {
                logger.warning("refused a Raft stream from another cluster", metadata: ["cluster_id": "\(batch.clusterID)"])
                throw RPCError(code: .failedPrecondition, message: "cluster \(batch.clusterID) is not cluster \(clusterID)")
            }
            guard batch.toStoreID == storeID, knownStores.contains(batch.fromStoreID) else {
                logger.warning("refused a Raft batch", metadata: ["from_store": "\(batch.fromStoreID)", "to_store": "\(batch.toStoreID)"])
                throw RPCError(code: .failedPrecondition, message: "batch from store \(batch.fromStoreID) to store \(batch.toStoreID) does not belong here (store \(storeID))")
            }
            logger.trace("received Raft batch", metadata: ["from_store": "\(batch.fromStoreID)", "messages": "\(batch.messages.count)"])
            driver.deliver(batch)
        }
        return Flotilla_V1_RaftTransportDone()
    }

    /// Receives one region snapshot: chunks are written straight into SST files (never held
    /// whole in memory), checked against the region, the count and the checksum, then handed
    /// to the store loop, which installs them.
    public func snapshot(request: RPCAsyncSequence<Flotilla_V1_SnapshotChunk, any Error>, context: ServerContext) async throws -> Flotilla_V1_SnapshotDone {
        guard receiving.value.add(1, ordering: .relaxed).newValue <= receivesMax else {
            receiving.value.subtract(1, ordering: .relaxed)
            throw RPCError(code: .resourceExhausted, message: "store \(storeID) is receiving \(receivesMax) snapshots already")
        }
        defer { receiving.value.subtract(1, ordering: .relaxed) }
        var builder: SnapshotBuilder?
        do {
            // SST files are written on NIO's blocking-I/O pool, never on an event loop.
            for try await chunk in request {
                if let builder {
                    try await NIOThreadPool.singleton.runIfActive { try builder.add(chunk) }
                    continue
                }
                let header = chunk.message
                guard header.toPeer.storeID == storeID, knownStores.contains(header.fromPeer.storeID) else {
                    throw SnapshotTransferError(reason: "snapshot from store \(header.fromPeer.storeID) to store \(header.toPeer.storeID) does not belong here (store \(storeID))")
                }
                let directory = snapshotDirectory
                builder = try await NIOThreadPool.singleton.runIfActive { try SnapshotBuilder(firstChunk: chunk, stagingDirectory: directory) }
            }
            guard let builder else { throw SnapshotTransferError(reason: "empty stream") }
            let received = try await NIOThreadPool.singleton.runIfActive { try builder.finish() }
            logger.info("received snapshot", metadata: ["region_id": "\(received.header.regionID)",
                                                        "index": "\(received.header.message.snapshot.index)"])
            driver.deliverSnapshot(received)
            return Flotilla_V1_SnapshotDone()
        } catch let error as SnapshotTransferError {
            builder?.abandon()
            logger.warning("refused a snapshot", metadata: ["reason": "\(error.reason)"])
            throw RPCError(code: .invalidArgument, message: error.description)
        } catch {
            builder?.abandon()
            throw error
        }
    }
}

/// Streams region snapshots to other stores: at most `sendsMax` at once and one per
/// (region, peer); a snapshot beyond that is skipped (Raft sends another after its timeout).
/// Chunks are read from the RocksDB snapshot as the stream drains, never all at once.
final class SnapshotSender: Sendable {
    private let addresses: [UInt64: HostPort]
    private let sendsMax: Int
    private let logger: Logger
    private let inFlight = Mutex<Set<[UInt64]>>([])
    let sentCount = Atomic<Int>(0)

    init(addresses: [UInt64: HostPort], sendsMax: Int, logger: Logger) {
        self.addresses = addresses
        self.sendsMax = sendsMax
        self.logger = logger
    }

    func send(_ snapshot: OutgoingSnapshot) {
        let key = [snapshot.regionID, snapshot.header.toPeer.id]
        guard let address = addresses[snapshot.toStoreID] else { return }
        let admitted = inFlight.withLock { inFlight -> Bool in
            guard inFlight.count < sendsMax, !inFlight.contains(key) else { return false }
            inFlight.insert(key)
            return true
        }
        guard admitted else {
            logger.debug("snapshot skipped: one is in flight", metadata: ["region_id": "\(snapshot.regionID)"])
            return
        }
        Task.detached { [self] in
            defer { _ = inFlight.withLock { $0.remove(key) } }
            do {
                try await stream(snapshot, to: address)
                sentCount.add(1, ordering: .relaxed)
                logger.info("sent snapshot", metadata: ["region_id": "\(snapshot.regionID)", "to_store": "\(snapshot.toStoreID)",
                                                        "pairs": "\(snapshot.reader.pairCount)"])
            } catch {
                logger.warning("snapshot send failed", metadata: ["region_id": "\(snapshot.regionID)", "to_store": "\(snapshot.toStoreID)",
                                                                  "error": "\(error)"])
            }
        }
    }

    private func stream(_ snapshot: OutgoingSnapshot, to address: HostPort) async throws {
        let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: address.host, port: address.port), transportSecurity: .plaintext)
        var options = CallOptions.defaults
        options.timeout = .seconds(600)
        try await withGRPCClient(transport: transport) { client in
            let raft = Flotilla_V1_RaftTransport.Client(wrapping: client)
            _ = try await raft.snapshot(request: StreamingClientRequest { writer in
                // Chunks are read from RocksDB on NIO's blocking-I/O pool, not on an event loop.
                let reader = snapshot.reader
                while let chunk = try await NIOThreadPool.singleton.runIfActive({ try reader.nextChunk() }) {
                    try await writer.write(chunk)
                }
            }, options: options)
        }
    }
}

/// Outbound Raft traffic to one peer store: one long-lived gRPC stream at a time, fed from a
/// bounded queue that belongs to that connection; everything queued while a frame is being
/// written goes out in the next frame. Between connections (the peer is down or restarting)
/// messages are dropped, as are messages beyond the queue bound: Raft retransmits.
/// Reconnects with jittered exponential backoff; drops are counted and logged.
final class PeerStoreLink: Sendable {
    let storeID: UInt64
    private let clusterID: UInt64
    private let fromStoreID: UInt64
    private let queueMessagesMax: Int
    private let dropped = Atomic<Int>(0)
    private let finished = Atomic<Bool>(false)

    private struct Queue {
        var messages: [Flotilla_V1_RaftMessage] = []
        /// Messages are accepted only while a connection is up.
        var connected = false
        var writer: CheckedContinuation<[Flotilla_V1_RaftMessage]?, Never>?
    }

    /// The current connection's queue: everything queued while the previous frame was being
    /// written goes out as one frame.
    private let queue = Mutex(Queue())

    init(storeID: UInt64, clusterID: UInt64, fromStoreID: UInt64, queueMessagesMax: Int) {
        self.storeID = storeID
        self.clusterID = clusterID
        self.fromStoreID = fromStoreID
        self.queueMessagesMax = queueMessagesMax
    }

    func enqueue(_ messages: [Flotilla_V1_RaftMessage]) {
        let (writer, frame) = queue.withLock { queue -> (CheckedContinuation<[Flotilla_V1_RaftMessage]?, Never>?, [Flotilla_V1_RaftMessage]) in
            guard queue.connected, queue.messages.count + messages.count <= queueMessagesMax else {
                dropped.add(messages.count, ordering: .relaxed)
                return (nil, [])
            }
            queue.messages += messages
            guard let writer = queue.writer else { return (nil, []) }
            queue.writer = nil
            return (writer, Self.takeFrame(&queue.messages))
        }
        writer?.resume(returning: frame)
    }

    func finish() {
        finished.store(true, ordering: .relaxed)
        disconnect()
    }

    private func connect() {
        queue.withLock { $0.connected = true }
    }

    /// Closes the current connection's queue: what it holds is dropped (Raft retransmits).
    private func disconnect() {
        let writer = queue.withLock { queue -> CheckedContinuation<[Flotilla_V1_RaftMessage]?, Never>? in
            queue.connected = false
            dropped.add(queue.messages.count, ordering: .relaxed)
            queue.messages = []
            defer { queue.writer = nil }
            return queue.writer
        }
        writer?.resume(returning: nil)
    }

    /// Frames stay well under the receiver's 64 MiB message limit: about this many bytes of
    /// entries at most (one message always goes, whatever its size).
    static let frameBytesMax = 16 << 20

    /// The first queued messages that fit in one frame, removed from the queue.
    private static func takeFrame(_ messages: inout [Flotilla_V1_RaftMessage]) -> [Flotilla_V1_RaftMessage] {
        var bytes = 0
        var count = 0
        for message in messages {
            let size = 96 + message.message.context.count + message.message.entries.reduce(0) { $0 + $1.data.count + 24 }
            if count > 0 && bytes + size > frameBytesMax { break }
            bytes += size
            count += 1
        }
        if count == messages.count {
            defer { messages = [] }
            return messages
        }
        let frame = Array(messages.prefix(count))
        messages.removeFirst(count)
        return frame
    }

    /// The next frame's messages (waits for some); nil when the connection's queue closed.
    private func nextFrame() async -> [Flotilla_V1_RaftMessage]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let immediate = queue.withLock { queue -> [Flotilla_V1_RaftMessage]?? in
                    if !queue.connected || Task.isCancelled { return .some(nil) }
                    if !queue.messages.isEmpty { return .some(Self.takeFrame(&queue.messages)) }
                    queue.writer = continuation
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            self.disconnect()
        }
    }

    /// Connects and streams until `finish()`; reconnects after failures.
    func run(address: HostPort, logger: Logger) async {
        var backoffMilliseconds = 50
        while !Task.isCancelled && !finished.load(ordering: .relaxed) {
            connect()
            do {
                // Our own backoff decides when to retry: the channel's is kept short, and a
                // stream fails at once instead of waiting for a peer that is down.
                var config = HTTP2ClientTransport.Posix.Config.defaults
                config.backoff = .init(initial: .milliseconds(50), max: .seconds(1), multiplier: 2, jitter: 0.2)
                let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: address.host, port: address.port),
                                                               transportSecurity: .plaintext, config: config)
                var options = CallOptions.defaults
                options.waitForReady = false
                let (storeID, clusterID, fromStoreID) = (self.storeID, self.clusterID, self.fromStoreID)
                try await withGRPCClient(transport: transport) { client in
                    let raft = Flotilla_V1_RaftTransport.Client(wrapping: client)
                    _ = try await raft.raft(request: StreamingClientRequest { writer in
                        while let messages = await self.nextFrame() {
                            var batch = Flotilla_V1_RaftMessageBatch()
                            batch.clusterID = clusterID
                            batch.fromStoreID = fromStoreID
                            batch.toStoreID = storeID
                            batch.messages = messages
                            logger.trace("sending Raft batch", metadata: ["to_store": "\(storeID)", "messages": "\(messages.count)"])
                            try await writer.write(batch)
                        }
                    }, options: options)
                }
                backoffMilliseconds = 50
            } catch {
                let drops = dropped.exchange(0, ordering: .relaxed)
                logger.info("Raft link down, reconnecting", metadata: ["to_store": "\(storeID)", "error": "\(error)", "dropped_messages": "\(drops)"])
            }
            // This connection's queue is closed whatever happened to it; the next one is new.
            disconnect()
            if finished.load(ordering: .relaxed) { return }
            let jitter = Int.random(in: 0...backoffMilliseconds / 2)
            try? await Task.sleep(for: .milliseconds(backoffMilliseconds + jitter))
            backoffMilliseconds = min(backoffMilliseconds * 2, 1_000)
        }
    }
}
