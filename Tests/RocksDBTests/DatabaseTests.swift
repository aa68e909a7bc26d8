import Foundation
import RocksDB
import Testing

@Suite("Point operations, batches and column families")
struct DatabaseTests {
    @Test func putGetDeleteInEachColumnFamily() throws {
        let directory = TemporaryDirectory()
        let db = try openDatabase(directory)
        let raft = try db.columnFamily("raft")
        let meta = try db.columnFamily("meta")
        try db.put([UInt8]("k"), [UInt8]("default-v"))
        try db.put([UInt8]("k"), [UInt8]("raft-v"), in: raft)
        try db.put([UInt8]("k"), [UInt8]("meta-v"), in: meta, sync: true)
        #expect(try db.get([UInt8]("k")) == [UInt8]("default-v"))
        #expect(try db.get([UInt8]("k"), in: raft) == [UInt8]("raft-v"))
        #expect(try db.get([UInt8]("k"), in: meta) == [UInt8]("meta-v"))
        #expect(try db.get([UInt8]("missing")) == nil)
        try db.delete([UInt8]("k"), in: raft)
        #expect(try db.get([UInt8]("k"), in: raft) == nil)
        #expect(try db.get([UInt8]("k")) == [UInt8]("default-v"), "delete in one CF leaves the others")
        #expect(db.columnFamilyNames == ["default", "meta", "raft"])
    }

    @Test func emptyKeyAndEmptyValueAreOrdinaryEntries() throws {
        let directory = TemporaryDirectory()
        let db = try openDatabase(directory)
        try db.put([], [UInt8]("value-of-empty-key"))
        try db.put([UInt8]("empty-value"), [])
        #expect(try db.get([]) == [UInt8]("value-of-empty-key"))
        #expect(try db.get([UInt8]("empty-value")) == [], "an empty value is present, not missing")
    }

    @Test func deleteRangeRemovesExactlyTheHalfOpenRange() throws {
        let directory = TemporaryDirectory()
        let db = try openDatabase(directory)
        for key in ["a", "b", "c", "d", "e"] { try db.put([UInt8](key), [UInt8](key)) }
        try db.deleteRange(from: [UInt8]("b"), to: [UInt8]("d"))
        #expect(try db.get([UInt8]("a")) != nil)
        #expect(try db.get([UInt8]("b")) == nil)
        #expect(try db.get([UInt8]("c")) == nil)
        #expect(try db.get([UInt8]("d")) != nil, "end is exclusive")
        // Inverted and empty ranges delete nothing and do not fail.
        try db.deleteRange(from: [UInt8]("z"), to: [UInt8]("a"))
        try db.deleteRange(from: [UInt8]("a"), to: [UInt8]("a"))
        #expect(try db.get([UInt8]("a")) != nil)
        #expect(try db.get([UInt8]("e")) != nil)
    }

    @Test func writeBatchSpansColumnFamiliesAndAppliesAsOne() throws {
        let directory = TemporaryDirectory()
        let db = try openDatabase(directory)
        let raft = try db.columnFamily("raft")
        let meta = try db.columnFamily("meta")
        try db.put([UInt8]("old"), [UInt8]("x"))
        try db.put([UInt8]("r5"), [UInt8]("x"), in: raft)
        let batch = db.makeWriteBatch()
        batch.put([UInt8]("user"), [UInt8]("1"))
        batch.put([UInt8]("log"), [UInt8]("2"), in: raft)
        batch.put([UInt8]("apply"), [UInt8]("3"), in: meta)
        batch.delete([UInt8]("old"))
        batch.deleteRange(from: [UInt8]("r"), to: [UInt8]("s"), in: raft)
        #expect(batch.count == 5)
        #expect(batch.dataSizeBytes > 0)
        #expect(try db.get([UInt8]("user")) == nil, "nothing is visible before write")
        try db.write(batch, sync: true)
        #expect(try db.get([UInt8]("user")) == [UInt8]("1"))
        #expect(try db.get([UInt8]("log"), in: raft) == [UInt8]("2"))
        #expect(try db.get([UInt8]("apply"), in: meta) == [UInt8]("3"))
        #expect(try db.get([UInt8]("old")) == nil)
        #expect(try db.get([UInt8]("r5"), in: raft) == nil)
        batch.clear()
        #expect(batch.count == 0)
    }

