import FlotillaNode
import FlotillaProto
import Foundation
import GRPCCore
import NIOPosix
import RaftStore
import Synchronization

/// The client-facing KV service: validates requests, routes them through the store loop, and
/// turns every failure into a typed protocol `Error` with a human-readable message.
public struct KVService: Flotilla_V1_KV.SimpleServiceProtocol {
    let driver: StoreDriver
    /// Largest key accepted, in bytes.
    let keyBytesMax = KVLimits.keyBytesMax
    /// Largest value accepted, in bytes.
    let valueBytesMax = KVLimits.valueBytesMax
    /// Most pairs in one batch request.
    let batchPairsMax = KVLimits.batchItemsMax

    public init(driver: StoreDriver) { self.driver = driver }

    // MARK: Unary RPCs: each the same handler as in the command stream

    public func get(request: Flotilla_V1_GetRequest, context: ServerContext) async throws -> Flotilla_V1_GetResponse {
        await withCheckedContinuation { continuation in handleGet(request) { continuation.resume(returning: $0) } }
    }

    public func batchGet(request: Flotilla_V1_BatchGetRequest, context: ServerContext) async throws -> Flotilla_V1_BatchGetResponse {
        await withCheckedContinuation { continuation in handleBatchGet(request) { continuation.resume(returning: $0) } }
    }

    public func put(request: Flotilla_V1_PutRequest, context: ServerContext) async throws -> Flotilla_V1_PutResponse {
        await withCheckedContinuation { continuation in handlePut(request) { continuation.resume(returning: $0) } }
    }

    public func batchPut(request: Flotilla_V1_BatchPutRequest, context: ServerContext) async throws -> Flotilla_V1_BatchPutResponse {
        await withCheckedContinuation { continuation in handleBatchPut(request) { continuation.resume(returning: $0) } }
    }

    public func delete(request: Flotilla_V1_DeleteRequest, context: ServerContext) async throws -> Flotilla_V1_DeleteResponse {
        await withCheckedContinuation { continuation in handleDelete(request) { continuation.resume(returning: $0) } }
    }

    public func deleteRange(request: Flotilla_V1_DeleteRangeRequest, context: ServerContext) async throws -> Flotilla_V1_DeleteRangeResponse {
        await withCheckedContinuation { continuation in handleDeleteRange(request) { continuation.resume(returning: $0) } }
    }

    public func scan(request: Flotilla_V1_ScanRequest, context: ServerContext) async throws -> Flotilla_V1_ScanResponse {
        await withCheckedContinuation { continuation in handleScan(request) { continuation.resume(returning: $0) } }
    }

    public func compareAndSwap(request: Flotilla_V1_CompareAndSwapRequest, context: ServerContext) async throws -> Flotilla_V1_CompareAndSwapResponse {
        await withCheckedContinuation { continuation in handleCompareAndSwap(request) { continuation.resume(returning: $0) } }
    }

    // MARK: The command stream

