import FlotillaClient
import FlotillaCluster
import FlotillaProto
import FlotillaStoreServer
import Foundation
import RaftStore
import RocksDB
import Synchronization
import Testing

/// The operator's tools as a user runs them: `ops/cluster`, `ops/backup`, `ops/restore` and
/// `flotillactl` spawned as processes, their output and exit codes read.
@Suite("Operations end to end", .serialized)
struct OperationsEndToEndTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let binaries = URL(fileURLWithPath: LocalCluster.serverBinary).deletingLastPathComponent().path
    static let ctl = binaries + "/flotillactl"

    /// Runs an `ops/` script (through bash) to its end.
    static func ops(_ script: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
        try LocalCluster.runToEnd("/bin/bash", [repository + "/ops/" + script] + arguments, environment: environment)
    }

    /// A cluster under `ops/cluster` in its own directory, stopped (and removed) at the end.
    final class ScriptedCluster: Sendable {
        let directory: String
        let endpoints: String

        init(pd: Int, stores: Int) throws {
            directory = NSTemporaryDirectory() + "flotilla-ops-\(UUID().uuidString.prefix(8))"
            let started = try OperationsEndToEndTests.ops("cluster", ["start", "--dir", directory, "--pd", "\(pd)", "--stores", "\(stores)",
                                                                       "--bin", OperationsEndToEndTests.binaries],
                                                          environment: ["FLOTILLA_LOG_LEVEL": "info"])
            guard started.status == 0, let line = started.output.split(separator: "\n").last(where: { $0.hasPrefix("--pd ") }) else {
                throw ConfigError("ops/cluster start failed (\(started.status)): \(started.output)")
            }
            endpoints = String(line.dropFirst("--pd ".count))
        }

        func ctl(_ arguments: [String]) throws -> (status: Int32, output: String) {
            try LocalCluster.runToEnd(OperationsEndToEndTests.ctl, arguments + ["--pd", endpoints])
        }

        func json(_ arguments: [String]) throws -> Any {
            let result = try ctl(arguments + ["--json"])
            guard result.status == 0 else { throw ConfigError("flotillactl \(arguments) failed: \(result.output)") }
            return try JSONSerialization.jsonObject(with: Data(result.output.utf8))
        }

        func storeLogs() -> String {
            ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix("store-") && $0.hasSuffix(".log") }
                .compactMap { try? String(contentsOfFile: directory + "/" + $0, encoding: .utf8) }.joined(separator: "\n")
        }

        deinit {
            _ = try? OperationsEndToEndTests.ops("cluster", ["stop", "--dir", directory])
            if ProcessInfo.processInfo.environment["FLOTILLA_KEEP_E2E"] == nil {
                try? FileManager.default.removeItem(atPath: directory)
            } else {
                print("kept \(directory)")
            }
        }
    }

    /// Writers that overwrite their own keys with increasing rounds and remember, per key,
    /// when each round was invoked and acknowledged: a backup read at one point in [start,
    /// end] must hold, per key, a round acknowledged no later than... and no earlier than the
    /// newest acknowledged before `start`.
    final class RoundWriters: Sendable {
        struct Write: Sendable { let round: Int; let invoked: ContinuousClock.Instant; let acknowledged: ContinuousClock.Instant? }
        final class Log: Sendable {
            let writes = Mutex<[String: [Write]]>([:])
            let stop = Atomic<Bool>(false)
        }
        let log = Log()
        let task: Task<Void, Error>

        init(client: FlotillaClient, writers: Int, keysPerWriter: Int) {
            let log = self.log
            task = Task {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for writer in 0..<writers {
                        group.addTask {
                            var round = 0
                            while !log.stop.load(ordering: .relaxed) {
                                round += 1
                                for slot in 0..<keysPerWriter where !log.stop.load(ordering: .relaxed) {
                                    let key = String(format: "w%02d-%03d", writer, slot)
                                    let invoked = ContinuousClock.now
                                    var acknowledged: ContinuousClock.Instant?
                                    do {
                                        try await client.put(Data(key.utf8), Data("\(round)".utf8))
                                        acknowledged = ContinuousClock.now
                                    } catch {}
                                    log.writes.withLock { $0[key, default: []].append(Write(round: round, invoked: invoked, acknowledged: acknowledged)) }
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
        }

        func finish() async throws {
            log.stop.store(true, ordering: .relaxed)
            try await task.value
        }

        /// What is wrong with `state` as a read of every key at one point in [start, end].
        func problems(in state: [String: String], start: ContinuousClock.Instant, end: ContinuousClock.Instant) -> [String] {
            log.writes.withLock { writes in
                var problems: [String] = []
                for (key, history) in writes {
                    let newestBefore = history.filter { ($0.acknowledged ?? end) < start }.map(\.round).max()
                    guard let text = state[key] else {
                        if let newestBefore { problems.append("\(key): missing, round \(newestBefore) was acknowledged before") }
                        continue
                    }
                    guard let round = Int(text), let write = history.first(where: { $0.round == round }) else {
                        problems.append("\(key): value \(text) was never written")
                        continue
                    }
                    if let newestBefore, round < newestBefore { problems.append("\(key): round \(round), but \(newestBefore) was acknowledged before") }
                    if write.invoked > end { problems.append("\(key): round \(round) was written after the backup ended") }
                }
                return problems
            }
        }
    }

    /// Every data pair a complete backup holds (its SST files read through a scratch RocksDB).
    static func backupContents(_ directory: String) throws -> [String: String] {
        let manifest = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/manifest.json"))) as? [String: Any])
        var pairs: [String: String] = [:]
        for region in try #require(manifest["regions"] as? [[String: Any]]) {
            guard let file = region["dataFile"] as? [String: Any], let name = file["name"] as? String else { continue }
            let scratch = NSTemporaryDirectory() + "flotilla-read-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let db = try Database(path: scratch)
            try db.ingestExternalFiles([directory + "/" + name])
            let iterator = db.makeIterator()
            iterator.seekToFirst()
            while iterator.isValid {
                pairs[String(decoding: iterator.key, as: UTF8.self)] = String(decoding: iterator.value, as: UTF8.self)
                iterator.next()
            }
        }
        return pairs
    }

    /// A full scan of a cluster as a dictionary.
    static func scanAll(_ client: FlotillaClient) async throws -> [String: String] {
        var pairs: [String: String] = [:]
        var start = Data()
        while true {
            let page = try await client.scan(from: start, to: Data(), limit: 1_000)
            for (key, value) in page { pairs[String(decoding: key, as: UTF8.self)] = String(decoding: value, as: UTF8.self) }
            guard page.count == 1_000, let last = page.last else { return pairs }
            start = last.key + Data([0])
        }
    }

    @Test func scriptsAndCommandLineSplitMoveCheckBackUpAndRestoreAsAUserWould() async throws {
        let source = try ScriptedCluster(pd: 1, stores: 4)
        // A second start on a running directory says so.
        let again = try Self.ops("cluster", ["start", "--dir", source.directory, "--bin", Self.binaries])
        #expect(again.status == 1 && again.output.contains("already running"), "\(again)")
        let status = try Self.ops("cluster", ["status", "--dir", source.directory, "--bin", Self.binaries])
        #expect(status.status == 0 && status.output.contains("PD members"), "\(status)")

        let client = try FlotillaClient(pd: source.endpoints.split(separator: ",").map(String.init), requestTimeout: .seconds(20))
        let connections = Task { try await client.run() }
        defer { client.close(); connections.cancel() }
        // Three voters on the first region, as the replica checker makes them.
        #expect(await eventually(seconds: 60) {
            let regions = (try? source.json(["region", "list"])) as? [[String: Any]]
            return (regions?.first?["peers"] as? [[String: Any]])?.filter { $0["role"] as? String == "voter" }.count == 3
        })
        let writers = RoundWriters(client: client, writers: 4, keysPerWriter: 50)

        // Split through the CLI: the regions it made are in `region list --json`.
        let firstID = try #require(((try source.json(["region", "list"])) as? [[String: Any]])?.first?["id"] as? UInt64)
        let split = try source.ctl(["region", "split", "\(firstID)", "--at", "w01", "--at", "w02", "--at", "w03", "--json"])
        #expect(split.status == 0, "\(split)")
        // PD learns the new regions from the split leader's next heartbeat, sent at once but
        // not before the split is answered.
        var regions: [[String: Any]] = []
        #expect(await eventually(seconds: 20) {
            regions = ((try? source.json(["region", "list"])) as? [[String: Any]]) ?? []
            return Set(regions.compactMap { $0["startKey"] as? String }) == ["", "w01", "w02", "w03"]
        }, "\(regions)")
        #expect(regions.allSatisfy { ["id", "startKey", "endKey", "epoch", "peers", "leader"].allSatisfy($0.keys.contains) })

        // Move a follower's replica of the region holding w02 to the store without one, --wait
        // (with the balancers paused, as before a manual move: their operators would race it).
        for scheduler in ["balance-region", "balance-leader", "hot-region"] {
            #expect(try source.ctl(["scheduler", "pause", scheduler]).status == 0)
        }
        #expect(await eventually(seconds: 30) { ((try? source.json(["operator", "list"])) as? [Any])?.isEmpty == true })
        let found = try #require(try source.json(["region", "find", "w02-001"]) as? [String: Any])
        let regionID = try #require(found["id"] as? UInt64)
        let holders = try #require(found["peers"] as? [[String: Any]]).compactMap { $0["storeId"] as? UInt64 }
        let stores = try #require(try source.json(["store", "list"]) as? [[String: Any]])
        #expect(stores.allSatisfy { ["id", "address", "state", "regionCount", "leaderCount"].allSatisfy($0.keys.contains) })
        let target = try #require(stores.compactMap { $0["id"] as? UInt64 }.first { !holders.contains($0) })
        let leader = found["leader"] as? UInt64
        let from = try #require(holders.first { $0 != leader })
        let move = try source.ctl(["region", "move", "\(regionID)", "--from", "\(from)", "--to", "\(target)", "--wait"])
        #expect(move.status == 0 && move.output.contains("step 1 of"), "\(move)")
        let moved = try #require(try source.json(["region", "show", "\(regionID)"]) as? [String: Any])
        let movedStores = (moved["peers"] as? [[String: Any]] ?? []).compactMap { $0["storeId"] as? UInt64 }
        #expect(movedStores.contains(target) && !movedStores.contains(from), "\(moved)")

        // The main errors: one line each, exit 1; usage errors exit 2.
        let unknown = try source.ctl(["region", "show", "999999"])
        #expect(unknown.status == 1 && unknown.output.contains("999999"), "\(unknown)")
        let toHolder = try source.ctl(["region", "move", "\(regionID)", "--from", "\(target)", "--to", "\(target)"])
        #expect(toHolder.status == 1 && toHolder.output.contains("already"), "\(toHolder)")
        let outside = try source.ctl(["region", "split", "\(regionID)", "--at", "a"])
        #expect(outside.status == 1 && outside.output.contains("not strictly inside"), "\(outside)")
        let unreachable = try LocalCluster.runToEnd(Self.ctl, ["region", "list", "--pd", "127.0.0.1:1", "--timeout-ms", "1000"])
        #expect(unreachable.status == 1 && unreachable.output.contains("127.0.0.1:1"), "\(unreachable)")
        #expect(try source.ctl(["region", "check"]).status == 2)
        #expect(try source.ctl(["region", "move", "1", "--from", "x", "--to", "2"]).status == 2)
        #expect(try source.ctl(["region", "find", "zz", "--hex"]).status == 2)
        let base64 = try source.ctl(["region", "find", Data("w02-001".utf8).base64EncodedString(), "--base64"])
        #expect(base64.status == 0 && base64.output.contains("region \(regionID) "), "\(base64)")
        let storeStatuses = try #require(try source.json(["status", "--regions"]) as? [[String: Any]])
        #expect(storeStatuses.count == 4 && storeStatuses.allSatisfy { $0["storeId"] is UInt64 && $0["regionStatus"] is [Any] }, "\(storeStatuses)")
        let completion = try LocalCluster.runToEnd(Self.ctl, ["--generate-completion-script", "bash"])
        #expect(completion.status == 0 && completion.output.contains("backup"), "\(completion.output.prefix(200))")

        // Back up under the write load, through ops/backup (keeps the newest 2).
        let root = source.directory + "/backups"
        let backupStart = ContinuousClock.now
        let backedUp = try Self.ops("backup", [root, "--keep", "2", "--pd", source.endpoints, "--bin", Self.binaries])
        let backupEnd = ContinuousClock.now
        #expect(backedUp.status == 0 && backedUp.output.contains("backup complete"), "\(backedUp)")
        let listed = try #require(try JSONSerialization.jsonObject(with: Data(try LocalCluster.runToEnd(Self.ctl, ["backup", "list", root, "--json"]).output.utf8)) as? [[String: Any]])
        #expect(listed.count == 1 && listed.first?["status"] as? String == "complete", "\(listed)")
        let backup = root + "/" + (listed.first?["name"] as? String ?? "")
        #expect(try LocalCluster.runToEnd(Self.ctl, ["backup", "verify", backup]).status == 0)
        let contents = try Self.backupContents(backup)
        #expect(!contents.isEmpty)
        // Each region was read at one point during the backup: every key holds a round no
        // older than what was acknowledged before it started, and none written after it ended.
        let problems = writers.problems(in: contents.filter { $0.key.hasPrefix("w") }, start: backupStart, end: backupEnd)
        #expect(problems.isEmpty, "\(problems.prefix(10))")

        // A cluster-wide consistent cut (--consistent): a chain of writes across four regions,
        // each invoked after the one before was acknowledged, is seen as a prefix.
        let chainKeys = ["a-chain", "w01-chain", "w02-chain", "w03-chain"]
        let chain = Task {
            var written = 0
            while !Task.isCancelled && written < 100_000 {
                written += 1
                try await client.put(Data(chainKeys[written % chainKeys.count].utf8), Data("\(written)".utf8))
            }
            return written
        }
        try await Task.sleep(for: .milliseconds(300))
        let cut = try Self.ops("backup", [root, "--keep", "2", "--pd", source.endpoints, "--bin", Self.binaries, "--", "--consistent", "--concurrency", "1"])
        #expect(cut.status == 0 && cut.output.contains("writes held for"), "\(cut)")
        try await Task.sleep(for: .milliseconds(300))
        chain.cancel()
        let chained = try await chain.value
        let backups = try FileManager.default.contentsOfDirectory(atPath: root).filter { $0.hasPrefix("backup-") }.sorted()
        #expect(backups.count == 2, "\(backups)")
        let cutContents = try Self.backupContents(root + "/" + (backups.last ?? ""))
        let seen = chainKeys.map { key in cutContents[key].flatMap { Int($0) } ?? 0 }
        let newest = seen.max() ?? 0
        #expect(newest > 0 && newest < chained, "chain \(seen) of \(chained)")
        for (position, value) in seen.enumerated() {
            // The newest write to this key at or before the newest write the cut holds.
            let expected = (0...newest).last { $0 % chainKeys.count == position && $0 > 0 } ?? 0
            #expect(value == expected, "key \(chainKeys[position]) holds \(value), the cut at \(newest) needs \(expected): \(seen)")
        }

        // Consistency check: clean now.
        let clean = try source.ctl(["region", "check", "--all"])
        #expect(clean.status == 0 && !clean.output.contains("INCONSISTENT"), "\(clean)")
        try await writers.finish()

        // A corrupted, a truncated and a missing file: verify and restore refuse (restore
        // before it writes anything).
        let restored = try ScriptedCluster(pd: 1, stores: 3)
        for damage in ["corrupt", "truncate", "remove", "escape"] {
            let copy = root + "/damaged-\(damage)"
            try FileManager.default.copyItem(atPath: backup, toPath: copy)
            let file = try #require(try FileManager.default.contentsOfDirectory(atPath: copy).sorted().first { $0.hasSuffix(".data.sst") })
            let path = copy + "/" + file
            switch damage {
            case "corrupt":
                let handle = try #require(FileHandle(forUpdatingAtPath: path))
                try handle.seek(toOffset: 40)
                let byte = try handle.read(upToCount: 1) ?? Data([0])
                try handle.seek(toOffset: 40)
                try handle.write(contentsOf: Data([byte[0] ^ 0xFF]))
                try handle.close()
            case "truncate": try #require(truncate(path, 100) == 0)
            case "remove": try FileManager.default.removeItem(atPath: path)
            default:
                // A manifest naming a file outside the backup directory.
                let manifest = copy + "/manifest.json"
                let text = try String(contentsOfFile: manifest, encoding: .utf8).replacingOccurrences(of: "\"\(file)\"", with: "\"..\\/..\\/etc\\/passwd\"")
                try text.write(toFile: manifest, atomically: true, encoding: .utf8)
            }
            let verified = try LocalCluster.runToEnd(Self.ctl, ["backup", "verify", copy])
            #expect(verified.status == 1 && verified.output.contains(damage == "escape" ? "never writes" : file), "\(damage): \(verified)")
            let refused = try LocalCluster.runToEnd(Self.ctl, ["restore", "--from", copy, "--pd", restored.endpoints])
            #expect(refused.status == 1 && refused.output.contains(damage == "escape" ? "never writes" : "did not verify"), "\(damage): \(refused)")
        }

        // Restore into the fresh cluster: the same data; a second restore is refused.
        let restore = try Self.ops("restore", [backup, "--pd", restored.endpoints, "--bin", Self.binaries])
        #expect(restore.status == 0 && restore.output.contains("restore complete"), "\(restore)")
        let restoredClient = try FlotillaClient(pd: restored.endpoints.split(separator: ",").map(String.init), requestTimeout: .seconds(20))
        let restoredConnections = Task { try await restoredClient.run() }
        defer { restoredClient.close(); restoredConnections.cancel() }
        let restoredPairs = try await Self.scanAll(restoredClient)
        #expect(restoredPairs == contents, "restored \(restoredPairs.count) keys, backed up \(contents.count)")
        let twice = try Self.ops("restore", [backup, "--pd", restored.endpoints, "--bin", Self.binaries])
        #expect(twice.status == 1 && twice.output.contains("holds data"), "\(twice)")

        // A backup killed mid-way leaves no manifest and is listed as incomplete (the first
        // region gets 24 MiB first, so its stream is still running when the kill comes).
        for batch in 0..<12 {
            try await client.batchPut((0..<4).map { item in
                (Data(String(format: "big-%03d", batch * 4 + item).utf8), Data(repeating: UInt8(batch), count: 512 << 10))
            })
        }
        let interrupted = root + "/interrupted"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.ctl)
        process.arguments = ["backup", "create", "--to", interrupted, "--concurrency", "1", "--pd", source.endpoints]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        _ = await eventually(seconds: 20) {
            ((try? FileManager.default.contentsOfDirectory(atPath: interrupted)) ?? []).contains { $0.hasSuffix(".sst") }
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        let afterKill = try LocalCluster.runToEnd(Self.ctl, ["backup", "list", root])
        #expect(afterKill.output.contains("interrupted  incomplete"), "\(afterKill)")
        let unfinished = try LocalCluster.runToEnd(Self.ctl, ["backup", "verify", interrupted])
        #expect(unfinished.status == 1 && unfinished.output.contains("incomplete"), "\(unfinished)")

        // Data altered on disk behind Flotilla's back: the check finds it, and the store alarms.
        #expect(try Self.ops("cluster", ["stop", "--dir", source.directory]).status == 0)
        let altered = try #require(try (1...4).lazy.compactMap { try Self.alterOneValue(dataDirectory: source.directory + "/store-\($0)/db") }.first)
        #expect(try Self.ops("cluster", ["start", "--dir", source.directory, "--bin", Self.binaries]).status == 0)
        var check = (status: Int32(0), output: "")
        let found2 = await eventually(seconds: 60) {
            check = (try? source.ctl(["region", "check", "--all"])) ?? (0, "")
            return check.status == 1 && check.output.contains("INCONSISTENT")
        }
        #expect(found2, "altered \(altered): \(check)")
        #expect(await eventually(seconds: 10) { source.storeLogs().contains("CONSISTENCY CHECK FAILED") })
    }

    /// Changes the value of the first user key a stopped store holds, in its RocksDB (nil
    /// when it holds none).
    static func alterOneValue(dataDirectory: String) throws -> String? {
        let db = try StoreDatabase.open(path: dataDirectory)
        let iterator = db.makeIterator()
        iterator.seekToFirst()
        guard iterator.isValid else { return nil }
        let key = iterator.key
        try db.put(key, Array("altered behind Flotilla's back".utf8))
        return String(decoding: key, as: UTF8.self)
    }
}
