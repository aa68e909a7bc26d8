import FlotillaClient
import FlotillaProto
import FlotillaServer
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
}
