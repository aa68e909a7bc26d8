import ArgumentParser
import Foundation
import RocksDB

/// `flotillactl engine-check`: exercises the storage engine on a scratch database the way a
/// store will (multi-CF synced batches, bounded scans, snapshots, checkpoint, SST ingest,
/// reopen) and prints what it did and how long each step took. Exits non-zero on any mismatch.
struct EngineCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine-check",
        abstract: "Self-check the RocksDB storage engine on a scratch database."
    )

    @Option(name: .customLong("data-dir"), help: "Directory for the scratch database (created; removed afterwards unless --keep).")
    var dataDirectory: String?

    @Option(name: .customLong("keys"), help: "Number of user keys to write.")
    var keyCount = 100_000

    @Option(name: .customLong("value-bytes"), help: "Size of each value in bytes.")
    var valueBytes = 100

    @Flag(help: "Keep the scratch database instead of removing it.")
    var keep = false

    func validate() throws {
        guard keyCount >= 1_000 && keyCount <= 10_000_000 else {
            throw ValidationError("--keys must be between 1000 and 10000000, got \(keyCount)")
        }
        guard valueBytes >= 1 && valueBytes <= 1 << 20 else {
            throw ValidationError("--value-bytes must be between 1 and 1048576, got \(valueBytes)")
        }
    }

    func run() throws {
        let root = dataDirectory ?? FileManager.default.temporaryDirectory
            .appendingPathComponent("flotilla-engine-check-\(ProcessInfo.processInfo.processIdentifier)").path
        if FileManager.default.fileExists(atPath: root),
           let contents = try? FileManager.default.contentsOfDirectory(atPath: root), !contents.isEmpty {
            throw ValidationError("--data-dir \(root) exists and is not empty; give an empty or new directory")
        }
        defer { if !keep { try? FileManager.default.removeItem(atPath: root) } }
        let check = EngineCheckRun(root: root, keyCount: keyCount, valueBytes: valueBytes)
        do {
            try check.run()
        } catch let failure as EngineCheckFailure {
            print("FAILED: \(failure.message)")
            throw ExitCode.failure
        }
        print("engine-check passed: \(check.steps) steps on RocksDB at \(root)\(keep ? " (kept)" : "")")
    }
}

struct EngineCheckFailure: Error { let message: String }

/// The steps of the self-check, each printed with its duration.
final class EngineCheckRun {
    let root: String
    let keyCount: Int
    let valueBytes: Int
    private(set) var steps = 0

    init(root: String, keyCount: Int, valueBytes: Int) {
        self.root = root
        self.keyCount = keyCount
        self.valueBytes = valueBytes
    }

