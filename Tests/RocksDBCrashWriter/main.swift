// Child process of the storage crash test (Tests/RocksDBTests/CrashTests.swift).
//
// Usage: RocksDBCrashWriter <db-path> <first-batch> <batch-count>
// Writes batches first-batch ..< first-batch + batch-count, each one synced write batch across
// the three column families, and prints "ack N" on stdout after each write returns. The parent
// kills it with SIGKILL at an arbitrary moment and then checks that every acknowledged batch
// is present whole and that no batch is present in part.
import CrashWorkload
import RocksDB

#if canImport(Glibc)
import Glibc
#endif

/// Writes `line` and a newline straight to a file descriptor, unbuffered: an ack must be out
/// of the process the moment it is printed.
func writeLine(_ line: String, to fileDescriptor: Int32) {
    var bytes = Array((line + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeMutableBytes { raw in
            write(fileDescriptor, raw.baseAddress.map { $0 + offset }, raw.count - offset)
        }
        if written <= 0 { exit(3) }
        offset += written
    }
}

let arguments = CommandLine.arguments
guard arguments.count == 4, let first = Int(arguments[2]), let count = Int(arguments[3]), first >= 0, count > 0 else {
    writeLine("usage: RocksDBCrashWriter <db-path> <first-batch> <batch-count>", to: 2)
    exit(2)
}
do {
    let db = try Database(path: arguments[1], columnFamilies: CrashWorkload.columnFamilies)
    let batch = db.makeWriteBatch()
    for index in first..<(first + count) {
        batch.clear()
        try CrashWorkload.fill(batch, index: index, db: db)
        try db.write(batch, sync: true)
        writeLine("ack \(index)", to: 1)
    }
} catch {
    writeLine("RocksDBCrashWriter: \(error)", to: 2)
    exit(1)
}