    /// Many requests per message on one stream: every request goes to the store loop as it
    /// is read, and answers are written as they complete, all those completed since the last
    /// write in one message. The stream ends when the client ends it and every answer is out.
    public func commands(request: RPCAsyncSequence<Flotilla_V1_CommandRequest, any Error>,
                         response: RPCWriter<Flotilla_V1_CommandResponse>, context: ServerContext) async throws {
        let outbox = CommandOutbox(itemsPerMessageMax: batchPairsMax)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while let message = await outbox.nextMessage() {
                    try await response.write(message)
                }
            }
            do {
                for try await message in request {
                    for item in message.items { handle(item, outbox: outbox) }
                }
            } catch {
                outbox.finish(afterPending: false)
                throw error
            }
            outbox.finish(afterPending: true)
            try await group.waitForAll()
        }
    }

    private func handle(_ item: Flotilla_V1_CommandRequestItem, outbox: CommandOutbox) {
        let id = item.id
        outbox.begin()
        @Sendable func reply(_ set: (inout Flotilla_V1_CommandResponseItem) -> Void) {
            var answer = Flotilla_V1_CommandResponseItem()
            answer.id = id
            set(&answer)
            outbox.complete(answer)
        }
        switch item.request {
        case .get(let request): handleGet(request) { response in reply { $0.get = response } }
        case .batchGet(let request): handleBatchGet(request) { response in reply { $0.batchGet = response } }
        case .put(let request): handlePut(request) { response in reply { $0.put = response } }
        case .batchPut(let request): handleBatchPut(request) { response in reply { $0.batchPut = response } }
        case .delete(let request): handleDelete(request) { response in reply { $0.delete = response } }
        case .deleteRange(let request): handleDeleteRange(request) { response in reply { $0.deleteRange = response } }
        case .scan(let request): handleScan(request) { response in reply { $0.scan = response } }
        case .compareAndSwap(let request): handleCompareAndSwap(request) { response in reply { $0.compareAndSwap = response } }
        case nil: reply { $0.error = invalid("request", "the command names no operation") }
        }
    }

    // MARK: Handlers

    func handleGet(_ request: Flotilla_V1_GetRequest, complete: @escaping @Sendable (Flotilla_V1_GetResponse) -> Void) {
        var response = Flotilla_V1_GetResponse()
        if let error = checkKey(request.key, field: "key") { response.error = error; return complete(response) }
        let key = request.key
        let regionID = request.context.regionID
        let epoch = request.context.hasEpoch ? request.context.epoch : nil
        driver.submitRead(context: request.context, { core in try core.get(key, regionID: regionID, epoch: epoch) }) { result in
            var response = Flotilla_V1_GetResponse()
            switch result {
            case .success(let value):
                response.found = value != nil
                response.value = value ?? Data()
            case .failure(let error):
                response.error = protocolError(error)
            }
            complete(response)
        }
    }

    func handleBatchGet(_ request: Flotilla_V1_BatchGetRequest, complete: @escaping @Sendable (Flotilla_V1_BatchGetResponse) -> Void) {
        var response = Flotilla_V1_BatchGetResponse()
        guard !request.keys.isEmpty, request.keys.count <= batchPairsMax else {
            response.error = invalid("keys", "a batch needs 1 to \(batchPairsMax) keys, got \(request.keys.count)")
            return complete(response)
        }
        for key in request.keys { if let error = checkKey(key, field: "keys") { response.error = error; return complete(response) } }
        let keys = request.keys
        let regionID = request.context.regionID
        let epoch = request.context.hasEpoch ? request.context.epoch : nil
        driver.submitRead(context: request.context, { core in
            try keys.compactMap { key in try core.get(key, regionID: regionID, epoch: epoch).map { Flotilla_V1_KeyValue(key: key, value: $0) } }
        }) { result in
            var response = Flotilla_V1_BatchGetResponse()
            switch result {
            case .success(let pairs): response.pairs = pairs
            case .failure(let error): response.error = protocolError(error)
            }
            complete(response)
        }
    }

    func handlePut(_ request: Flotilla_V1_PutRequest, complete: @escaping @Sendable (Flotilla_V1_PutResponse) -> Void) {
        let pair = Flotilla_V1_KeyValue(key: request.key, value: request.value)
        if let error = checkPairs([pair]) {
            var response = Flotilla_V1_PutResponse()
            response.error = error
            return complete(response)
        }
        var command = writeCommand(request.context)
        command.puts = [pair]
        submit(command, request.context) { error in
            var response = Flotilla_V1_PutResponse()
            if let error { response.error = error }
            complete(response)
        }
    }

    func handleBatchPut(_ request: Flotilla_V1_BatchPutRequest, complete: @escaping @Sendable (Flotilla_V1_BatchPutResponse) -> Void) {
        var response = Flotilla_V1_BatchPutResponse()
        guard !request.pairs.isEmpty, request.pairs.count <= batchPairsMax else {
            response.error = invalid("pairs", "a batch needs 1 to \(batchPairsMax) pairs, got \(request.pairs.count)")
            return complete(response)
        }
        if let error = checkPairs(request.pairs) { response.error = error; return complete(response) }
        var command = writeCommand(request.context)
        command.puts = request.pairs
        submit(command, request.context) { error in
            var response = Flotilla_V1_BatchPutResponse()
            if let error { response.error = error }
            complete(response)
        }
    }

    func handleDelete(_ request: Flotilla_V1_DeleteRequest, complete: @escaping @Sendable (Flotilla_V1_DeleteResponse) -> Void) {
        if let error = checkKey(request.key, field: "key") {
            var response = Flotilla_V1_DeleteResponse()
            response.error = error
            return complete(response)
        }
        var command = writeCommand(request.context)
        command.deletes = [request.key]
        submit(command, request.context) { error in
            var response = Flotilla_V1_DeleteResponse()
            if let error { response.error = error }
            complete(response)
        }
    }

    func handleDeleteRange(_ request: Flotilla_V1_DeleteRangeRequest, complete: @escaping @Sendable (Flotilla_V1_DeleteRangeResponse) -> Void) {
        if !request.endKey.isEmpty && !request.startKey.lexicographicallyPrecedes(request.endKey) {
            var response = Flotilla_V1_DeleteRangeResponse()
            response.error = invalid("end_key", "the range [start_key, end_key) is empty or inverted")
            return complete(response)
        }
        var command = writeCommand(request.context)
        command.deleteRange.startKey = request.startKey
        command.deleteRange.endKey = request.endKey
        submit(command, request.context) { error in
            var response = Flotilla_V1_DeleteRangeResponse()
            if let error { response.error = error }
            complete(response)
        }
    }

    func handleScan(_ request: Flotilla_V1_ScanRequest, complete: @escaping @Sendable (Flotilla_V1_ScanResponse) -> Void) {
        var response = Flotilla_V1_ScanResponse()
        guard request.limit > 0 else { response.error = invalid("limit", "must be at least 1"); return complete(response) }
        if !request.endKey.isEmpty && !request.startKey.lexicographicallyPrecedes(request.endKey) {
            response.error = invalid("end_key", "the range [start_key, end_key) is empty or inverted")
            return complete(response)
        }
        let (start, end, limit, reverse, regionID) = (request.startKey, request.endKey, Int(request.limit), request.reverse, request.context.regionID)
        let epoch = request.context.hasEpoch ? request.context.epoch : nil
        // The store thread checks the range and takes a snapshot; the pairs are read on the
        // blocking pool, so a large scan never delays other regions' writes.
        driver.submitRead(context: request.context, { core in
            try core.planScan(regionID: regionID, from: start, to: end, limit: limit, reverse: reverse, epoch: epoch)
        }) { (planned: Result<ScanPlan, Error>) in
            let plan: ScanPlan
            switch planned {
            case .success(let value): plan = value
            case .failure(let error):
                var response = Flotilla_V1_ScanResponse()
                response.error = protocolError(error)
                return complete(response)
            }
            NIOThreadPool.singleton.submit { _ in
                var response = Flotilla_V1_ScanResponse()
                do {
                    let answer = try plan.run()
                    response.pairs = answer.pairs.map { Flotilla_V1_KeyValue(key: $0.key, value: $0.value) }
                    response.truncated = answer.truncated
                    response.resumeKey = answer.resumeKey
                } catch {
                    response.error = protocolError(error)
                }
                complete(response)
            }
        }
    }

    func handleCompareAndSwap(_ request: Flotilla_V1_CompareAndSwapRequest, complete: @escaping @Sendable (Flotilla_V1_CompareAndSwapResponse) -> Void) {
        var response = Flotilla_V1_CompareAndSwapResponse()
        if let error = checkKey(request.key, field: "key") { response.error = error; return complete(response) }
        guard request.newValue.count <= valueBytesMax else {
            response.error = invalid("new_value", "larger than \(valueBytesMax) bytes")
            return complete(response)
        }
        var command = writeCommand(request.context)
        command.compareAndSwap.key = request.key
        command.compareAndSwap.expectExists = request.expectExists
        command.compareAndSwap.expectedValue = request.expectedValue
        command.compareAndSwap.deleteKey = request.deleteKey
        command.compareAndSwap.newValue = request.newValue
        driver.submitWrite(command, context: request.context) { result in
            var response = Flotilla_V1_CompareAndSwapResponse()
            switch result {
            case .success(let result):
                response.succeeded = result.succeeded
                response.previousExists = result.previousExists
                response.previousValue = result.previousValue
            case .failure(let error):
                response.error = protocolError(error)
            }
            complete(response)
        }
    }

    /// Submits a write whose only answer is success or an error.
    private func submit(_ command: Flotilla_V1_WriteCommand, _ context: Flotilla_V1_RequestContext,
                        complete: @escaping @Sendable (Flotilla_V1_Error?) -> Void) {
        driver.submitWrite(command, context: context) { result in
            if case .failure(let error) = result { complete(protocolError(error)) } else { complete(nil) }
        }
    }

    // MARK: Validation and errors

    private func writeCommand(_ context: Flotilla_V1_RequestContext) -> Flotilla_V1_WriteCommand {
        var command = Flotilla_V1_WriteCommand()
        command.clientID = context.clientID
        command.sequence = context.sequence
        command.firstIncompleteSequence = context.firstIncompleteSequence
        return command
    }

    private func checkKey(_ key: Data, field: String) -> Flotilla_V1_Error? {
        key.count > keyBytesMax ? invalid(field, "key of \(key.count) bytes is larger than \(keyBytesMax)") : nil
    }

    private func checkPairs(_ pairs: [Flotilla_V1_KeyValue]) -> Flotilla_V1_Error? {
        for pair in pairs {
            if let error = checkKey(pair.key, field: "key") { return error }
            if pair.value.count > valueBytesMax { return invalid("value", "value of \(pair.value.count) bytes is larger than \(valueBytesMax)") }
        }
        return nil
    }

    func invalid(_ field: String, _ reason: String) -> Flotilla_V1_Error {
        protocolError(StoreRequestError.invalidArgument(field: field, reason: reason))
    }
}

