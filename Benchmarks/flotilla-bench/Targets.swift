import FlotillaClient
import FlotillaProto
import FlotillaServer
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
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
}

/// etcd's v3 KV API over gRPC: Range (linearizable), Put, and Txn for compare-and-swap.
/// Requests go round-robin over the endpoints (members forward to their leader); an
/// unavailable member is retried on the next one, a bounded number of times.
final class EtcdTarget: BenchTarget {
    let name = "etcd"
    private let clients: [GRPCClient<HTTP2ClientTransport.Posix>]
    private let next = Atomic<Int>(0)
    private let retryCounter = Atomic<Int>(0)
    private let attemptsMax = 5

    init(endpoints: [HostPort]) throws {
        precondition(!endpoints.isEmpty, "no etcd endpoints")
        clients = try endpoints.map { endpoint in
            GRPCClient(transport: try .http2NIOPosix(target: .ipv4(address: endpoint.host, port: endpoint.port), transportSecurity: .plaintext))
        }
    }

    func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            for client in clients { group.addTask { try await client.runConnections() } }
        }
    }

    func close() { for client in clients { client.beginGracefulShutdown() } }

    var retries: Int { retryCounter.load(ordering: .relaxed) }

    private func call<T: Sendable>(_ body: (Etcdserverpb_KV.Client<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        var attempt = 0
        while true {
            let index = next.add(1, ordering: .relaxed).newValue % clients.count
            do {
                return try await body(Etcdserverpb_KV.Client(wrapping: clients[index]))
            } catch let error as RPCError where error.code == .unavailable && attempt + 1 < attemptsMax {
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
        let response = try await call { try await $0.range(request) }
        return response.kvs.first?.value
    }

    func write(_ key: Data, _ value: Data) async throws {
        var request = Etcdserverpb_PutRequest()
        request.key = key
        request.value = value
        _ = try await call { try await $0.put(request) }
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
            _ = try await call { try await $0.txn(request) }
        }
    }

    func scan(from key: Data, count: Int) async throws -> Int {
        var request = Etcdserverpb_RangeRequest()
        request.key = key
        request.rangeEnd = Data([0])  // to the end of the key space
        request.limit = Int64(count)
        return try await call { try await $0.range(request) }.kvs.count
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
        return try await call { try await $0.txn(request) }.succeeded
    }
}
