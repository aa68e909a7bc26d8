import FlotillaClient
import FlotillaProto
import FlotillaStoreServer
import Foundation
import Testing

/// The placement driver as real `flotilla-pd` processes on loopback.
@Suite("PD: a replicated flotilla-pd group", .serialized)
struct PDEndToEndTests {
    @Test func idsNeverRepeatAcrossLeaderKillsAndANewLeaderServesQuickly() async throws {
        let pd = try LocalPD(members: 3)
        try await pd.withClient { client in
            #expect(await eventually(seconds: 15) { ((try? await client.clusterInfo())?.clusterID ?? 0) != 0 })
            var handedOut: Set<UInt64> = []
            func take(_ batches: Int) async throws {
                for _ in 0..<batches {
                    let first = try await client.allocateIDs(100)
                    for id in first..<(first + 100) { #expect(handedOut.insert(id).inserted, "id \(id) handed out twice") }
                }
            }
            var failoverSeconds: [Double] = []
            for _ in 0..<3 {
                try await take(3)
                let leader = try #require(try await pd.leaderIndex(client))
                let killed = Date()
                pd.kill(leader)
                try await take(1)
                failoverSeconds.append(Date().timeIntervalSince(killed))
                try pd.start(leader)
            }
            try await take(2)
            // Election timeout 10 ticks of 50 ms: a new leader should serve within ~2 timeouts
            // plus the client's retry pacing.
            print("PD failover, kill -9 of the leader to the next id served: \(failoverSeconds.map { String(format: "%.2f s", $0) })")
            #expect(failoverSeconds.allSatisfy { $0 < 5 })
            #expect(handedOut.count == 1_400)
        }
    }

    @Test func sixStoresRacingToBootstrapMakeExactlyOneClusterAndTheGroupRecoversAfterAFullRestart() async throws {
        let pd = try LocalPD(members: 3)
        let (clusterID, winner) = try await pd.withClient { client in
            #expect(await eventually(seconds: 15) { ((try? await client.clusterInfo())?.clusterID ?? 0) != 0 })
            let outcomes = try await withThrowingTaskGroup(of: (UInt64, Bool).self) { group in
                for index in 0..<6 {
                    group.addTask {
                        var store = Flotilla_V1_Store()
                        store.address = "127.0.0.1:\(31_000 + index)"
                        store.raftAddress = "127.0.0.1:\(32_000 + index)"
                        let registered = try await client.putStore(store)
                        let regionID = try await client.allocateIDs(2)
                        var region = Flotilla_V1_Region()
                        region.id = regionID
                        region.epoch.confVer = 1
                        region.epoch.version = 1
                        var peer = Flotilla_V1_Peer()
                        peer.id = regionID + 1
                        peer.storeID = registered.id
                        region.peers = [peer]
                        do {
                            try await client.bootstrap(store: registered, region: region)
                            return (registered.id, true)
                        } catch PDClientError.refused(let error) {
                            #expect(error.alreadyBootstrapped, "\(error.message)")
                            return (registered.id, false)
                        }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let winners = outcomes.filter(\.1)
            #expect(winners.count == 1)
            #expect(Set(outcomes.map(\.0)).count == 6, "six distinct store ids")
            let info = try await client.clusterInfo()
            #expect(info.bootstrapped && info.regionCount == 1 && info.storeCount == 6)
            let first = try await client.region(key: Data("any key".utf8))
            #expect(first.region.region.peers.map(\.storeID) == [winners.first?.0 ?? 0])
            #expect(first.stores.map(\.id) == [winners.first?.0 ?? 0])
            return (info.clusterID, winners.first?.0 ?? 0)
        }

        // Every member killed and started again: the state comes back from disk.
        for index in 0..<3 { pd.kill(index) }
        for index in 0..<3 { try pd.start(index) }
        try await pd.withClient { client in
            var info = Flotilla_V1_ClusterInfo()
            #expect(await eventually(seconds: 20) {
                guard let answer = try? await client.clusterInfo() else { return false }
                info = answer
                return true
            })
            #expect(info.clusterID == clusterID && info.bootstrapped && info.storeCount == 6 && info.regionCount == 1)
            let stores = try await client.stores()
            #expect(stores.count == 6 && stores.contains { $0.store.id == winner })
            let next = try await client.allocateIDs(1)
            #expect(next > stores.map(\.store.id).max() ?? 0)
        }
    }

    /// The same race with real store processes: six `flotilla-server --pd` started at once on
    /// an unbootstrapped cluster. Exactly one first region, on one store; all six join; the
    /// replica checker then spreads it to three; one client sees one data set.
    @Test func sixStoreProcessesStartedAtOnceMakeOneClusterWithOneFirstRegion() async throws {
        let pd = try LocalPD(members: 1)
        try await pd.withClient { client in
            #expect(await eventually(seconds: 15) { ((try? await client.clusterInfo())?.clusterID ?? 0) != 0 })
        }
        for index in 0..<6 { try pd.startStore(index) }
        try await pd.withClient(timeout: .seconds(30)) { client in
            var info = Flotilla_V1_ClusterInfo()
            #expect(await eventually(seconds: 60) {
                guard let answer = try? await client.clusterInfo() else { return false }
                info = answer
                return answer.bootstrapped && answer.storeCount == 6
            }, "six stores joined: \(info)")
            #expect(info.regionCount == 1, "exactly one first region")
            var voters = 0
            #expect(await eventually(seconds: 60) {
                voters = (try? await client.region(key: Data()))?.region.region.peers.filter { $0.role == .voter }.count ?? 0
                return voters == 3
            }, "the first region reached three voters: \(voters)")
            let regions = try await client.scanRegions().regions
            #expect(regions.count == 1)
        }
        for index in 0..<6 {
            #expect(!pd.storeLog(index).contains("failed"), "store \(index): \(pd.storeLog(index).suffix(400))")
        }
    }

    /// An operator cancelled on one PD leader is in the history the next leader lists.
    @Test func theOperatorHistorySurvivesAPDLeaderKill() async throws {
        let pd = try LocalPD(members: 3)
        try await pd.withClient { client in
            #expect(await eventually(seconds: 15) { ((try? await client.clusterInfo())?.clusterID ?? 0) != 0 })
            let regionID = try await pd.bootstrapWithPretendStore(client).region.id
            var request = Flotilla_V1_AddOperatorRequest()
            request.regionID = regionID
            request.split.splitKeys = [Data("m".utf8)]
            let op = try await client.addOperator(request)
            try await client.call { api, header in
                var cancel = Flotilla_V1_CancelOperatorRequest()
                cancel.header = header
                cancel.regionID = regionID
                return ((), try await api.cancelOperator(cancel).header)
            }
            // Recorded through PD's log within a maintenance round (half a second).
            try await Task.sleep(for: .seconds(2))
            let leader = try #require(try await pd.leaderIndex(client))
            pd.kill(leader)
            var history: [Flotilla_V1_OperatorInfo] = []
            #expect(await eventually(seconds: 20) {
                history = (try? await client.operators(includeHistory: true)) ?? []
                return !history.isEmpty
            })
            #expect(history.contains { $0.id == op.id && $0.status == .cancelled && $0.reason.contains("admin") }, "\(history)")
            try pd.start(leader)
        }
    }

    @Test func badRequestsAreRefusedWithTypedErrorsAndChangeNothing() async throws {
        let pd = try LocalPD(members: 1)
        try await pd.withClient { client in
            #expect(await eventually(seconds: 15) { ((try? await client.clusterInfo())?.clusterID ?? 0) != 0 })
            var store = Flotilla_V1_Store()
            store.address = "127.0.0.1:31001"
            store.raftAddress = "127.0.0.1:32001"
            let first = try await client.putStore(store)

            func refusal(_ body: () async throws -> Void) async -> Flotilla_V1_PDError? {
                do { try await body() } catch PDClientError.refused(let error) { return error } catch { Issue.record("\(error)") }
                return nil
            }
            // Another store claiming the same address.
            var thief = store
            thief.raftAddress = "127.0.0.1:32002"
            #expect(await refusal { _ = try await client.putStore(thief) }?.addressInUse == first.id)
            // Malformed addresses, an unknown store id, bounds on counts and keys.
            var malformed = store
            malformed.address = "no port"
            #expect(await refusal { _ = try await client.putStore(malformed) }?.invalidArgument.hasPrefix("store.address") == true)
            var unknown = store
            unknown.id = 999_999
            #expect(await refusal { _ = try await client.putStore(unknown) }?.unknownStore == 999_999)
            #expect(await refusal { _ = try await client.allocateIDs(0) }?.invalidArgument.isEmpty == false)
            #expect(await refusal { _ = try await client.allocateIDs(1_000_000) }?.invalidArgument.isEmpty == false)
            #expect(await refusal { _ = try await client.region(key: Data(count: 9_000)) }?.invalidArgument.isEmpty == false)
            #expect(await refusal { _ = try await client.scanRegions(from: Data("b".utf8), to: Data("a".utf8)) }?.invalidArgument.isEmpty == false)
            #expect(await refusal { _ = try await client.scanRegions(from: Data(count: 9_000)) }?.invalidArgument.isEmpty == false)
            // Not bootstrapped yet: routes are refused as such.
            #expect(await refusal { _ = try await client.region(key: Data()) }?.notBootstrapped == true)
            // A heartbeat from a store PD does not know.
            #expect(await refusal {
                try await client.call { pdClient, header in
                    var request = Flotilla_V1_StoreHeartbeatRequest()
                    request.header = header
                    request.storeID = 4242
                    let response = try await pdClient.storeHeartbeat(request)
                    return ((), response.header)
                }
            }?.unknownStore == 4242)
            // The same on the heartbeat stream: every message gets its own typed refusal.
            let answers = try await client.call { pdClient, header in
                let answers = try await pdClient.regionHeartbeats(requestProducer: { writer in
                    for storeID in [UInt64(4242), 4243] {
                        var request = Flotilla_V1_RegionHeartbeatRequest()
                        request.header = header
                        request.storeID = storeID
                        try await writer.write(request)
                    }
                }, onResponse: { response in
                    var answers: [Flotilla_V1_RegionHeartbeatResponse] = []
                    for try await answer in response.messages { answers.append(answer) }
                    return answers
                })
                return (answers, Flotilla_V1_PDResponseHeader())
            }
            #expect(answers.count == 2 && answers.allSatisfy { $0.header.hasError && !$0.header.error.message.isEmpty })
            #expect(try await client.stores().count == 1)
        }
        // A client of another cluster is refused.
        let other = try PDClient(endpoints: pd.clientAddresses, clusterID: 12_345, requestTimeout: .seconds(5))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await other.run() }
            defer { other.close(); group.cancelAll() }
            do {
                _ = try await other.allocateIDs(1)
                Issue.record("another cluster's request was served")
            } catch PDClientError.refused(let error) {
                #expect(error.clusterMismatch != 0)
            }
        }
        // A data dir of another PD group is refused at start, with a reason.
        pd.kill(0)
        var arguments = pd.arguments(0)
        if let position = arguments.firstIndex(of: "--initial-members") {
            arguments[position + 1] = pd.initialMembers + ",pd9=127.0.0.1:1"
        }
        let (status, output) = try LocalCluster.runToEnd(LocalPD.binary, arguments)
        #expect(status == 2)
        #expect(output.contains("another PD group or member"), "\(output)")
        let (badStatus, badOutput) = try LocalCluster.runToEnd(LocalPD.binary, ["--name", "x", "--data-dir", pd.root + "/x", "--client-address", "127.0.0.1:1",
                                                                               "--peer-address", "127.0.0.1:2", "--initial-members", "x=nonsense"])
        #expect(badStatus == 2 && badOutput.contains("is not name=host:port"), "\(badOutput)")
    }
}

