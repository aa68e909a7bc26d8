import CRocksDB

/// A one-byte static buffer that stands in for the base address of an empty byte buffer, so
/// RocksDB never sees a null data pointer (a `Slice` over null is undefined in `memcmp`).
nonisolated(unsafe) private let emptyBytesStorage: UnsafeMutablePointer<CChar> = {
    let pointer = UnsafeMutablePointer<CChar>.allocate(capacity: 1)
    pointer.initialize(to: 0)
    return pointer
}()

extension UnsafeRawBufferPointer {
    /// The buffer's bytes as a C `char*` for RocksDB, never null.
    @inline(__always)
    var cChars: UnsafePointer<CChar> {
        guard let base = baseAddress else { return UnsafePointer(emptyBytesStorage) }
        return base.assumingMemoryBound(to: CChar.self)
    }
}

/// Calls `body` with a byte array's storage as a raw buffer, without copying.
@inline(__always)
func withBytes<R, E: Error>(
    _ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(E) -> R
) throws(E) -> R {
    // `withUnsafeBytes` is rethrows-untyped; funnel the typed error through a Result.
    let result: Result<R, E> = bytes.withUnsafeBytes { raw in
        do throws(E) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try result.get()
}

/// Copies `count` bytes at `pointer` into a new array; an empty array when `pointer` is null.
@inline(__always)
func copyBytes(_ pointer: UnsafePointer<CChar>?, count: Int) -> [UInt8] {
    guard let pointer, count > 0 else { return [] }
    return [UInt8](UnsafeRawBufferPointer(start: pointer, count: count))
}

/// An owned, heap-allocated copy of bytes whose address stays fixed: RocksDB keeps raw pointers
/// to iterator bounds for as long as the iterator lives.
final class PinnedBytes {
    let pointer: UnsafeMutableRawPointer
    let count: Int

    init(_ bytes: [UInt8]) {
        count = bytes.count
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 1)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress, count > 0 {
                pointer.copyMemory(from: base, byteCount: count)
            }
        }
    }

    var cChars: UnsafePointer<CChar> {
        UnsafePointer(pointer.assumingMemoryBound(to: CChar.self))
    }

    deinit { pointer.deallocate() }
}
