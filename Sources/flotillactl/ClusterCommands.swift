import ArgumentParser
import FlotillaClient
import FlotillaProto
import Foundation

/// `flotillactl cluster status`: PD's members and leader, the stores with their state, and
/// the regions with their replicas, as PD knows them.
struct Cluster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Show the cluster as PD knows it.",
        subcommands: [Status.self]
    )

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "PD members, stores and regions.")

        @Option(name: .customLong("pd"), help: "PD endpoints host:port,... (default: FLOTILLA_PD).")
        var pd: String?

        @Flag(name: .customLong("json"), help: "One JSON object (members, stores, regions) instead of tables.")
        var json = false

        @Option(name: .customLong("timeout-ms"), help: "How long to wait for PD, in milliseconds.")
        var timeoutMilliseconds = 10_000

        func run() async throws {
            guard (1...3_600_000).contains(timeoutMilliseconds) else { throw ValidationError("--timeout-ms must be 1 to 3600000") }
            let endpoints = try PDEndpoints.resolve(pd)
            let client = try PDClient(endpoints: endpoints, requestTimeout: .milliseconds(timeoutMilliseconds))
            let connections = Task { try await client.run() }
            defer {
                client.close()
                connections.cancel()
            }
            let members: Flotilla_V1_GetMembersResponse
            let info: Flotilla_V1_ClusterInfo
            let stores: [Flotilla_V1_StoreInfo]
            var regions: [Flotilla_V1_RegionInfo] = []
            do {
                members = try await client.members()
                info = try await client.clusterInfo()
                stores = try await client.stores()
                if info.bootstrapped { regions = try await client.scanRegions().regions }
            } catch {
                FileHandle.standardError.write(Data("flotillactl: \(error)\n".utf8))
                throw ExitCode(1)
            }
            if json {
                let object: [String: Any] = [
                    "clusterId": String(info.clusterID),
                    "bootstrapped": info.bootstrapped,
                    "members": members.members.map { ["id": $0.memberID, "name": $0.name, "clientAddress": $0.clientAddress,
                                                      "peerAddress": $0.peerAddress, "leader": members.hasLeader && members.leader.memberID == $0.memberID] },
                    "stores": stores.map { ["id": $0.store.id, "address": $0.store.address, "state": Self.state($0),
                                            "regionCount": $0.stats.regionCount, "leaderCount": $0.stats.leaderCount] },
                    "regions": regions.map { region in
                        ["id": region.region.id, "startKey": String(decoding: region.region.startKey, as: UTF8.self),
                         "endKey": String(decoding: region.region.endKey, as: UTF8.self),
                         "epoch": ["confVer": region.region.epoch.confVer, "version": region.region.epoch.version],
                         "peers": region.region.peers.map { ["id": $0.id, "storeId": $0.storeID, "role": $0.role == .voter ? "voter" : "learner"] },
                         "leader": region.hasLeader ? region.leader.storeID : 0] as [String: Any]
                    },
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            print("cluster \(info.clusterID)\(info.bootstrapped ? "" : " (not bootstrapped)")")
            print("PD members:")
            for member in members.members {
                let leader = members.hasLeader && members.leader.memberID == member.memberID ? "  leader" : ""
                print("  \(member.name)  client \(member.clientAddress.isEmpty ? "?" : member.clientAddress)  peer \(member.peerAddress)\(leader)")
            }
            print("stores:")
            for store in stores {
                print("  store \(store.store.id)  \(store.store.address)  \(Self.state(store))  regions \(store.stats.regionCount)  leaders \(store.stats.leaderCount)")
            }
            print("regions:")
            for region in regions {
                let range = "[\(String(decoding: region.region.startKey, as: UTF8.self)), \(region.region.endKey.isEmpty ? "end" : String(decoding: region.region.endKey, as: UTF8.self)))"
                let peers = region.region.peers.map { "\($0.storeID)\($0.role == .learner ? "(learner)" : "")" }.joined(separator: ",")
                print("  region \(region.region.id)  \(range)  stores \(peers)  leader \(region.hasLeader ? "store \(region.leader.storeID)" : "none")")
            }
        }

        static func state(_ store: Flotilla_V1_StoreInfo) -> String {
            switch store.store.state {
            case .tombstone: return "tombstone"
            case .offline: return "offline"
            default:
                switch store.liveness {
                case .down: return "down"
                case .disconnected: return "disconnected"
                default: return "up"
                }
            }
        }
    }
}
