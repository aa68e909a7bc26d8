import FlotillaCluster
import FlotillaProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOPosix
import RaftStore
import Synchronization

/// Receives region snapshots from other stores (`RaftTransport.Snapshot`; Raft messages
/// themselves go over `RaftSocketTransport`). A snapshot from an unknown store or for another
/// store is refused with a logged reason.
/// Snapshots a store is receiving now (reported in its store heartbeats).
public final class SnapshotReceiveCount: Sendable {
    package let value = Atomic<Int>(0)
    /// Bytes received so far per region, and since when (for progress in the store status).
    private let progress = Mutex<[UInt64: (bytes: UInt64, since: ContinuousClock.Instant)]>([:])
    public init() {}
    public var current: Int { value.load(ordering: .relaxed) }

    package func received(_ bytes: Int, regionID: UInt64) {
        progress.withLock { $0[regionID, default: (0, .now)].bytes += UInt64(bytes) }
    }

    package func ended(regionID: UInt64) { _ = progress.withLock { $0.removeValue(forKey: regionID) } }

    /// The snapshots being received now, by region.
    package var inFlight: [Flotilla_V1_SnapshotProgress] {
        let now = ContinuousClock.now
        return progress.withLock { progress in
            progress.sorted { $0.key < $1.key }.map { regionID, entry in
                var item = Flotilla_V1_SnapshotProgress()
                item.regionID = regionID
                item.bytes = entry.bytes
                let elapsed = now - entry.since
                item.elapsedMs = UInt64(max(0, elapsed.components.seconds * 1_000 + elapsed.components.attoseconds / 1_000_000_000_000_000))
                return item
            }
        }
    }
}

public struct SnapshotTransferService: Flotilla_V1_RaftTransport.SimpleServiceProtocol {
    package let storeID: UInt64
    /// Stores snapshots are accepted from; nil: any (stores joining through PD).
    package let knownStores: Set<UInt64>?
    package let driver: StoreDriver
    package let logger: Logger
    /// Where incoming snapshots are staged as SST files.
    package let snapshotDirectory: String
    /// Snapshots received at once; more are refused (the leader retries later).
    let receivesMax: Int
    /// The cluster secret every stream must be signed with (`SnapshotAuthenticator`).
    package let secret: [UInt8]
    private let receiving: SnapshotReceiveCount

