import ArgumentParser
import Crypto
import FlotillaClient
import FlotillaCluster
import FlotillaProto
import Foundation
import RaftStore
import RocksDB
import Synchronization

/// A backup's manifest (`manifest.json`, written last and atomically): what a whole backup
/// holds. A directory without it is an incomplete backup.
struct BackupManifest: Codable {
    static let fileName = "manifest.json"
    static let formatVersion = 1

    struct File: Codable {
        let name: String
        let bytes: UInt64
        let sha256: String
        let pairs: UInt64
    }

    struct RegionEntry: Codable {
        let id: UInt64
        /// Base64, so any bytes survive JSON.
        let startKey: String
        let endKey: String
        let confVer: UInt64
        let version: UInt64
        /// The index the region's data and sessions are at.
        let appliedIndex: UInt64
        /// nil when the region had no data (or no sessions): RocksDB writes no empty SST.
        let dataFile: File?
        let sessionsFile: File?
        /// The store's FNV-1a checksum and count of the stream (data, then sessions).
        let pairCount: UInt64
        let streamChecksum: String
        let readMilliseconds: UInt64

        var start: Data { Data(base64Encoded: startKey) ?? Data() }
        var end: Data { Data(base64Encoded: endKey) ?? Data() }
        var span: BackupSpan { BackupSpan(id: id, version: version, start: start, end: end) }
    }

    let formatVersion: Int
    let clusterId: String
    let createdAt: String
    let finishedAt: String
    /// "per-region": each region consistent at its own index; "cluster-wide": every region
    /// read under one write fence (a consistent cut of the whole cluster).
    let consistency: String
    /// How long writes were held for a cluster-wide backup.
    let fenceHeldMilliseconds: UInt64?
    let regions: [RegionEntry]
    var totalBytes: UInt64 { regions.reduce(0) { $0 + ($1.dataFile?.bytes ?? 0) + ($1.sessionsFile?.bytes ?? 0) } }
    var totalKeys: UInt64 { regions.reduce(0) { $0 + ($1.dataFile?.pairs ?? 0) } }

    /// Bytes of a manifest read back (about 1 KiB per region: room for 65,536 regions).
    static let manifestBytesMax = 64 << 20

    /// The manifest of a backup directory, checked (nil: the backup is incomplete). A manifest
    /// is input like any file: its size is bounded, its keys must decode, and its file names
    /// must be the plain names a backup writes (never a path out of the directory).
    static func load(_ directory: String) throws -> BackupManifest? {
        let path = directory + "/" + fileName
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let handle = FileHandle(forReadingAtPath: path) else { throw BackupError("\(path) cannot be read") }
        defer { try? handle.close() }
        let data = try handle.read(upToCount: manifestBytesMax + 1) ?? Data()
        guard data.count <= manifestBytesMax else { throw BackupError("\(path) is larger than \(manifestBytesMax) bytes: not a manifest") }
        let manifest: BackupManifest
        do { manifest = try JSONDecoder().decode(BackupManifest.self, from: data) } catch {
            throw BackupError("\(path) is not a backup manifest: \(error)")
        }
        guard manifest.formatVersion == formatVersion else {
            throw BackupError("\(path): format version \(manifest.formatVersion), this flotillactl reads \(formatVersion)")
        }
        for region in manifest.regions {
            guard Data(base64Encoded: region.startKey) != nil, Data(base64Encoded: region.endKey) != nil else {
                throw BackupError("\(path): region \(region.id) has a key that is not base64")
            }
            for file in [region.dataFile, region.sessionsFile].compactMap({ $0 }) {
                let expected = ["region-\(region.id).data.sst", "region-\(region.id).sessions.sst"]
                guard expected.contains(file.name) else { throw BackupError("\(path): region \(region.id) names a file \(file.name.prefix(80)) a backup never writes") }
            }
        }
        return manifest
    }
}

/// A region's identity and range, as a backup covers the key space with them.
struct BackupSpan: Sendable {
    let id: UInt64
    let version: UInt64
    let start: Data
    let end: Data

    /// Key ranges the spans (sorted by start) do not cover.
    static func gaps(_ spans: [BackupSpan]) -> [(start: Data, end: Data)] {
        var gaps: [(Data, Data)] = []
        var covered = Data()
        var reachedEnd = false
        for span in spans {
            if covered.lexicographicallyPrecedes(span.start) { gaps.append((covered, span.start)) }
            if span.end.isEmpty { reachedEnd = true; break }
            if covered.lexicographicallyPrecedes(span.end) { covered = span.end }
        }
        if !reachedEnd { gaps.append((covered, Data())) }
        return gaps
    }
}

