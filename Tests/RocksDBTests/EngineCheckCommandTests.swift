import Foundation
import Testing

/// `flotillactl engine-check` run as a user would: the real binary, its exit code and output.
@Suite("flotillactl engine-check")
struct EngineCheckCommandTests {
    static var binary: String {
        let testBinary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: testBinary).deletingLastPathComponent().appendingPathComponent("flotillactl").path
    }

    private func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }

    @Test func passesOnAFreshDirectoryAndReportsEachStep() throws {
        let directory = TemporaryDirectory("engine-check")
        let result = try run(["engine-check", "--keys", "2000", "--data-dir", directory.path])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("engine-check passed: 10 steps"))
        #expect(result.output.contains("all 2000 keys present"))
        #expect(!FileManager.default.fileExists(atPath: directory.path), "the scratch database is removed without --keep")
    }

    @Test func rejectsBadFlagsWithAClearMessage() throws {
        let tooFew = try run(["engine-check", "--keys", "5"])
        #expect(tooFew.status == 2)
        #expect(tooFew.output.contains("--keys must be between 1000 and 10000000, got 5"))
        let notANumber = try run(["engine-check", "--value-bytes", "lots"])
        #expect(notANumber.status == 2)
        #expect(notANumber.output.contains("value-bytes"))
    }

    @Test func backupAndRestoreFlagsOutsideTheirBoundsAreUsageErrors() throws {
        for (arguments, fragment) in [(["backup", "create", "--to", "/tmp/never", "--concurrency", "0"], "--concurrency must be 1 to 64"),
                                      (["backup", "create", "--to", "/tmp/never", "--fence-ms", "0"], "--fence-ms must be 1 to 60000"),
                                      (["backup", "create", "--to", "/tmp/never", "--rate-limit-mb=-1"], "--rate-limit-mb must be 0 to 100000"),
                                      (["restore", "--from", "/tmp/never", "--batch-bytes", "10"], "--batch-bytes must be 65536 to 4194304"),
                                      (["region", "find", "x", "--hex", "--base64"], "exclude each other")] {
            let result = try run(arguments + ["--pd", "127.0.0.1:1"])
            #expect(result.status == 2 && result.output.contains(fragment), "\(arguments): \(result)")
        }
    }

    @Test func refusesANonEmptyDataDirectory() throws {
        let directory = TemporaryDirectory("engine-check")
        try FileManager.default.createDirectory(atPath: directory.path, withIntermediateDirectories: true)
        try "keep me".write(toFile: directory.child("precious.txt"), atomically: true, encoding: .utf8)
        let result = try run(["engine-check", "--data-dir", directory.path])
        #expect(result.status == 2)
        #expect(result.output.contains("exists and is not empty"))
        #expect(FileManager.default.fileExists(atPath: directory.child("precious.txt")), "nothing of the user's is touched")
    }
}