/// Stores that join through PD, and clients that know only PD.
@Suite("PD: stores join through PD, clients route through PD", .serialized)
struct PDClusterEndToEndTests {
    func withKV<T: Sendable>(_ pd: LocalPD, _ body: (FlotillaClient) async throws -> T) async throws -> T {
        let client = try FlotillaClient(pd: pd.clientAddresses, requestTimeout: .seconds(20))
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            defer {
                client.close()
                group.cancelAll()
            }
            return try await body(client)
        }
    }

    @Test func fromNothingOneStoreBootstrapsTwoJoinAndTheRegionReachesThreeVotersWhileClientsWork() async throws {
        let pd = try LocalPD(members: 3)
        try pd.startStore(0)
        let routes = try PDClient(endpoints: pd.clientAddresses, requestTimeout: .seconds(30))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await routes.run() }
            defer { routes.close(); group.cancelAll() }
            #expect(await eventually(seconds: 30) { (try? await routes.clusterInfo())?.bootstrapped == true })

            try await withKV(pd) { kv in
                for index in 0..<50 { try await kv.put(Data("key-\(index)".utf8), Data("one store \(index)".utf8)) }
            }
            try pd.startStore(1)
            try pd.startStore(2)
            var voters: [UInt64] = []
            #expect(await eventually(seconds: 60) {
                guard let region = try? await routes.region(key: Data()) else { return false }
                voters = region.region.region.peers.filter { $0.role == .voter }.map(\.storeID)
                return voters.count == 3
            }, "voters: \(voters)")
            let stores = try await routes.stores()
            #expect(stores.count == 3 && stores.allSatisfy { $0.liveness == .up })

            // A client given only PD's endpoints reads what was written before the others
            // joined, and writes more; then the PD leader is killed under its load.
            try await withKV(pd) { kv in
                for index in 0..<50 {
                    #expect(try await kv.get(Data("key-\(index)".utf8)) == Data("one store \(index)".utf8))
                }
                let leader = try #require(try await pd.leaderIndex(routes))
                pd.kill(leader)
                for index in 50..<150 { try await kv.put(Data("key-\(index)".utf8), Data("three stores \(index)".utf8)) }
                try pd.start(leader)
                for index in 50..<150 {
                    #expect(try await kv.get(Data("key-\(index)".utf8)) == Data("three stores \(index)".utf8))
                }
            }
            // Every PD member killed and started again: the stores report again (all three up),
            // and a client keeps reading and writing.
            for index in 0..<3 { pd.kill(index) }
            for index in 0..<3 { try pd.start(index) }
            #expect(await eventually(seconds: 60) {
                guard let stores = try? await routes.stores() else { return false }
                return stores.count == 3 && stores.allSatisfy { $0.liveness == .up && $0.lastHeartbeatAgeMs < 5_000 && $0.hasStats }
            })
            try await withKV(pd) { kv in
                #expect(try await kv.get(Data("key-0".utf8)) == Data("one store 0".utf8))
                try await kv.put(Data("after-restart".utf8), Data("yes".utf8))
                #expect(try await kv.get(Data("after-restart".utf8)) == Data("yes".utf8))
            }
        }
    }
}

