import FlotillaClient
import FlotillaCluster
import FlotillaProto
import FlotillaStoreServer
import GRPCCore
import GRPCNIOTransportHTTP2
import Foundation
import Linearizability
import Synchronization
import Testing

/// Splits on real processes: three PD members and three stores on loopback, clients writing
/// and reading while PD's split operator cuts the region.
@Suite("Split end to end", .serialized)
struct SplitEndToEndTests {
    @Test func splitUnderLoadLosesNothingAndScansSeeEveryKeyOnce() async throws {
        let pd = try LocalPD(members: 3)
        for index in 0..<3 { try pd.startStore(index) }
        try await pd.withClient(timeout: .seconds(30)) { routes in
            #expect(await eventually(seconds: 60) {
                guard let region = try? await routes.region(key: Data()) else { return false }
                return region.region.region.peers.filter { $0.role == .voter }.count == 3 && region.region.hasLeader
            }, "the first region reaches three voters")
            // The raw requests at the end go to one region's leader: leadership stays put.
            try await routes.updateSchedulerSettings { settings in
                settings.balanceLeaderEnabled = false
                settings.hotRegionEnabled = false
            }
            let client = try FlotillaClient(pd: pd.clientAddresses, requestTimeout: .seconds(20))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                defer { client.close(); group.cancelAll() }
                // Writers and register clients on keys either side of the split points.
                let registers = (0..<6).map { "k\($0)-register" } + ["k2", "k4"]
                let workload = ClientWorkload(client: client, writers: 6, registers: registers)
                // Split the region in three while they write, then wait for PD to see it.
                try await Task.sleep(for: .milliseconds(500))
                let region = try await routes.region(key: Data()).region.region
                let started = ContinuousClock.now
                let op = try await routes.splitRegion(region.id, at: [Data("k2".utf8), Data("k4".utf8)])
                #expect(op.status == .running)
                var regions: [Flotilla_V1_RegionInfo] = []
                let split = await eventually(seconds: 30) {
                    regions = (try? await routes.scanRegions().regions) ?? []
                    return regions.count == 3 && regions.allSatisfy(\.hasLeader)
                }
                let took = ContinuousClock.now - started
                #expect(split, "PD routes three regions: \(regions.map(\.region))")
                print("split: three regions served \(took) after the request")
                try await Task.sleep(for: .milliseconds(500))
                let keys = try await workload.finish("split").keys
                let batch = try await client.batchGet(Array(keys.prefix(500)))
                #expect(batch.count == min(500, keys.count))
                let ops = try await routes.operators(includeHistory: true)
                #expect(ops.contains { $0.status == .succeeded && $0.steps.first?.splitRegion.splitKeys.count == 2 },
                        "the split operator succeeded: \(ops.map { ($0.regionID, $0.status, $0.reason, $0.description_p) })")
            }
            // Bad split requests: each refused with a reason, nothing changed.
            let regions = try await routes.scanRegions().regions.map(\.region)
            let middle = try #require(regions.first { !$0.startKey.isEmpty && !$0.endKey.isEmpty })
            for (keys, fragment) in [([middle.startKey], "strictly inside"), ([Data("a".utf8)], "strictly inside"),
                                     ([Data("k3".utf8), Data("k2x".utf8)], "strictly increasing"), ([], "keys"),
                                     ([Data()], "bytes")] {
                do {
                    _ = try await routes.splitRegion(middle.id, at: keys)
                    Issue.record("split at \(keys) accepted")
                } catch {
                    #expect("\(error)".contains(fragment), "\(error)")
                }
            }
            do {
                _ = try await routes.splitRegion(999_999, at: [Data("x".utf8)])
                Issue.record("split of an unknown region accepted")
            } catch { #expect("\(error)".contains("999999"), "\(error)") }
            #expect(try await routes.scanRegions().regions.count == 3)

            // The same through the store's own SplitRegion, raw (no client-side checks): each a
            // typed error, nothing changed.
            let leaderStoreID = try await routes.region(id: middle.id).region.leader.storeID
            let store = try #require(try await routes.stores().first { $0.store.id == leaderStoreID }?.store)
            let (host, port) = try #require(HostPort(store.address).map { ($0.host, $0.port) })
            let grpc = try GRPCClient(transport: .http2NIOPosix(target: .ipv4(address: host, port: port), transportSecurity: .plaintext))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await grpc.runConnections() }
                defer { grpc.beginGracefulShutdown(); group.cancelAll() }
                let admin = Flotilla_V1_StoreAdmin.Client(wrapping: grpc)
                func attempt(_ body: (inout Flotilla_V1_SplitRegionRequest) -> Void) async throws -> Flotilla_V1_Error {
                    var request = Flotilla_V1_SplitRegionRequest()
                    request.context.regionID = middle.id
                    request.context.epoch = middle.epoch
                    request.splitKeys = [Data("k3".utf8)]
                    body(&request)
                    return try await admin.splitRegion(request).error
                }
                var stale = middle.epoch
                stale.version -= 1
                let cases: [(String, (inout Flotilla_V1_SplitRegionRequest) -> Void, (Flotilla_V1_Error) -> Bool)] = [
                    ("unknown region", { $0.context.regionID = 999_999 }, { if case .regionNotFound = $0.detail { true } else { false } }),
                    ("stale epoch", { $0.context.epoch = stale }, { if case .epochNotMatch = $0.detail { true } else { false } }),
                    ("no keys", { $0.splitKeys = [] }, { $0.message.contains("no split key") }),
                    ("on the start", { $0.splitKeys = [middle.startKey] }, { $0.message.contains("strictly inside") }),
                    ("outside", { $0.splitKeys = [Data("z".utf8)] }, { $0.message.contains("strictly inside") }),
                    ("unsorted", { $0.splitKeys = [Data("k3".utf8), Data("k2x".utf8)] }, { $0.message.contains("strictly increasing") }),
                    ("repeated", { $0.splitKeys = [Data("k3".utf8), Data("k3".utf8)] }, { $0.message.contains("strictly increasing") }),
                    ("empty key", { $0.splitKeys = [Data()] }, { $0.message.contains("bytes") }),
                    ("too long", { $0.splitKeys = [Data("k3".utf8) + Data(repeating: 0x61, count: KVLimits.keyBytesMax)] }, { $0.message.contains("bytes") }),
                    ("too many", { $0.splitKeys = (0...KVLimits.splitKeysMax).map { Data(String(format: "k3-%03d", $0).utf8) } }, { $0.message.contains("more than") }),
                ]
                for (name, body, matches) in cases {
                    let error = try await attempt(body)
                    #expect(matches(error), "\(name): \(error)")
                }
            }
            #expect(try await routes.scanRegions().regions.count == 3, "nothing changed")
        }
    }
}

