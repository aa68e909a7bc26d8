import FlotillaProto
import Foundation
import GRPCCore
import RaftStore

/// The client-facing KV service: validates requests, routes them through the store loop, and
/// turns every failure into a typed protocol `Error` with a human-readable message.
public struct KVService: Flotilla_V1_KV.SimpleServiceProtocol {
    let driver: StoreDriver
    /// Largest key accepted, in bytes.
    let keyBytesMax = StoreKeys.dataKeyBytesMax
    /// Largest value accepted, in bytes.
    let valueBytesMax = 8 << 20
    /// Most pairs in one batch request.
    let batchPairsMax = 10_000

    public init(driver: StoreDriver) { self.driver = driver }

    public func get(request: Flotilla_V1_GetRequest, context: ServerContext) async throws -> Flotilla_V1_GetResponse {
        var response = Flotilla_V1_GetResponse()
        if let error = checkKey(request.key, field: "key") { response.error = error; return response }
        let key = request.key
        let regionID = request.context.regionID
        switch await driver.read(context: request.context, { core in try core.get(key, regionID: regionID) }) {
        case .success(let value):
            response.found = value != nil
            response.value = value ?? Data()
        case .failure(let error):
            response.error = protocolError(error)
        }
        return response
    }

    public func batchGet(request: Flotilla_V1_BatchGetRequest, context: ServerContext) async throws -> Flotilla_V1_BatchGetResponse {
        var response = Flotilla_V1_BatchGetResponse()
        guard !request.keys.isEmpty, request.keys.count <= batchPairsMax else {
            response.error = invalid("keys", "a batch needs 1 to \(batchPairsMax) keys, got \(request.keys.count)")
            return response
        }
        for key in request.keys { if let error = checkKey(key, field: "keys") { response.error = error; return response } }
        let keys = request.keys
        let regionID = request.context.regionID
        switch await driver.read(context: request.context, { core in
            try keys.compactMap { key in try core.get(key, regionID: regionID).map { Flotilla_V1_KeyValue(key: key, value: $0) } }
        }) {
        case .success(let pairs): response.pairs = pairs
        case .failure(let error): response.error = protocolError(error)
        }
        return response
    }

    public func put(request: Flotilla_V1_PutRequest, context: ServerContext) async throws -> Flotilla_V1_PutResponse {
        var response = Flotilla_V1_PutResponse()
        let pair = Flotilla_V1_KeyValue(key: request.key, value: request.value)
        if let error = checkPairs([pair]) { response.error = error; return response }
        var command = writeCommand(request.context)
        command.puts = [pair]
        if case .failure(let error) = await driver.write(command, context: request.context) { response.error = protocolError(error) }
        return response
    }

    public func batchPut(request: Flotilla_V1_BatchPutRequest, context: ServerContext) async throws -> Flotilla_V1_BatchPutResponse {
        var response = Flotilla_V1_BatchPutResponse()
        guard !request.pairs.isEmpty, request.pairs.count <= batchPairsMax else {
            response.error = invalid("pairs", "a batch needs 1 to \(batchPairsMax) pairs, got \(request.pairs.count)")
            return response
        }
        if let error = checkPairs(request.pairs) { response.error = error; return response }
        var command = writeCommand(request.context)
        command.puts = request.pairs
        if case .failure(let error) = await driver.write(command, context: request.context) { response.error = protocolError(error) }
        return response
    }

    public func delete(request: Flotilla_V1_DeleteRequest, context: ServerContext) async throws -> Flotilla_V1_DeleteResponse {
        var response = Flotilla_V1_DeleteResponse()
        if let error = checkKey(request.key, field: "key") { response.error = error; return response }
        var command = writeCommand(request.context)
        command.deletes = [request.key]
        if case .failure(let error) = await driver.write(command, context: request.context) { response.error = protocolError(error) }
        return response
    }

    public func deleteRange(request: Flotilla_V1_DeleteRangeRequest, context: ServerContext) async throws -> Flotilla_V1_DeleteRangeResponse {
        var response = Flotilla_V1_DeleteRangeResponse()
        if !request.endKey.isEmpty && !request.startKey.lexicographicallyPrecedes(request.endKey) {
            response.error = invalid("end_key", "the range [start_key, end_key) is empty or inverted")
            return response
        }
        var command = writeCommand(request.context)
        command.deleteRange.startKey = request.startKey
        command.deleteRange.endKey = request.endKey
        if case .failure(let error) = await driver.write(command, context: request.context) { response.error = protocolError(error) }
        return response
    }

    public func scan(request: Flotilla_V1_ScanRequest, context: ServerContext) async throws -> Flotilla_V1_ScanResponse {
        var response = Flotilla_V1_ScanResponse()
        guard request.limit > 0 else { response.error = invalid("limit", "must be at least 1"); return response }
        if !request.endKey.isEmpty && !request.startKey.lexicographicallyPrecedes(request.endKey) {
            response.error = invalid("end_key", "the range [start_key, end_key) is empty or inverted")
            return response
        }
        let (start, end, limit, reverse, regionID) = (request.startKey, request.endKey, Int(request.limit), request.reverse, request.context.regionID)
        switch await driver.read(context: request.context, { core in
            try core.scan(regionID: regionID, from: start, to: end, limit: limit, reverse: reverse).map { Flotilla_V1_KeyValue(key: $0, value: $1) }
        }) {
        case .success(let pairs): response.pairs = pairs
        case .failure(let error): response.error = protocolError(error)
        }
        return response
    }

    public func compareAndSwap(request: Flotilla_V1_CompareAndSwapRequest, context: ServerContext) async throws -> Flotilla_V1_CompareAndSwapResponse {
        var response = Flotilla_V1_CompareAndSwapResponse()
        if let error = checkKey(request.key, field: "key") { response.error = error; return response }
        guard request.newValue.count <= valueBytesMax else { response.error = invalid("new_value", "larger than \(valueBytesMax) bytes"); return response }
        var command = writeCommand(request.context)
        command.compareAndSwap.key = request.key
        command.compareAndSwap.expectExists = request.expectExists
        command.compareAndSwap.expectedValue = request.expectedValue
        command.compareAndSwap.deleteKey = request.deleteKey
        command.compareAndSwap.newValue = request.newValue
        switch await driver.write(command, context: request.context) {
        case .success(let result):
            response.succeeded = result.succeeded
            response.previousExists = result.previousExists
            response.previousValue = result.previousValue
        case .failure(let error):
            response.error = protocolError(error)
        }
        return response
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

    private func invalid(_ field: String, _ reason: String) -> Flotilla_V1_Error {
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
        wire.epochNotMatch.currentRegions = [current]
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