@Suite("PD process life")
struct PDProcessTests {
    @Test func aMemberStopsOnSIGTERM() async throws {
        let pd = try LocalPD(members: 1)
        try await pd.withClient { client in
            #expect(await eventually(seconds: 30) { (try? await client.clusterInfo()) != nil })
        }
        let process = try #require(pd.processes[0])
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(!process.isRunning, "flotilla-pd exits on SIGTERM")
        if !process.isRunning { #expect(process.terminationStatus == 0) }
    }

    @Test func aStoreRefusesToJoinAnotherClusterWithItsDataDir() async throws {
        let first = try LocalPD(members: 1)
        try first.startStore(0)
        try await first.withClient { client in
            #expect(await eventually(seconds: 30) { (try? await client.clusterInfo())?.bootstrapped == true })
        }
        first.killStore(0, signal: SIGTERM)
        // A second, unrelated cluster; the store started on the first one's data dir.
        let second = try LocalPD(members: 1)
        try await second.withClient { client in
            #expect(await eventually(seconds: 15) { ((try? await client.clusterInfo())?.clusterID ?? 0) != 0 })
        }
        let addresses = try #require(first.storeAddresses[0])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: LocalCluster.serverBinary)
        process.arguments = ["--pd", second.clientAddresses[0], "--data-dir", first.root + "/store-0",
                             "--address", addresses.address, "--raft-address", addresses.raftAddress, "--log-level", "warning"]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        if process.isRunning { process.terminate() }
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus != 0, "refused to start")
        #expect(message.contains("cluster"), "the reason names the cluster: \(message)")
        let registered = try await second.withClient { client in try await client.stores() }
        #expect(registered.isEmpty, "nothing registered in the other cluster")
    }

