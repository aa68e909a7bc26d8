import FlotillaProto
import Foundation
import RocksDB

/// A scan checked against its region on the store thread, over a RocksDB snapshot taken there:
/// reading it on any other thread sees exactly the region's data as of that point, so a large
/// scan never holds the store thread that every region's writes share. An answer is bounded by
/// `KVLimits.scanPairsMax` pairs and `KVLimits.scanResponseBytesMax` bytes (at least one pair);
/// when it stops at those bounds it says where to resume.
public struct ScanPlan: @unchecked Sendable {
    // RocksDB's DB and snapshots are thread-safe; the column family handle is immutable.
    let db: Database
    let snapshot: RocksDB.Snapshot
    let column: ColumnFamily
    let lower: [UInt8]
    let upper: [UInt8]
    let limit: Int
    let reverse: Bool

    /// Reads the answer (any thread).
    public func run(pairsMax: Int = KVLimits.scanPairsMax, bytesMax: Int = KVLimits.scanResponseBytesMax) throws -> ScanAnswer {
        let iterator = db.makeIterator(in: column, lowerBound: lower, upperBound: upper, snapshot: snapshot)
        if reverse { iterator.seekToLast() } else { iterator.seekToFirst() }
        let wanted = min(limit, pairsMax)
        var pairs: [(key: Data, value: Data)] = []
        var bytes = 0
        while iterator.isValid && pairs.count < wanted {
            let key = Data(iterator.key)
            let value = Data(iterator.value)
            if !pairs.isEmpty && bytes + key.count + value.count > bytesMax { break }
            bytes += key.count + value.count
            pairs.append((key, value))
            if reverse { iterator.previous() } else { iterator.next() }
        }
        try iterator.checkError()
        var answer = ScanAnswer(pairs: pairs)
        // Stopped by our own bound, with more in range and the client wanting more.
        if iterator.isValid && pairs.count < limit, let last = pairs.last?.key {
            answer.truncated = true
            answer.resumeKey = reverse ? last : last + [0]
        }
        return answer
    }
}

/// One scan answer: the pairs in scan order, and where to resume when a server bound cut it.
public struct ScanAnswer: Sendable {
    public var pairs: [(key: Data, value: Data)]
    public var truncated = false
    /// Forward: the next start key; reverse: the next (exclusive) end key.
    public var resumeKey = Data()
}
