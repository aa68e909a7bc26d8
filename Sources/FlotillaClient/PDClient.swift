import FlotillaCluster
import FlotillaProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization

/// Why a PD call failed for good.
public enum PDClientError: Error, Equatable, CustomStringConvertible {
    /// No endpoint answered as leader before the deadline (each tried endpoint named).
    case unavailable(endpoints: [String], lastError: String)
    /// PD refused the request (its error, with PD's message).
    case refused(Flotilla_V1_PDError)
    /// An endpoint is not host:port.
    case badEndpoint(String)

    public var description: String {
        switch self {
        case .unavailable(let endpoints, let last):
            "no PD leader reachable at \(endpoints.joined(separator: ", ")): check --pd / FLOTILLA_PD and that PD runs (last error: \(last))"
        case .refused(let error): "PD refused: \(error.message)"
        case .badEndpoint(let text): "PD endpoint '\(text)' is not host:port"
        }
    }
}

/// A client of PD's API: finds the leader among `endpoints` (following leader hints), learns
/// the cluster id from the first answer and sends it with every later request, and retries
/// calls that PD could not serve (no leader, an unreachable member) until `requestTimeout`.
/// A request PD refused for a reason (unknown region, another cluster, ...) is not retried.
public final class PDClient: Sendable {
    public let endpoints: [String]
    private let clients: [GRPCClient<HTTP2ClientTransport.Posix>]
    private let leaderIndex = Atomic<Int>(0)
    private let knownClusterID = Atomic<UInt64>(0)
    public let requestTimeout: Duration

    /// `clusterID` 0: learnt from the first answer.
    public init(endpoints: [String], clusterID: UInt64 = 0, requestTimeout: Duration = .seconds(10)) throws(PDClientError) {
        guard !endpoints.isEmpty else { throw .badEndpoint("") }
        var clients: [GRPCClient<HTTP2ClientTransport.Posix>] = []
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.backoff = .init(initial: .milliseconds(20), max: .seconds(1), multiplier: 2, jitter: 0.2)
        for endpoint in endpoints {
            guard let address = HostPort(dialable: endpoint) else { throw .badEndpoint(endpoint) }
            do {
                clients.append(GRPCClient(transport: try .http2NIOPosix(target: .ipv4(address: address.host, port: address.port),
                                                                      transportSecurity: .plaintext, config: config)))
            } catch {
                throw .badEndpoint(endpoint)
            }
        }
        self.endpoints = endpoints
        self.clients = clients
        self.requestTimeout = requestTimeout
        knownClusterID.store(clusterID, ordering: .relaxed)
    }

