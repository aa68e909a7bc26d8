import FlotillaCluster
import FlotillaProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization

/// Counts retries of the requests made in a task that binds it (`FlotillaClient.$retryObserver`),
/// so a caller can attribute retries to its own operations.
public final class RetryObserver: Sendable {
    private let count = Atomic<Int>(0)
    public init() {}
    public func add() { count.add(1, ordering: .relaxed) }
    /// Retries since the last call, and resets the count.
    public func take() -> Int { count.exchange(0, ordering: .relaxed) }
}

/// What the client could not do, after its retries.
public enum FlotillaClientError: Error, CustomStringConvertible, Sendable {
    /// The server answered with an error that retrying does not fix (bad input).
    case rejected(String)
    /// Retries ran out (no leader found, store unreachable, busy) within the timeout.
    case unavailable(String)
    /// No store is known for the region of a key.
    case noRoute(String)

    public var description: String {
        switch self {
        case .rejected(let message): "rejected: \(message)"
        case .unavailable(let message): "unavailable: \(message)"
        case .noRoute(let message): "no route: \(message)"
        }
    }
}

/// A KV client for a Flotilla cluster: routes each request to the leader of the region that
/// holds its key, learns leaders from NotLeader answers, retries with jittered backoff until a
/// per-request timeout, and tags writes with (client id, sequence) so a retried write is
/// applied once. Routes and store addresses come from PD (`init(pd:)`), or from a static
/// region map (`init(stores:regions:)`, a cluster file's).
public final class FlotillaClient: Sendable {
    public struct Store: Sendable {
        public var id: UInt64
        public var host: String
        public var port: Int
        public init(id: UInt64, host: String, port: Int) { self.id = id; self.host = host; self.port = port }
    }

    /// The region map, sorted by start key; epochs and peers are refreshed from
    /// EpochNotMatch answers.
    private let regions: Mutex<[Flotilla_V1_Region]>
    private let clients: Mutex<[UInt64: GRPCClient<HTTP2ClientTransport.Posix>]>
    /// One command stream per store: every KV request goes through these.
    private let channels: Mutex<[UInt64: CommandChannel]>
    /// Stores learnt from PD after the start: `run()` starts their connections.
    private let newStores: AsyncStream<UInt64>.Continuation
    private let newStoreIDs: AsyncStream<UInt64>
    /// Where routes and store addresses come from when the client was given PD endpoints.
    private let pd: PDClient?
    private static var transportConfig: HTTP2ClientTransport.Posix.Config {
        // A restarted store must be reachable again within a second, not after the default
        // channel backoff (up to minutes): the client's own retry loop paces attempts.
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.backoff = .init(initial: .milliseconds(20), max: .seconds(1), multiplier: 2, jitter: 0.2)
        // No flush coalescing (a request held up to 100 µs for company): see FlotillaServer.
        config.connection.flushCoalescing = nil
        return config
    }
    /// One attempt at one store waits at most this long before the request is tried again.
    private let attemptTimeout: Duration
    private let leaders = Mutex<[UInt64: UInt64]>([:])  // region id → store id
    private let sequence = Atomic<UInt64>(0)
    private let retries = Atomic<Int>(0)
    /// Retries of requests made in this task are also counted here, when bound.
    @TaskLocal public static var retryObserver: RetryObserver?
    /// Sequences of writes sent and not yet answered (or given up on): the lowest tells the
    /// stores which replies they may forget.
    private let writesInFlight = Mutex<Set<UInt64>>([])
    public let clientID: UInt64
    public let requestTimeout: Duration

    public convenience init(stores: [Store], regions: [Flotilla_V1_Region], requestTimeout: Duration = .seconds(10)) throws {
        try self.init(stores: stores, regions: regions, pd: nil, requestTimeout: requestTimeout)
    }

    /// A client that learns routes and store addresses from PD (`endpoints`: its members'
    /// client addresses), caches them, and refreshes a route when a store says it is stale.
    public convenience init(pd endpoints: [String], requestTimeout: Duration = .seconds(10)) throws {
        try self.init(stores: [], regions: [], pd: try PDClient(endpoints: endpoints, requestTimeout: requestTimeout), requestTimeout: requestTimeout)
    }

