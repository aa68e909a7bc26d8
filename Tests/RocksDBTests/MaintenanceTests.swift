import Foundation
import RocksDB
import Testing

@Suite("Checkpoints, SST ingest, sizes, properties, compaction")
struct MaintenanceTests {
    @Test func checkpointIsAConsistentOpenableCopy() throws {
        let directory = TemporaryDirectory()
        let db = try openDatabase(directory)
        let raft = try db.columnFamily("raft")
        for index in 0..<1_000 { try db.put([UInt8]("k\(index)"), [UInt8]("v\(index)")) }
        try db.put([UInt8]("log"), [UInt8]("entry"), in: raft)
        let checkpointPath = directory.child("checkpoint")
        try db.createCheckpoint(at: checkpointPath)
        try db.put([UInt8]("after"), [UInt8]("checkpoint"))

        let copy = try Database(path: checkpointPath, columnFamilies: ["raft", "meta"])
        #expect(try copy.get([UInt8]("k999")) == [UInt8]("v999"))
        #expect(try copy.get([UInt8]("log"), in: try copy.columnFamily("raft")) == [UInt8]("entry"))
        #expect(try copy.get([UInt8]("after")) == nil, "writes after the checkpoint are not in it")

        #expect(throws: RocksDBError.self, "a checkpoint into an existing directory fails") {
            try db.createCheckpoint(at: checkpointPath)
        }
    }

    @Test func sstFileWriteAndIngestInstallsARange() throws {
        let directory = TemporaryDirectory()
        let db = try openDatabase(directory)
        try db.put([UInt8]("r-005"), [UInt8]("old"))
        try db.put([UInt8]("z"), [UInt8]("untouched"))
        let sstPath = directory.child("snapshot.sst")
        let writer = try SSTFileWriter(path: sstPath)
        for index in 0..<100 {
            try writer.put([UInt8](String(format: "r-%03d", index)), [UInt8]("new-\(index)"))
        }
        #expect(writer.fileSizeBytes >= 0)
        try writer.finish()
        #expect(FileManager.default.fileExists(atPath: sstPath))
        try db.ingestExternalFiles([sstPath], moveFiles: true)
        #expect(try db.get([UInt8]("r-005")) == [UInt8]("new-5"), "ingested keys replace existing ones")
        #expect(try db.get([UInt8]("r-099")) == [UInt8]("new-99"))
        #expect(try db.get([UInt8]("z")) == [UInt8]("untouched"))
    }

    @Test func sstFileWriterRejectsMisuseWithTypedErrors() throws {
        let directory = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory.path, withIntermediateDirectories: true)
        let writer = try SSTFileWriter(path: directory.child("bad.sst"))
        try writer.put([UInt8]("b"), [UInt8]("1"))
        #expect(throws: RocksDBError.self, "keys out of order") { try writer.put([UInt8]("a"), [UInt8]("2")) }
        #expect(throws: RocksDBError.self, "duplicate key") { try writer.put([UInt8]("b"), [UInt8]("2")) }
        try writer.finish()
        #expect(throws: RocksDBError.self, "put after finish") { try writer.put([UInt8]("c"), [UInt8]("3")) }

        let emptyWriter = try SSTFileWriter(path: directory.child("empty.sst"))
        #expect(throws: RocksDBError.self, "an SST file with no keys") { try emptyWriter.finish() }

        #expect(throws: RocksDBError.self, "a directory that does not exist") {
            _ = try SSTFileWriter(path: directory.child("no/such/dir/x.sst"))
        }
        let db = try openDatabase(directory)
        #expect(throws: RocksDBError.self, "ingesting a missing file") {
            try db.ingestExternalFiles([directory.child("missing.sst")])
        }
    }

    @Test func approximateSizesPropertiesAndCompaction() throws {
        let directory = TemporaryDirectory()
        var options = DatabaseOptions()
        options.compression = .none
        let db = try openDatabase(directory, options: options)
        let value = [UInt8](repeating: 0x5A, count: 1_000)
        for index in 0..<2_000 { try db.put([UInt8](String(format: "a-%05d", index)), value) }
        try db.flush()
        let sizes = try db.approximateSizes(ranges: [
            ([UInt8]("a-"), [UInt8]("a.")),      // all 2,000 keys, ~2 MB
            ([UInt8]("b"), [UInt8]("c")),        // nothing
        ])
        #expect(sizes[0] > 1_000_000, "2,000 × 1 KB values take more than 1 MB: \(sizes[0])")
        #expect(sizes[1] < 10_000, "an empty range is near zero: \(sizes[1])")
        #expect(try db.approximateSize(from: [UInt8]("a-00000"), to: [UInt8]("a-01000")) < sizes[0])
        #expect(try db.approximateSizes(ranges: []) == [])

        let keys = db.integerProperty("rocksdb.estimate-num-keys")
        #expect(keys != nil && keys! > 1_000)
        #expect(db.property("rocksdb.stats")?.contains("Compaction") == true)
        #expect(db.property("rocksdb.no-such-property") == nil)
        #expect(db.integerProperty("rocksdb.no-such-property") == nil)

        try db.deleteRange(from: [UInt8]("a-"), to: [UInt8]("a-01000"))
        db.compactRange()
        #expect(try db.get([UInt8]("a-00999")) == nil)
        #expect(try db.get([UInt8]("a-01000")) == value, "compaction keeps live data")
        let afterCompaction = try db.approximateSize(from: [UInt8]("a-"), to: [UInt8]("a."))
        #expect(afterCompaction < sizes[0], "compaction reclaimed deleted data: \(afterCompaction) < \(sizes[0])")
    }
}