    /// Runs the connections until `close()`; run it in a task before calling.
    public func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            for client in clients { group.addTask { try await client.runConnections() } }
        }
    }

    public func close() {
        for client in clients { client.beginGracefulShutdown() }
    }

    /// The cluster id, once an answer told it.
    public var clusterID: UInt64 { knownClusterID.load(ordering: .relaxed) }

    /// Sends one request to the leader. `body` makes the call with the header to send and
    /// returns the response and its header.
    public func call<Response: Sendable>(
        _ body: @Sendable (Flotilla_V1_PD.Client<HTTP2ClientTransport.Posix>, Flotilla_V1_PDRequestHeader) async throws -> (Response, Flotilla_V1_PDResponseHeader)
    ) async throws(PDClientError) -> Response {
        let deadline = ContinuousClock.now + requestTimeout
        var attempt = 0
        var lastError = "no attempt"
        var tried: Set<Int> = []
        while ContinuousClock.now < deadline {
            let index = leaderIndex.load(ordering: .relaxed) % clients.count
            tried.insert(index)
            var header = Flotilla_V1_PDRequestHeader()
            header.clusterID = clusterID
            do {
                let (response, responseHeader) = try await body(Flotilla_V1_PD.Client(wrapping: clients[index]), header)
                let learnt = responseHeader.clusterID != 0 && header.clusterID == 0
                if learnt { knownClusterID.store(responseHeader.clusterID, ordering: .relaxed) }
                guard responseHeader.hasError else { return response }
                let error = responseHeader.error
                // Sent before the cluster id was known: again, now with it.
                if learnt, case .clusterMismatch? = error.detail { continue }
                guard case .notLeader(let hint)? = error.detail else { throw PDClientError.refused(error) }
                lastError = "\(endpoints[index]): \(error.message)"
                if let leader = endpoints.firstIndex(of: hint.leaderAddress), leader != index {
                    leaderIndex.store(leader, ordering: .relaxed)
                    continue
                }
            } catch let error as PDClientError {
                throw error
            } catch {
                lastError = "\(endpoints[index]): \(error)"
            }
            leaderIndex.store((index + 1) % clients.count, ordering: .relaxed)
            attempt += 1
            // Every member tried once without a leader: wait a little (an election is short).
            if attempt % clients.count == 0 { try? await Task.sleep(for: .milliseconds(min(50 * attempt, 500))) }
        }
        throw .unavailable(endpoints: endpoints, lastError: lastError)
    }

    // MARK: Calls

    public func members() async throws(PDClientError) -> Flotilla_V1_GetMembersResponse {
        try await call { client, header in
            var request = Flotilla_V1_GetMembersRequest()
            request.header = header
            let response = try await client.getMembers(request)
            return (response, response.header)
        }
    }

    public func clusterInfo() async throws(PDClientError) -> Flotilla_V1_ClusterInfo {
        try await call { client, header in
            var request = Flotilla_V1_GetClusterInfoRequest()
            request.header = header
            let response = try await client.getClusterInfo(request)
            return (response.info, response.header)
        }
    }

    /// `count` fresh ids: first ..< first + count.
    public func allocateIDs(_ count: UInt32) async throws(PDClientError) -> UInt64 {
        try await call { client, header in
            var request = Flotilla_V1_AllocateIDsRequest()
            request.header = header
            request.count = count
            let response = try await client.allocateIDs(request)
            return (response.first, response.header)
        }
    }

    /// Ids for the regions a split of `region` into `splitCount` more regions creates.
    public func askSplit(region: Flotilla_V1_Region, splitCount: UInt32) async throws(PDClientError) -> [Flotilla_V1_SplitRegionIDs] {
        try await call { client, header in
            var request = Flotilla_V1_AskSplitRequest()
            request.header = header
            request.region = region
            request.splitCount = splitCount
            let response = try await client.askSplit(request)
            return (response.newRegions, response.header)
        }
    }

    public func region(key: Data) async throws(PDClientError) -> Flotilla_V1_GetRegionResponse {
        try await call { client, header in
            var request = Flotilla_V1_GetRegionRequest()
            request.header = header
            request.key = key
            let response = try await client.getRegion(request)
            return (response, response.header)
        }
    }

    public func region(id: UInt64) async throws(PDClientError) -> Flotilla_V1_GetRegionResponse {
        try await call { client, header in
            var request = Flotilla_V1_GetRegionRequest()
            request.header = header
            request.regionID = id
            let response = try await client.getRegion(request)
            return (response, response.header)
        }
    }

    public func scanRegions(from start: Data = Data(), to end: Data = Data(), limit: UInt32 = 0) async throws(PDClientError) -> Flotilla_V1_ScanRegionsResponse {
        try await call { client, header in
            var request = Flotilla_V1_ScanRegionsRequest()
            request.header = header
            request.startKey = start
            request.endKey = end
            request.limit = limit
            let response = try await client.scanRegions(request)
            return (response, response.header)
        }
    }

    /// Starts an operator (the request's header is filled in); returns it as PD runs it.
    public func addOperator(_ request: Flotilla_V1_AddOperatorRequest) async throws(PDClientError) -> Flotilla_V1_OperatorInfo {
        try await call { client, header in
            var request = request
            request.header = header
            let response = try await client.addOperator(request)
            return (response.operator, response.header)
        }
    }

    /// Asks PD to split region `regionID` at `keys` (an operator: the region's leader does it).
    public func splitRegion(_ regionID: UInt64, at keys: [Data]) async throws(PDClientError) -> Flotilla_V1_OperatorInfo {
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = regionID
        var split = Flotilla_V1_SplitRegion()
        split.splitKeys = keys
        request.split = split
        return try await addOperator(request)
    }

    /// Asks PD to move region `regionID`'s replica from one store to another (an operator:
    /// learner, joint change, removal).
    public func movePeer(_ regionID: UInt64, from fromStoreID: UInt64, to toStoreID: UInt64) async throws(PDClientError) -> Flotilla_V1_OperatorInfo {
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = regionID
        request.movePeer.fromStoreID = fromStoreID
        request.movePeer.toStoreID = toStoreID
        return try await addOperator(request)
    }

    /// Asks PD to make the region's peer on `storeID` its leader.
    public func transferLeader(_ regionID: UInt64, to storeID: UInt64) async throws(PDClientError) -> Flotilla_V1_OperatorInfo {
        var request = Flotilla_V1_AddOperatorRequest()
        request.regionID = regionID
        request.transferLeaderStoreID = storeID
        return try await addOperator(request)
    }

    public func cancelOperator(regionID: UInt64) async throws(PDClientError) {
        try await call { client, header in
            var request = Flotilla_V1_CancelOperatorRequest()
            request.header = header
            request.regionID = regionID
            let response = try await client.cancelOperator(request)
            return ((), response.header)
        }
    }

    public func schedulerSettings() async throws(PDClientError) -> Flotilla_V1_SchedulerSettings {
        try await call { client, header in
            var request = Flotilla_V1_GetSchedulerSettingsRequest()
            request.header = header
            let response = try await client.getSchedulerSettings(request)
            return (response.settings, response.header)
        }
    }

    public func setSchedulerSettings(_ settings: Flotilla_V1_SchedulerSettings) async throws(PDClientError) {
        try await call { client, header in
            var request = Flotilla_V1_SetSchedulerSettingsRequest()
            request.header = header
            request.settings = settings
            let response = try await client.setSchedulerSettings(request)
            return ((), response.header)
        }
    }

    /// Reads PD's scheduler settings, changes them with `body`, and writes them back.
    public func updateSchedulerSettings(_ body: @Sendable (inout Flotilla_V1_SchedulerSettings) -> Void) async throws(PDClientError) {
        var settings = try await schedulerSettings()
        body(&settings)
        try await setSchedulerSettings(settings)
    }

    public func schedulers() async throws(PDClientError) -> [Flotilla_V1_SchedulerInfo] {
        try await call { client, header in
            var request = Flotilla_V1_ListSchedulersRequest()
            request.header = header
            let response = try await client.listSchedulers(request)
            return (response.schedulers, response.header)
        }
    }

    /// Drains a store (`.offline`) or takes the drain back (`.up`).
    public func setStoreState(_ storeID: UInt64, _ state: Flotilla_V1_StoreState) async throws(PDClientError) {
        try await call { client, header in
            var request = Flotilla_V1_SetStoreStateRequest()
            request.header = header
            request.change.storeID = storeID
            request.change.state = state
            let response = try await client.setStoreState(request)
            return ((), response.header)
        }
    }

    /// Running operators, and with `includeHistory` the ended ones PD remembers.
    public func operators(includeHistory: Bool = false) async throws(PDClientError) -> [Flotilla_V1_OperatorInfo] {
        try await call { client, header in
            var request = Flotilla_V1_ListOperatorsRequest()
            request.header = header
            request.includeHistory = includeHistory
            let response = try await client.listOperators(request)
            return (response.operators, response.header)
        }
    }

    public func stores(excludeTombstones: Bool = false) async throws(PDClientError) -> [Flotilla_V1_StoreInfo] {
        try await call { client, header in
            var request = Flotilla_V1_GetStoresRequest()
            request.header = header
            request.excludeTombstones = excludeTombstones
            let response = try await client.getStores(request)
            return (response.stores, response.header)
        }
    }

    /// Registers a store (id 0: PD gives it one) and returns it as PD holds it.
    public func putStore(_ store: Flotilla_V1_Store) async throws(PDClientError) -> Flotilla_V1_Store {
        try await call { client, header in
            var request = Flotilla_V1_PutStoreRequest()
            request.header = header
            request.store = store
            let response = try await client.putStore(request)
            return (response.store, response.header)
        }
    }

    public func bootstrap(store: Flotilla_V1_Store, region: Flotilla_V1_Region) async throws(PDClientError) {
        try await call { client, header in
            var request = Flotilla_V1_BootstrapRequest()
            request.header = header
            request.store = store
            request.region = region
            let response = try await client.bootstrap(request)
            return ((), response.header)
        }
    }
}