    public init(storeID: UInt64, knownStores: Set<UInt64>?, driver: StoreDriver, logger: Logger,
                snapshotDirectory: String, secret: [UInt8], receivesMax: Int = 4,
                receiving: SnapshotReceiveCount = SnapshotReceiveCount()) {
        self.receiving = receiving
        self.secret = secret
        self.storeID = storeID
        self.knownStores = knownStores
        self.driver = driver
        self.logger = logger
        self.snapshotDirectory = snapshotDirectory
        self.receivesMax = receivesMax
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
        var authenticator = SnapshotAuthenticator(secret: secret)
        var regionID: UInt64?
        defer { if let regionID { receiving.ended(regionID: regionID) } }
        do {
            // SST files are written on NIO's blocking-I/O pool, never on an event loop.
            for try await chunk in request {
                try authenticator.verify(chunk, first: builder == nil)
                if let builder, let regionID {
                    try await NIOThreadPool.singleton.runIfActive { try builder.add(chunk) }
                    receiving.received(chunk.pairs.reduce(0) { $0 + $1.key.count + $1.value.count }, regionID: regionID)
                    continue
                }
                let header = chunk.message
                guard header.toPeer.storeID == storeID, knownStores?.contains(header.fromPeer.storeID) ?? (header.fromPeer.storeID != storeID) else {
                    throw SnapshotTransferError(reason: "snapshot from store \(header.fromPeer.storeID) to store \(header.toPeer.storeID) does not belong here (store \(storeID))")
                }
                let directory = snapshotDirectory
                builder = try await NIOThreadPool.singleton.runIfActive { try SnapshotBuilder(firstChunk: chunk, stagingDirectory: directory) }
                regionID = header.regionID
                receiving.received(chunk.pairs.reduce(0) { $0 + $1.key.count + $1.value.count }, regionID: header.regionID)
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
package final class SnapshotSender: SnapshotOutbound {
    private let addresses: Mutex<[UInt64: HostPort]>
    private let sendsMax: Int
    private let secret: [UInt8]
    private let logger: Logger
    private let inFlight = Mutex<Set<[UInt64]>>([])
    package let sentCount = Atomic<Int>(0)
    /// Sends given up for making no progress (`stallTimeout`).
    package let abandonedCount = Atomic<Int>(0)
    /// Snapshots being sent now.
    package var sendingCount: Int { inFlight.withLock { $0.count } }

    private let stallTimeout: Duration

    package init(addresses: [UInt64: HostPort], sendsMax: Int, secret: [UInt8], logger: Logger, stallTimeout: Duration = SnapshotSender.stallTimeoutDefault) {
        self.stallTimeout = stallTimeout
        self.secret = secret
        self.addresses = Mutex(addresses)
        self.sendsMax = sendsMax
        self.logger = logger
    }

    /// Sets where snapshots for `storeID` go (a store or PD member learnt at run time).
    package func setAddress(_ address: HostPort, for storeID: UInt64) {
        addresses.withLock { $0[storeID] = address }
    }

    package func sendSnapshot(_ snapshot: OutgoingSnapshot) {
        let key = [snapshot.regionID, snapshot.header.toPeer.id]
        guard let address = addresses.withLock({ $0[snapshot.toStoreID] }) else {
            logger.warning("snapshot not sent: no address known for the store", metadata: ["to_store": "\(snapshot.toStoreID)"])
            return
        }
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
            // The transfer runs apart from its watchdog, so a stalled one (a receiver stopped
            // and then killed, say) frees its slot at once even when its task is slow to end.
            let progress = ProgressClock()
            let transfer = Task {
                do {
                    try await stream(snapshot, to: address, progress: progress)
                    sentCount.add(1, ordering: .relaxed)
                    logger.info("sent snapshot", metadata: ["region_id": "\(snapshot.regionID)", "to_store": "\(snapshot.toStoreID)",
                                                            "pairs": "\(snapshot.reader.pairCount)"])
                } catch {
                    logger.warning("snapshot send failed", metadata: ["region_id": "\(snapshot.regionID)", "to_store": "\(snapshot.toStoreID)",
                                                                      "error": "\(error)"])
                }
                progress.finish()
            }
            while !progress.isFinished {
                try? await Task.sleep(for: .milliseconds(250))
                if !progress.isFinished, progress.idle > stallTimeout {
                    transfer.cancel()
                    abandonedCount.add(1, ordering: .relaxed)
                    logger.warning("snapshot send abandoned", metadata: ["region_id": "\(snapshot.regionID)", "to_store": "\(snapshot.toStoreID)",
                                                                         "idle": "\(progress.idle)"])
                    break
                }
            }
            _ = inFlight.withLock { $0.remove(key) }
        }
    }

    /// A send that makes no progress (connection, one chunk, or the final answer) for this
    /// long is abandoned, so its slot frees and Raft's next attempt goes out. (A receiver that
    /// was stopped and killed mid-transfer otherwise leaves the stream waiting for ten minutes.)
    static let stallTimeoutDefault: Duration = .seconds(15)

    private func stream(_ snapshot: OutgoingSnapshot, to address: HostPort, progress: ProgressClock) async throws {
        var options = CallOptions.defaults
        options.timeout = .seconds(600)
        let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: address.host, port: address.port), transportSecurity: .plaintext)
        try await withGRPCClient(transport: transport) { client in
            let raft = Flotilla_V1_RaftTransport.Client(wrapping: client)
            _ = try await raft.snapshot(request: StreamingClientRequest { writer in
                // Chunks are read from RocksDB on NIO's blocking-I/O pool, not on an event loop.
                let reader = snapshot.reader
                var authenticator = SnapshotAuthenticator(secret: self.secret)
                var first = true
                while var chunk = try await NIOThreadPool.singleton.runIfActive({ try reader.nextChunk() }) {
                    try authenticator.sign(&chunk, first: first)
                    first = false
                    try await writer.write(chunk)
                    progress.touch()
                }
            }, options: options)
        }
    }
}

/// When something last moved, shared by a transfer and its watchdog.
private final class ProgressClock: Sendable {
    private let last = Mutex((at: ContinuousClock.now, finished: false))
    package func touch() { last.withLock { $0.at = .now } }
    package func finish() { last.withLock { $0.finished = true } }
    var isFinished: Bool { last.withLock { $0.finished } }
    var idle: Duration { ContinuousClock.now - last.withLock { $0.at } }
}
