import FlotillaClient
import FlotillaCluster
import FlotillaProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import NIOPosix
import SwiftProtobuf
import Synchronization

/// A system the harness drives: the same five operations against Flotilla or etcd.
protocol BenchTarget: Sendable {
    var name: String { get }
    /// Starts connections; returns when `close()` was called.
    func run() async throws
    func close()
    func read(_ key: Data) async throws -> Data?
    func write(_ key: Data, _ value: Data) async throws
    /// Writes many pairs (loading); may batch.
    func writeMany(_ pairs: [(Data, Data)]) async throws
    /// Reads up to `count` records from `key` on; returns how many it got.
    func scan(from key: Data, count: Int) async throws -> Int
    /// Sets `key` to `newValue` only if it still holds `expected` (nil: absent).
    func compareAndSwap(_ key: Data, expected: Data?, newValue: Data) async throws -> Bool
    /// Retries the target's client made so far (0 when it does not say).
    var retries: Int { get }
    /// Connections the target's client opened so far (nil when it does not count them).
    var connectionsOpened: Int? { get }
    /// Connections it keeps open when none fails: more opened than this is churn.
    var connectionSlots: Int? { get }
}

/// Flotilla through `FlotillaClient` (leader routing, retries, exactly-once writes).
final class FlotillaTarget: BenchTarget {
    let client: FlotillaClient
    let name = "flotilla"

    init(client: FlotillaClient) { self.client = client }

    func run() async throws { try await client.run() }
    func close() { client.close() }
    func read(_ key: Data) async throws -> Data? { try await client.get(key) }
    func write(_ key: Data, _ value: Data) async throws { try await client.put(key, value) }
    func writeMany(_ pairs: [(Data, Data)]) async throws { try await client.batchPut(pairs.map { (key: $0.0, value: $0.1) }) }
    func scan(from key: Data, count: Int) async throws -> Int { try await client.scan(from: key, to: Data(), limit: count).count }
    func compareAndSwap(_ key: Data, expected: Data?, newValue: Data) async throws -> Bool {
        try await client.compareAndSwap(key, expected: expected, newValue: newValue).succeeded
    }
    var retries: Int { client.retryCount }
    var connectionsOpened: Int? { nil }
    var connectionSlots: Int? { nil }
}

/// etcd's v3 KV API over gRPC: Range (linearizable), Put, and Txn for compare-and-swap.
/// Requests go round-robin over `connectionsPerEndpoint` HTTP/2 connections to each endpoint
/// (members forward to their leader), each an `EtcdConnection` that tolerates etcd's pings;
/// a connection that fails is replaced, and the call retried on the next one, a bounded
/// number of times. Connections opened and retries are counted and reported with the results.
final class EtcdTarget: BenchTarget {
    /// How calls reach etcd.
    enum Driver: String, CaseIterable, Sendable {
        /// `EtcdConnection`s: plain NIO HTTP/2 connections configured for etcd's pings.
        case direct
        /// grpc-swift-2 over grpc-swift-nio-transport (the driver before issue 13): its HTTP/2
        /// connections close on etcd's pings. Kept to measure the difference in one run.
        case grpcSwift = "grpc-swift"
    }

