import FlotillaNode
import FlotillaProto
import Foundation
import GRPCCore
import PlacementDriver
import RaftStore
import Synchronization

/// PD's gRPC API on one member. Reads and decisions run on the store thread after a
/// linearizable read of PD's region (so only the leader answers, from fully applied state);
/// changes are proposed through PD's log and answered once applied. A follower answers
/// `not_leader` with the leader's client address when it knows it.
struct PDService: Flotilla_V1_PD.SimpleServiceProtocol {
    let driver: StoreDriver
    let machine: PDMachine
    let memberID: UInt64
    /// The members as `--initial-members` names them (client addresses as published).
    let initialMembers: [Flotilla_V1_PDMember]

    /// A PD error on its way to a response header.
    struct Refusal: Error {
        let proto: Flotilla_V1_PDError
        init(_ proto: Flotilla_V1_PDError) { self.proto = proto }
    }

    private var regionContext: Flotilla_V1_RequestContext {
        var context = Flotilla_V1_RequestContext()
        context.regionID = PDServer.regionID
        return context
    }

    // MARK: Plumbing

    private func header(_ error: Flotilla_V1_PDError? = nil) -> Flotilla_V1_PDResponseHeader {
        var header = Flotilla_V1_PDResponseHeader()
        header.clusterID = machine.published.withLock { $0.clusterID }
        if let error { header.error = error }
        return header
    }

    /// Where a store-side refusal points the caller.
    private func mapped(_ error: Error) -> Flotilla_V1_PDError {
        if case StoreRequestError.notLeader(_, let leader) = error {
            let address = leader.flatMap { peer in machine.published.withLock { $0.members[peer.id]?.clientAddress } } ?? ""
            return PDFailure.notLeader(leaderAddress: address).proto
        }
        // Timeouts, a busy inbox: the caller retries, here or on another member.
        var failure = PDFailure.notLeader(leaderAddress: "").proto
        failure.message = "PD cannot serve now: \(error)"
        return failure
    }

    /// Runs `body` on the leader's state, after a read index confirmed this member leads.
    func onLeader<T: Sendable>(_ requestHeader: Flotilla_V1_PDRequestHeader, allowUnknownCluster: Bool = false,
                                       _ body: @escaping @Sendable (inout PlacementDriver, UInt64) throws(PDFailure) -> T) async -> Result<T, Refusal> {
        let machine = self.machine
        let outcome = await driver.read(context: regionContext) { core -> Result<T, PDFailure> in
            machine.confirmLeader(term: core.raftStatus(PDServer.regionID)?.term ?? 0)
            return machine.withLeader { pd, nowMs in
                Result { () throws(PDFailure) -> T in
                    try pd.check(header: requestHeader, allowUnknown: allowUnknownCluster)
                    return try body(&pd, nowMs)
                }
            }
        }
        switch outcome {
        case .success(.success(let value)): return .success(value)
        case .success(.failure(let failure)): return .failure(Refusal(failure.proto))
        case .failure(let error): return .failure(Refusal(mapped(error)))
        }
    }

    /// Proposes `command` through PD's log; nil once applied, else why not.
    func propose(_ command: Flotilla_V1_PDCommand) async -> Flotilla_V1_PDError? {
        var write = Flotilla_V1_WriteCommand()
        do { write.stateMachineCommand = try command.serializedData() } catch {
            return PDFailure.invalidArgument("the command does not encode: \(error)").proto
        }
        switch await driver.write(write, context: regionContext) {
        case .success(let result): return PDMachine.decodeReply(result.stateMachineReply)
        case .failure(let error): return mapped(error)
        }
    }

    /// Allocates ids, reserving a batch through the log when the leader's window is empty.
    private func allocate(_ requestHeader: Flotilla_V1_PDRequestHeader, count: UInt32) async -> Result<UInt64, Refusal> {
        for _ in 0..<3 {
            switch await onLeader(requestHeader, { pd, _ throws(PDFailure) in try pd.allocateIDs(count: count) }) {
            case .failure(let error): return .failure(error)
            case .success(.ids(let first, _)): return .success(first)
            case .success(.reserve(let command)):
                if let error = await propose(command) { return .failure(Refusal(error)) }
            }
        }
        return .failure(Refusal(PDFailure.notLeader(leaderAddress: "").proto))
    }