/// A region snapshot opened under a write fence on a store, to stream afterwards.
struct HeldRegion: Sendable {
    let region: Flotilla_V1_Region
    let appliedIndex: UInt64
    let storeID: UInt64
    let heldID: UInt64
    var span: BackupSpan { BackupSpan(id: region.id, version: region.epoch.version, start: region.startKey, end: region.endKey) }
}

extension Flotilla_V1_Region {
    var span: BackupSpan { BackupSpan(id: id, version: epoch.version, start: startKey, end: endKey) }
}

struct BackupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Files of a backup: SHA-256 and the pairs they hold.
enum BackupFiles {
    static func sha256(of path: String) throws -> (hex: String, bytes: UInt64) {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw BackupError("\(path) is missing") }
        defer { try? handle.close() }
        var hasher = SHA256()
        var bytes: UInt64 = 0
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
            bytes += UInt64(chunk.count)
        }
        return (hasher.finalize().map { String(format: "%02x", $0) }.joined(), bytes)
    }

    /// Reads an SST file's pairs in order (RocksDB's C API has no SST reader: the file is
    /// ingested into a scratch database under `scratch`, which is removed afterwards).
    static func forEachPair(in path: String, scratch: String, _ body: ([UInt8], [UInt8]) throws -> Void) throws {
        let reader = try SSTReader(path: path, scratch: scratch)
        while let pair = try reader.next() { try body(pair.key, pair.value) }
    }
}

/// An SST file's pairs, one at a time, through a scratch database (removed when the reader
/// goes away).
final class SSTReader {
    private let directory: String
    private let db: Database
    private let iterator: RocksDB.Iterator
    private var started = false

    init(path: String, scratch: String) throws {
        directory = scratch + "/read-\(UUID().uuidString)"
        db = try Database(path: directory)
        try db.ingestExternalFiles([path])
        iterator = db.makeIterator()
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func next() throws -> (key: [UInt8], value: [UInt8])? {
        if started { iterator.next() } else { iterator.seekToFirst(); started = true }
        guard iterator.isValid else {
            try iterator.checkError()
            return nil
        }
        return (iterator.key, iterator.value)
    }
}

extension BackupFiles {

    /// Re-reads every file of a region against the manifest: size, SHA-256, then its pairs
    /// against the store's stream checksum and count. Returns the problems found.
    static func verify(_ region: BackupManifest.RegionEntry, in directory: String, scratch: String) -> [String] {
        var problems: [String] = []
        var checksum = SnapshotChecksum()
        var pairs: UInt64 = 0
        for (file, column) in [(region.dataFile, Flotilla_V1_SnapshotColumn.data), (region.sessionsFile, .sessions)] {
            guard let file else { continue }
            let path = directory + "/" + file.name
            do {
                let (hex, bytes) = try sha256(of: path)
                guard bytes == file.bytes else { problems.append("\(file.name): \(bytes) bytes, the manifest says \(file.bytes) (truncated?)"); continue }
                guard hex == file.sha256 else { problems.append("\(file.name): SHA-256 \(hex.prefix(16))…, the manifest says \(file.sha256.prefix(16))… (corrupt)"); continue }
                var filePairs: UInt64 = 0
                try forEachPair(in: path, scratch: scratch) { key, value in
                    var pair = Flotilla_V1_SnapshotPair()
                    pair.column = column
                    pair.key = Data(key)
                    pair.value = Data(value)
                    checksum.add(pair)
                    filePairs += 1
                }
                if filePairs != file.pairs { problems.append("\(file.name): \(filePairs) pairs, the manifest says \(file.pairs)") }
                pairs += filePairs
            } catch {
                problems.append("\(file.name): \(error)")
            }
        }
        if problems.isEmpty && (pairs != region.pairCount || String(checksum.value, radix: 16) != region.streamChecksum) {
            problems.append("region \(region.id): pairs or checksum differ from what its store sent (\(pairs) vs \(region.pairCount))")
        }
        return problems
    }