/// The protocol form of a store error.
func protocolError(_ error: Error) -> Flotilla_V1_Error {
    var wire = Flotilla_V1_Error()
    wire.message = "\(error)"
    guard let error = error as? StoreRequestError else { return wire }
    switch error {
    case .regionNotFound(let id):
        wire.regionNotFound.regionID = id
    case .notLeader(let id, let leader):
        wire.notLeader.regionID = id
        if let leader { wire.notLeader.leader = leader }
    case .epochNotMatch(let current):
        wire.epochNotMatch.currentRegions = current
    case .keyNotInRegion(let key, let region):
        wire.keyNotInRegion.key = key
        wire.keyNotInRegion.regionID = region.id
        wire.keyNotInRegion.startKey = region.startKey
        wire.keyNotInRegion.endKey = region.endKey
    case .serverIsBusy(let reason):
        wire.serverIsBusy.reason = reason
        wire.serverIsBusy.backoffMs = 20
    case .proposalDropped:
        wire.proposalDropped = Flotilla_V1_ProposalDropped()
    case .timeout:
        wire.timeout = Flotilla_V1_Timeout()
    case .invalidArgument(let field, _):
        wire.invalidArgument.field = field
    }
    return wire
}

extension Flotilla_V1_KeyValue {
    init(key: Data, value: Data) {
        self.init()
        self.key = key
        self.value = value
    }
}

