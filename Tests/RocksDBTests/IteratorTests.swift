import RocksDB
import Testing

@Suite("Iterators: bounds, seeks, directions, snapshots")
struct IteratorTests {
    /// Keys at the edges of the key space: the empty key, 0x00, ordinary keys, and 0xFF runs.
    static let edgeKeys: [[UInt8]] = [[], [0x00], [0x00, 0x00], [0x61], [0x61, 0x00], [0x62], [0xFF], [0xFF, 0xFF], [0xFF, 0xFF, 0xFF]]

    private func populatedDatabase(_ directory: TemporaryDirectory) throws -> Database {
        let db = try openDatabase(directory)
        for key in Self.edgeKeys { try db.put(key, key + [0xEE]) }
        return db
    }

    private func keys(_ db: Database, lower: [UInt8]?, upper: [UInt8]?, reverse: Bool = false) throws -> [[UInt8]] {
        let iterator = db.makeIterator(lowerBound: lower, upperBound: upper)
        if reverse { iterator.seekToLast() } else { iterator.seekToFirst() }
        return try iterator.collect(reverse: reverse).map(\.key)
    }

    @Test func unboundedScanSeesEveryEdgeKeyInOrder() throws {
        let directory = TemporaryDirectory()
        let db = try populatedDatabase(directory)
        #expect(try keys(db, lower: nil, upper: nil) == Self.edgeKeys)
        #expect(try keys(db, lower: nil, upper: nil, reverse: true) == Self.edgeKeys.reversed())
        let iterator = db.makeIterator()
        iterator.seekToFirst()
        #expect(iterator.value == [0xEE], "value of the empty key")
    }

    @Test func boundsAreLowerInclusiveUpperExclusive() throws {
        let directory = TemporaryDirectory()
        let db = try populatedDatabase(directory)
        #expect(try keys(db, lower: [0x61], upper: [0x62]) == [[0x61], [0x61, 0x00]])
        #expect(try keys(db, lower: [0x61], upper: [0x62], reverse: true) == [[0x61, 0x00], [0x61]])
        // The empty key as a lower bound is the start of the key space.
        #expect(try keys(db, lower: [], upper: [0x00, 0x00]) == [[], [0x00]])
        // 0xFF bounds: everything from 0xFF on, and everything before 0xFF 0xFF.
        #expect(try keys(db, lower: [0xFF], upper: nil) == [[0xFF], [0xFF, 0xFF], [0xFF, 0xFF, 0xFF]])
        #expect(try keys(db, lower: [0xFF], upper: [0xFF, 0xFF]) == [[0xFF]])
        #expect(try keys(db, lower: [0xFF, 0xFF, 0xFF, 0x00], upper: nil) == [])
    }

    @Test func emptyAndInvertedRangesYieldNothing() throws {
        let directory = TemporaryDirectory()
        let db = try populatedDatabase(directory)
        #expect(try keys(db, lower: [0x61], upper: [0x61]) == [])
        #expect(try keys(db, lower: nil, upper: []) == [], "nothing sorts before the empty key")
        #expect(try keys(db, lower: [0x61], upper: [0x61], reverse: true) == [])
        #expect(try keys(db, lower: [0x62], upper: [0x61]) == [])
        let emptyDirectory = TemporaryDirectory()
        let empty = try openDatabase(emptyDirectory)
        #expect(try keys(empty, lower: nil, upper: nil) == [])
    }

    @Test func seekAndSeekForPrevLandOnNeighbours() throws {
        let directory = TemporaryDirectory()
        let db = try populatedDatabase(directory)
        let iterator = db.makeIterator()
        iterator.seek([0x60])
        #expect(iterator.key == [0x61], "seek lands on the first key at or after the target")
        iterator.seek([0x61])
        #expect(iterator.key == [0x61], "an exact match is included")
        iterator.seekForPrev([0x61, 0x01])
        #expect(iterator.key == [0x61, 0x00], "seekForPrev lands on the last key at or before")
        iterator.seekForPrev([])
        #expect(iterator.key == [], "the empty key is at or before the empty key")
        iterator.seek([0xFF, 0xFF, 0xFF, 0xFF])
        #expect(!iterator.isValid, "nothing after the last key")
        try iterator.checkError()
        // Within bounds, seeks are clamped to the range.
        let bounded = db.makeIterator(lowerBound: [0x61], upperBound: [0x62])
        bounded.seek([0x00])
        #expect(bounded.key == [0x61])
        bounded.seekForPrev([0xFF])
        #expect(bounded.key == [0x61, 0x00])
        bounded.next()
        #expect(!bounded.isValid)
    }

    @Test func collectStopsAtTheLimit() throws {
        let directory = TemporaryDirectory()
        let db = try populatedDatabase(directory)
        let iterator = db.makeIterator()
        iterator.seek([0x61])
        #expect(try iterator.collect(limit: 2).map(\.key) == [[0x61], [0x61, 0x00]])
        #expect(iterator.key == [0x62], "collect leaves the cursor after the last entry taken")
    }

    @Test func snapshotIsAStableView() throws {
        let directory = TemporaryDirectory()
        let db = try openDatabase(directory)
        let raft = try db.columnFamily("raft")
        try db.put([UInt8]("a"), [UInt8]("1"))
        try db.put([UInt8]("x"), [UInt8]("1"), in: raft)
        let snapshot = db.makeSnapshot()
        try db.put([UInt8]("a"), [UInt8]("2"))
        try db.put([UInt8]("b"), [UInt8]("2"))
        try db.delete([UInt8]("x"), in: raft)
        #expect(try db.get([UInt8]("a"), snapshot: snapshot) == [UInt8]("1"))
        #expect(try db.get([UInt8]("b"), snapshot: snapshot) == nil)
        #expect(try db.get([UInt8]("x"), in: raft, snapshot: snapshot) == [UInt8]("1"))
        #expect(try db.get([UInt8]("a")) == [UInt8]("2"))
        let iterator = db.makeIterator(snapshot: snapshot)
        iterator.seekToFirst()
        let entries = try iterator.collect()
        #expect(entries.map(\.key) == [[UInt8]("a")])
        #expect(entries.map(\.value) == [[UInt8]("1")])
    }

    @Test func iteratorKeepsItsDatabaseAlive() throws {
        let directory = TemporaryDirectory()
        let iterator: RocksDB.Iterator
        do {
            let db = try openDatabase(directory)
            try db.put([UInt8]("k"), [UInt8]("v"))
            iterator = db.makeIterator()
        }
        iterator.seekToFirst()
        #expect(iterator.key == [UInt8]("k"))
    }
}
