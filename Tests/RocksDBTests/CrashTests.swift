import CrashWorkload
import Foundation
import RocksDB
import Testing

/// A child process writes synced multi-CF batches and reports each acknowledged one; it is
/// SIGKILLed mid-stream. After reopening, every acknowledged batch must be present whole and no
/// batch may be present in part. Several rounds resume on the same database, so recovery of a
/// database that was itself recovered is covered too.
@Suite("Crash: SIGKILL during synced writes")
struct CrashTests {
    static var writerPath: String {
        // The writer is built next to the test bundle (the test target depends on it).
        let testBinary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: testBinary).deletingLastPathComponent()
            .appendingPathComponent("RocksDBCrashWriter").path
    }

    @Test(arguments: [7, 1_234] as [UInt64])
    func acknowledgedBatchesSurviveKillAndNoBatchIsPartial(seed: UInt64) throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.writerPath), "writer not built at \(Self.writerPath)")
        var random = SeededGenerator(seed: seed)
        let directory = TemporaryDirectory("crash")
        let dbPath = directory.child("db")
        var nextBatch = 0
        for round in 0..<3 {
            let killAfterAcks = Int.random(in: 5...120, using: &random)
            let acked = try runWriterAndKill(dbPath: dbPath, firstBatch: nextBatch, killAfterAcks: killAfterAcks)
            #expect(acked.count >= killAfterAcks, "round \(round): writer stopped early")
            let lastAcked = try #require(acked.last)
            #expect(acked == Array(nextBatch...lastAcked), "acks arrive in order without gaps")

            let db = try Database(path: dbPath, columnFamilies: CrashWorkload.columnFamilies)
            // Every batch up to the last acknowledged one is present whole.
            for index in 0...lastAcked {
                #expect(try presentEntries(db, index: index) == CrashWorkload.entries(index: index).count,
                        "round \(round) seed \(seed): acknowledged batch \(index) is not whole")
            }
            // At most one batch past the last ack (written, not yet reported) and it is whole.
            let inFlight = try presentEntries(db, index: lastAcked + 1)
            #expect(inFlight == 0 || inFlight == CrashWorkload.entries(index: lastAcked + 1).count,
                    "round \(round) seed \(seed): batch \(lastAcked + 1) is present in part (\(inFlight) entries)")
            #expect(try presentEntries(db, index: lastAcked + 2) == 0)
            let newest = lastAcked + (inFlight > 0 ? 1 : 0)
            let applied = try db.get(CrashWorkload.appliedKey, in: try db.columnFamily("meta"))
            #expect(applied == Array("\(newest)".utf8), "the applied pointer names the newest whole batch")
            nextBatch = newest + 1
        }
    }

    /// Number of batch `index`'s entries present with the right value (the applied pointer,
    /// which later batches overwrite, is not counted).
    private func presentEntries(_ db: Database, index: Int) throws -> Int {
        var present = 0
        for entry in CrashWorkload.entries(index: index) where entry.key != CrashWorkload.appliedKey {
            if try db.get(entry.key, in: try db.columnFamily(entry.columnFamily)) == entry.value { present += 1 }
        }
        // Count the applied pointer as present whenever the rest is, so "whole" is one number.
        return present == CrashWorkload.entries(index: index).count - 1 ? present + 1 : present
    }

    /// Starts the writer, reads acks until `killAfterAcks` have arrived, SIGKILLs it, and returns
    /// every ack it printed (including any that raced with the kill).
    private func runWriterAndKill(dbPath: String, firstBatch: Int, killAfterAcks: Int) throws -> [Int] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.writerPath)
        process.arguments = [dbPath, "\(firstBatch)", "1000000"]
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        var buffer = Data()
        var acks: [Int] = []
        var killed = false
        let deadline = Date().addingTimeInterval(60)
        while true {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }  // EOF: the writer is gone
            buffer.append(chunk)
            while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                buffer.removeSubrange(buffer.startIndex...newline)
                if line.hasPrefix("ack "), let index = Int(line.dropFirst(4)) { acks.append(index) }
            }
            if !killed && (acks.count >= killAfterAcks || Date() > deadline) {
                kill(process.processIdentifier, SIGKILL)
                killed = true
            }
        }
        process.waitUntilExit()
        let stderrText = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationReason == .uncaughtSignal, "writer exited by itself: \(stderrText)")
        return acks
    }
}
