import FlotillaClient
import FlotillaCluster
import FlotillaProto
import FlotillaStoreServer
import FuzzSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import PlacementDriver
import SwiftProtobuf
import Testing

/// Every PD RPC fed seeded mutations of a valid request (bit flips, truncations, extreme
/// varints…, re-decoded as the request type; what no longer decodes is what gRPC would refuse
/// before PD sees it): PD answers each one, keeps serving, and its state stays consistent.
/// Replay a failure with FLOTILLA_FUZZ_SEED; more inputs with FLOTILLA_FUZZ_ITERATIONS.
@Suite("PD fuzz", .serialized)
struct PDFuzzTests {
    @Test func mutatedRequestsOnEveryRPCAreAnsweredAndPDKeepsServing() async throws {
        let pd = try LocalPD(members: 1)
        let seed = Mutator.seed(default: 0x5EED_F00D)
        let iterations = Mutator.iterations(default: 60)
        var mutator = Mutator(seed: seed)
        // A bootstrapped cluster with one store and one region, so requests reach real logic.
        var clusterID: UInt64 = 0
        var region = Flotilla_V1_Region()
        var store = Flotilla_V1_Store()
        try await pd.withClient { client in
            #expect(await eventually(seconds: 15) { ((try? await client.clusterInfo())?.clusterID ?? 0) != 0 })
            clusterID = try await client.clusterInfo().clusterID
            (store, region) = try await pd.bootstrapWithPretendStore(client)
        }
        let address = try #require(HostPort(pd.clientAddresses[0]))
        let grpc = try GRPCClient(transport: .http2NIOPosix(target: .ipv4(address: address.host, port: address.port), transportSecurity: .plaintext))
        var tried = 0
        var answeredWithError = 0
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await grpc.runConnections() }
            defer { grpc.beginGracefulShutdown(); group.cancelAll() }
            let api = Flotilla_V1_PD.Client(wrapping: grpc)
            var header = Flotilla_V1_PDRequestHeader()
            header.clusterID = clusterID
            var info = Flotilla_V1_RegionInfo()
            info.region = region
            info.leader = region.peers[0]

