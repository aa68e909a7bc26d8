import FlotillaClient
import FlotillaCluster
import FlotillaProto
import FlotillaStoreServer
import GRPCCore
import GRPCNIOTransportHTTP2
import Foundation
import Synchronization
import Testing

/// Moves, repairs, balancing, drains and zones on real processes: PD members and stores on
/// loopback, clients writing and reading through it all.
@Suite("Move, repair and balance end to end", .serialized)
struct MoveEndToEndTests {
    /// A store's status through its admin API, with every region (and a digest of one).
    static func status(_ address: String, digest regionID: UInt64 = 0) async throws -> Flotilla_V1_StoreStatus {
        guard let target = HostPort(address) else { throw ConfigError("bad address \(address)") }
        let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: target.host, port: target.port), transportSecurity: .plaintext)
        return try await withGRPCClient(transport: transport) { grpc in
            var request = Flotilla_V1_StoreStatusRequest()
            request.includeRegions = true
            request.digestRegionID = regionID
            return try await Flotilla_V1_StoreAdmin.Client(wrapping: grpc).status(request)
        }
    }

    /// Store ids by the harness's store index.
    static func storeIDs(_ pd: LocalPD, _ routes: PDClient) async throws -> [Int: UInt64] {
        let stores = try await routes.stores()
        var ids: [Int: UInt64] = [:]
        for (index, addresses) in pd.storeAddresses {
            if let store = stores.first(where: { $0.store.address == addresses.address }) { ids[index] = store.store.id }
        }
        return ids
    }

    /// Waits for operator `id` to end; returns it as PD recorded it.
    static func ended(_ routes: PDClient, operator id: UInt64, seconds: Double = 90) async -> Flotilla_V1_OperatorInfo? {
        var found: Flotilla_V1_OperatorInfo?
        _ = await eventually(seconds: seconds) {
            found = (try? await routes.operators(includeHistory: true))?.first { $0.id == id && $0.status != .running }
            return found != nil
        }
        return found
    }

    /// The region is whole: `replicas` voters, no learner, out of any joint configuration.
    static func isWhole(_ info: Flotilla_V1_RegionInfo, replicas: Int = 3) -> Bool {
        info.hasLeader && !info.joint && info.region.peers.count == replicas && info.region.peers.allSatisfy { $0.role == .voter }
    }

    /// Every replica of the region holds the same data and sessions at the same applied index
    /// (waits for them to catch up: the caller has stopped writing).
    static func replicasAgree(_ pd: LocalPD, ids: [Int: UInt64], region: Flotilla_V1_Region) async -> (Bool, String) {
        var seen = ""
        let agreed = await eventually(seconds: 30) {
            var digests: [UInt64: Flotilla_V1_RegionDataDigest] = [:]
            for peer in region.peers {
                guard let index = ids.first(where: { $0.value == peer.storeID })?.key, let address = pd.storeAddresses[index]?.address,
                      let status = try? await status(address, digest: region.id), status.hasDigest else { return false }
                digests[peer.storeID] = status.digest
            }
            seen = digests.sorted { $0.key < $1.key }.map { "store \($0.key): applied \($0.value.appliedIndex) keys \($0.value.keys) checksum \(String($0.value.checksum, radix: 16))" }
                .joined(separator: "; ")
            return Set(digests.values.map(\.appliedIndex)).count == 1 && Set(digests.values.map(\.checksum)).count == 1
        }
        return (agreed, seen)
    }

    @Test func movesUnderLoadGoThroughJointConsensusSurviveFaultsAndLoseNothing() async throws {
        let pd = try LocalPD(members: 3)
        // A replica removed while it could not hear of it is found and destroyed in seconds.
        pd.storeArguments = ["--stale-replica-seconds", "3"]
        for index in 0..<4 { try pd.startStore(index) }
        try await pd.withClient(timeout: .seconds(30)) { routes in
            try await routes.updateSchedulerSettings { settings in
                settings.balanceRegionEnabled = false
                settings.balanceLeaderEnabled = false
                settings.hotRegionEnabled = false
            }
            #expect(await eventually(seconds: 60) {
                guard let region = try? await routes.region(key: Data()) else { return false }
                return Self.isWhole(region.region)
            }, "the first region reaches three voters")
            let ids = try await Self.storeIDs(pd, routes)
            #expect(ids.count == 4)
            let client = try FlotillaClient(pd: pd.clientAddresses, requestTimeout: .seconds(30))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                defer { client.close(); group.cancelAll() }
                let workload = ClientWorkload(client: client, writers: 4, registers: (0..<6).map { "k\($0)-register" })
                var region = try await routes.region(key: Data()).region
                var movesOfVoters = 0
                /// The store index holding no replica of the region.
                func spare() -> Int? { ids.first { id in !region.region.peers.contains { $0.storeID == id.value } }?.key }

                // 1. A follower's replica to the spare store.
                try await Task.sleep(for: .milliseconds(500))
                let follower = try #require(region.region.peers.first { $0.storeID != region.leader.storeID })
                var target = try #require(spare())
                let first = try await routes.movePeer(region.region.id, from: follower.storeID, to: try #require(ids[target]))
                let firstEnd = await Self.ended(routes, operator: first.id)
                #expect(firstEnd?.status == .succeeded, "move 1: \(String(describing: firstEnd))")
                movesOfVoters += 1

                // 2. The leader's replica, while the target is stopped for 3 s (SIGSTOP).
                region = try await routes.region(key: Data()).region
                target = try #require(spare())
                let leaderStore = region.leader.storeID
                let second = try await routes.movePeer(region.region.id, from: leaderStore, to: try #require(ids[target]))
                let stopped = try #require(pd.stores[target])
                kill(stopped.processIdentifier, SIGSTOP)
                try await Task.sleep(for: .seconds(3))
                kill(stopped.processIdentifier, SIGCONT)
                let secondEnd = await Self.ended(routes, operator: second.id)
                #expect(secondEnd?.status == .succeeded, "move 2 (the leader's replica, slow target): \(String(describing: secondEnd))")
                movesOfVoters += 1
                region = try await routes.region(key: Data()).region
                #expect(!region.region.peers.contains { $0.storeID == leaderStore } && region.leader.storeID != leaderStore)

                // 3. The PD leader is killed (-9) as soon as the new learner exists: the new PD
                // leader finishes or undoes the move from the region's state.
                target = try #require(spare())
                let source3 = try #require(region.region.peers.first { $0.storeID != region.leader.storeID })
                _ = try await routes.movePeer(region.region.id, from: source3.storeID, to: try #require(ids[target]))
                let targetID = try #require(ids[target])
                #expect(await eventually(seconds: 30) {
                    (try? await routes.region(key: Data()))?.region.region.peers.contains { $0.storeID == targetID } == true
                }, "the learner was added")
                let pdLeader = try #require(try await pd.leaderIndex(routes))
                pd.kill(pdLeader)
                let healed = await eventually(seconds: 60) {
                    guard let info = try? await routes.region(key: Data()).region, Self.isWhole(info) else { return false }
                    let running = try? await routes.operators()
                    return running?.isEmpty == true
                }
                #expect(healed, "after a PD leader kill mid-move the region is whole again")
                try pd.start(pdLeader)
                region = try await routes.region(key: Data()).region
                movesOfVoters += region.region.peers.contains { $0.storeID == targetID } ? 1 : 0

                // 4. The target store is killed (-9) while it is stopped mid-snapshot, then
                // restarted: the move completes.
                target = try #require(spare())
                let source4 = try #require(region.region.peers.first { $0.storeID != region.leader.storeID })
                let victim = try #require(pd.stores[target])
                kill(victim.processIdentifier, SIGSTOP)
                let fourth = try await routes.movePeer(region.region.id, from: source4.storeID, to: try #require(ids[target]))
                try await Task.sleep(for: .seconds(2))
                pd.killStore(target)
                try pd.startStore(target)
                let fourthEnd = await Self.ended(routes, operator: fourth.id)
                #expect(fourthEnd?.status == .succeeded, "move 4 (target killed mid-snapshot): \(String(describing: fourthEnd))")
                movesOfVoters += fourthEnd?.status == .succeeded ? 1 : 0

                try await workload.finish("moves")
                region = try await routes.region(key: Data()).region
                #expect(Self.isWhole(region), "\(region)")
                // The joint configuration was entered and left once per move of a voter, as
                // the region's own membership record shows (not the logs).
                let leaderIndex = try #require(ids.first { $0.value == region.leader.storeID }?.key)
                let leaderStatus = try await Self.status(try #require(pd.storeAddresses[leaderIndex]?.address))
                let record = try #require(leaderStatus.regionStatus.first { $0.regionID == region.region.id })
                #expect(!record.joint)
                let kinds = record.confChanges.map(\.kind)
                let entered = kinds.filter { $0 == .enterJoint }.count
                #expect(entered >= movesOfVoters && entered == kinds.filter { $0 == .leaveJoint }.count, "\(kinds)")
                #expect(zip(kinds, kinds.dropFirst()).allSatisfy { $0 != .enterJoint || $1 == .leaveJoint }, "each joint change left next: \(kinds)")
                // Stores that gave their replica up hold nothing of the region (one removed
                // while it could not hear of it is found silent and destroyed within seconds).
                for (index, id) in ids where !region.region.peers.contains(where: { $0.storeID == id }) {
                    let address = try #require(pd.storeAddresses[index]?.address)
                    let gone = await eventually(seconds: 30) {
                        let status = try? await Self.status(address)
                        return status.map { !$0.regionStatus.contains { $0.regionID == region.region.id } } ?? false
                    }
                    #expect(gone, "store \(id) destroyed its old replica")
                }
                let (agree, digests) = await Self.replicasAgree(pd, ids: ids, region: region.region)
                #expect(agree, "replicas agree: \(digests)")
            }
        }
    }

    /// Replicas (voters and learners) and leaders per store, from PD's routes.
    static func counts(_ regions: [Flotilla_V1_RegionInfo]) -> (replicas: [UInt64: Int], leaders: [UInt64: Int]) {
        var replicas: [UInt64: Int] = [:], leaders: [UInt64: Int] = [:]
        for info in regions {
            for peer in info.region.peers { replicas[peer.storeID, default: 0] += 1 }
            if info.hasLeader { leaders[info.leader.storeID, default: 0] += 1 }
        }
        return (replicas, leaders)
    }

    /// Every count of `stores` within `percent` of their mean.
    static func withinOfMean(_ counts: [UInt64: Int], stores: [UInt64], percent: Double) -> Bool {
        let values = stores.map { Double(counts[$0] ?? 0) }
        let mean = values.reduce(0, +) / Double(max(1, values.count))
        return values.allSatisfy { abs($0 - mean) <= mean * percent / 100 }
    }

    /// Splits the whole key space into `count` regions at r01, r02, ... and waits until PD
    /// routes them all, each whole.
    static func presplit(_ client: FlotillaClient, _ routes: PDClient, count: Int) async throws -> Bool {
        _ = try await client.split(at: (1..<count).map { Data(String(format: "r%02d", $0).utf8) })
        return await eventually(seconds: 60) {
            guard let regions = try? await routes.scanRegions().regions else { return false }
            return regions.count == count && regions.allSatisfy { Self.isWhole($0) }
        }
    }

    @Test func aDownStoreIsRepairedAndAddedStoresAreBalancedTo() async throws {
        let pd = try LocalPD(members: 1)
        pd.storeArguments = ["--stale-replica-seconds", "3"]
        try await pd.withClient(timeout: .seconds(30)) { routes in
            _ = await eventually(seconds: 30) { (try? await routes.clusterInfo())?.clusterID != 0 }
            try await routes.updateSchedulerSettings { settings in
                settings.maxStoreDownTimeSeconds = 4
                settings.storeLimit = 8
                settings.balanceRegionEnabled = false
                settings.balanceLeaderEnabled = false
            }
            for index in 0..<4 { try pd.startStore(index) }
            #expect(await eventually(seconds: 60) { (try? await routes.region(key: Data())).map { Self.isWhole($0.region) } ?? false })
            let client = try FlotillaClient(pd: pd.clientAddresses, requestTimeout: .seconds(30))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                defer { client.close(); group.cancelAll() }
                let regionCount = 40
                #expect(try await Self.presplit(client, routes, count: regionCount), "\(regionCount) regions, each with three voters")
                let workload = ClientWorkload(client: client, prefix: "r", writers: 2, minimumWrites: 20,
                                              registers: ["r05-register", "r25-register"], registerClients: 2)
                var ids = try await Self.storeIDs(pd, routes)
                // Kill -9 a store holding replicas: once it is down, every region gets its
                // third replica back on the others.
                let regions = try await routes.scanRegions().regions
                let victimID = try #require(regions.first?.region.peers.first?.storeID)
                let victim = try #require(ids.first { $0.value == victimID }?.key)
                pd.killStore(victim)
                let killed = ContinuousClock.now
                let repaired = await eventually(seconds: 120) {
                    guard let regions = try? await routes.scanRegions().regions, regions.count >= regionCount else { return false }
                    return regions.allSatisfy { Self.isWhole($0) && !$0.region.peers.contains { $0.storeID == victimID } }
                }
                let repairTook = ContinuousClock.now - killed
                #expect(repaired, "every region has three voters on live stores")
                print("repair: \(regionCount) regions whole again \(repairTook) after a store was killed (down time 4 s)")

                // Add a fifth and sixth store, turn the balancers on: replicas and leaders even
                // out within 20 % of the mean.
                try pd.startStore(4)
                try pd.startStore(5)
                _ = await eventually(seconds: 30) { (try? await Self.storeIDs(pd, routes))?.count == 6 }
                ids = try await Self.storeIDs(pd, routes)
                let live = ids.filter { $0.key != victim }.map(\.value)
                try await routes.updateSchedulerSettings { settings in
                    settings.balanceRegionEnabled = true
                    settings.balanceLeaderEnabled = true
                }
                let added = ContinuousClock.now
                var last: (replicas: [UInt64: Int], leaders: [UInt64: Int]) = ([:], [:])
                let balanced = await eventually(seconds: 150) {
                    guard let regions = try? await routes.scanRegions().regions, regions.count >= regionCount,
                          regions.allSatisfy({ Self.isWhole($0) }) else { return false }
                    last = Self.counts(regions)
                    return Self.withinOfMean(last.replicas, stores: live, percent: 20) && Self.withinOfMean(last.leaders, stores: live, percent: 20)
                }
                let balanceTook = ContinuousClock.now - added
                #expect(balanced, "replicas \(last.replicas.sorted { $0.key < $1.key }), leaders \(last.leaders.sorted { $0.key < $1.key })")
                print("balance: 2 stores added to 3, \(regionCount) regions within 20 % in \(balanceTook): replicas \(last.replicas.sorted { $0.key < $1.key }), leaders \(last.leaders.sorted { $0.key < $1.key })")
                try await workload.finish("repair and balance")
                let schedulers = try await routes.schedulers()
                #expect(schedulers.first { $0.name == "balance-region" }?.operatorsMade ?? 0 > 0, "\(schedulers)")
                #expect(schedulers.first { $0.name == "replica-checker" }?.operatorsMade ?? 0 >= UInt64(regionCount))
            }
        }
    }

    @Test func zonesStayDistinctADrainEndsInATombstoneAndAnImpossibleDrainIsRefused() async throws {
        let pd = try LocalPD(members: 1)
        pd.storeArguments = ["--stale-replica-seconds", "3"]
        let zones = ["a", "a", "b", "b", "c", "c"]
        for (index, zone) in zones.enumerated() { pd.storeArgumentsByIndex[index] = ["--labels", "zone=\(zone),host=h\(index)"] }
        try await pd.withClient(timeout: .seconds(30)) { routes in
            _ = await eventually(seconds: 30) { (try? await routes.clusterInfo())?.clusterID != 0 }
            try await routes.updateSchedulerSettings { settings in
                settings.isolationLabel = "zone"
                settings.maxStoreDownTimeSeconds = 4
                settings.storeLimit = 8
            }
            for index in zones.indices { try pd.startStore(index) }
            #expect(await eventually(seconds: 60) { (try? await routes.region(key: Data())).map { Self.isWhole($0.region) } ?? false })
            let client = try FlotillaClient(pd: pd.clientAddresses, requestTimeout: .seconds(30))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                defer { client.close(); group.cancelAll() }
                #expect(try await Self.presplit(client, routes, count: 8))
                let workload = ClientWorkload(client: client, prefix: "r", writers: 2, minimumWrites: 20,
                                              registers: ["r03-register"], registerClients: 2)
                let ids = try await Self.storeIDs(pd, routes)
                let zoneOf = Dictionary(uniqueKeysWithValues: ids.map { ($0.value, zones[$0.key]) })
                // Watch PD's routes all along: a settled region (no learner, not joint) never
                // has two voters in one zone.
                let violations = Mutex<[String]>([])
                let stopWatching = ManagedAtomicFlag()
                let watcher = Task {
                    while !stopWatching.isSet {
                        for info in (try? await routes.scanRegions().regions) ?? [] where !info.joint && info.region.peers.allSatisfy({ $0.role == .voter }) {
                            let used = info.region.peers.compactMap { zoneOf[$0.storeID] }
                            if Set(used).count != used.count { violations.withLock { $0.append("region \(info.region.id): zones \(used)") } }
                        }
                        try? await Task.sleep(for: .milliseconds(200))
                    }
                }
                // Drain a zone-a store: its replicas go to the other zone-a store, then it is a
                // tombstone.
                let drained = try #require(ids[0])
                try await routes.setStoreState(drained, .offline)
                let drainStarted = ContinuousClock.now
                let tombstoned = await eventually(seconds: 120) {
                    (try? await routes.stores())?.first { $0.store.id == drained }?.store.state == .tombstone
                }
                #expect(tombstoned, "the drained store became a tombstone")
                print("zones: drain to tombstone \(ContinuousClock.now - drainStarted)")
                let regions = try await routes.scanRegions().regions
                #expect(regions.allSatisfy { !$0.region.peers.contains { $0.storeID == drained } })
                // Draining the last zone-a store would leave two zones for three replicas:
                // refused, through the admin CLI as a user would meet it (exit 1, one line).
                let ctl = URL(fileURLWithPath: LocalCluster.serverBinary).deletingLastPathComponent().appendingPathComponent("flotillactl").path
                let pdFlag = ["--pd", pd.clientAddresses.joined(separator: ",")]
                func ctlRun(_ arguments: [String]) throws -> (status: Int32, output: String) { try LocalCluster.runToEnd(ctl, arguments + pdFlag) }
                let refusedDrain = try ctlRun(["store", "drain", "\(try #require(ids[1]))"])
                #expect(refusedDrain.status == 1 && refusedDrain.output.contains("cannot be drained"), "\(refusedDrain)")
                let storeList = try ctlRun(["store", "list", "--json"])
                let listed = try #require(try JSONSerialization.jsonObject(with: Data(storeList.output.utf8)) as? [[String: Any]])
                #expect(listed.first { ($0["id"] as? UInt64) == drained }?["state"] as? String == "tombstone", "\(storeList.output)")
                #expect(listed.allSatisfy { ($0["labels"] as? [String: String])?["zone"] != nil })
                // Pause and resume a scheduler; move a replica within its zone with --wait.
                #expect(try ctlRun(["scheduler", "pause", "balance-region"]).status == 0)
                let paused = try ctlRun(["scheduler", "list", "--json"])
                #expect(paused.output.contains("\"enabled\" : false"), "\(paused.output)")
                #expect(try ctlRun(["scheduler", "pause", "no-such-scheduler"]).status != 0)
                // With the balancers paused and their operators done, an admin move has the
                // region to itself.
                #expect(try ctlRun(["scheduler", "pause", "balance-leader"]).status == 0)
                #expect(try ctlRun(["scheduler", "pause", "hot-region"]).status == 0)
                let settleStarted = ContinuousClock.now
                #expect(await eventually(seconds: 60) { (try? await routes.operators())?.isEmpty == true })
                print("zones: operators settled \(ContinuousClock.now - settleStarted) after pausing the balancers")
                let zoneC = [try #require(ids[4]), try #require(ids[5])]
                let movable = try #require(try await routes.scanRegions().regions.first { info in
                    Self.isWhole(info) && info.region.peers.contains { zoneC.contains($0.storeID) } && info.region.peers.filter { zoneC.contains($0.storeID) }.count == 1
                })
                let from = try #require(movable.region.peers.first { zoneC.contains($0.storeID) }).storeID
                let to = try #require(zoneC.first { $0 != from })
                let moveStarted = ContinuousClock.now
                let moved = try ctlRun(["region", "move", "\(movable.region.id)", "--from", "\(from)", "--to", "\(to)", "--wait"])
                print("zones: flotillactl region move --wait took \(ContinuousClock.now - moveStarted)")
                #expect(moved.status == 0 && moved.output.contains("step 1 of 3") && moved.output.contains("succeeded"), "\(moved)")
                let wrongZone = try ctlRun(["region", "move", "\(movable.region.id)", "--from", "\(to)", "--to", "\(try #require(ids[3]))"])
                #expect(wrongZone.status == 1, "\(wrongZone)")
                let unknown = try ctlRun(["region", "move", "999999", "--from", "\(from)", "--to", "\(to)"])
                #expect(unknown.status == 1 && unknown.output.contains("999999"), "\(unknown)")
                for name in ["balance-region", "balance-leader", "hot-region"] { #expect(try ctlRun(["scheduler", "resume", name]).status == 0) }
                let ops = try ctlRun(["operator", "list", "--all", "--json"])
                #expect(ops.status == 0 && ops.output.contains("\"origin\" : \"admin\""), "\(ops.output.prefix(300))")
                // Kill a zone-b store: once down, its replicas go to the other zone-b store.
                let killedID = try #require(ids[2])
                pd.killStore(2)
                let killedAt = ContinuousClock.now
                let repaired = await eventually(seconds: 120) {
                    guard let regions = try? await routes.scanRegions().regions else { return false }
                    return regions.allSatisfy { Self.isWhole($0) && !$0.region.peers.contains { $0.storeID == killedID } }
                }
                #expect(repaired, "every region has three voters in three zones after a store was killed")
                print("zones: repair after the kill \(ContinuousClock.now - killedAt)")
                stopWatching.set()
                await watcher.value
                #expect(violations.withLock { $0 }.isEmpty, "\(violations.withLock { $0 }.prefix(5))")
                try await workload.finish("zones and drain")
            }
        }
    }
}
