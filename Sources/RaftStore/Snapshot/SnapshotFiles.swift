import FlotillaProto
import Foundation
import Raft
import RocksDB

/// FNV-1a, 64 bit: a fast non-cryptographic digest of bytes fed in order, the same on every
/// replica and every run.
public struct FNV1a64: Sendable, Equatable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    public mutating func add(byte: UInt8) {
        value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
    }

    public mutating func add(_ bytes: some Sequence<UInt8>) {
        for byte in bytes { add(byte: byte) }
    }

    /// The same as `add(_:)` over `Data`'s bytes, through its storage rather than its
    /// iterator (which cost a function call per byte: a few percent of a store's CPU when
    /// every applied write is digested).
    public mutating func add(_ bytes: Data) {
        var value = self.value
        bytes.withUnsafeBytes { raw in
            for byte in raw { value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        }
        self.value = value
    }

    /// A length (or any integer), as 8 big-endian bytes.
    public mutating func add(length: Int) {
        withUnsafeBytes(of: UInt64(length).bigEndian) { for byte in $0 { add(byte: byte) } }
    }

    /// Bytes preceded by their length, so concatenations cannot collide by shifting.
    public mutating func add(field bytes: Data) {
        add(length: bytes.count)
        add(bytes)
    }
}

/// FNV-1a (64 bit) over snapshot pairs: column, key length, key, value length, value.
public struct SnapshotChecksum: Sendable, Equatable {
    private var hasher = FNV1a64()
    public var value: UInt64 { hasher.value }

    public init() {}

    /// Adds one pair, in stream order.
    public mutating func add(_ pair: Flotilla_V1_SnapshotPair) {
        hasher.add(byte: UInt8(truncatingIfNeeded: pair.column.rawValue))
        hasher.add(field: pair.key)
        hasher.add(field: pair.value)
    }
}

extension Flotilla_V1_WriteCommand {
    /// A digest of what this write does (not who sent it): a retry of a (client, sequence)
    /// must carry the same operation. Never 0 (0 marks "not recorded" in a session).
    var payloadDigest: UInt64 {
        var hasher = FNV1a64()
        hasher.add(length: puts.count)
        for pair in puts { hasher.add(field: pair.key); hasher.add(field: pair.value) }
        hasher.add(length: deletes.count)
        for key in deletes { hasher.add(field: key) }
        hasher.add(byte: hasDeleteRange ? 1 : 0)
        hasher.add(field: deleteRange.startKey)
        hasher.add(field: deleteRange.endKey)
        hasher.add(byte: hasCompareAndSwap ? 1 : 0)
        let cas = compareAndSwap
        hasher.add(field: cas.key)
        hasher.add(byte: (cas.expectExists ? 1 : 0) | (cas.deleteKey ? 2 : 0))
        hasher.add(field: cas.expectedValue)
        hasher.add(field: cas.newValue)
        return max(hasher.value, 1)
    }
}

/// Reads one region's snapshot — its data and client sessions as of one RocksDB snapshot —
/// as a sequence of bounded chunks. Never holds more than one chunk in memory. Used by one
/// thread at a time.
public final class SnapshotReader: @unchecked Sendable {
    private let db: Database
    private let snapshot: RocksDB.Snapshot
    private let region: Flotilla_V1_Region
    /// The Raft message (with the region descriptor) the first chunk carries.
    public let header: Flotilla_V1_RaftMessage
    private let chunkBytes: Int
    private var iterator: RocksDB.Iterator?
    private var column: Flotilla_V1_SnapshotColumn? = .data
    private var sentHeader = false
    private var finished = false
    public private(set) var checksum = SnapshotChecksum()
    public private(set) var pairCount: UInt64 = 0

    init(db: Database, snapshot: RocksDB.Snapshot, region: Flotilla_V1_Region, header: Flotilla_V1_RaftMessage, chunkBytes: Int) {
        self.db = db
        self.snapshot = snapshot
        self.region = region
        self.header = header
        self.chunkBytes = max(chunkBytes, 1)
    }

    /// The next chunk (the first carries the header, the last the count and checksum), or
    /// nil after the last.
    public func nextChunk() throws -> Flotilla_V1_SnapshotChunk? {
        guard !finished else { return nil }
        var chunk = Flotilla_V1_SnapshotChunk()
        if !sentHeader {
            chunk.message = header
            sentHeader = true
        }
        var bytes = 0
        while bytes < chunkBytes, let current = column {
            let iterator = try self.iterator ?? openIterator(current)
            self.iterator = iterator
            if iterator.isValid {
                var pair = Flotilla_V1_SnapshotPair()
                pair.column = current
                pair.key = iterator.withKey { Data($0) }
                pair.value = iterator.withValue { Data($0) }
                checksum.add(pair)
                pairCount += 1
                bytes += pair.key.count + pair.value.count + 16
                chunk.pairs.append(pair)
                iterator.next()
            } else {
                try iterator.checkError()
                self.iterator = nil
                column = current == .data ? .sessions : nil
            }
        }
        if column == nil {
            chunk.last = true
            chunk.checksum = checksum.value
            chunk.pairCount = pairCount
            finished = true
        }
        return chunk
    }

    private func openIterator(_ column: Flotilla_V1_SnapshotColumn) throws -> RocksDB.Iterator {
        let iterator: RocksDB.Iterator
        switch column {
        case .sessions:
            iterator = db.makeIterator(in: try db.columnFamily(StoreKeys.metaColumnFamily),
                                       lowerBound: StoreKeys.sessionsStart(region: region.id),
                                       upperBound: StoreKeys.sessionsEnd(region: region.id), snapshot: snapshot)
        default:
            iterator = db.makeIterator(lowerBound: [UInt8](region.startKey), upperBound: StoreKeys.dataUpperBound(region),
                                       snapshot: snapshot)
        }
        iterator.seekToFirst()
        return iterator
    }
}