            /// Sends `iterations` mutations of `valid` that still decode as the request type
            /// (trying at most 50 times as many).
            func fuzz<Request: SwiftProtobuf.Message>(_ valid: Request, _ send: (Request) async throws -> Flotilla_V1_PDResponseHeader) async throws {
                let bytes: [UInt8] = try valid.serializedBytes()
                var sent = 0
                for _ in 0..<(50 * iterations) where sent < iterations {
                    guard let request = try? Request(serializedBytes: mutator.mutate(bytes)) else { continue }
                    sent += 1
                    tried += 1
                    if try await send(request).hasError { answeredWithError += 1 }
                }
            }
            try await fuzz(Flotilla_V1_GetMembersRequest.with { $0.header = header }) { try await api.getMembers($0).header }
            try await fuzz(Flotilla_V1_GetClusterInfoRequest.with { $0.header = header }) { try await api.getClusterInfo($0).header }
            try await fuzz(Flotilla_V1_AllocateIDsRequest.with { $0.header = header; $0.count = 3 }) { try await api.allocateIDs($0).header }
            try await fuzz(Flotilla_V1_AskSplitRequest.with { $0.header = header; $0.region = region; $0.splitCount = 2 }) { try await api.askSplit($0).header }
            try await fuzz(Flotilla_V1_BootstrapRequest.with { $0.header = header; $0.store = store; $0.region = region }) { try await api.bootstrap($0).header }
            try await fuzz(Flotilla_V1_PutStoreRequest.with { $0.header = header; $0.store = store }) { try await api.putStore($0).header }
            try await fuzz(Flotilla_V1_GetStoreRequest.with { $0.header = header; $0.storeID = store.id }) { try await api.getStore($0).header }
            try await fuzz(Flotilla_V1_GetStoresRequest.with { $0.header = header }) { try await api.getStores($0).header }
            try await fuzz(Flotilla_V1_StoreHeartbeatRequest.with { $0.header = header; $0.storeID = store.id; $0.stats.regionCount = 1 }) {
                try await api.storeHeartbeat($0).header
            }
            try await fuzz(Flotilla_V1_RegionHeartbeatRequest.with { $0.header = header; $0.storeID = store.id; $0.region = info }) {
                try await api.regionHeartbeat($0).header
            }
            try await fuzz(Flotilla_V1_GetRegionRequest.with { $0.header = header; $0.key = Data("k".utf8) }) { try await api.getRegion($0).header }
            try await fuzz(Flotilla_V1_ScanRegionsRequest.with { $0.header = header; $0.limit = 10 }) { try await api.scanRegions($0).header }
            try await fuzz(Flotilla_V1_ListOperatorsRequest.with { $0.header = header; $0.includeHistory = true }) { try await api.listOperators($0).header }
            try await fuzz(Flotilla_V1_AddOperatorRequest.with {
                $0.header = header
                $0.regionID = region.id
                $0.split = Flotilla_V1_SplitRegion.with { $0.splitKeys = [Data("m".utf8)] }
            }) { try await api.addOperator($0).header }
            try await fuzz(Flotilla_V1_CancelOperatorRequest.with { $0.header = header; $0.regionID = region.id }) { try await api.cancelOperator($0).header }
            try await fuzz(Flotilla_V1_GetSchedulerSettingsRequest.with { $0.header = header }) { try await api.getSchedulerSettings($0).header }
            try await fuzz(Flotilla_V1_SetSchedulerSettingsRequest.with { $0.header = header; $0.settings = .defaults }) {
                try await api.setSchedulerSettings($0).header
            }
            try await fuzz(Flotilla_V1_AddOperatorRequest.with {
                $0.header = header
                $0.regionID = region.id
                $0.movePeer = Flotilla_V1_MovePeer.with { $0.fromStoreID = store.id; $0.toStoreID = store.id + 1 }
            }) { try await api.addOperator($0).header }
            try await fuzz(Flotilla_V1_ListSchedulersRequest.with { $0.header = header }) { try await api.listSchedulers($0).header }
            try await fuzz(Flotilla_V1_SetStoreStateRequest.with { $0.header = header; $0.change.storeID = store.id; $0.change.state = .offline }) {
                try await api.setStoreState($0).header
            }
            try await fuzz(Flotilla_V1_PutMemberRequest.with { $0.header = header; $0.member.memberID = 1; $0.member.name = "pd1" }) {
                try await api.putMember($0).header
            }
            // The batched heartbeat stream: mutated batches, and one past the bound.
            var batches: [Flotilla_V1_RegionHeartbeatBatch] = []
            let validBatch = Flotilla_V1_RegionHeartbeatBatch.with {
                $0.header = header
                $0.heartbeats = [Flotilla_V1_RegionHeartbeatRequest.with { $0.storeID = store.id; $0.region = info }]
            }
            let batchBytes: [UInt8] = try validBatch.serializedBytes()
            for _ in 0..<(50 * iterations) where batches.count < iterations {
                if let mutated = try? Flotilla_V1_RegionHeartbeatBatch(serializedBytes: mutator.mutate(batchBytes)) { batches.append(mutated) }
            }
            var tooMany = validBatch
            tooMany.heartbeats = Array(repeating: validBatch.heartbeats[0], count: 1_025)
            batches.append(tooMany)
            let sentBatches = batches
            let responses = try await api.regionHeartbeatBatches(requestProducer: { writer in
                for batch in sentBatches { try await writer.write(batch) }
            }, onResponse: { response in
                var all: [Flotilla_V1_RegionHeartbeatBatchResponse] = []
                for try await message in response.messages { all.append(message) }
                return all
            })
            #expect(responses.count == sentBatches.count, "one answer message per batch")
            for (batch, response) in zip(sentBatches.dropLast(), responses) where !response.header.hasError {
                #expect(response.answers.count == batch.heartbeats.count, "an answer per heartbeat")
            }
            #expect(responses.last?.header.error.invalidArgument.contains("1024") == true, "\(String(describing: responses.last?.header))")
            tried += sentBatches.count
            print("PD fuzz: \(tried) mutated requests over 22 RPCs (seed \(seed)), \(answeredWithError) refused with a typed error")
        }
        #expect(tried >= 18 * iterations / 2, "mutations that decode were found for the RPCs: \(tried)")
        // Still serving, one cluster, its first region intact.
        try await pd.withClient { client in
            let info = try await client.clusterInfo()
            #expect(info.clusterID == clusterID && info.bootstrapped)
            #expect(try await client.region(key: Data()).region.region.id == region.id)
        }
        #expect(pd.processes[0]?.isRunning == true, "replay: FLOTILLA_FUZZ_SEED=\(seed) swift test --filter PDFuzzTests")
    }
}