    private init(stores: [Store], regions: [Flotilla_V1_Region], pd: PDClient?, requestTimeout: Duration) throws {
        self.regions = Mutex(regions.sorted { $0.startKey.lexicographicallyPrecedes($1.startKey) })
        var clients: [UInt64: GRPCClient<HTTP2ClientTransport.Posix>] = [:]
        for store in stores {
            clients[store.id] = GRPCClient(transport: try .http2NIOPosix(target: .ipv4(address: store.host, port: store.port),
                                                                       transportSecurity: .plaintext, config: Self.transportConfig))
        }
        self.clients = Mutex(clients)
        channels = Mutex(Dictionary(uniqueKeysWithValues: clients.map { ($0.key, CommandChannel(storeID: $0.key, client: $0.value)) }))
        (newStoreIDs, newStores) = AsyncStream.makeStream(of: UInt64.self)
        self.pd = pd
        attemptTimeout = min(requestTimeout, .seconds(3))
        self.requestTimeout = requestTimeout
        clientID = UInt64.random(in: 1...UInt64.max)
    }

    /// Runs the client's connections until `close()`; run it in a task before sending requests.
    public func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            if let pd { group.addTask { try await pd.run() } }
            for client in clients.withLock({ Array($0.values) }) { group.addTask { try await client.runConnections() } }
            for channel in channels.withLock({ Array($0.values) }) { group.addTask { await channel.run() } }
            for await storeID in newStoreIDs {
                guard let client = clients.withLock({ $0[storeID] }), let channel = channels.withLock({ $0[storeID] }) else { continue }
                group.addTask { try await client.runConnections() }
                group.addTask { await channel.run() }
            }
        }
    }

    public func close() {
        newStores.finish()
        pd?.close()
        for channel in channels.withLock({ Array($0.values) }) { channel.close() }
        for client in clients.withLock({ Array($0.values) }) { client.beginGracefulShutdown() }
    }

    // MARK: Operations

    public func put(_ key: Data, _ value: Data) async throws {
        let nextSequence = beginWrite()
        defer { endWrite(nextSequence) }
        _ = try await routed(key: key) { kv, context in
            var request = Flotilla_V1_PutRequest()
            request.context = self.writeContext(context, sequence: nextSequence)
            request.key = key
            request.value = value
            return try await kv.put(request).error.nonEmpty
        }
    }

    /// Reads `key`: linearizable by default; `.follower` or `.stale` let a follower serve it.
    public func get(_ key: Data, consistency: Flotilla_V1_ReadConsistency = .linearizable) async throws -> Data? {
        var found: Data? = nil
        _ = try await routed(key: key, anyReplica: consistency != .linearizable) { kv, context in
            var request = Flotilla_V1_GetRequest()
            request.context = context
            request.context.readConsistency = consistency
            request.key = key
            let response = try await kv.get(request)
            found = response.found ? response.value : nil
            return response.error.nonEmpty
        }
        return found
    }

    public func delete(_ key: Data) async throws {
        let nextSequence = beginWrite()
        defer { endWrite(nextSequence) }
        _ = try await routed(key: key) { kv, context in
            var request = Flotilla_V1_DeleteRequest()
            request.context = self.writeContext(context, sequence: nextSequence)
            request.key = key
            return try await kv.delete(request).error.nonEmpty
        }
    }

    /// Sets `key` to `newValue` if it currently holds `expected` (nil: absent). Returns whether
    /// it did, and the value it found.
    public func compareAndSwap(_ key: Data, expected: Data?, newValue: Data) async throws -> (succeeded: Bool, previous: Data?) {
        let nextSequence = beginWrite()
        defer { endWrite(nextSequence) }
        var outcome: (Bool, Data?) = (false, nil)
        _ = try await routed(key: key) { kv, context in
            var request = Flotilla_V1_CompareAndSwapRequest()
            request.context = self.writeContext(context, sequence: nextSequence)
            request.key = key
            request.expectExists = expected != nil
            request.expectedValue = expected ?? Data()
            request.newValue = newValue
            let response = try await kv.compareAndSwap(request)
            outcome = (response.succeeded, response.previousExists ? response.previousValue : nil)
            return response.error.nonEmpty
        }
        return outcome
    }

    /// Writes every pair: one BatchPut per region, the regions in parallel. Each region's part
    /// is atomic; the whole is not (a failure names what may be partly written). A part whose
    /// region split meanwhile is sent again per new region, under the same sequence: a region
    /// made by a split holds its parent's sessions, so a part applied before the split is
    /// answered from them, never applied twice.
    public func batchPut(_ pairs: [(key: Data, value: Data)]) async throws {
        try await batchPut(pairs, sequence: nil)
    }

    private func batchPut(_ pairs: [(key: Data, value: Data)], sequence: UInt64?) async throws {
        let groups = try await groupByRegion(pairs.map(\.key))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (_, positions) in groups {
                let part = positions.map { pairs[$0] }
                group.addTask {
                    let nextSequence = sequence ?? self.beginWrite()
                    defer { if sequence == nil { self.endWrite(nextSequence) } }
                    do {
                        _ = try await self.routed(key: part[0].key) { kv, context, region in
                            guard part.allSatisfy({ region.contains($0.key) }) else { throw RegionsChanged() }
                            var request = Flotilla_V1_BatchPutRequest()
                            request.context = self.writeContext(context, sequence: nextSequence)
                            request.pairs = part.map { pair in
                                var keyValue = Flotilla_V1_KeyValue()
                                keyValue.key = pair.key
                                keyValue.value = pair.value
                                return keyValue
                            }
                            return try await kv.batchPut(request).error.nonEmpty
                        }
                    } catch is RegionsChanged {
                        try await self.batchPut(part, sequence: nextSequence)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    /// Reads every key (linearizable): one BatchGet per region, in parallel. The result has
    /// the keys that exist.
    public func batchGet(_ keys: [Data]) async throws -> [Data: Data] {
        let groups = try await groupByRegion(keys)
        return try await withThrowingTaskGroup(of: [Data: Data].self) { group in
            for (_, positions) in groups {
                let part = positions.map { keys[$0] }
                group.addTask {
                    var pairs: [Flotilla_V1_KeyValue] = []
                    do {
                        _ = try await self.routed(key: part[0]) { kv, context, region in
                            guard part.allSatisfy({ region.contains($0) }) else { throw RegionsChanged() }
                            var request = Flotilla_V1_BatchGetRequest()
                            request.context = context
                            request.keys = part
                            let response = try await kv.batchGet(request)
                            pairs = response.pairs
                            return response.error.nonEmpty
                        }
                    } catch is RegionsChanged {
                        return try await self.batchGet(part)
                    }
                    return Dictionary(pairs.map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last })
                }
            }
            var result: [Data: Data] = [:]
            for try await part in group { result.merge(part) { _, last in last } }
            return result
        }
    }

    /// Splits the regions holding `keys` at those keys, each through its region's leader at
    /// once (a cluster joined through PD). Returns every region afterwards: each region split
    /// and the regions it made. A key already at a region's start is refused, as any key the
    /// region cannot split at.
    public func split(at keys: [Data]) async throws -> [Flotilla_V1_Region] {
        let sorted = Array(Set(keys)).sorted { $0.lexicographicallyPrecedes($1) }
        guard !sorted.isEmpty else { throw FlotillaClientError.rejected("no split key") }
        let groups = try await groupByRegion(sorted)
        var regions: [Flotilla_V1_Region] = []
        for (_, positions) in groups.sorted(by: { $0.value[0] < $1.value[0] }) {
            let part = positions.map { sorted[$0] }
            // One split takes at most `splitKeysMax` keys: more go in turns (the later keys
            // then lie in the last region the turn before made).
            if part.count > KVLimits.splitKeysMax {
                var made: [Flotilla_V1_Region] = []
                var start = 0
                while start < part.count {
                    made += try await split(at: Array(part[start..<min(start + KVLimits.splitKeysMax, part.count)]))
                    start += KVLimits.splitKeysMax
                }
                regions += made
                continue
            }
            do {
                var answered: [Flotilla_V1_Region] = []
                _ = try await routed(key: part[0]) { kv, context, region in
                    guard part.allSatisfy({ region.contains($0) }) else { throw RegionsChanged() }
                    guard let client = self.clients.withLock({ $0[kv.channel.storeID] }) else {
                        throw FlotillaClientError.noRoute("store \(kv.channel.storeID) has no address")
                    }
                    var request = Flotilla_V1_SplitRegionRequest()
                    request.context = context
                    request.splitKeys = part
                    var options = CallOptions.defaults
                    options.timeout = max(.milliseconds(1), ContinuousClock.now.duration(to: kv.deadline))
                    let response = try await Flotilla_V1_StoreAdmin.Client(wrapping: client).splitRegion(request, options: options)
                    answered = response.regions
                    return response.error.nonEmpty
                }
                _ = refresh(from: answered)
                regions += answered
            } catch is RegionsChanged {
                regions += try await split(at: part)
            }
        }
        return regions
    }

    /// Starts a consistency check of region `regionID` (which must hold `key`, its start key)
    /// through its leader. Returns the region as the leader answered for and the index of the
    /// check entry: every replica digests its state at that index (`RegionStatus.last_check`).
    public func checkRegion(_ regionID: UInt64, startKey key: Data) async throws -> (region: Flotilla_V1_Region, index: UInt64) {
        var answer: (Flotilla_V1_Region, UInt64)?
        try await routed(key: key) { kv, context, region in
            guard region.id == regionID else { throw FlotillaClientError.rejected("region \(regionID) no longer starts at this key (it split or merged): list the regions again") }
            guard let client = self.clients.withLock({ $0[kv.channel.storeID] }) else {
                throw FlotillaClientError.noRoute("store \(kv.channel.storeID) has no address")
            }
            var request = Flotilla_V1_CheckRegionRequest()
            request.context = context
            var options = CallOptions.defaults
            options.timeout = max(.milliseconds(1), ContinuousClock.now.duration(to: kv.deadline))
            let response = try await Flotilla_V1_StoreAdmin.Client(wrapping: client).checkRegion(request, options: options)
            if !response.hasError { answer = (region, response.index) }
            return response.error.nonEmpty
        }
        guard let answer else { throw FlotillaClientError.unavailable("region \(regionID): no answer to the check") }
        return answer
    }

    /// Reads a backup of region `regionID` (starting at `key`) from its leader: `chunk` gets
    /// the stream's chunks in order, the first carrying the region and applied index. When an
    /// attempt fails after chunks were handed out, the next attempt starts again with a first
    /// chunk: the receiver must then drop what it had (`restart` is called first). With `hold`,
    /// the leader only opens the snapshot: one chunk with `held_id`, streamed later with
    /// `backupHeld` from the store whose id this returns.
    @discardableResult
    public func backupRegion(_ regionID: UInt64, startKey key: Data, streamTimeout: Duration, hold: Bool = false,
                             restart: @Sendable () throws -> Void,
                             chunk: @escaping @Sendable (Flotilla_V1_BackupChunk) async throws -> Void) async throws -> UInt64 {
        var started = false
        var answeredBy: UInt64 = 0
        try await routed(key: key) { kv, context, region in
            guard region.id == regionID else { throw FlotillaClientError.rejected("region \(regionID) no longer starts at this key (it split or merged): list the regions again") }
            guard let client = self.clients.withLock({ $0[kv.channel.storeID] }) else {
                throw FlotillaClientError.noRoute("store \(kv.channel.storeID) has no address")
            }
            if started { try restart() }
            started = true
            var request = Flotilla_V1_BackupRegionRequest()
            request.context = context
            request.hold = hold
            answeredBy = kv.channel.storeID
            return try await Self.streamBackup(request, client: client, timeout: hold ? max(.milliseconds(1), ContinuousClock.now.duration(to: kv.deadline)) : streamTimeout,
                                               regionID: regionID, chunk: chunk)
        }
        return answeredBy
    }

    /// Streams a snapshot a `hold` backup request opened on store `storeID`.
    public func backupHeld(_ heldID: UInt64, storeID: UInt64, regionID: UInt64, streamTimeout: Duration,
                           chunk: @escaping @Sendable (Flotilla_V1_BackupChunk) async throws -> Void) async throws {
        guard let client = clients.withLock({ $0[storeID] }) else { throw FlotillaClientError.noRoute("store \(storeID) has no address") }
        var request = Flotilla_V1_BackupRegionRequest()
        request.heldID = heldID
        if let error = try await Self.streamBackup(request, client: client, timeout: streamTimeout, regionID: regionID, chunk: chunk) {
            throw FlotillaClientError.rejected("store \(storeID), region \(regionID): \(error.message)")
        }
    }

    private static func streamBackup(_ request: Flotilla_V1_BackupRegionRequest, client: GRPCClient<HTTP2ClientTransport.Posix>, timeout: Duration,
                                     regionID: UInt64, chunk: @escaping @Sendable (Flotilla_V1_BackupChunk) async throws -> Void) async throws -> Flotilla_V1_Error? {
        var options = CallOptions.defaults
        options.timeout = timeout
        return try await Flotilla_V1_StoreAdmin.Client(wrapping: client).backupRegion(request, options: options) { response in
            var complete = false
            for try await message in response.messages {
                if message.hasError { return message.error }
                try await chunk(message)
                if message.last || message.heldID != 0 { complete = true }
            }
            guard complete else { throw FlotillaClientError.unavailable("region \(regionID): the backup stream ended early") }
            return nil
        }
    }

    /// Raises, renews or lifts a write fence on store `storeID` (`StoreAdmin.FenceWrites`).
    public func fenceWrites(_ request: Flotilla_V1_WriteFenceRequest, storeID: UInt64) async throws -> Flotilla_V1_WriteFenceResponse {
        let response = try await storeAdmin(storeID) { admin, options in try await admin.fenceWrites(request, options: options) }
        if response.hasError { throw FlotillaClientError.rejected("store \(storeID): \(response.error.message)") }
        return response
    }

    /// Cuts store `storeID`'s Raft links to `cutStoreIDs` (both ways), replacing what was cut
    /// before; an empty list heals them (`StoreAdmin.InjectFault`; the store must run with
    /// `--enable-fault-injection`). Returns the stores cut off now.
    @discardableResult
    public func injectFault(cutStoreIDs: [UInt64], storeID: UInt64) async throws -> [UInt64] {
        var request = Flotilla_V1_InjectFaultRequest()
        request.cutStoreIds = cutStoreIDs
        let response = try await storeAdmin(storeID) { admin, options in try await admin.injectFault(request, options: options) }
        if response.hasError { throw FlotillaClientError.rejected("store \(storeID): \(response.error.message)") }
        return response.cutStoreIds
    }

    /// One `StoreAdmin` call to store `storeID`, bounded by the request timeout, not waiting
    /// for a connection; a transport failure is `unavailable`, naming the store.
    private func storeAdmin<Response: Sendable>(
        _ storeID: UInt64,
        _ call: (Flotilla_V1_StoreAdmin.Client<HTTP2ClientTransport.Posix>, CallOptions) async throws -> Response
    ) async throws -> Response {
        guard let client = clients.withLock({ $0[storeID] }) else { throw FlotillaClientError.noRoute("store \(storeID) has no address") }
        var options = CallOptions.defaults
        options.timeout = requestTimeout
        options.waitForReady = false
        do { return try await call(Flotilla_V1_StoreAdmin.Client(wrapping: client), options) } catch {
            throw FlotillaClientError.unavailable("store \(storeID): \(error)")
        }
    }

    /// A store's status: counters of its store loop and, with `includeRegions`, the Raft
    /// state of each region it hosts.
    public func storeStatus(_ storeID: UInt64, includeRegions: Bool = false) async throws -> Flotilla_V1_StoreStatus {
        var request = Flotilla_V1_StoreStatusRequest()
        request.includeRegions = includeRegions
        return try await storeAdmin(storeID) { admin, options in try await admin.status(request, options: options) }
    }

    /// With PD: learns every live store PD knows (so `storeIDs` and `storeStatus` cover them).
    public func discoverStores() async throws {
        guard let pd else { return }
        do { learn(stores: try await pd.stores(excludeTombstones: true).map(\.store)) } catch {
            throw FlotillaClientError.unavailable("PD: \(error)")
        }
    }

    /// Attempts beyond the first, over all requests so far.
    public var retryCount: Int { retries.load(ordering: .relaxed) }

    /// The ids of the stores this client knows.
    public var storeIDs: [UInt64] { clients.withLock { $0.keys.sorted() } }

    private func beginWrite() -> UInt64 {
        writesInFlight.withLock { inFlight in
            let next = sequence.add(1, ordering: .relaxed).newValue
            inFlight.insert(next)
            return next
        }
    }

    private func endWrite(_ sequence: UInt64) {
        _ = writesInFlight.withLock { $0.remove(sequence) }
    }

    /// The request context of a write: its (client, sequence) tag and the lowest sequence
    /// still in flight, computed per attempt.
    private func writeContext(_ routed: Flotilla_V1_RequestContext, sequence: UInt64) -> Flotilla_V1_RequestContext {
        var context = routed
        context.clientID = clientID
        context.sequence = sequence
        context.firstIncompleteSequence = writesInFlight.withLock { $0.min() } ?? sequence
        return context
    }

    /// Positions of `keys` by the region holding them.
    private func groupByRegion(_ keys: [Data]) async throws -> [UInt64: [Int]] {
        var groups: [UInt64: [Int]] = [:]
        for (position, key) in keys.enumerated() {
            let region = try await locate(key)
            groups[region.id, default: []].append(position)
        }
        return groups
    }

    /// Up to `limit` pairs in [start, end) across region boundaries, in key order. Each
    /// region answers in bounded pieces (`ScanResponse.truncated`), followed until done.
    /// - Throws: `FlotillaClientError.rejected` when `limit` is below 1.
    public func scan(from start: Data, to end: Data, limit: Int) async throws -> [(key: Data, value: Data)] {
        guard limit >= 1 else { throw FlotillaClientError.rejected("limit must be at least 1, got \(limit)") }
        var result: [(key: Data, value: Data)] = []
        var cursor = start
        while result.count < limit {
            // The server answers at most a bounded piece; ask for no more than that.
            let remaining = UInt32(clamping: min(limit - result.count, Int(UInt32.max)))
            let from = cursor
            var pairs: [Flotilla_V1_KeyValue] = []
            var resumeKey: Data?
            // The region the answer came from (a split while scanning moves the next cursor).
            var region = Flotilla_V1_Region()
            _ = try await routed(key: cursor) { kv, context, routedRegion in
                region = routedRegion
                var regionEnd = routedRegion.endKey
                if !end.isEmpty && (regionEnd.isEmpty || end.lexicographicallyPrecedes(regionEnd)) { regionEnd = end }
                var request = Flotilla_V1_ScanRequest()
                request.context = context
                request.startKey = from
                request.endKey = regionEnd
                request.limit = remaining
                let response = try await kv.scan(request)
                pairs = response.pairs
                resumeKey = response.truncated ? response.resumeKey : nil
                return response.error.nonEmpty
            }
            result += pairs.prefix(limit - result.count).map { ($0.key, $0.value) }
            if let resumeKey, !pairs.isEmpty {
                cursor = resumeKey
                continue
            }
            guard !region.endKey.isEmpty, end.isEmpty || region.endKey.lexicographicallyPrecedes(end) else { break }
            cursor = region.endKey
        }
        return result
    }

    // MARK: Routing

    private func region(for key: Data) -> Flotilla_V1_Region? {
        regions.withLock { regions in
            // Sorted by start key: the last region starting at or before the key, if it ends after it.
            var low = 0
            var high = regions.count
            while low < high {
                let middle = (low + high) / 2
                if KeyOrder.compare(regions[middle].startKey, key) <= 0 { low = middle + 1 } else { high = middle }
            }
            guard low > 0 else { return nil }
            let candidate = regions[low - 1]
            return candidate.endKey.isEmpty || KeyOrder.compare(key, candidate.endKey) < 0 ? candidate : nil
        }
    }

    /// Takes the stores' newer descriptors of regions (epoch, peers, range), replacing what
    /// the cache held for their ranges. Returns whether any was newer.
    private func refresh(from current: [Flotilla_V1_Region]) -> Bool {
        var changed = false
        for update in current {
            let held = regions.withLock { $0.first { $0.id == update.id } }
            if let held, !held.epoch.isStale(comparedTo: update.epoch), held == update { continue }
            if let held, update.epoch.isStale(comparedTo: held.epoch) { continue }
            cache(update)
            changed = true
        }
        return changed
    }

    /// Puts `region` in the cache, dropping the cached regions its range overlaps.
    private func cache(_ region: Flotilla_V1_Region) {
        regions.withLock { regions in
            regions.removeAll { $0.id == region.id || $0.overlaps(start: region.startKey, end: region.endKey) }
            let position = regions.firstIndex { KeyOrder.compare($0.startKey, region.startKey) > 0 } ?? regions.endIndex
            regions.insert(region, at: position)
        }
    }

    /// Forgets a cached region (the next request for its keys asks PD).
    private func forget(regionID: UInt64) {
        regions.withLock { $0.removeAll { $0.id == regionID } }
    }

    /// The region holding `key`: from the cache, else from PD (with its stores' addresses).
    private func locate(_ key: Data) async throws -> Flotilla_V1_Region {
        if let cached = region(for: key) { return cached }
        guard let pd else { throw FlotillaClientError.noRoute("no region holds the key") }
        let answer: Flotilla_V1_GetRegionResponse
        do { answer = try await pd.region(key: key) } catch {
            throw FlotillaClientError.unavailable("PD: \(error)")
        }
        learn(stores: answer.stores)
        cache(answer.region.region)
        if answer.region.hasLeader { leaders.withLock { $0[answer.region.region.id] = answer.region.leader.storeID } }
        return answer.region.region
    }

    /// Starts connections to stores PD named that the client did not know (or whose address changed).
    private func learn(stores: [Flotilla_V1_Store]) {
        for store in stores {
            guard let address = HostPort(dialable: store.address), clients.withLock({ $0[store.id] }) == nil,
                  let client = try? GRPCClient(transport: .http2NIOPosix(target: .ipv4(address: address.host, port: address.port),
                                                                       transportSecurity: .plaintext, config: Self.transportConfig)) else { continue }
            let added = clients.withLock { clients -> Bool in
                guard clients[store.id] == nil else { return false }
                clients[store.id] = client
                return true
            }
            guard added else { continue }
            channels.withLock { $0[store.id] = CommandChannel(storeID: store.id, client: client) }
            newStores.yield(store.id)
        }
    }

    /// Sends to the region's leader, following NotLeader hints and retrying retryable errors
    /// with jittered exponential backoff until the request timeout.
    private func routed(key: Data, anyReplica: Bool = false, _ call: (StoreKV, Flotilla_V1_RequestContext) async throws -> Flotilla_V1_Error?) async throws -> Void {
        try await routed(key: key, anyReplica: anyReplica) { kv, context, _ in try await call(kv, context) }
    }

    /// Like `routed(key:anyReplica:_:)`, handing `call` the region each attempt goes to. A
    /// route PD cannot give yet (a split's new region not reported) is asked again with
    /// backoff until the request timeout.
    private func routed(key: Data, anyReplica: Bool = false,
                        _ call: (StoreKV, Flotilla_V1_RequestContext, Flotilla_V1_Region) async throws -> Flotilla_V1_Error?) async throws -> Void {
        let deadline = ContinuousClock.now + requestTimeout
        var backoffMilliseconds = 10
        var attempt = 0
        var lastProblem = "no attempt"
        var located: Flotilla_V1_Region?
        while ContinuousClock.now < deadline {
            if located == nil {
                do { located = try await locate(key) } catch FlotillaClientError.unavailable(let problem) {
                    lastProblem = problem
                    try await Task.sleep(for: .milliseconds(backoffMilliseconds + Int.random(in: 0...backoffMilliseconds)))
                    backoffMilliseconds = min(backoffMilliseconds * 2, 500)
                    continue
                }
            }
            guard var region = located else { continue }
            defer { located = region }
            let storeIDs = region.peers.map(\.storeID)
            let regionID = region.id
            let known = leaders.withLock { $0[regionID] }
            // Reads any replica may serve go round the replicas, starting from a random one.
            let storeID = anyReplica ? storeIDs[(attempt + Int(clientID % 7)) % storeIDs.count] : known ?? storeIDs[attempt % storeIDs.count]
            attempt += 1
            if attempt > 1 {
                retries.add(1, ordering: .relaxed)
                Self.retryObserver?.add()
            }
            guard let channel = channels.withLock({ $0[storeID] }) else {
                // A store PD has not described to this client yet: ask PD again, then go on
                // to the next replica.
                guard pd != nil else { throw FlotillaClientError.noRoute("store \(storeID) has no address") }
                lastProblem = "store \(storeID) has no known address"
                leaders.withLock { $0[region.id] = nil }
                forget(regionID: region.id)
                region = (try? await locate(key)) ?? region
                try await Task.sleep(for: .milliseconds(backoffMilliseconds))
                continue
            }
            var context = Flotilla_V1_RequestContext()
            context.regionID = region.id
            context.epoch = region.epoch
            do {
                let attemptDeadline = min(deadline, ContinuousClock.now + attemptTimeout)
                guard let error = try await call(StoreKV(channel: channel, deadline: attemptDeadline), context, region) else {
                    if !anyReplica { leaders.withLock { $0[region.id] = storeID } }
                    return
                }
                lastProblem = error.message
                switch error.detail {
                case .notLeader(let notLeader):
                    leaders.withLock { $0[region.id] = notLeader.hasLeader ? notLeader.leader.storeID : nil }
                    if notLeader.hasLeader { continue }  // go straight to the named leader
                case .serverIsBusy, .proposalDropped, .timeout:
                    leaders.withLock { $0[region.id] = nil }
                case .regionNotFound:
                    leaders.withLock { $0[region.id] = nil }
                    // The store no longer holds it (moved away): PD knows where it went.
                    if pd != nil {
                        forget(regionID: region.id)
                        if let relocated = try? await locate(key) { region = relocated }
                    }
                case .epochNotMatch(let stale):
                    // Membership or range changed: take the newer descriptors and go again.
                    // Regions a split just made are led where their parent was (its leader's
                    // replicas campaign at once): try the store that answered first.
                    if !anyReplica {
                        leaders.withLock { known in
                            for current in stale.currentRegions where known[current.id] == nil { known[current.id] = storeID }
                        }
                    }
                    if refresh(from: stale.currentRegions), let refreshed = self.region(for: key) {
                        region = refreshed
                        continue
                    }
                    guard pd != nil else { throw FlotillaClientError.rejected(error.message) }
                    forget(regionID: region.id)
                    if let relocated = try? await locate(key) {
                        region = relocated
                        continue
                    }
                case .invalidArgument, .keyNotInRegion, .none:
                    throw FlotillaClientError.rejected(error.message)
                }
            } catch let error as FlotillaClientError {
                throw error
            } catch let error as RegionsChanged {
                throw error
            } catch {
                lastProblem = "store \(storeID): \(error)"
                leaders.withLock { $0[region.id] = nil }
            }
            let jitter = Int.random(in: 0...backoffMilliseconds)
            try await Task.sleep(for: .milliseconds(backoffMilliseconds + jitter))
            backoffMilliseconds = min(backoffMilliseconds * 2, 500)
        }
        throw FlotillaClientError.unavailable(located.map { "region \($0.id): \(lastProblem)" } ?? lastProblem)
    }
}

/// A request's keys no longer lie in one region (it split): the caller regroups them.
struct RegionsChanged: Error {}

extension Flotilla_V1_Error {
    /// nil when no error is set.
    var nonEmpty: Flotilla_V1_Error? { detail == nil && message.isEmpty ? nil : self }
}

/// One attempt's view of a store: the KV operations over its command stream, each answered
/// by `deadline`.
struct StoreKV: Sendable {
    let channel: CommandChannel
    let deadline: ContinuousClock.Instant

    func get(_ request: Flotilla_V1_GetRequest) async throws -> Flotilla_V1_GetResponse {
        try await call({ $0.get = request }) { if case .get(let response) = $0 { response } else { nil } }
    }

    func batchGet(_ request: Flotilla_V1_BatchGetRequest) async throws -> Flotilla_V1_BatchGetResponse {
        try await call({ $0.batchGet = request }) { if case .batchGet(let response) = $0 { response } else { nil } }
    }

    func put(_ request: Flotilla_V1_PutRequest) async throws -> Flotilla_V1_PutResponse {
        try await call({ $0.put = request }) { if case .put(let response) = $0 { response } else { nil } }
    }

    func batchPut(_ request: Flotilla_V1_BatchPutRequest) async throws -> Flotilla_V1_BatchPutResponse {
        try await call({ $0.batchPut = request }) { if case .batchPut(let response) = $0 { response } else { nil } }
    }

    func delete(_ request: Flotilla_V1_DeleteRequest) async throws -> Flotilla_V1_DeleteResponse {
        try await call({ $0.delete = request }) { if case .delete(let response) = $0 { response } else { nil } }
    }

    func scan(_ request: Flotilla_V1_ScanRequest) async throws -> Flotilla_V1_ScanResponse {
        try await call({ $0.scan = request }) { if case .scan(let response) = $0 { response } else { nil } }
    }

    func compareAndSwap(_ request: Flotilla_V1_CompareAndSwapRequest) async throws -> Flotilla_V1_CompareAndSwapResponse {
        try await call({ $0.compareAndSwap = request }) { if case .compareAndSwap(let response) = $0 { response } else { nil } }
    }

    private func call<Response>(_ fill: (inout Flotilla_V1_CommandRequestItem) -> Void,
                                _ extract: (Flotilla_V1_CommandResponseItem.OneOf_Response?) -> Response?) async throws -> Response {
        let answer = try await channel.call(deadline: deadline, fill)
        if let response = extract(answer.response) { return response }
        if case .error(let error) = answer.response { throw FlotillaClientError.rejected(error.message) }
        throw CommandChannelError(description: "store \(channel.storeID) answered with another operation")
    }
}
