import Foundation
import Raft
import RaftStore
import RocksDB
import Testing

/// A scratch store database with the raft and meta column families.
final class ScratchStore {
    let path: String
    private(set) var db: Database

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-store-\(UUID().uuidString)").path
        db = try Database(path: path, columnFamilies: [StoreKeys.raftColumnFamily, StoreKeys.metaColumnFamily])
    }

    /// Closes and reopens the database, as a restarted store would.
    func reopen() throws {
        // An empty placeholder database takes the old handle's place, so the old one closes first.
        let placeholderPath = path + "-placeholder-\(UUID().uuidString)"
        db = try Database(path: placeholderPath)
        db = try Database(path: path, columnFamilies: [StoreKeys.raftColumnFamily, StoreKeys.metaColumnFamily])
        try? FileManager.default.removeItem(atPath: placeholderPath)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

func entries(_ range: ClosedRange<UInt64>, term: UInt64) -> [Entry] {
    range.map { Entry(term: term, index: $0, data: Array("e\($0)t\(term)".utf8)) }
}

/// Stages `ready` for one region and writes it synced, as the store loop does.
func persist(_ ready: Ready, to storage: RegionRaftStorage, db: Database) throws {
    let batch = db.makeWriteBatch()
    let staged = storage.stage(ready, into: batch)
    try db.write(batch, sync: true)
    storage.commit(staged)
}

@Suite("Region Raft storage in RocksDB")
struct RegionRaftStorageTests {
    let conf = ConfState(voters: [1, 2, 3])

    @Test func appendsReadBackThroughCacheAndDisk() throws {
        let store = try ScratchStore()
        let storage = try RegionRaftStorage(db: store.db, regionID: 7, confState: conf, cacheEntriesMax: 4)
        var ready = Ready()
        ready.entriesToPersist = entries(1...20, term: 1)
        ready.hardState = HardState(term: 1, vote: 2, commit: 5)
        try persist(ready, to: storage, db: store.db)
        #expect(storage.lastIndex == 20)
        #expect(storage.firstIndex == 1)
        // 1...16 come from RocksDB, 17...20 from the cache; one call spans both.
        #expect(try storage.entries(from: 1, to: 21, maxBytes: .max) == entries(1...20, term: 1))
        #expect(try storage.entries(from: 3, to: 18, maxBytes: .max) == entries(3...17, term: 1))
        #expect(try storage.term(at: 2) == 1)
        #expect(try storage.entries(from: 1, to: 21, maxBytes: 1).count == 1, "at least one entry within the byte limit")
        #expect(throws: RaftError.unavailable) { try storage.entries(from: 1, to: 22, maxBytes: .max) }
        #expect(throws: RaftError.unavailable) { try storage.term(at: 21) }
    }

    @Test func conflictingSuffixIsReplacedAndSurvivesRestart() throws {
        let store = try ScratchStore()
        let expected = entries(1...5, term: 1) + entries(6...7, term: 2)
        do {
            let storage = try RegionRaftStorage(db: store.db, regionID: 7, confState: conf, cacheEntriesMax: 2)
            var ready = Ready()
            ready.entriesToPersist = entries(1...10, term: 1)
            try persist(ready, to: storage, db: store.db)
            ready.entriesToPersist = entries(6...7, term: 2)
            ready.hardState = HardState(term: 2, vote: 3, commit: 6)
            try persist(ready, to: storage, db: store.db)
            #expect(storage.lastIndex == 7)
            #expect(try storage.entries(from: 1, to: 8, maxBytes: .max) == expected)
        }
        try store.reopen()
        let storage = try RegionRaftStorage(db: store.db, regionID: 7, confState: conf)
        #expect(storage.lastIndex == 7, "entries 8...10 were deleted, not just hidden")
        #expect(storage.hardState == HardState(term: 2, vote: 3, commit: 6))
        #expect(try storage.entries(from: 1, to: 8, maxBytes: .max) == expected)
    }

    @Test func regionsShareTheDatabaseWithoutSeeingEachOther() throws {
        let store = try ScratchStore()
        let first = try RegionRaftStorage(db: store.db, regionID: 1, confState: conf)
        let second = try RegionRaftStorage(db: store.db, regionID: 2, confState: conf)
        // One batch, one sync, for both regions: the store's group commit.
        let batch = store.db.makeWriteBatch()
        var readyOne = Ready()
        readyOne.entriesToPersist = entries(1...3, term: 1)
        var readyTwo = Ready()
        readyTwo.entriesToPersist = entries(1...5, term: 4)
        let stagedOne = first.stage(readyOne, into: batch)
        let stagedTwo = second.stage(readyTwo, into: batch)
        try store.db.write(batch, sync: true)
        first.commit(stagedOne)
        second.commit(stagedTwo)
        let reopenedOne = try RegionRaftStorage(db: store.db, regionID: 1, confState: conf)
        let reopenedTwo = try RegionRaftStorage(db: store.db, regionID: 2, confState: conf)
        #expect(reopenedOne.lastIndex == 3)
        #expect(reopenedTwo.lastIndex == 5)
        #expect(try reopenedTwo.term(at: 5) == 4)
    }

    @Test func compactionKeepsTheTruncatedTermAcrossRestart() throws {
        let store = try ScratchStore()
        do {
        let storage = try RegionRaftStorage(db: store.db, regionID: 9, confState: conf, cacheEntriesMax: 3)
        var ready = Ready()
        ready.entriesToPersist = entries(1...10, term: 3)
        try persist(ready, to: storage, db: store.db)
        let batch = store.db.makeWriteBatch()
        let truncated = try storage.stageCompaction(upTo: 6, applied: 8, into: batch)
        try store.db.write(batch, sync: true)
        storage.commitCompaction(index: truncated.index, term: truncated.term)
        #expect(storage.firstIndex == 7)
        #expect(try storage.term(at: 6) == 3, "the truncated entry's term is still known")
        #expect(throws: RaftError.compacted) { try storage.term(at: 5) }
        #expect(throws: RaftError.compacted) { try storage.entries(from: 6, to: 8, maxBytes: .max) }
        }
        try store.reopen()
        let storage = try RegionRaftStorage(db: store.db, regionID: 9, confState: conf)
        #expect(storage.firstIndex == 7 && storage.lastIndex == 10)
        #expect(storage.truncatedIndex == 6 && storage.truncatedTerm == 3)
        #expect(try storage.entries(from: 7, to: 11, maxBytes: .max) == entries(7...10, term: 3))
    }

    @Test func installingASnapshotReplacesTheLog() throws {
        let store = try ScratchStore()
        let storage = try RegionRaftStorage(db: store.db, regionID: 3, confState: conf)
        var ready = Ready()
        ready.entriesToPersist = entries(1...4, term: 1)
        try persist(ready, to: storage, db: store.db)
        var install = Ready()
        let newConf = ConfState(voters: [1, 2, 4])
        install.snapshotToInstall = Raft.Snapshot(metadata: SnapshotMetadata(index: 50, term: 6, confState: newConf))
        install.hardState = HardState(term: 6, vote: 0, commit: 50)
        try persist(install, to: storage, db: store.db)
        #expect(storage.firstIndex == 51 && storage.lastIndex == 50)
        #expect(storage.confState == newConf)
        #expect(try storage.term(at: 50) == 6)
        let reopened = try RegionRaftStorage(db: store.db, regionID: 3, confState: newConf)
        #expect(reopened.lastIndex == 50 && reopened.firstIndex == 51, "old entries are gone from disk")
    }

    /// Term and vote are written whenever they change; a hard state that only moves the
    /// commit index is not written at all (the store recovers commit from the applied index).
    @Test func aHardStateThatOnlyMovesCommitIsNotWritten() throws {
        let store = try ScratchStore()
        do {
            let storage = try RegionRaftStorage(db: store.db, regionID: 4, confState: conf)
            var ready = Ready()
            ready.entriesToPersist = entries(1...8, term: 2)
            ready.hardState = HardState(term: 2, vote: 3, commit: 3)
            try persist(ready, to: storage, db: store.db)
            var commitOnly = Ready()
            commitOnly.hardState = HardState(term: 2, vote: 3, commit: 8)
            let batch = store.db.makeWriteBatch()
            let staged = storage.stage(commitOnly, into: batch)
            #expect(batch.count == 0, "a commit-only hard state costs no record")
            try store.db.write(batch, sync: false)
            storage.commit(staged)
            #expect(storage.hardState == HardState(term: 2, vote: 3, commit: 8), "in memory, the commit moved")
        }
        try store.reopen()
        do {
            let storage = try RegionRaftStorage(db: store.db, regionID: 4, confState: conf)
            #expect(storage.hardState == HardState(term: 2, vote: 3, commit: 3), "on disk, the last commit written with a term or vote")
            storage.recoverCommit(atLeast: 6)
            #expect(storage.hardState.commit == 6, "raised to the applied index at open")
            var newTerm = Ready()
            newTerm.hardState = HardState(term: 3, vote: 0, commit: 8)
            try persist(newTerm, to: storage, db: store.db)
        }
        try store.reopen()
        let storage = try RegionRaftStorage(db: store.db, regionID: 4, confState: conf)
        #expect(storage.hardState == HardState(term: 3, vote: 0, commit: 8), "a new term writes the whole hard state")
    }

    @Test func corruptHardStateIsRefusedWithAClearError() throws {
        let store = try ScratchStore()
        try store.db.put(StoreKeys.hardState(region: 5), [1, 2, 3], in: try store.db.columnFamily(StoreKeys.raftColumnFamily))
        let error = #expect(throws: StoreCorruption.self) {
            _ = try RegionRaftStorage(db: store.db, regionID: 5, confState: ConfState(voters: [1]))
        }
        #expect(error?.description.contains("region 5") == true)
        #expect(error?.description.contains("hard state") == true)
    }

    /// Seeded appends (with conflicts), compactions and restarts, checked against the
    /// in-memory storage as a model.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func matchesTheInMemoryModel(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        let store = try ScratchStore()
        var current: RegionRaftStorage? = try RegionRaftStorage(db: store.db, regionID: 11, confState: conf, cacheEntriesMax: 5)
        let model = MemoryStorage(confState: conf)
        var term: UInt64 = 1
        var applied: UInt64 = 0
        for _ in 0..<200 {
            let action = random.next() % 10
            if action >= 8 {
                // Restart: every handle on the database goes before it is reopened.
                current = nil
                try store.reopen()
                current = try RegionRaftStorage(db: store.db, regionID: 11, confState: conf, cacheEntriesMax: 5)
            }
            let storage = try #require(current)
            switch action {
            case 0..<7:
                // Append after a random point at or after the first index (a conflict when
                // it is before the end).
                let start = max(storage.firstIndex, storage.lastIndex + 1 - min(random.next() % 4, storage.lastIndex + 1 - storage.firstIndex))
                if random.next() % 3 == 0 { term += 1 }
                let count = 1 + random.next() % 5
                let new = entries(start...(start + count - 1), term: term)
                var ready = Ready()
                ready.entriesToPersist = new
                try persist(ready, to: storage, db: store.db)
                try model.append(new)
            case 7:
                applied = max(applied, storage.firstIndex + (storage.lastIndex - storage.firstIndex) / 2)
                if applied >= storage.firstIndex && applied <= storage.lastIndex {
                    let batch = store.db.makeWriteBatch()
                    let truncated = try storage.stageCompaction(upTo: applied, applied: applied, into: batch)
                    try store.db.write(batch, sync: false)
                    storage.commitCompaction(index: truncated.index, term: truncated.term)
                    try model.createSnapshot(at: applied, confState: conf, data: [])
                }
            default:
                break
            }
            #expect(storage.firstIndex == model.firstIndex && storage.lastIndex == model.lastIndex)
            if storage.lastIndex >= storage.firstIndex {
                #expect(try storage.entries(from: storage.firstIndex, to: storage.lastIndex + 1, maxBytes: .max)
                        == model.entries(from: model.firstIndex, to: model.lastIndex + 1, maxBytes: .max))
            }
            #expect(try storage.term(at: storage.firstIndex - 1) == model.term(at: model.firstIndex - 1))
        }
    }
}
