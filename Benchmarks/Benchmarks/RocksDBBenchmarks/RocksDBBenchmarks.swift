// Micro-benchmarks of the RocksDB engine layer: what the Swift wrapper costs over RocksDB
// itself. Compare with db_bench on the same machine (docs/benchmarks.md has both).
//
// Run: cd Benchmarks && swift package benchmark
import Benchmark
import Foundation
import RocksDB

let valueBytes = 100
let preloadedKeyCount = 100_000
let value = [UInt8]((0..<valueBytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })

/// Writes `index` into `key` as db_bench does: 16 bytes, zero-padded decimal. Reusing one
/// buffer keeps the benchmark's own allocations out of the wrapper's figures.
@inline(__always)
func fillKey(_ key: inout [UInt8], _ index: Int) {
    var remainder = index
    for position in stride(from: 15, through: 0, by: -1) {
        key[position] = UInt8(ascii: "0") + UInt8(remainder % 10)
        remainder /= 10
    }
}

/// Advances a decimal key by one in place (sequential keys, like db_bench's fillseq), at the
/// cost of a carry rather than sixteen divisions.
@inline(__always)
func incrementKey(_ key: inout [UInt8]) {
    var position = 15
    while position >= 0 {
        if key[position] < UInt8(ascii: "9") { key[position] += 1; return }
        key[position] = UInt8(ascii: "0")
        position -= 1
    }
}

func benchmarkKey(_ index: Int) -> [UInt8] {
    var key = [UInt8](repeating: UInt8(ascii: "0"), count: 16)
    fillKey(&key, index)
    return key
}

/// Scratch databases live under one directory per process; each benchmark's teardown removes
/// it (open files stay valid on Linux after unlinking, and the process ends soon after).
let scratchRoot = FileManager.default.temporaryDirectory
    .appendingPathComponent("flotilla-bench-\(ProcessInfo.processInfo.processIdentifier)").path

@Sendable func removeScratch() async throws { try? FileManager.default.removeItem(atPath: scratchRoot) }

/// One open database and the state a benchmark keeps across its samples.
final class BenchmarkDatabase: @unchecked Sendable {
    let db: Database
    let batch: WriteBatch
    var nextKey = 0
    var key = [UInt8](repeating: UInt8(ascii: "0"), count: 16)

    init(_ label: String, preload: Bool) {
        var options = DatabaseOptions()
        options.compression = .lz4
        do {
            db = try Database(path: scratchRoot + "/" + label, options: options)
            batch = db.makeWriteBatch()
            if preload {
                for index in 0..<preloadedKeyCount {
                    batch.put(benchmarkKey(index), value)
                    if batch.count == 1_000 { try db.write(batch, sync: false); batch.clear() }
                }
                try db.write(batch, sync: false)
                batch.clear()
                try db.flush()
            }
        } catch {
            preconditionFailure("cannot prepare benchmark database under \(scratchRoot): \(error)")
        }
    }
}

// Swift globals are initialised lazily, on first use: each benchmark process opens only the
// database it measures.
let getDatabase = BenchmarkDatabase("get", preload: true)
let scanDatabase = BenchmarkDatabase("scan", preload: true)
let putDatabase = BenchmarkDatabase("put", preload: false)

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 10,
        maxDuration: .seconds(3),
        maxIterations: 100_000
    )

    // Point get over a preloaded, flushed database (block cache warm after warm-up).
    Benchmark("get (100k keys, 100 B values)",
              configuration: .init(scalingFactor: .kilo),
              closure: { benchmark in
        let state = getDatabase
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            state.nextKey = (state.nextKey &+ 7_919) % preloadedKeyCount
            fillKey(&state.key, state.nextKey)
            blackHole(try state.db.get(state.key))
        }
    }, setup: { _ = getDatabase }, teardown: removeScratch)

    // Batched puts: one scaled iteration is one write of `entries` puts of 100-byte values.
    for sync in [false, true] {
        for entries in [1, 16, 256] {
            let scaling: BenchmarkScalingFactor = sync || entries == 256 ? .one : .kilo
            Benchmark("put batch=\(entries) sync=\(sync)",
                      configuration: .init(scalingFactor: scaling, maxDuration: .seconds(sync ? 5 : 3)),
                      closure: { benchmark in
                let state = putDatabase
                benchmark.startMeasurement()
                for _ in benchmark.scaledIterations {
                    state.batch.clear()
                    for _ in 0..<entries {
                        incrementKey(&state.key)
                        state.batch.put(state.key, value)
                    }
                    try state.db.write(state.batch, sync: sync)
                }
            }, setup: { _ = putDatabase }, teardown: removeScratch)
        }
    }

    // Forward scan: one iteration reads 1,000 consecutive entries through a bounded iterator.
    Benchmark("scan 1000 entries", closure: { benchmark in
        let state = scanDatabase
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            state.nextKey = (state.nextKey &+ 10_007) % (preloadedKeyCount - 1_000)
            let iterator = state.db.makeIterator(upperBound: benchmarkKey(state.nextKey + 1_000))
            iterator.seek(benchmarkKey(state.nextKey))
            var bytes = 0
            while iterator.isValid {
                bytes &+= iterator.withValue { $0.count }
                iterator.next()
            }
            blackHole(bytes)
        }
    }, setup: { _ = scanDatabase }, teardown: removeScratch)
}