/// The answers of one command stream waiting to be written: completions (from the store
/// thread) append here; the stream's writer takes everything completed since its last write as
/// one message, so answers coalesce under load. Ends once finished and nothing is pending.
final class CommandOutbox: Sendable {
    private struct State {
        var ready: [Flotilla_V1_CommandResponseItem] = []
        var pending = 0
        var finishing = false
        var abandoned = false
        var waiter: CheckedContinuation<Flotilla_V1_CommandResponse?, Never>?
    }

    private let state = Mutex(State())
    private let itemsPerMessageMax: Int

    init(itemsPerMessageMax: Int) { self.itemsPerMessageMax = itemsPerMessageMax }

    /// A request was accepted; its answer will come through `complete`.
    func begin() { state.withLock { $0.pending += 1 } }

    func complete(_ item: Flotilla_V1_CommandResponseItem) {
        let resume = state.withLock { state -> (CheckedContinuation<Flotilla_V1_CommandResponse?, Never>, Flotilla_V1_CommandResponse?)? in
            state.pending -= 1
            guard !state.abandoned else { return nil }
            state.ready.append(item)
            guard let waiter = state.waiter else { return nil }
            state.waiter = nil
            return (waiter, take(&state))
        }
        if let (waiter, message) = resume { waiter.resume(returning: message) }
    }

    /// No more requests: end once every pending answer is out (or at once, dropping them).
    func finish(afterPending: Bool) {
        let resume = state.withLock { state -> CheckedContinuation<Flotilla_V1_CommandResponse?, Never>? in
            state.finishing = true
            if !afterPending { state.abandoned = true; state.ready = [] }
            guard let waiter = state.waiter, state.ready.isEmpty, state.pending == 0 || state.abandoned else { return nil }
            state.waiter = nil
            return waiter
        }
        resume?.resume(returning: nil)
    }

    /// The next message to write: every answer completed since the last one (waits for one).
    /// Nil when the stream is done.
    func nextMessage() async -> Flotilla_V1_CommandResponse? {
        await withCheckedContinuation { continuation in
            let immediate = state.withLock { state -> Flotilla_V1_CommandResponse?? in
                if !state.ready.isEmpty { return .some(take(&state)) }
                if state.finishing && (state.pending == 0 || state.abandoned) { return .some(nil) }
                state.waiter = continuation
                return .none
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
    }

    private func take(_ state: inout State) -> Flotilla_V1_CommandResponse? {
        var message = Flotilla_V1_CommandResponse()
        let count = min(state.ready.count, itemsPerMessageMax)
        message.items = Array(state.ready.prefix(count))
        state.ready.removeFirst(count)
        return message
    }
}
