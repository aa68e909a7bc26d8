import ArgumentParser
import FlotillaClient
import FlotillaCluster
import FlotillaProto
import Foundation

/// `flotillactl kv …`: reads and writes through the routing client, which finds regions and
/// stores through PD (or a static cluster file, for tests).
struct KV: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kv",
        abstract: "Read and write keys in a running cluster.",
        subcommands: [Put.self, Get.self, Delete.self, Scan.self]
    )

    struct Connection: ParsableArguments {
        @Option(name: .customLong("pd"), help: "PD endpoints host:port,... (default: FLOTILLA_PD).")
        var pd: String?

        @Option(name: .customLong("cluster-file"), help: "A static cluster's JSON file (tests), instead of --pd.")
        var clusterFile: String?

        @Option(name: .customLong("timeout-ms"), help: "Per-request timeout in milliseconds, retries included.")
        var timeoutMilliseconds = 10_000

        func withClient<T: Sendable>(_ body: @Sendable (FlotillaClient) async throws -> T) async throws -> T {
            guard (1...3_600_000).contains(timeoutMilliseconds) else { throw ValidationError("--timeout-ms must be 1 to 3600000") }
            let client: FlotillaClient
            if let clusterFile {
                let cluster: ClusterFile
                do { cluster = try ClusterFile.load(path: clusterFile) } catch { throw ValidationError(error.description) }
                let stores = cluster.stores.compactMap { store in
                    HostPort(store.address).map { FlotillaClient.Store(id: store.id, host: $0.host, port: $0.port) }
                }
                client = try FlotillaClient(stores: stores, regions: cluster.initialRegions(), requestTimeout: .milliseconds(timeoutMilliseconds))
            } else {
                let endpoints = try PDEndpoints.resolve(pd)
                do { client = try FlotillaClient(pd: endpoints, requestTimeout: .milliseconds(timeoutMilliseconds)) } catch {
                    throw ValidationError("--pd: \(error)")
                }
            }
            let connections = Task { try await client.run() }
            defer {
                client.close()
                connections.cancel()
            }
            do {
                return try await body(client)
            } catch let error as FlotillaClientError {
                FileHandle.standardError.write(Data("flotillactl: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set a key to a value.")
        @OptionGroup var connection: Connection
        @Argument var key: String
        @Argument var value: String

        func run() async throws {
            let (key, value) = (Data(key.utf8), Data(value.utf8))
            try await connection.withClient { try await $0.put(key, value) }
            print("OK")
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a key's value (linearizable read).")
        @OptionGroup var connection: Connection
        @Argument var key: String

        func run() async throws {
            let key = Data(self.key.utf8)
            let value = try await connection.withClient { try await $0.get(key) }
            guard let value else {
                FileHandle.standardError.write(Data("flotillactl: key '\(self.key)' not found\n".utf8))
                throw ExitCode(3)
            }
            print(String(decoding: value, as: UTF8.self))
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a key.")
        @OptionGroup var connection: Connection
        @Argument var key: String

        func run() async throws {
            let key = Data(self.key.utf8)
            try await connection.withClient { try await $0.delete(key) }
            print("OK")
        }
    }

    struct Scan: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print key=value pairs in [start, end).")
        @OptionGroup var connection: Connection
        @Option var start = ""
        @Option var end = ""
        @Option var limit = 100

        func validate() throws {
            guard limit > 0 else { throw ValidationError("--limit must be positive") }
        }

        func run() async throws {
            let (start, end, limit) = (Data(self.start.utf8), Data(self.end.utf8), self.limit)
            let pairs = try await connection.withClient { client in
                try await client.scan(from: start, to: end, limit: limit).map { ($0.key, $0.value) }
            }
            for (key, value) in pairs { print("\(String(decoding: key, as: UTF8.self))=\(String(decoding: value, as: UTF8.self))") }
        }
    }
}

/// `flotillactl status`: each store's counters (turns, syncs, regions per batch, snapshots,
/// log truncations) and, with `--regions`, every region's Raft state.
struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show each store's status.")
    @OptionGroup var connection: KV.Connection
    @Flag(help: "Also list every region's role, term, applied index and log bounds.")
    var regions = false
    @Flag(name: .customLong("json"), help: "A JSON array: one object per store.")
    var json = false

    func run() async throws {
        let includeRegions = regions
        let statuses = try await connection.withClient { client -> [(UInt64, Result<Flotilla_V1_StoreStatus, Error>)] in
            try await client.discoverStores()
            var statuses: [(UInt64, Result<Flotilla_V1_StoreStatus, Error>)] = []
            for storeID in client.storeIDs {
                do { statuses.append((storeID, .success(try await client.storeStatus(storeID, includeRegions: includeRegions)))) } catch {
                    statuses.append((storeID, .failure(error)))
                }
            }
            return statuses
        }
        if json {
            let objects = statuses.map { storeID, result -> [String: Any] in
                guard case .success(let status) = result else {
                    return ["storeId": storeID, "error": "\(result)"]
                }
                return ["storeId": storeID, "regions": status.regions, "leaders": status.leaders, "turns": status.turns,
                        "logSyncs": status.logSyncs, "regionsInLogBatches": status.regionsInLogBatches, "entriesApplied": status.entriesApplied,
                        "snapshotsSent": status.snapshotsSent, "snapshotsReceived": status.snapshotsReceived,
                        "snapshotsInstalled": status.snapshotsInstalled, "logsTruncated": status.logsTruncated,
                        "pendingRequests": status.pendingRequests, "raftFramesSent": status.raftFramesSent,
                        "raftFramesReceived": status.raftFramesReceived, "raftMessagesDropped": status.raftMessagesDropped,
                        "consistencyMismatches": status.consistencyMismatches,
                        "regionsAsleep": status.regionsAsleep, "regionSleeps": status.regionSleeps, "regionWakes": status.regionWakes,
                        "storesPresumedDead": status.storesPresumedDead, "ticks": status.ticks, "ticksDropped": status.ticksDropped,
                        "regionStatus": status.regionStatus.map { region -> [String: Any] in
                            ["regionId": region.regionID, "role": region.role, "leaderPeerId": region.leaderPeerID, "term": region.term,
                             "appliedIndex": region.appliedIndex, "firstLogIndex": region.firstLogIndex, "lastLogIndex": region.lastLogIndex,
                             "asleep": region.asleep, "awakeBecause": region.awakeBecause]
                        }]
            }
            let data = try JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        for (storeID, result) in statuses {
            switch result {
            case .failure(let error): print("store \(storeID): \(error)")
            case .success(let status):
                let perBatch = status.logSyncs == 0 ? 0 : Double(status.regionsInLogBatches) / Double(status.logSyncs)
                print("store \(storeID): regions \(status.regions) leaders \(status.leaders) turns \(status.turns) "
                      + "log_syncs \(status.logSyncs) regions_per_batch \(String(format: "%.1f", perBatch)) "
                      + "entries_applied \(status.entriesApplied) snapshots sent/received/installed "
                      + "\(status.snapshotsSent)/\(status.snapshotsReceived)/\(status.snapshotsInstalled) "
                      + "logs_truncated \(status.logsTruncated) pending \(status.pendingRequests) "
                      + "raft frames sent/received \(status.raftFramesSent)/\(status.raftFramesReceived) "
                      + "raft_messages_dropped \(status.raftMessagesDropped) asleep \(status.regionsAsleep) "
                      + "sleeps/wakes \(status.regionSleeps)/\(status.regionWakes) ticks \(status.ticks) dropped \(status.ticksDropped)"
                      + (status.storesPresumedDead.isEmpty ? "" : " stores_presumed_dead \(status.storesPresumedDead)"))
                for region in status.regionStatus {
                    print("  region \(region.regionID): \(region.role), leader peer \(region.leaderPeerID), term \(region.term), "
                          + "applied \(region.appliedIndex), log [\(region.firstLogIndex), \(region.lastLogIndex)]"
                          + (region.asleep ? ", asleep" : region.awakeBecause.isEmpty ? "" : ", awake: \(region.awakeBecause)"))
                }
            }
        }
    }
}

/// PD endpoints from `--pd` or `FLOTILLA_PD`, checked.
enum PDEndpoints {
    static func resolve(_ flag: String?) throws -> [String] {
        guard let text = flag ?? ProcessInfo.processInfo.environment["FLOTILLA_PD"], !text.isEmpty else {
            throw ValidationError("no PD endpoints: pass --pd host:port,... or set FLOTILLA_PD")
        }
        let endpoints = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        for endpoint in endpoints where HostPort(endpoint) == nil || HostPort(endpoint)?.port == 0 {
            throw ValidationError("--pd: '\(endpoint)' is not host:port")
        }
        return endpoints
    }
}