/// A snapshot a store must stream to another store.
public struct OutgoingSnapshot: @unchecked Sendable {
    public let reader: SnapshotReader
    public var header: Flotilla_V1_RaftMessage { reader.header }
    public var toStoreID: UInt64 { reader.header.toPeer.storeID }
    public var regionID: UInt64 { reader.header.regionID }

    init(reader: SnapshotReader) { self.reader = reader }
}

/// A snapshot received in full: its Raft message (with the region descriptor) and the
/// directory holding its SST files.
public struct ReceivedSnapshot: Sendable {
    public let header: Flotilla_V1_RaftMessage
    public let directory: String

    var dataFile: String { directory + "/data.sst" }
    var sessionsFile: String { directory + "/sessions.sst" }
}

/// Why a snapshot stream was refused.
public struct SnapshotTransferError: Error, Sendable, CustomStringConvertible {
    public let reason: String
    public var description: String { "snapshot refused: \(reason)" }
    public init(reason: String) { self.reason = reason }
}

/// Builds the SST files of a snapshot from the chunks of a stream, checking every pair
/// against the region and the final count and checksum. Never holds the snapshot in memory.
/// Used by one task at a time (it may move between threads, e.g. to a blocking-I/O pool).
public final class SnapshotBuilder: @unchecked Sendable {
    public let header: Flotilla_V1_RaftMessage
    public let directory: String
    private var dataWriter: SSTFileWriter?
    private var sessionsWriter: SSTFileWriter?
    private var checksum = SnapshotChecksum()
    private var pairCount: UInt64 = 0
    private var reachedSessions = false
    private var done = false

    /// Starts a snapshot from its first chunk, staging files in a fresh directory under
    /// `stagingDirectory`.
    public init(firstChunk: Flotilla_V1_SnapshotChunk, stagingDirectory: String) throws(SnapshotTransferError) {
        let header = firstChunk.message
        guard firstChunk.hasMessage, header.regionID != 0, header.hasRegion, header.region.id == header.regionID,
              header.message.hasSnapshot else {
            throw SnapshotTransferError(reason: "the first chunk must carry the Raft message, region and snapshot metadata")
        }
        self.header = header
        let metadata = header.message.snapshot
        directory = "\(stagingDirectory)/region-\(header.regionID)-\(metadata.term)-\(metadata.index)-\(UUID().uuidString)"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw SnapshotTransferError(reason: "cannot create \(directory): \(error)")
        }
        try add(firstChunk)
    }

    /// Adds a chunk's pairs; the last chunk also completes the files (see `finish`).
    public func add(_ chunk: Flotilla_V1_SnapshotChunk) throws(SnapshotTransferError) {
        guard !done else { throw SnapshotTransferError(reason: "chunk after the last one") }
        for pair in chunk.pairs {
            do {
                switch pair.column {
                case .data:
                    guard !reachedSessions else { throw SnapshotTransferError(reason: "data pair after sessions") }
                    guard header.region.contains(pair.key), pair.key.count <= StoreKeys.dataKeyBytesMax else {
                        throw SnapshotTransferError(reason: "key outside region \(header.regionID)")
                    }
                    let writer = try dataWriter ?? SSTFileWriter(path: directory + "/data.sst")
                    dataWriter = writer
                    try writer.put([UInt8](pair.key), [UInt8](pair.value))
                case .sessions:
                    reachedSessions = true
                    let key = [UInt8](pair.key)
                    guard key.lexicographicallyPrecedes(StoreKeys.sessionsEnd(region: header.regionID)),
                          !key.lexicographicallyPrecedes(StoreKeys.sessionsStart(region: header.regionID)) else {
                        throw SnapshotTransferError(reason: "session key outside region \(header.regionID)")
                    }
                    let writer = try sessionsWriter ?? SSTFileWriter(path: directory + "/sessions.sst")
                    sessionsWriter = writer
                    try writer.put(key, [UInt8](pair.value))
                case .UNRECOGNIZED(let value):
                    throw SnapshotTransferError(reason: "unknown column \(value)")
                }
            } catch let error as SnapshotTransferError {
                throw error
            } catch {
                throw SnapshotTransferError(reason: "writing the SST file failed: \(error)")
            }
            checksum.add(pair)
            pairCount += 1
        }
        if chunk.last {
            guard chunk.pairCount == pairCount, chunk.checksum == checksum.value else {
                throw SnapshotTransferError(reason: "received \(pairCount) pairs with checksum \(String(checksum.value, radix: 16)); "
                                            + "the sender sent \(chunk.pairCount) with \(String(chunk.checksum, radix: 16))")
            }
            do {
                try dataWriter?.finish()
                try sessionsWriter?.finish()
            } catch {
                throw SnapshotTransferError(reason: "finishing the SST files failed: \(error)")
            }
            done = true
        }
    }

    /// The complete snapshot, once the last chunk was added.
    public func finish() throws(SnapshotTransferError) -> ReceivedSnapshot {
        guard done else { throw SnapshotTransferError(reason: "the stream ended before the last chunk") }
        return ReceivedSnapshot(header: header, directory: directory)
    }

    /// Removes the staged files of a snapshot that will not be installed.
    public func abandon() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}