    let name = "etcd"
    private let driver: Driver
    private let grpcClients: [GRPCClient<HTTP2ClientTransport.Posix>]
    private let endpoints: [HostPort]
    private let connectionsPerEndpoint: Int
    /// One slot per connection: the task that opened (or is opening) it.
    private let slots: Mutex<[Task<EtcdConnection, any Error>?]>
    private let next = Atomic<Int>(0)
    private let retryCounter = Atomic<Int>(0)
    private let connectionCounter = Atomic<Int>(0)
    private let stop: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation) = AsyncStream.makeStream()
    private let attemptsMax = 5

    init(endpoints: [HostPort], connectionsPerEndpoint: Int = 1, driver: Driver = .direct) throws {
        precondition(!endpoints.isEmpty, "no etcd endpoints")
        precondition(connectionsPerEndpoint >= 1, "at least one connection per endpoint")
        self.driver = driver
        grpcClients = driver != .grpcSwift ? [] : try endpoints.map { endpoint in
            GRPCClient(transport: try .http2NIOPosix(target: .ipv4(address: endpoint.host, port: endpoint.port), transportSecurity: .plaintext))
        }
        self.endpoints = endpoints
        self.connectionsPerEndpoint = connectionsPerEndpoint
        slots = Mutex(Array(repeating: nil, count: endpoints.count * connectionsPerEndpoint))
    }

    func run() async throws {
        if driver == .grpcSwift {
            try await withThrowingDiscardingTaskGroup { group in
                for client in grpcClients { group.addTask { try await client.runConnections() } }
                for await _ in stop.stream {}
                for client in grpcClients { client.beginGracefulShutdown() }
            }
            return
        }
        for await _ in stop.stream {}
        let tasks = slots.withLock { $0 }
        for task in tasks { (try? await task?.value)?.close() }
    }

    func close() { stop.continuation.finish() }

    var retries: Int { retryCounter.load(ordering: .relaxed) }
    /// HTTP/2 connections opened so far (one per slot when nothing failed).
    var connectionsOpened: Int? { driver == .direct ? connectionCounter.load(ordering: .relaxed) : nil }
    var connectionSlots: Int? { driver == .direct ? endpoints.count * connectionsPerEndpoint : nil }

    /// The connection of `slot`, opened on first use and reopened once it has closed.
    private func connection(_ slot: Int) async throws -> EtcdConnection {
        let endpoint = endpoints[slot / connectionsPerEndpoint]
        let task = slots.withLock { slots -> Task<EtcdConnection, any Error> in
            if let task = slots[slot] { return task }
            connectionCounter.add(1, ordering: .relaxed)
            let task = Task { try await EtcdConnection.connect(host: endpoint.host, port: endpoint.port, group: MultiThreadedEventLoopGroup.singleton)
            }
            slots[slot] = task
            return task
        }
        do {
            let connection = try await task.value
            if connection.isActive { return connection }
        } catch {
            // Fall through: this slot opens a new connection on the next call.
        }
        slots.withLock { slots in if slots[slot] == task { slots[slot] = nil } }
        throw EtcdCallError(status: nil, message: "no connection to \(endpoint)")
    }

    /// Calls `method` (one of etcd's generated `Etcdserverpb_KV.Method` descriptors).
    private func call<Response: SwiftProtobuf.Message>(_ method: MethodDescriptor, _ request: some SwiftProtobuf.Message,
                                                      as _: Response.Type = Response.self) async throws -> Response {
        var attempt = 0
        while true {
            let slot = next.add(1, ordering: .relaxed).newValue % (endpoints.count * connectionsPerEndpoint)
            do {
                if driver == .grpcSwift {
                    return try await grpcClients[slot % grpcClients.count].unary(
                        request: ClientRequest(message: request), descriptor: method,
                        serializer: ProtobufSerializer(), deserializer: ProtobufDeserializer<Response>(), options: .defaults
                    ) { try $0.message }
                }
                return try await connection(slot).unary("/" + method.fullyQualifiedMethod, request)
            } catch let error as RPCError where error.code == .unavailable && attempt + 1 < attemptsMax {
                attempt += 1
                retryCounter.add(1, ordering: .relaxed)
                FlotillaClient.retryObserver?.add()
                try await Task.sleep(for: .milliseconds(10 * attempt))
            } catch let error as EtcdCallError where error.isRetriable && attempt + 1 < attemptsMax {
                attempt += 1
                retryCounter.add(1, ordering: .relaxed)
                FlotillaClient.retryObserver?.add()
                try await Task.sleep(for: .milliseconds(10 * attempt))
            }
        }
    }

    func read(_ key: Data) async throws -> Data? {
        var request = Etcdserverpb_RangeRequest()
        request.key = key
        let response = try await call(Etcdserverpb_KV.Method.Range.descriptor, request, as: Etcdserverpb_RangeResponse.self)
        return response.kvs.first?.value
    }

    func write(_ key: Data, _ value: Data) async throws {
        var request = Etcdserverpb_PutRequest()
        request.key = key
        request.value = value
        _ = try await call(Etcdserverpb_KV.Method.Put.descriptor, request, as: Etcdserverpb_PutResponse.self)
    }

    func writeMany(_ pairs: [(Data, Data)]) async throws {
        // One transaction of puts (etcd allows 128 operations per txn by default).
        for start in stride(from: 0, to: pairs.count, by: 128) {
            var request = Etcdserverpb_TxnRequest()
            request.success = pairs[start..<min(start + 128, pairs.count)].map { pair in
                var put = Etcdserverpb_PutRequest()
                put.key = pair.0
                put.value = pair.1
                var op = Etcdserverpb_RequestOp()
                op.requestPut = put
                return op
            }
            _ = try await call(Etcdserverpb_KV.Method.Txn.descriptor, request, as: Etcdserverpb_TxnResponse.self)
        }
    }

    func scan(from key: Data, count: Int) async throws -> Int {
        var request = Etcdserverpb_RangeRequest()
        request.key = key
        request.rangeEnd = Data([0])  // to the end of the key space
        request.limit = Int64(count)
        return try await call(Etcdserverpb_KV.Method.Range.descriptor, request, as: Etcdserverpb_RangeResponse.self).kvs.count
    }

    func compareAndSwap(_ key: Data, expected: Data?, newValue: Data) async throws -> Bool {
        var compare = Etcdserverpb_Compare()
        compare.key = key
        if let expected {
            compare.target = .value
            compare.result = .equal
            compare.value = expected
        } else {
            compare.target = .create
            compare.result = .equal
            compare.createRevision = 0  // absent
        }
        var put = Etcdserverpb_PutRequest()
        put.key = key
        put.value = newValue
        var op = Etcdserverpb_RequestOp()
        op.requestPut = put
        var request = Etcdserverpb_TxnRequest()
        request.compare = [compare]
        request.success = [op]
        return try await call(Etcdserverpb_KV.Method.Txn.descriptor, request, as: Etcdserverpb_TxnResponse.self).succeeded
    }
}