    /// Writes `data` to `path` durably and atomically (temporary file, fsync, rename, fsync
    /// of the directory).
    static func writeAtomically(_ data: Data, to path: String) throws {
        let temporary = path + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: data) else { throw BackupError("cannot write \(temporary)") }
        let descriptor = open(temporary, O_RDONLY)
        guard descriptor >= 0 else { throw BackupError("cannot reopen \(temporary)") }
        fsync(descriptor)
        close(descriptor)
        guard rename(temporary, path) == 0 else { throw BackupError("cannot rename \(temporary) to \(path): errno \(errno)") }
        let directory = open((path as NSString).deletingLastPathComponent, O_RDONLY)
        if directory >= 0 { fsync(directory); close(directory) }
    }
}

/// `flotillactl backup create|list|show|verify`.
struct Backup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Back up every region's data as SST files with a manifest; list, show and verify backups.",
        subcommands: [Create.self, List.self, Show.self, Verify.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Back up the cluster into a new directory (each region consistent at its own applied index).",
            discussion: """
                Each region is read by its leader after a read index, from one RocksDB snapshot, and \
                written here as SST files (data, and client sessions) with their SHA-256. The manifest is \
                written last, atomically: a directory without one is an incomplete backup.
                """)
        @OptionGroup var options: Region.Options
        @Option(name: .customLong("to"), help: "The backup directory (must not exist, or be empty).") var to: String
        @Option(name: .customLong("concurrency"), help: "Regions read at once (1 to 64).") var concurrency = 4
        @Flag(name: .customLong("json"), help: "Print the manifest summary as JSON.") var json = false
        @Flag(name: .customLong("consistent"), help: "One consistent cut of the whole cluster: writes are held on every store while each region's snapshot is opened.")
        var consistent = false
        @Option(name: .customLong("fence-ms"), help: "With --consistent: the longest writes may be held, in milliseconds (1 to 60000).")
        var fenceMilliseconds: UInt32 = 10_000
        @Option(name: .customLong("rate-limit-mb"), help: "Read at most this many MB per second over all regions (0: no limit), to spare the cluster's clients.")
        var rateLimitMegabytes = 0

        func validate() throws {
            guard (1...64).contains(concurrency) else { throw ValidationError("--concurrency must be 1 to 64") }
            guard (1...StoreAdminLimits.writeFenceHoldMillisecondsMax).contains(fenceMilliseconds) else { throw ValidationError("--fence-ms must be 1 to \(StoreAdminLimits.writeFenceHoldMillisecondsMax)") }
            guard (0...100_000).contains(rateLimitMegabytes) else { throw ValidationError("--rate-limit-mb must be 0 to 100000") }
        }

        static func report(_ entry: BackupManifest.RegionEntry, _ count: Int) {
            let size = (entry.dataFile?.bytes ?? 0) + (entry.sessionsFile?.bytes ?? 0)
            print("region \(entry.id): \(entry.dataFile?.pairs ?? 0) keys, \(size) bytes at index \(entry.appliedIndex) (\(count) done)")
        }

        /// Runs `work` on every region, `concurrency` at a time; regions that split meanwhile
        /// leave gaps, whose regions PD lists are worked on in another round, until the results
        /// cover every key. Results are sorted by start key.
        func cover<Entry: Sendable>(_ listed: [Flotilla_V1_Region], span: @escaping @Sendable (Entry) -> BackupSpan,
                                    _ work: @escaping @Sendable (Flotilla_V1_Region) async throws -> Entry,
                                    progress: @escaping @Sendable (Entry, Int) -> Void) async throws -> [Entry] {
            var done: [Entry] = []
            var pending = listed
            var round = 0
            let concurrency = self.concurrency
            while !pending.isEmpty {
                round += 1
                guard round <= 8 else { fail("regions kept splitting under the backup (8 rounds); try again") }
                let batch = pending
                let finishedBefore = done.count
                let results = await withTaskGroup(of: Result<Entry, Error>.self) { group in
                    var collected: [Result<Entry, Error>] = []
                    var next = 0
                    func launch(_ region: Flotilla_V1_Region) { group.addTask { await catching { try await work(region) } } }
                    while next < min(concurrency, batch.count) { launch(batch[next]); next += 1 }
                    for await result in group {
                        collected.append(result)
                        if case .success(let entry) = result { progress(entry, finishedBefore + collected.count) }
                        if next < batch.count { launch(batch[next]); next += 1 }
                    }
                    return collected
                }
                for result in results {
                    switch result {
                    case .success(let entry): done.append(entry)
                    case .failure(let error): throw BackupError("backup failed: \(error) (the directory has no manifest: it is incomplete)")
                    }
                }
                done.sort { span($0).start.lexicographicallyPrecedes(span($1).start) }
                let gaps = BackupSpan.gaps(done.map(span))
                pending = []
                for gap in gaps {
                    let regions = try await options.withPD { try await $0.scanRegions(from: gap.start, to: gap.end).regions.map(\.region) }
                    pending += regions.filter { region in !done.contains { span($0).id == region.id && span($0).version == region.epoch.version } }
                }
                if !gaps.isEmpty && pending.isEmpty { throw BackupError("PD lists no region for part of the key space; try again") }
            }
            return done
        }

        /// A cluster-wide consistent cut: a write fence on every store, each region's snapshot
        /// opened by its leader after a read index (so it holds every write acknowledged before
        /// the fence, and nothing a client could have written after one it saw acknowledged),
        /// the fence lifted, then the held snapshots streamed. Fails, writing no manifest, when
        /// a fence lapsed or a store restarted meanwhile.
        func consistentCut(_ listed: [Flotilla_V1_Region], client: FlotillaClient,
                           directory: String, limiter: ByteRateLimiter) async throws -> ([BackupManifest.RegionEntry], UInt64) {
            let stores = try await options.withPD { try await $0.stores(excludeTombstones: true) }
            if let absent = stores.first(where: { $0.liveness != .up }) {
                fail("store \(absent.store.id) is not up: a consistent backup needs every store (drain or repair it first)")
            }
            try? await client.discoverStores()
            var raised: [(storeID: UInt64, fenceID: UInt64)] = []
            let fenceStarted = ContinuousClock.now
            func liftAll() async -> [UInt64] {
                var lapsed: [UInt64] = []
                for fence in raised {
                    var lift = Flotilla_V1_WriteFenceRequest()
                    lift.fenceID = fence.fenceID
                    lift.lift = true
                    let held = (try? await client.fenceWrites(lift, storeID: fence.storeID))?.held ?? false
                    if !held { lapsed.append(fence.storeID) }
                }
                return lapsed
            }
            for store in stores {
                var raise = Flotilla_V1_WriteFenceRequest()
                raise.holdMs = fenceMilliseconds
                do { raised.append((store.store.id, try await client.fenceWrites(raise, storeID: store.store.id).fenceID)) } catch {
                    _ = await liftAll()
                    fail("cannot hold writes on store \(store.store.id): \(error)")
                }
            }
            let timeoutMilliseconds = options.timeoutMilliseconds
            let held: [HeldRegion]
            do {
                held = try await cover(listed, span: \.span) { region in
                    let opened = Mutex<Flotilla_V1_BackupChunk?>(nil)
                    let storeID = try await client.backupRegion(region.id, startKey: region.startKey, streamTimeout: .milliseconds(timeoutMilliseconds),
                                                                hold: true, restart: {}, chunk: { chunk in opened.withLock { $0 = chunk } })
                    guard let chunk = opened.withLock({ $0 }) else { throw BackupError("region \(region.id): no snapshot opened") }
                    return HeldRegion(region: chunk.region, appliedIndex: chunk.appliedIndex, storeID: storeID, heldID: chunk.heldID)
                } progress: { _, _ in }
            } catch {
                _ = await liftAll()
                throw error
            }
            let lapsed = await liftAll()
            let heldFor = ContinuousClock.now - fenceStarted
            let heldMilliseconds = UInt64(heldFor.components.seconds * 1_000 + heldFor.components.attoseconds / 1_000_000_000_000_000)
            guard lapsed.isEmpty else {
                fail("the write fence did not hold throughout on store(s) \(lapsed.map(String.init).joined(separator: ",")) (it lapsed after --fence-ms \(fenceMilliseconds), or the store restarted): no consistent cut; try again")
            }
            print("writes held for \(heldMilliseconds) ms while \(held.count) region snapshots opened")
            let entries = try await cover(held.map(\.region), span: \.span) { region in
                guard let one = held.first(where: { $0.region.id == region.id }) else { throw BackupError("region \(region.id) was not held") }
                return try await Self.streamHeld(one, client: client, into: directory, limiter: limiter)
            } progress: { entry, count in Self.report(entry, count) }
            return (entries, heldMilliseconds)
        }

        /// Streams one held snapshot into SST files.
        static func streamHeld(_ held: HeldRegion, client: FlotillaClient, into directory: String,
                               limiter: ByteRateLimiter) async throws -> BackupManifest.RegionEntry {
            let started = ContinuousClock.now
            let state = Mutex(RegionBackupState(directory: directory, regionID: held.region.id))
            try await client.backupHeld(held.heldID, storeID: held.storeID, regionID: held.region.id, streamTimeout: .seconds(3600)) { chunk in
                try state.withLock { try $0.take(chunk) }
                await limiter.consume(chunk.pairs.reduce(0) { $0 + $1.key.count + $1.value.count })
            }
            let elapsed = ContinuousClock.now - started
            return try state.withLock { try $0.entry(milliseconds: UInt64(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)) }
        }

        func run() async throws {
            let directory = (to as NSString).standardizingPath
            let manager = FileManager.default
            if manager.fileExists(atPath: directory) {
                let entries = (try? manager.contentsOfDirectory(atPath: directory)) ?? ["?"]
                guard entries.isEmpty else { fail("\(directory) already holds files: back up into a new directory") }
            } else {
                do { try manager.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
                    fail("cannot create \(directory): \(error)")
                }
            }
            let startedAt = Date()
            let clock = ContinuousClock.now
            let (info, listed) = try await options.withPD { client in
                (try await client.clusterInfo(), try await client.scanRegions().regions.map(\.region))
            }
            let client = try FlotillaClient(pd: try options.endpoints(), requestTimeout: .milliseconds(options.timeoutMilliseconds))
            let connections = Task { try await client.run() }
            defer { client.close(); connections.cancel() }
            let limiter = ByteRateLimiter(bytesPerSecond: rateLimitMegabytes * 1_000_000)
            let done: [BackupManifest.RegionEntry]
            var fenceHeldMilliseconds: UInt64?
            if consistent {
                (done, fenceHeldMilliseconds) = try await consistentCut(listed, client: client, directory: directory, limiter: limiter)
            } else {
                done = try await cover(listed, span: \.span) { region in
                    try await Self.backUp(region, client: client, into: directory, limiter: limiter)
                } progress: { entry, count in Self.report(entry, count) }
            }
            let formatter = ISO8601DateFormatter()
            let manifest = BackupManifest(formatVersion: BackupManifest.formatVersion, clusterId: String(info.clusterID),
                                          createdAt: formatter.string(from: startedAt), finishedAt: formatter.string(from: Date()),
                                          consistency: consistent ? "cluster-wide" : "per-region",
                                          fenceHeldMilliseconds: fenceHeldMilliseconds, regions: done)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            do { try BackupFiles.writeAtomically(try encoder.encode(manifest), to: directory + "/" + BackupManifest.fileName) } catch {
                fail("cannot write the manifest: \(error)")
            }
            let seconds = max(0.001, Double((ContinuousClock.now - clock).components.attoseconds) / 1e18 + Double((ContinuousClock.now - clock).components.seconds))
            let megabytes = Double(manifest.totalBytes) / 1e6
            if json {
                try Region.printJSON(["directory": directory, "regions": done.count, "keys": manifest.totalKeys, "bytes": manifest.totalBytes,
                                      "seconds": seconds, "clusterId": manifest.clusterId])
            } else {
                print(String(format: "backup complete: %d regions, %llu keys, %.1f MB in %.2f s (%.1f MB/s) at %@", done.count,
                             manifest.totalKeys, megabytes, seconds, megabytes / seconds, directory))
            }
        }

        /// Streams one region from its leader into SST files.
        static func backUp(_ listed: Flotilla_V1_Region, client: FlotillaClient, into directory: String,
                           limiter: ByteRateLimiter) async throws -> BackupManifest.RegionEntry {
            let started = ContinuousClock.now
            let state = Mutex(RegionBackupState(directory: directory, regionID: listed.id))
            try await client.backupRegion(listed.id, startKey: listed.startKey, streamTimeout: .seconds(3600), restart: {
                try state.withLock { try $0.reset() }
            }, chunk: { chunk in
                try state.withLock { try $0.take(chunk) }
                await limiter.consume(chunk.pairs.reduce(0) { $0 + $1.key.count + $1.value.count })
            })
            let elapsed = ContinuousClock.now - started
            return try state.withLock { try $0.entry(milliseconds: UInt64(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)) }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The backups under a directory: complete (with a manifest) or incomplete.")
        @Argument(help: "The directory holding backups (as ops/backup makes them).") var root: String
        @Flag(name: .customLong("json"), help: "A JSON array.") var json = false

        func run() async throws {
            let manager = FileManager.default
            guard let names = try? manager.contentsOfDirectory(atPath: root) else { fail("cannot read \(root)") }
            var rows: [[String: Any]] = []
            for name in names.sorted() {
                var isDirectory: ObjCBool = false
                let path = root + "/" + name
                guard manager.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { continue }
                do {
                    if let manifest = try BackupManifest.load(path) {
                        rows.append(["name": name, "status": "complete", "createdAt": manifest.createdAt, "regions": manifest.regions.count,
                                     "keys": manifest.totalKeys, "bytes": manifest.totalBytes])
                    } else {
                        rows.append(["name": name, "status": "incomplete", "createdAt": "", "regions": 0, "keys": 0, "bytes": 0])
                    }
                } catch {
                    rows.append(["name": name, "status": "unreadable: \(error)", "createdAt": "", "regions": 0, "keys": 0, "bytes": 0])
                }
            }
            if json { return try Region.printJSON(rows) }
            for row in rows {
                print("\(row["name"] ?? "")  \(row["status"] ?? "")  \(row["createdAt"] ?? "")  regions \(row["regions"] ?? 0)  keys \(row["keys"] ?? 0)  bytes \(row["bytes"] ?? 0)")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One backup's manifest: its regions, indexes and files.")
        @Argument(help: "The backup directory.") var directory: String
        @Flag(name: .customLong("json"), help: "The manifest as JSON.") var json = false

        func run() async throws {
            let manifest: BackupManifest
            do {
                guard let loaded = try BackupManifest.load(directory) else { fail("\(directory) has no manifest: the backup is incomplete") }
                manifest = loaded
            } catch { fail("\(error)") }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(manifest), as: UTF8.self))
                return
            }
            let held = manifest.fenceHeldMilliseconds.map { "  (writes held \($0) ms)" } ?? ""
            print("backup of cluster \(manifest.clusterId)  \(manifest.createdAt) – \(manifest.finishedAt)  \(manifest.consistency)\(held)")
            print("\(manifest.regions.count) regions  \(manifest.totalKeys) keys  \(manifest.totalBytes) bytes")
            for region in manifest.regions {
                let range = "[\(String(decoding: region.start, as: UTF8.self)), \(region.end.isEmpty ? "end" : String(decoding: region.end, as: UTF8.self)))"
                print("  region \(region.id)  \(range)  version \(region.version) conf_ver \(region.confVer)  index \(region.appliedIndex)  keys \(region.dataFile?.pairs ?? 0)  sessions \(region.sessionsFile?.pairs ?? 0)")
            }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Re-read every file of a backup against its size, SHA-256 and pair checksum.")
        @Argument(help: "The backup directory.") var directory: String

        func run() async throws {
            let problems: [String]
            do { problems = try Self.check(directory) } catch { fail("\(error)") }
            guard problems.isEmpty else {
                for problem in problems { print("FAILED  \(problem)") }
                fail("\(problems.count) problem(s): the backup cannot be trusted")
            }
            print("backup \(directory) verified")
        }

        /// Every problem of the backup: no manifest, or a file missing, short, changed.
        static func check(_ directory: String) throws -> [String] {
            guard let manifest = try BackupManifest.load(directory) else { return ["\(directory) has no manifest: the backup is incomplete"] }
            let scratch = NSTemporaryDirectory() + "flotilla-verify-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            var problems: [String] = []
            var files = 0
            for region in manifest.regions {
                problems += BackupFiles.verify(region, in: directory, scratch: scratch)
                files += (region.dataFile == nil ? 0 : 1) + (region.sessionsFile == nil ? 0 : 1)
            }
            if !BackupSpan.gaps(manifest.regions.map(\.span)).isEmpty { problems.append("the regions do not cover every key") }
            if problems.isEmpty { print("\(files) files of \(manifest.regions.count) regions match the manifest") }
            return problems
        }
    }
}

