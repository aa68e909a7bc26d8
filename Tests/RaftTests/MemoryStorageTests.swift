import Raft
import Testing

/// The in-memory storage refuses, with a typed error and without changing anything, every
/// write no correct Raft node asks for: the simulator relies on it to report a broken core
/// with its seed instead of trapping.
@Suite("Raft: in-memory storage refuses impossible writes")
struct MemoryStorageTests {
    func entries(_ indexes: ClosedRange<UInt64>, term: UInt64) -> [Entry] {
        indexes.map { Entry(term: term, index: $0, kind: .normal, data: [UInt8($0 & 0xFF)]) }
    }

    /// A storage holding entries 1…5 of term 1, commit 3, term 2 with a vote for node 1.
    func storage() throws -> MemoryStorage {
        let storage = MemoryStorage()
        try storage.append(entries(1...5, term: 1))
        try storage.setHardState(HardState(term: 2, vote: 1, commit: 3))
        return storage
    }

    @Test func logWritesOutOfPlaceAreRefused() throws {
        let storage = try storage()
        #expect(throws: StorageViolation.self, "a gap") { try storage.append(entries(7...8, term: 2)) }
        #expect(throws: StorageViolation.self, "out of sequence") {
            try storage.append([Entry(term: 2, index: 6, kind: .normal, data: []), Entry(term: 2, index: 8, kind: .normal, data: [])])
        }
        #expect(storage.lastIndex == 5, "nothing written")
        try storage.createSnapshot(at: 3, confState: ConfState(voters: [1]), data: [])
        #expect(throws: StorageViolation.self, "below the snapshot") { try storage.append(entries(2...6, term: 2)) }
        try storage.append(entries(4...6, term: 2))
        #expect(try storage.lastIndex == 6 && storage.term(at: 4) == 2, "a conflicting suffix is replaced")
    }

    @Test func hardStatesGoingBackOrVotingTwiceAreRefused() throws {
        let storage = try storage()
        #expect(throws: StorageViolation.self, "term back") { try storage.setHardState(HardState(term: 1, vote: 0, commit: 3)) }
        #expect(throws: StorageViolation.self, "second vote") { try storage.setHardState(HardState(term: 2, vote: 3, commit: 3)) }
        #expect(throws: StorageViolation.self, "vote forgotten") { try storage.setHardState(HardState(term: 2, vote: 0, commit: 3)) }
        #expect(throws: StorageViolation.self, "commit back") { try storage.setHardState(HardState(term: 2, vote: 1, commit: 2)) }
        #expect(storage.hardState == HardState(term: 2, vote: 1, commit: 3), "nothing written")
        try storage.setHardState(HardState(term: 3, vote: 2, commit: 4))
        #expect(storage.hardState == HardState(term: 3, vote: 2, commit: 4), "a new term may hold a new vote")
    }

    @Test func snapshotsGoingBackOrOverCommittedEntriesAreRefused() throws {
        let storage = try storage()
        let over = Snapshot(metadata: SnapshotMetadata(index: 3, term: 1, confState: ConfState(voters: [1])))
        #expect(throws: StorageViolation.self, "at the commit index") { try storage.applySnapshot(over) }
        #expect(storage.lastIndex == 5, "the log is kept")
        try storage.applySnapshot(Snapshot(metadata: SnapshotMetadata(index: 10, term: 2, confState: ConfState(voters: [1]))))
        #expect(storage.firstIndex == 11 && storage.lastIndex == 10)
        let older = Snapshot(metadata: SnapshotMetadata(index: 8, term: 2, confState: ConfState(voters: [1])))
        #expect(throws: StorageViolation.self, "backwards") { try storage.applySnapshot(older) }
    }
}
