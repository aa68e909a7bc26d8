import Foundation
import RocksDB
import Testing

@Suite("Opening bad databases fails with a clear, typed error")
struct OpenErrorTests {
    @Test func missingPathWithoutCreateIfMissing() throws {
        let directory = TemporaryDirectory()
        var options = DatabaseOptions()
        options.createIfMissing = false
        try FileManager.default.createDirectory(atPath: directory.path, withIntermediateDirectories: true)
        let path = directory.child("absent")
        let error = #expect(throws: RocksDBError.self) {
            _ = try Database(path: path, options: options)
        }
        #expect(error?.kind == .invalidArgument)
        #expect(error?.message.contains("does not exist") == true, "\(String(describing: error))")
        #expect(error?.description.contains(path) == true)
    }

    @Test func databaseLockedByAnotherHandle() throws {
        let directory = TemporaryDirectory()
        let first = try openDatabase(directory)
        let error = #expect(throws: RocksDBError.self) { _ = try openDatabase(directory) }
        #expect(error?.kind == .ioError)
        #expect(error?.message.lowercased().contains("lock") == true, "\(String(describing: error))")
        _ = first
    }

    @Test func corruptManifestPointer() throws {
        let directory = TemporaryDirectory()
        do {
            let db = try openDatabase(directory)
            try db.put([UInt8]("k"), [UInt8]("v"), sync: true)
        }
        // CURRENT names the live MANIFEST; point it at garbage.
        try "MANIFEST-999999\n".write(toFile: directory.child("db/CURRENT"), atomically: true, encoding: .utf8)
        let error = #expect(throws: RocksDBError.self) { _ = try openDatabase(directory) }
        #expect(error != nil)
        #expect(error?.message.isEmpty == false)
    }

    @Test func corruptManifestContents() throws {
        let directory = TemporaryDirectory()
        do {
            let db = try openDatabase(directory)
            try db.put([UInt8]("k"), [UInt8]("v"), sync: true)
        }
        let dbPath = directory.child("db")
        let manifest = try #require(try FileManager.default.contentsOfDirectory(atPath: dbPath).first { $0.hasPrefix("MANIFEST-") })
        try Data(repeating: 0xAB, count: 4_096).write(to: URL(fileURLWithPath: dbPath).appendingPathComponent(manifest))
        let error = #expect(throws: RocksDBError.self) { _ = try openDatabase(directory) }
        #expect(error?.kind == .corruption, "\(String(describing: error))")
    }

    @Test func pathThatIsAFile() throws {
        let directory = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory.path, withIntermediateDirectories: true)
        try "not a database".write(toFile: directory.child("db"), atomically: true, encoding: .utf8)
        #expect(throws: RocksDBError.self) { _ = try openDatabase(directory) }
    }

    @Test func unknownColumnFamily() throws {
        let directory = TemporaryDirectory()
        let db = try openDatabase(directory)
        let error = #expect(throws: RocksDBError.self) { _ = try db.columnFamily("nope") }
        #expect(error?.kind == .invalidArgument)
        #expect(error?.message.contains("nope") == true)
    }
}