/// One region's backup stream being written: SST writers opened on the first pair of each kind.
struct RegionBackupState {
    let directory: String
    let regionID: UInt64
    var region: Flotilla_V1_Region?
    var appliedIndex: UInt64 = 0
    var data: SSTFileWriter?
    var sessions: SSTFileWriter?
    var dataPairs: UInt64 = 0
    var sessionPairs: UInt64 = 0
    var checksum = SnapshotChecksum()
    var last: Flotilla_V1_BackupChunk?

    init(directory: String, regionID: UInt64) {
        self.directory = directory
        self.regionID = regionID
    }

    var dataPath: String { directory + "/region-\(regionID).data.sst" }
    var sessionsPath: String { directory + "/region-\(regionID).sessions.sst" }

    mutating func reset() throws {
        data = nil
        sessions = nil
        try? FileManager.default.removeItem(atPath: dataPath)
        try? FileManager.default.removeItem(atPath: sessionsPath)
        region = nil
        dataPairs = 0
        sessionPairs = 0
        checksum = SnapshotChecksum()
        last = nil
    }

    mutating func take(_ chunk: Flotilla_V1_BackupChunk) throws {
        if region == nil {
            guard chunk.hasRegion else { throw BackupError("region \(regionID): the stream did not start with the region") }
            region = chunk.region
            appliedIndex = chunk.appliedIndex
        }
        for pair in chunk.pairs {
            var streamed = Flotilla_V1_SnapshotPair()
            streamed.column = pair.session ? .sessions : .data
            streamed.key = pair.key
            streamed.value = pair.value
            checksum.add(streamed)
            if pair.session {
                if sessions == nil { sessions = try SSTFileWriter(path: sessionsPath) }
                try sessions?.put([UInt8](pair.key), [UInt8](pair.value))
                sessionPairs += 1
            } else {
                guard sessions == nil else { throw BackupError("region \(regionID): data after sessions in the stream") }
                if data == nil { data = try SSTFileWriter(path: dataPath) }
                try data?.put([UInt8](pair.key), [UInt8](pair.value))
                dataPairs += 1
            }
        }
        if chunk.last { last = chunk }
    }