    /// PD members and stores given `--secret-file`: the cluster forms and serves (Raft
    /// connections and snapshots to the new replicas proven with the secret); a store given
    /// another secret never gets a replica; a secret file too short is refused at start.
    @Test func aClusterWithASecretServesAndAStoreWithAnotherSecretStaysOut() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-secret-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let secret = directory + "/secret", other = directory + "/other", short = directory + "/short"
        try Data(String(repeating: "s", count: 32).utf8).write(to: URL(fileURLWithPath: secret))
        try Data(String(repeating: "o", count: 32).utf8).write(to: URL(fileURLWithPath: other))
        try Data("too short".utf8).write(to: URL(fileURLWithPath: short))
        let pd = try LocalPD(members: 1, memberArguments: ["--secret-file", secret])
        pd.storeArguments = ["--secret-file", secret]
        for index in 0..<3 { try pd.startStore(index) }
        try await pd.withClient(timeout: .seconds(30)) { client in
            var peers: [UInt64] = []
            #expect(await eventually(seconds: 60) {
                let region = try? await client.region(key: Data())
                peers = region?.region.region.peers.filter { $0.role == .voter }.map(\.storeID) ?? []
                return peers.count == 3
            }, "three voters: \(peers)")
            // A fourth store with another secret joins PD (its API has no secret) but gets no
            // data: asked to take a replica, its peer never receives a snapshot.
            pd.storeArguments = ["--secret-file", other]
            try pd.startStore(3)
            var outsider: UInt64?
            #expect(await eventually(seconds: 30) {
                outsider = (try? await client.stores())?.first { $0.store.address == pd.storeAddresses[3]?.address }?.store.id
                return outsider != nil
            })
            let regionID = try await client.region(key: Data()).region.region.id
            var request = Flotilla_V1_AddOperatorRequest()
            request.regionID = regionID
            request.addPeerStoreID = outsider ?? 0
            _ = try await client.addOperator(request)
            try await Task.sleep(for: .seconds(5))
            let held = try await client.stores().first { $0.store.id == outsider }?.stats.regionCount
            #expect(held == 0, "the store with another secret holds no replica: \(String(describing: held))")
        }
        let kv = try FlotillaClient(pd: pd.clientAddresses, requestTimeout: .seconds(20))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await kv.run() }
            defer { kv.close(); group.cancelAll() }
            try await kv.put(Data("secret".utf8), Data("kept".utf8))
            #expect(try await kv.get(Data("secret".utf8)) == Data("kept".utf8))
        }
        // A secret file of the wrong size: the store does not start, and says why.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: LocalCluster.serverBinary)
        process.arguments = ["--pd", pd.clientAddresses[0], "--data-dir", directory + "/refused", "--address", "127.0.0.1:1",
                             "--raft-address", "127.0.0.1:2", "--secret-file", short]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 2 && message.contains("16 to 4096"), "\(process.terminationStatus): \(message)")
    }

    /// The split flags and `flotillactl region split`'s arguments are checked before anything
    /// starts: each a non-zero exit naming the problem.
    @Test func badSplitFlagsAndArgumentsAreRefusedWithAReason() async throws {
        let server = LocalCluster.serverBinary
        let ctl = URL(fileURLWithPath: server).deletingLastPathComponent().appendingPathComponent("flotillactl").path
        let join = ["--pd", "127.0.0.1:1", "--data-dir", FileManager.default.temporaryDirectory.path + "/flotilla-never-\(UUID().uuidString)",
                    "--address", "127.0.0.1:2", "--raft-address", "127.0.0.1:3"]
        for (flags, fragment) in [(["--region-max-size-bytes", "100"], "4 KiB"),
                                  (["--region-max-size-bytes", "65536", "--region-split-size-bytes", "131072"], "split size at most max size"),
                                  (["--load-split-seconds", "0"], "seconds 1 to 3600"),
                                  (["--load-split-requests-per-second=-5"], "requests per second"),
                                  (["--split-check-diff-bytes", "0"], "split-check-diff"),
                                  (["--labels", "zone"], "not key=value"),
                                  (["--labels", "zone=a,zone=b"], "given twice"),
                                  (["--labels", "=a"], "1 to 64 bytes"),
                                  (["--labels", (0..<17).map { "k\($0)=v" }.joined(separator: ",")], "at most 16"),
                                  (["--stale-replica-seconds", "0"], "stale-replica-seconds"),
                                  (["--disk-reserve-mb", "1048577"], "--disk-reserve-mb ('disk-reserve-mb' in [limits] in the config file) must be between 0 and 1048576, got 1048577")] {
            let (status, output) = try LocalCluster.runToEnd(server, join + flags)
            #expect(status == 2 && output.contains(fragment), "\(flags): \(status) \(output)")
        }
        // A negative number of MiB is refused with the same range message, not wrapped around.
        let negative = try LocalCluster.runToEnd(server, join + ["--disk-reserve-mb=-1"])
        #expect(negative.status == 2 && negative.output.contains("must be between 0 and 1048576, got -1"), "\(negative)")
        let pd = try LocalPD(members: 1)
        let regionID = try await pd.withClient { client in
            #expect(await eventually(seconds: 15) { ((try? await client.clusterInfo())?.clusterID ?? 0) != 0 })
            return try await pd.bootstrapWithPretendStore(client).region.id
        }
        let endpoint = pd.clientAddresses[0]
        for (arguments, fragment) in [(["region", "split", "\(regionID)"], "at least one --at"),
                                      (["region", "split", "\(regionID)", "--hex", "--at", "zz"], "not hexadecimal"),
                                      (["region", "split", "\(regionID)", "--at", ""], "not strictly inside"),
                                      (["region", "split", "999999", "--at", "m"], "999999")] {
            let (status, output) = try LocalCluster.runToEnd(ctl, arguments + ["--pd", endpoint])
            #expect(status != 0 && output.contains(fragment), "\(arguments): \(status) \(output)")
        }
    }

    @Test func aStoreJoinedThroughPDStopsOnSIGTERM() async throws {
        let pd = try LocalPD(members: 1)
        try pd.startStore(0)
        try await pd.withClient { client in
            #expect(await eventually(seconds: 30) { (try? await client.clusterInfo())?.bootstrapped == true })
        }
        // Serving (its SIGTERM handler installed): the bootstrap is visible in PD a moment before.
        #expect(await eventually(seconds: 30) { pd.storeLog(0).contains("serving on") })
        let store = try #require(pd.stores[0])
        kill(store.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while store.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(!store.isRunning, "flotilla-server exits on SIGTERM")
        if !store.isRunning { #expect(store.terminationStatus == 0) }
    }
}

/// Polls `condition` until it holds or `seconds` pass.
func eventually(seconds: Double, _ condition: () async -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return false
}
