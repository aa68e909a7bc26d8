import ArgumentParser
import FlotillaClient
import FlotillaProto
import Foundation

/// `flotillactl restore --from DIR`: loads a verified backup into a fresh cluster.
struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore a backup into a fresh cluster (one that holds no key).",
        discussion: """
            The backup is verified first (sizes, SHA-256, pair checksums). The cluster's region is then \
            split at the backup's region boundaries and each region's data written through its Raft log \
            in batches, so every replica applies the same entries. Client sessions are not restored: \
            the restored cluster starts a new history. A cluster that holds any key is refused.
            """)
    @OptionGroup var options: Region.Options
    @Option(name: .customLong("from"), help: "The backup directory.") var from: String
    @Option(name: .customLong("concurrency"), help: "Regions written at once (1 to 64).") var concurrency = 4
    @Option(name: .customLong("batch-bytes"), help: "Bytes of keys and values per write batch (64 KiB to 4 MiB).") var batchBytes = 1 << 20

    func validate() throws {
        guard (1...64).contains(concurrency) else { throw ValidationError("--concurrency must be 1 to 64") }
        guard ((64 << 10)...(4 << 20)).contains(batchBytes) else { throw ValidationError("--batch-bytes must be 65536 to 4194304") }
    }

    func run() async throws {
        let started = ContinuousClock.now
        let client = try FlotillaClient(pd: try options.endpoints(), requestTimeout: .milliseconds(options.timeoutMilliseconds))
        let connections = Task { try await client.run() }
        defer { client.close(); connections.cancel() }
        do {
            if let first = try await client.scan(from: Data(), to: Data(), limit: 1).first {
                fail("the cluster holds data (key \(options.show(first.key))): restore needs a fresh cluster")
            }
        } catch let error as FlotillaClientError {
            fail("\(error)")
        }
        let problems: [String]
        do { problems = try Backup.Verify.check(from) } catch { fail("\(error)") }
        guard problems.isEmpty else {
            for problem in problems { print("FAILED  \(problem)") }
            fail("the backup at \(from) did not verify: nothing restored")
        }
        guard let manifest = try BackupManifest.load(from) else { fail("\(from) has no manifest") }
        do {
            let splitKeys = manifest.regions.map(\.start).filter { !$0.isEmpty }
            if !splitKeys.isEmpty {
                _ = try await client.split(at: splitKeys)
                print("split the cluster into \(splitKeys.count + 1) regions as in the backup")
            }
        } catch let error as FlotillaClientError {
            fail("\(error)")
        }
        let scratch = NSTemporaryDirectory() + "flotilla-restore-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let regions = manifest.regions.filter { $0.dataFile != nil }
        let batchBytes = self.batchBytes
        let outcome: [Result<(UInt64, UInt64), Error>] = await withTaskGroup(of: Result<(UInt64, UInt64), Error>.self) { group in
            var results: [Result<(UInt64, UInt64), Error>] = []
            var next = 0
            func launch(_ region: BackupManifest.RegionEntry) {
                group.addTask { await catching { try await Self.load(region, from: from, scratch: scratch, client: client, batchBytes: batchBytes) } }
            }
            while next < min(concurrency, regions.count) { launch(regions[next]); next += 1 }
            for await result in group {
                results.append(result)
                if next < regions.count { launch(regions[next]); next += 1 }
            }
            return results
        }
        var keys: UInt64 = 0
        var bytes: UInt64 = 0
        for result in outcome {
            switch result {
            case .success(let (regionKeys, regionBytes)): keys += regionKeys; bytes += regionBytes
            case .failure(let error): fail("restore failed: \(error) (the cluster holds part of the backup: start a fresh one)")
            }
        }
        let elapsed = ContinuousClock.now - started
        let seconds = max(0.001, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        print(String(format: "restore complete: %d regions, %llu keys, %.1f MB of keys and values in %.2f s (%.1f MB/s)",
                     manifest.regions.count, keys, Double(bytes) / 1e6, seconds, Double(bytes) / 1e6 / seconds))
    }

    /// Writes one region's data file through the cluster's write path, in batches.
    static func load(_ region: BackupManifest.RegionEntry, from directory: String, scratch: String, client: FlotillaClient,
                     batchBytes: Int) async throws -> (UInt64, UInt64) {
        guard let file = region.dataFile else { return (0, 0) }
        // One batch in memory at a time, written before the next is read.
        let reader = try SSTReader(path: directory + "/" + file.name, scratch: scratch)
        var batch: [(key: Data, value: Data)] = []
        var batchSize = 0
        var total: UInt64 = 0
        while let (key, value) = try reader.next() {
            if !batch.isEmpty && (batchSize + key.count + value.count > batchBytes || batch.count >= 1_000) {
                try await client.batchPut(batch)
                batch = []
                batchSize = 0
            }
            batch.append((Data(key), Data(value)))
            batchSize += key.count + value.count
            total += UInt64(key.count + value.count)
        }
        if !batch.isEmpty { try await client.batchPut(batch) }
        print("region \(region.id): \(file.pairs) keys restored")
        return (file.pairs, total)
    }
}