    mutating func entry(milliseconds: UInt64) throws -> BackupManifest.RegionEntry {
        guard let region, let last else { throw BackupError("region \(regionID): the stream ended before its last chunk") }
        guard last.pairCount == dataPairs + sessionPairs, last.checksum == checksum.value else {
            throw BackupError("region \(regionID): received \(dataPairs + sessionPairs) pairs, checksum \(String(checksum.value, radix: 16)); the store sent \(last.pairCount), \(String(last.checksum, radix: 16))")
        }
        func finish(_ writer: SSTFileWriter?, path: String, pairs: UInt64) throws -> BackupManifest.File? {
            guard let writer else { return nil }
            try writer.finish()
            let (hex, bytes) = try BackupFiles.sha256(of: path)
            return BackupManifest.File(name: (path as NSString).lastPathComponent, bytes: bytes, sha256: hex, pairs: pairs)
        }
        let dataFile = try finish(data, path: dataPath, pairs: dataPairs)
        let sessionsFile = try finish(sessions, path: sessionsPath, pairs: sessionPairs)
        data = nil
        sessions = nil
        return BackupManifest.RegionEntry(id: region.id, startKey: region.startKey.base64EncodedString(), endKey: region.endKey.base64EncodedString(),
                                          confVer: region.epoch.confVer, version: region.epoch.version, appliedIndex: appliedIndex,
                                          dataFile: dataFile, sessionsFile: sessionsFile, pairCount: last.pairCount,
                                          streamChecksum: String(checksum.value, radix: 16), readMilliseconds: milliseconds)
    }
}

/// Prints a failure (exit code 1).
func fail(_ message: String) -> Never {
    fflush(nil)  // what was printed comes first
    FileHandle.standardError.write(Data("flotillactl: \(message)\n".utf8))
    Foundation.exit(1)
}

/// Bounds the bytes read per second over every region of a backup: each chunk waits until
/// the bytes before it fit the rate.
final class ByteRateLimiter: Sendable {
    private let bytesPerSecond: Int
    private let next = Mutex<ContinuousClock.Instant>(.now)

    init(bytesPerSecond: Int) { self.bytesPerSecond = bytesPerSecond }

    func consume(_ bytes: Int) async {
        guard bytesPerSecond > 0 else { return }
        let cost = Duration.seconds(Double(bytes) / Double(bytesPerSecond))
        let wait = next.withLock { next -> Duration in
            let now = ContinuousClock.now
            let start = max(next, now)
            next = start + cost
            return start - now
        }
        if wait > .zero { try? await Task.sleep(for: wait) }
    }
}

/// What an async body returned or threw.
func catching<T>(_ body: () async throws -> T) async -> Result<T, Error> {
    do { return .success(try await body()) } catch { return .failure(error) }
}