    private func key(_ index: Int) -> [UInt8] { Array(String(format: "user/%010d", index).utf8) }
    private func value(_ index: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: valueBytes)
        withUnsafeBytes(of: UInt64(index).bigEndian) { raw in
            for (offset, byte) in raw.prefix(valueBytes).enumerated() { bytes[offset] = byte }
        }
        return bytes
    }

    private func step(_ description: String, _ body: () throws -> String) throws {
        let start = ContinuousClock.now
        let detail = try body()
        let elapsed = ContinuousClock.now - start
        let milliseconds = Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1e3
        steps += 1
        let paddedDescription = description.padding(toLength: 32, withPad: " ", startingAt: 0)
        print("  [\(String(format: "%2d", steps))] \(paddedDescription) \(String(format: "%8.1f", milliseconds)) ms  \(detail)")
    }

    private func require(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        if !condition { throw EngineCheckFailure(message: message()) }
    }

    func run() throws {
        let dbPath = root + "/db"
        print("Flotilla storage engine self-check: \(keyCount) keys × \(valueBytes) B values in \(dbPath)")
        // Every handle of the first open is released when exercise returns, so reopen can lock.
        try exercise(dbPath: dbPath)
        try verifyAfterReopen(dbPath: dbPath)
    }

    private func exercise(dbPath: String) throws {
        var db: Database? = nil
        try step("open with raft + meta CFs") {
            db = try Database(path: dbPath, columnFamilies: ["raft", "meta"])
            return "column families: \(db?.columnFamilyNames.joined(separator: ", ") ?? "")"
        }
        guard let database = db else { throw EngineCheckFailure(message: "database did not open") }
        let raft = try database.columnFamily("raft")
        let meta = try database.columnFamily("meta")
        let batchEntries = 1_000

        try step("synced multi-CF batches") {
            let batch = database.makeWriteBatch()
            var batches = 0
            for start in stride(from: 0, to: keyCount, by: batchEntries) {
                batch.clear()
                for index in start..<min(start + batchEntries, keyCount) {
                    batch.put(key(index), value(index))
                }
                batch.put(Array("log/\(batches)".utf8), Array("entry".utf8), in: raft)
                batch.put(Array("applied".utf8), Array("\(batches)".utf8), in: meta)
                try database.write(batch, sync: true)
                batches += 1
            }
            return "\(batches) batches of ≤\(batchEntries) user keys + 2 state keys, one fsync each"
        }
        try step("point reads") {
            for index in stride(from: 0, to: keyCount, by: max(1, keyCount / 10_000)) {
                try require(try database.get(key(index)) == value(index), "key \(index) read back wrong")
            }
            try require(try database.get(Array("absent".utf8)) == nil, "an absent key was found")
            return "sampled reads match; absent key absent"
        }
        try step("bounded forward + reverse scan") {
            let iterator = database.makeIterator(lowerBound: key(10), upperBound: key(1_010))
            iterator.seekToFirst()
            let forward = try iterator.collect()
            iterator.seekToLast()
            let reverse = try iterator.collect(reverse: true)
            try require(forward.count == 1_000 && forward.first?.key == key(10) && forward.last?.key == key(1_009),
                        "forward scan of [10, 1010) returned \(forward.count) entries")
            try require(reverse.map(\.key) == forward.reversed().map(\.key), "reverse scan is not the mirror of forward")
            return "1000 keys each way, bounds respected"
        }
        try step("snapshot isolation") {
            let snapshot = database.makeSnapshot()
            try database.put(key(0), Array("overwritten".utf8))
            try require(try database.get(key(0), snapshot: snapshot) == value(0), "snapshot saw a later write")
            try database.put(key(0), value(0))
            return "snapshot keeps the old value after overwrite"
        }
        try step("flush + approximate size") {
            try database.flush()
            let size = try database.approximateSize(from: key(0), to: key(keyCount))
            let keys = database.integerProperty("rocksdb.estimate-num-keys") ?? 0
            try require(size > 0, "approximate size of the user range is 0 after flush")
            return "user range ≈ \(size / 1024) KiB on disk, ≈\(keys) keys"
        }
        try step("SST write + ingest") {
            let sstPath = root + "/ingest.sst"
            let writer = try SSTFileWriter(path: sstPath)
            for index in 0..<1_000 { try writer.put(Array(String(format: "zingest/%06d", index).utf8), value(index)) }
            try writer.finish()
            try database.ingestExternalFiles([sstPath], moveFiles: true)
            try require(try database.get(Array("zingest/000999".utf8)) == value(999), "ingested key missing")
            return "1000 keys ingested as one SST file"
        }
        try step("delete range + compact") {
            try database.deleteRange(from: Array("zingest/".utf8), to: Array("zingest0".utf8))
            database.compactRange()
            try require(try database.get(Array("zingest/000500".utf8)) == nil, "deleted range still visible")
            return "ingested range removed"
        }
        try step("checkpoint") {
            try database.createCheckpoint(at: root + "/checkpoint")
            let copy = try Database(path: root + "/checkpoint", columnFamilies: ["raft", "meta"])
            try require(try copy.get(key(keyCount - 1)) == value(keyCount - 1), "checkpoint is missing the last key")
            return "hard-linked copy opens and matches"
        }
    }

    private func verifyAfterReopen(dbPath: String) throws {
        try step("reopen + verify") {
            let reopened = try Database(path: dbPath, columnFamilies: ["raft", "meta"])
            let iterator = reopened.makeIterator(lowerBound: Array("user/".utf8), upperBound: Array("user0".utf8))
            iterator.seekToFirst()
            var count = 0
            while iterator.isValid { count += 1; iterator.next() }
            try iterator.checkError()
            try require(count == keyCount, "after reopen \(count) user keys, expected \(keyCount)")
            let applied = try reopened.get(Array("applied".utf8), in: try reopened.columnFamily("meta"))
            return "all \(count) keys present; applied = \(applied.map { String(decoding: $0, as: UTF8.self) } ?? "nil")"
        }
    }
}