    /// Readers taking snapshots while a writer applies multi-CF batches must see every batch
    /// whole or not at all.
    @Test func concurrentReadersNeverSeeHalfABatch() async throws {
        let directory = TemporaryDirectory()
        let db = try openDatabase(directory)
        let raft = try db.columnFamily("raft")
        let meta = try db.columnFamily("meta")
        let batchCount = 2_000
        try await withThrowingTaskGroup(of: Int.self) { group in
            group.addTask {
                let batch = db.makeWriteBatch()
                for generation in 1...batchCount {
                    batch.clear()
                    let value = [UInt8]("\(generation)")
                    batch.put([UInt8]("a"), value)
                    batch.put([UInt8]("b"), value, in: raft)
                    batch.put([UInt8]("c"), value, in: meta)
                    try db.write(batch, sync: false)
                }
                return 0
            }
            group.addTask {
                var checks = 0
                while true {
                    let snapshot = db.makeSnapshot()
                    let a = try db.get([UInt8]("a"), snapshot: snapshot)
                    let b = try db.get([UInt8]("b"), in: raft, snapshot: snapshot)
                    let c = try db.get([UInt8]("c"), in: meta, snapshot: snapshot)
                    #expect(a == b && b == c, "a snapshot saw part of a batch: \(String(describing: a)) \(String(describing: b)) \(String(describing: c))")
                    checks += 1
                    if a == [UInt8]("\(batchCount)") { return checks }
                }
            }
            var total = 0
            for try await checks in group { total += checks }
            #expect(total > 0)
        }
    }

    @Test func dataAndColumnFamiliesSurviveReopen() throws {
        let directory = TemporaryDirectory()
        do {
            let db = try openDatabase(directory, columnFamilies: ["raft", "meta", "extra"])
            try db.put([UInt8]("k"), [UInt8]("v"), in: try db.columnFamily("extra"), sync: true)
        }
        // Reopen without naming "extra": existing column families are opened regardless.
        let db = try openDatabase(directory, columnFamilies: ["raft"])
        #expect(db.columnFamilyNames.contains("extra"))
        #expect(try db.get([UInt8]("k"), in: try db.columnFamily("extra")) == [UInt8]("v"))
    }

    @Test(arguments: Compression.allCases)
    func everyLinkedCompressionRoundTrips(compression: Compression) throws {
        let directory = TemporaryDirectory()
        var options = DatabaseOptions()
        options.compression = compression
        let db = try openDatabase(directory, options: options)
        let value = [UInt8](repeating: 7, count: 4_096)
        for index in 0..<200 { try db.put([UInt8]("key-\(index)"), value) }
        try db.flush()
        #expect(try db.get([UInt8]("key-199")) == value)
    }

    /// Seeded random puts, deletes and range deletes checked against an in-memory model, both
    /// by point reads and by a full forward and reverse scan, before and after reopening.
    @Test(arguments: [1, 2, 3, 42] as [UInt64])
    func randomOperationsMatchAModel(seed: UInt64) throws {
        var random = SeededGenerator(seed: seed)
        let directory = TemporaryDirectory()
        var model: [[UInt8]: [UInt8]] = [:]
        func randomKey() -> [UInt8] {
            // Short keys over a small alphabet, including the empty key and 0xFF bytes.
            let length = Int.random(in: 0...3, using: &random)
            return (0..<length).map { _ in [0x00, 0x01, 0x61, 0x62, 0xFF].randomElement(using: &random) ?? 0 }
        }
        do {
            let db = try openDatabase(directory)
            let batch = db.makeWriteBatch()
            for _ in 0..<1_500 {
                let key = randomKey()
                // Direct writes and batched writes interleave; a pending batch is written
                // before any direct write so the model's order is the database's order.
                let direct = Bool.random(using: &random)
                if direct && batch.count > 0 {
                    try db.write(batch, sync: false)
                    batch.clear()
                }
                switch Int.random(in: 0..<10, using: &random) {
                case 0..<6:
                    let value = (0..<Int.random(in: 0...8, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                    if direct { try db.put(key, value) } else { batch.put(key, value) }
                    model[key] = value
                case 6..<9:
                    if direct { try db.delete(key) } else { batch.delete(key) }
                    model[key] = nil
                default:
                    let end = randomKey()
                    if direct { try db.deleteRange(from: key, to: end) } else { batch.deleteRange(from: key, to: end) }
                    for existing in model.keys where !existing.lexicographicallyPrecedes(key) && existing.lexicographicallyPrecedes(end) {
                        model[existing] = nil
                    }
                }
            }
            try db.write(batch, sync: true)
            try check(db, against: model)
        }
        try check(try openDatabase(directory), against: model)
    }

    private func check(_ db: Database, against model: [[UInt8]: [UInt8]]) throws {
        for (key, value) in model { #expect(try db.get(key) == value) }
        let expected = model.sorted { $0.key.lexicographicallyPrecedes($1.key) }
        let iterator = db.makeIterator()
        iterator.seekToFirst()
        let forward = try iterator.collect()
        #expect(forward.map(\.key) == expected.map(\.key))
        #expect(forward.map(\.value) == expected.map(\.value))
        iterator.seekToLast()
        let backward = try iterator.collect(reverse: true)
        #expect(backward.map(\.key) == expected.reversed().map(\.key))
    }
}
