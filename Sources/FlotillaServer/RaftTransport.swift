import FlotillaProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
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

    public init(clusterID: UInt64, storeID: UInt64, knownStores: Set<UInt64>, driver: StoreDriver, logger: Logger) {
        self.clusterID = clusterID
        self.storeID = storeID
        self.knownStores = knownStores
        self.driver = driver
        self.logger = logger
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

    public func snapshot(request: RPCAsyncSequence<Flotilla_V1_SnapshotChunk, any Error>, context: ServerContext) async throws -> Flotilla_V1_SnapshotDone {
        throw RPCError(code: .unimplemented, message: "snapshot streaming is not served by this version; followers catch up from the log")
    }
}

/// Outbound Raft traffic to one peer store: one long-lived gRPC stream at a time, fed from a
/// bounded queue that belongs to that connection. Between connections (the peer is down or
/// restarting) batches are dropped, as are batches beyond the queue bound: Raft retransmits.
/// Reconnects with jittered exponential backoff; drops are counted and logged.
final class PeerStoreLink: Sendable {
    let storeID: UInt64
    private let queueBatchesMax: Int
    /// The queue of the current connection, if one is up.
    private let current = Mutex<AsyncStream<Flotilla_V1_RaftMessageBatch>.Continuation?>(nil)
    private let dropped = Atomic<Int>(0)
    private let finished = Atomic<Bool>(false)

    init(storeID: UInt64, queueBatchesMax: Int) {
        self.storeID = storeID
        self.queueBatchesMax = queueBatchesMax
    }

    func enqueue(_ batch: Flotilla_V1_RaftMessageBatch) {
        let result = current.withLock { $0?.yield(batch) }
        switch result {
        case .enqueued?: break
        default: dropped.add(1, ordering: .relaxed)
        }
    }

    func finish() {
        finished.store(true, ordering: .relaxed)
        current.withLock { $0?.finish() }
    }

    /// Connects and streams until `finish()`; reconnects after failures.
    func run(address: HostPort, logger: Logger) async {
        var backoffMilliseconds = 50
        while !Task.isCancelled && !finished.load(ordering: .relaxed) {
            let (queue, continuation) = AsyncStream.makeStream(of: Flotilla_V1_RaftMessageBatch.self,
                                                               bufferingPolicy: .bufferingOldest(queueBatchesMax))
            current.withLock { $0 = continuation }
            do {
                // Our own backoff decides when to retry: the channel's is kept short, and a
                // stream fails at once instead of waiting for a peer that is down.
                var config = HTTP2ClientTransport.Posix.Config.defaults
                config.backoff = .init(initial: .milliseconds(50), max: .seconds(1), multiplier: 2, jitter: 0.2)
                let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: address.host, port: address.port),
                                                               transportSecurity: .plaintext, config: config)
                var options = CallOptions.defaults
                options.waitForReady = false
                let storeID = self.storeID
                try await withGRPCClient(transport: transport) { client in
                    let raft = Flotilla_V1_RaftTransport.Client(wrapping: client)
                    _ = try await raft.raft(request: StreamingClientRequest { writer in
                        for await batch in queue {
                            logger.trace("sending Raft batch", metadata: ["to_store": "\(storeID)", "messages": "\(batch.messages.count)"])
                            try await writer.write(batch)
                        }
                    }, options: options)
                }
                backoffMilliseconds = 50
            } catch {
                let drops = dropped.exchange(0, ordering: .relaxed)
                logger.info("Raft link down, reconnecting", metadata: ["to_store": "\(storeID)", "error": "\(error)", "dropped_batches": "\(drops)"])
            }
            // This connection's queue is closed whatever happened to it; the next one is new.
            current.withLock { $0?.finish(); $0 = nil }
            if finished.load(ordering: .relaxed) { return }
            let jitter = Int.random(in: 0...backoffMilliseconds / 2)
            try? await Task.sleep(for: .milliseconds(backoffMilliseconds + jitter))
            backoffMilliseconds = min(backoffMilliseconds * 2, 1_000)
        }
    }
}