extension SplitEndToEndTests {
    /// Stores with a 64 KiB region size: writing ~1.2 MB makes the region split on its own
    /// into many, and every key stays readable, once, in order.
    @Test func aRegionPastItsMaxSizeSplitsOnItsOwn() async throws {
        try await withThreeStores(["--region-max-size-bytes", "65536", "--region-split-size-bytes", "32768",
                                   "--split-check-diff-bytes", "16384", "--load-split-requests-per-second", "0"]) { routes, client in
            var written: [Data: Data] = [:]
            let value = Data(repeating: UInt8(ascii: "x"), count: 1_000)
            for batch in 0..<40 {
                let pairs = (0..<30).map { (Data(String(format: "auto-%02d-%03d", batch, $0).utf8), value) }
                try await client.batchPut(pairs)
                for (key, value) in pairs { written[key] = value }
            }
            var regions: [Flotilla_V1_RegionInfo] = []
            #expect(await eventually(seconds: 60) {
                regions = (try? await routes.scanRegions().regions) ?? []
                return regions.count >= 12 && regions.allSatisfy(\.hasLeader)
            }, "1.2 MB in regions of at most 64 KiB: \(regions.count) regions")
            print("auto split: \(regions.count) regions, sizes \(regions.map(\.stats.approximateSizeBytes))")
            let scanned = try await client.scan(from: Data(), to: Data(), limit: 100_000)
            #expect(scanned.count == written.count)
            #expect(scanned.allSatisfy { written[$0.key] == $0.value })
            #expect(zip(scanned, scanned.dropFirst()).allSatisfy { $0.key.lexicographicallyPrecedes($1.key) })
        }
    }

    /// A region read hard across its keys splits where its load divides; a region whose load is
    /// one key does not.
    @Test func aHotRegionSplitsWhereItsLoadDividesButNotInsideOneHotKey() async throws {
        try await withThreeStores(["--load-split-requests-per-second", "100", "--load-split-seconds", "2"]) { routes, client in
            // One hot key first: 4 s well above the rate, no split.
            try await client.put(Data("hot".utf8), Data("1".utf8))
            let hotUntil = ContinuousClock.now + .seconds(4)
            while ContinuousClock.now < hotUntil { _ = try await client.get(Data("hot".utf8)) }
            #expect(try await routes.scanRegions().regions.count == 1, "a single hot key is never split")
            // Then reads spread over 26 keys: the region splits between them.
            for letter in UInt8(ascii: "a")...UInt8(ascii: "z") { try await client.put(Data([letter]), Data("v".utf8)) }
            var regions: [Flotilla_V1_RegionInfo] = []
            let split = await eventually(seconds: 30) {
                for letter in UInt8(ascii: "a")...UInt8(ascii: "z") { _ = try? await client.get(Data([letter])) }
                regions = (try? await routes.scanRegions().regions) ?? []
                return regions.count >= 2
            }
            #expect(split, "the hot region split")
            // The reads show in the store's and the regions' heartbeats as rates.
            var readRate: UInt64 = 0
            #expect(await eventually(seconds: 15) {
                for letter in UInt8(ascii: "a")...UInt8(ascii: "z") { _ = try? await client.get(Data([letter])) }
                let stores = (try? await routes.stores()) ?? []
                let regions = (try? await routes.scanRegions().regions) ?? []
                readRate = stores.map(\.stats.readKeysPerSecond).reduce(0, +)
                return readRate > 0 && regions.contains { $0.stats.readKeysPerSecond > 0 }
            }, "read rates reported: store total \(readRate)/s")
            let cut = regions.dropFirst().first?.region.startKey ?? Data()
            print("load split at \(String(decoding: cut, as: UTF8.self)) into \(regions.count) regions")
            // A sampled key near the middle of the load (a letter, or "hot" between h and i).
            #expect(Data("d".utf8).lexicographicallyPrecedes(cut) && cut.lexicographicallyPrecedes(Data("w".utf8)),
                    "near the middle of the load: \(String(decoding: cut, as: UTF8.self))")
            for letter in UInt8(ascii: "a")...UInt8(ascii: "z") { #expect(try await client.get(Data([letter])) == Data("v".utf8)) }
        }
    }

    /// One PD member and three stores started with `storeArguments`, the first region on all
    /// three: `body` gets a PD client and a KV client.
    func withThreeStores(_ storeArguments: [String], _ body: (PDClient, FlotillaClient) async throws -> Void) async throws {
        let pd = try LocalPD(members: 1)
        pd.storeArguments = storeArguments
        for index in 0..<3 { try pd.startStore(index) }
        try await pd.withClient(timeout: .seconds(30)) { routes in
            #expect(await eventually(seconds: 60) {
                (try? await routes.region(key: Data()))?.region.region.peers.filter { $0.role == .voter }.count == 3
            })
            let client = try FlotillaClient(pd: pd.clientAddresses, requestTimeout: .seconds(20))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                defer { client.close(); group.cancelAll() }
                try await body(routes, client)
            }
        }
    }
}