    private func stores(for regions: [Flotilla_V1_RegionInfo], in pd: PlacementDriver) -> [Flotilla_V1_Store] {
        let ids = Set(regions.flatMap { $0.region.peers.map(\.storeID) })
        return ids.sorted().compactMap { pd.state.stores[$0] }
    }

    // MARK: Members and cluster

    func getMembers(request: Flotilla_V1_GetMembersRequest, context: ServerContext) async throws -> Flotilla_V1_GetMembersResponse {
        var response = Flotilla_V1_GetMembersResponse()
        let published = machine.published.withLock { $0 }
        guard request.header.clusterID == 0 || request.header.clusterID == published.clusterID else {
            response.header = header(PDFailure.clusterMismatch(expected: published.clusterID, got: request.header.clusterID).proto)
            return response
        }
        response.members = initialMembers.map { member in
            var known = member
            if let address = published.members[member.memberID]?.clientAddress { known.clientAddress = address }
            return known
        }
        if case .success(let status) = await driver.status(includeRegions: true),
           let leaderID = status.regionStatus.first(where: { $0.regionID == PDServer.regionID })?.leaderPeerID,
           let leader = response.members.first(where: { $0.memberID == leaderID }) {
            response.leader = leader
        }
        response.header = header()
        return response
    }

    func getClusterInfo(request: Flotilla_V1_GetClusterInfoRequest, context: ServerContext) async throws -> Flotilla_V1_GetClusterInfoResponse {
        var response = Flotilla_V1_GetClusterInfoResponse()
        switch await onLeader(request.header, allowUnknownCluster: true, { pd, _ in
            var info = Flotilla_V1_ClusterInfo()
            info.clusterID = pd.state.clusterID
            info.bootstrapped = pd.state.isBootstrapped
            info.storeCount = UInt64(pd.state.stores.values.filter { $0.state != .tombstone }.count)
            info.regionCount = UInt64(pd.regions.count)
            return info
        }) {
        case .success(let info):
            response.info = info
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    func putMember(request: Flotilla_V1_PutMemberRequest, context: ServerContext) async throws -> Flotilla_V1_PutMemberResponse {
        var response = Flotilla_V1_PutMemberResponse()
        let member = request.member
        guard initialMembers.contains(where: { $0.memberID == member.memberID && $0.name == member.name && $0.peerAddress == member.peerAddress }) else {
            response.header = header(PDFailure.invalidArgument("member \(member.memberID) (\(member.name)) is not one of PD's members").proto)
            return response
        }
        if case .failure(let error) = await onLeader(request.header, { _, _ in () }) {
            response.header = header(error.proto)
            return response
        }
        var command = Flotilla_V1_PDCommand()
        command.putMember = member
        response.header = header(await propose(command))
        return response
    }

    // MARK: Ids and bootstrap

    func allocateIDs(request: Flotilla_V1_AllocateIDsRequest, context: ServerContext) async throws -> Flotilla_V1_AllocateIDsResponse {
        var response = Flotilla_V1_AllocateIDsResponse()
        switch await allocate(request.header, count: request.count) {
        case .success(let first):
            response.first = first
            response.count = request.count
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    func askSplit(request: Flotilla_V1_AskSplitRequest, context: ServerContext) async throws -> Flotilla_V1_AskSplitResponse {
        var response = Flotilla_V1_AskSplitResponse()
        let (region, splitCount) = (request.region, request.splitCount)
        let needed: UInt32
        switch await onLeader(request.header, { pd, _ throws(PDFailure) in try pd.idsForSplit(of: region, splitCount: splitCount) }) {
        case .success(let count): needed = count
        case .failure(let error):
            response.header = header(error.proto)
            return response
        }
        switch await allocate(request.header, count: needed) {
        case .success(let first):
            response.newRegions = PlacementDriver.splitRegionIDs(first: first, splitCount: splitCount, peerCount: region.peers.count)
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    func bootstrap(request: Flotilla_V1_BootstrapRequest, context: ServerContext) async throws -> Flotilla_V1_BootstrapResponse {
        var response = Flotilla_V1_BootstrapResponse()
        // Checked on the leader first (cheap refusals); the apply decides exactly once.
        if case .failure(let error) = await onLeader(request.header, { pd, _ throws(PDFailure) in
            guard !pd.state.isBootstrapped else { throw .alreadyBootstrapped }
            try PDValidation.check(store: request.store)
            try PDValidation.check(region: request.region)
        }) {
            response.header = header(error.proto)
            return response
        }
        var command = Flotilla_V1_PDCommand()
        command.bootstrap = request
        response.header = header(await propose(command))
        return response
    }

    // MARK: Stores

    func putStore(request: Flotilla_V1_PutStoreRequest, context: ServerContext) async throws -> Flotilla_V1_PutStoreResponse {
        var response = Flotilla_V1_PutStoreResponse()
        var newID: UInt64?
        if request.store.id == 0 {
            switch await allocate(request.header, count: 1) {
            case .success(let id): newID = id
            case .failure(let error):
                response.header = header(error.proto)
                return response
            }
        }
        let store = request.store
        switch await onLeader(request.header, { [newID] pd, _ throws(PDFailure) in try pd.putStoreCommand(store, newID: newID) }) {
        case .failure(let error):
            response.header = header(error.proto)
        case .success(let command):
            if let error = await propose(command) {
                response.header = header(error)
            } else {
                response.store = command.putStore
                response.header = header()
            }
        }
        return response
    }

    func getStore(request: Flotilla_V1_GetStoreRequest, context: ServerContext) async throws -> Flotilla_V1_GetStoreResponse {
        var response = Flotilla_V1_GetStoreResponse()
        let id = request.storeID
        switch await onLeader(request.header, { pd, nowMs throws(PDFailure) in
            guard let info = pd.storeInfo(id: id, nowMs: nowMs) else { throw .unknownStore(id) }
            return info
        }) {
        case .success(let info):
            response.store = info
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    func getStores(request: Flotilla_V1_GetStoresRequest, context: ServerContext) async throws -> Flotilla_V1_GetStoresResponse {
        var response = Flotilla_V1_GetStoresResponse()
        let excludeTombstones = request.excludeTombstones
        switch await onLeader(request.header, { pd, nowMs in
            pd.state.stores.keys.sorted().compactMap { pd.storeInfo(id: $0, nowMs: nowMs) }
                .filter { !excludeTombstones || $0.store.state != .tombstone }
        }) {
        case .success(let stores):
            response.stores = stores
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    func storeHeartbeat(request: Flotilla_V1_StoreHeartbeatRequest, context: ServerContext) async throws -> Flotilla_V1_StoreHeartbeatResponse {
        var response = Flotilla_V1_StoreHeartbeatResponse()
        let (storeID, stats) = (request.storeID, request.stats)
        switch await onLeader(request.header, { pd, nowMs throws(PDFailure) in
            try pd.storeHeartbeat(storeID: storeID, stats: stats, nowMs: nowMs)
        }) {
        case .failure(let error):
            response.header = header(error.proto)
        case .success(let answer):
            response.header = header()
            response.reportRegions = answer.reportRegions
            response.reportAllRegions = answer.reportAllRegions
        }
        return response
    }

    // MARK: Regions

    func regionHeartbeat(request: Flotilla_V1_RegionHeartbeatRequest, context: ServerContext) async throws -> Flotilla_V1_RegionHeartbeatResponse {
        await heartbeatBatch([request])[0]
    }

    /// Heartbeats PD reads ahead of their answers on one stream, at most.
    static let streamedHeartbeatsPendingMax = 4_096
    /// Heartbeats decided in one store-thread hop, at most.
    static let heartbeatBatchMax = 1_024

    func regionHeartbeats(request: RPCAsyncSequence<Flotilla_V1_RegionHeartbeatRequest, any Error>,
                          response: RPCWriter<Flotilla_V1_RegionHeartbeatResponse>, context: ServerContext) async throws {
        try await Self.serveHeartbeatStream(request, pendingMax: Self.streamedHeartbeatsPendingMax,
                                            decide: { await self.heartbeatBatch($0) },
                                            write: { try await response.write(contentsOf: $0) })
    }

    func regionHeartbeatBatches(request: RPCAsyncSequence<Flotilla_V1_RegionHeartbeatBatch, any Error>,
                                response: RPCWriter<Flotilla_V1_RegionHeartbeatBatchResponse>, context: ServerContext) async throws {
        // One message at a time: what waits for an answer is one batch (at most
        // `heartbeatBatchMax` heartbeats, within the request size limit).
        for try await batch in request {
            var answer = Flotilla_V1_RegionHeartbeatBatchResponse()
            guard batch.heartbeats.count <= Self.heartbeatBatchMax else {
                answer.header = header(PDFailure.invalidArgument("a batch of \(batch.heartbeats.count) heartbeats; at most \(Self.heartbeatBatchMax)").proto)
                try await response.write(answer)
                continue
            }
            let heartbeats = batch.heartbeats.map { heartbeat in
                var stamped = heartbeat
                stamped.header = batch.header
                return stamped
            }
            answer.answers = await heartbeatBatch(heartbeats)
            // A refusal of the whole batch (not the leader, another cluster) is also its header's.
            let whole = answer.answers.first { $0.header.hasError && $0.header.error.detail.map { detail in
                if case .notLeader = detail { return true }
                if case .clusterMismatch = detail { return true }
                return false
            } ?? false }
            answer.header = whole?.header ?? header()
            try await response.write(answer)
        }
    }

    /// One heartbeat stream: heartbeats are read as they come and decided in batches of up
    /// to `heartbeatBatchMax`; answers are written in their own task. At most `pendingMax`
    /// heartbeats are read ahead of their answers: beyond it PD stops reading the stream until
    /// answers are taken, so HTTP/2 flow control holds the sender back (a sender that never
    /// reads its answers stalls its own stream, and PD's memory for it stays bounded).
    static func serveHeartbeatStream<Requests: AsyncSequence & Sendable>(
        _ requests: Requests, pendingMax: Int,
        decide: @escaping @Sendable ([Flotilla_V1_RegionHeartbeatRequest]) async -> [Flotilla_V1_RegionHeartbeatResponse],
        write: @escaping @Sendable ([Flotilla_V1_RegionHeartbeatResponse]) async throws -> Void
    ) async throws where Requests.Element == Flotilla_V1_RegionHeartbeatRequest {
        let pending = HeartbeatQueue()
        let (signals, signal) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let (drains, drained) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                defer { signal.finish() }
                var drainSignals = drains.makeAsyncIterator()
                for try await heartbeat in requests {
                    while pending.count >= pendingMax {
                        guard await drainSignals.next() != nil else { return }
                    }
                    _ = pending.append(heartbeat)
                    signal.yield()
                }
            }
            group.addTask {
                defer { drained.finish() }
                for await _ in signals {
                    while case let batch = pending.take(Self.heartbeatBatchMax), !batch.isEmpty {
                        try await write(await decide(batch))
                        drained.yield()
                    }
                }
                while case let batch = pending.take(Self.heartbeatBatchMax), !batch.isEmpty {
                    try await write(await decide(batch))
                }
            }
            while try await group.next() != nil {}
        }
    }

    /// Decides region heartbeats in one store-thread hop (leadership in this term was
    /// confirmed by a read index before; a heartbeat needs no read of its own, as it only
    /// feeds the leader's memory), then proposes the routes they changed. One answer each, in
    /// order.
    func heartbeatBatch(_ requests: [Flotilla_V1_RegionHeartbeatRequest]) async -> [Flotilla_V1_RegionHeartbeatResponse] {
        guard let first = requests.first else { return [] }
        let machine = self.machine
        let decide: @Sendable (StoreCore, RaftSocketTransport) -> [Result<PlacementDriver.HeartbeatOutcome, PDFailure>]? = { core, _ in
            guard let status = core.raftStatus(PDServer.regionID), status.role == .leader, machine.leaderTerm == status.term else { return nil }
            return machine.withLeader { pd, nowMs in
                requests.map { request in
                    Result { () throws(PDFailure) -> PlacementDriver.HeartbeatOutcome in
                        try pd.check(header: request.header)
                        return try pd.regionHeartbeat(request, nowMs: nowMs)
                    }
                }
            }
        }
        var decided = await driver.perform(decide) ?? nil
        if decided == nil {
            // Not confirmed in this term yet: a read index confirms it (or says who leads).
            if case .failure(let refusal) = await onLeader(first.header, { _, _ in () }) {
                return requests.map { Self.answer($0, header: header(refusal.proto)) }
            }
            decided = await driver.perform(decide) ?? nil
        }
        guard let decided else {
            let refusal = PDFailure.notLeader(leaderAddress: "").proto
            return requests.map { Self.answer($0, header: header(refusal)) }
        }
        var answers: [Flotilla_V1_RegionHeartbeatResponse] = []
        answers.reserveCapacity(requests.count)
        for (request, outcome) in zip(requests, decided) {
            switch outcome {
            case .failure(let failure):
                answers.append(Self.answer(request, header: header(failure.proto)))
            case .success(let outcome):
                // Routes persist lazily: a failed proposal is made again by a later heartbeat;
                // only a lost leadership is passed on.
                var refusal: Flotilla_V1_PDError?
                for command in outcome.commands {
                    if let error = await propose(command), case .notLeader? = error.detail { refusal = error }
                }
                var answer = Self.answer(request, header: header(refusal))
                if refusal == nil, let step = outcome.step?.proto.step {
                    switch step {
                    case .changePeer(let change): answer.changePeer = change
                    case .transferLeader(let transfer): answer.transferLeader = transfer
                    case .splitRegion(let split): answer.splitRegion = split
                    case .changePeers(let changes): answer.changePeers = changes
                    }
                }
                answers.append(answer)
            }
        }
        return answers
    }

    private static func answer(_ request: Flotilla_V1_RegionHeartbeatRequest, header: Flotilla_V1_PDResponseHeader) -> Flotilla_V1_RegionHeartbeatResponse {
        var answer = Flotilla_V1_RegionHeartbeatResponse()
        answer.header = header
        answer.regionID = request.region.region.id
        answer.epoch = request.region.region.epoch
        return answer
    }

    func getRegion(request: Flotilla_V1_GetRegionRequest, context: ServerContext) async throws -> Flotilla_V1_GetRegionResponse {
        var response = Flotilla_V1_GetRegionResponse()
        let (regionID, key) = (request.regionID, request.key)
        guard key.count <= KVLimits.keyBytesMax else {
            response.header = header(PDFailure.invalidArgument("key: \(key.count) bytes, more than \(KVLimits.keyBytesMax)").proto)
            return response
        }
        switch await onLeader(request.header, { pd, _ throws(PDFailure) in
            guard pd.state.isBootstrapped else { throw .notBootstrapped }
            let found = regionID != 0 ? pd.regions.region(id: regionID) : pd.regions.region(containing: key)
            guard let found else { throw .unknownRegion(regionID) }
            return (found, stores(for: [found], in: pd))
        }) {
        case .success(let (info, stores)):
            response.region = info
            response.stores = stores
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    func scanRegions(request: Flotilla_V1_ScanRegionsRequest, context: ServerContext) async throws -> Flotilla_V1_ScanRegionsResponse {
        var response = Flotilla_V1_ScanRegionsResponse()
        let (start, end) = (request.startKey, request.endKey)
        guard start.count <= KVLimits.keyBytesMax, end.count <= KVLimits.keyBytesMax,
              end.isEmpty || KeyOrder.compare(start, end) < 0 else {
            response.header = header(PDFailure.invalidArgument("start_key and end_key: at most \(KVLimits.keyBytesMax) bytes, start before end").proto)
            return response
        }
        let limit = request.limit == 0 ? PDLimits.regionsPerScanMax : min(Int(request.limit), PDLimits.regionsPerScanMax)
        switch await onLeader(request.header, { pd, _ throws(PDFailure) in
            guard pd.state.isBootstrapped else { throw .notBootstrapped }
            let regions = pd.regions.regions(from: start, to: end, limit: limit)
            return (regions, stores(for: regions, in: pd))
        }) {
        case .success(let (regions, stores)):
            response.regions = regions
            response.stores = stores
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    // MARK: Operators and settings

    func listOperators(request: Flotilla_V1_ListOperatorsRequest, context: ServerContext) async throws -> Flotilla_V1_ListOperatorsResponse {
        var response = Flotilla_V1_ListOperatorsResponse()
        let includeHistory = request.includeHistory
        switch await onLeader(request.header, { pd, nowMs in pd.operatorInfos(includeHistory: includeHistory, nowMs: nowMs) }) {
        case .success(let operators):
            response.operators = operators
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    func addOperator(request: Flotilla_V1_AddOperatorRequest, context: ServerContext) async throws -> Flotilla_V1_AddOperatorResponse {
        var response = Flotilla_V1_AddOperatorResponse()
        var newPeerID: UInt64?
        switch request.kind {
        case .addPeerStoreID, .movePeer:
            switch await allocate(request.header, count: 1) {
            case .success(let id): newPeerID = id
            case .failure(let error):
                response.header = header(error.proto)
                return response
            }
        default:
            break
        }
        switch await onLeader(request.header, { [newPeerID] pd, nowMs throws(PDFailure) in
            try pd.addOperator(request, newPeerID: newPeerID, nowMs: nowMs).info(nowMs: nowMs)
        }) {
        case .success(let info):
            response.operator = info
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    func cancelOperator(request: Flotilla_V1_CancelOperatorRequest, context: ServerContext) async throws -> Flotilla_V1_CancelOperatorResponse {
        var response = Flotilla_V1_CancelOperatorResponse()
        let regionID = request.regionID
        if case .failure(let error) = await onLeader(request.header, { pd, nowMs throws(PDFailure) in
            try pd.cancelOperator(regionID: regionID, nowMs: nowMs)
        }) {
            response.header = header(error.proto)
            return response
        }
        response.header = header()
        return response
    }

    func getSchedulerSettings(request: Flotilla_V1_GetSchedulerSettingsRequest, context: ServerContext) async throws -> Flotilla_V1_GetSchedulerSettingsResponse {
        var response = Flotilla_V1_GetSchedulerSettingsResponse()
        switch await onLeader(request.header, { pd, _ in pd.state.settings }) {
        case .success(let settings):
            response.settings = settings
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    func setSchedulerSettings(request: Flotilla_V1_SetSchedulerSettingsRequest, context: ServerContext) async throws -> Flotilla_V1_SetSchedulerSettingsResponse {
        var response = Flotilla_V1_SetSchedulerSettingsResponse()
        let settings = request.settings
        if case .failure(let error) = await onLeader(request.header, { _, _ throws(PDFailure) in try PDValidation.check(settings: settings) }) {
            response.header = header(error.proto)
            return response
        }
        var command = Flotilla_V1_PDCommand()
        command.setSettings = settings
        response.header = header(await propose(command))
        return response
    }

    func listSchedulers(request: Flotilla_V1_ListSchedulersRequest, context: ServerContext) async throws -> Flotilla_V1_ListSchedulersResponse {
        var response = Flotilla_V1_ListSchedulersResponse()
        switch await onLeader(request.header, { pd, _ in pd.schedulerInfos() }) {
        case .success(let schedulers):
            response.schedulers = schedulers
            response.header = header()
        case .failure(let error): response.header = header(error.proto)
        }
        return response
    }

    func setStoreState(request: Flotilla_V1_SetStoreStateRequest, context: ServerContext) async throws -> Flotilla_V1_SetStoreStateResponse {
        var response = Flotilla_V1_SetStoreStateResponse()
        let change = request.change
        switch await onLeader(request.header, { pd, nowMs throws(PDFailure) in try pd.setStoreStateCommand(change, nowMs: nowMs) }) {
        case .success(let command):
            response.header = header(await propose(command))
        case .failure(let error):
            response.header = header(error.proto)
        }
        return response
    }
}

/// Heartbeats a stream received and PD has not decided yet.
final class HeartbeatQueue: Sendable {
    private let items = Mutex<[Flotilla_V1_RegionHeartbeatRequest]>([])

    var count: Int { items.withLock { $0.count } }

    /// Appends one; returns how many wait now.
    func append(_ item: Flotilla_V1_RegionHeartbeatRequest) -> Int {
        items.withLock { items in
            items.append(item)
            return items.count
        }
    }

    /// Takes up to `count`, oldest first.
    func take(_ count: Int) -> [Flotilla_V1_RegionHeartbeatRequest] {
        items.withLock { items in
            let taken = Array(items.prefix(count))
            items.removeFirst(taken.count)
            return taken
        }
    }
}
