import FlotillaClient
import Foundation
import Synchronization

/// A workload run: who, what, how long, how hard.
struct RunPlan: Sendable {
    var mix: WorkloadMix
    var keySpace: KeySpace
    var recordCount: UInt64
    var valueSizeBytes: Int
    var concurrency: Int
    var duration: Duration?
    var operationCount: Int?
    var warmup: Duration
    /// Open loop at this many operations per second; nil: closed loop.
    var rateOpsPerSecond: Double?
    var seed: UInt64
    var liveLine: Bool
    /// Processes (servers) whose CPU time is sampled with the client's over the measured window.
    var watchPIDs: [Int32] = []
}

/// What a run measured besides the operations: its measured time and the CPU used meanwhile.
struct RunMeasurement: Sendable {
    var duration: Duration
    var cpuAtStart: CPUSample
    var cpuAtEnd: CPUSample
}

/// Runs workloads against a target: a closed loop (each client issues its next operation when
/// the previous one completes), or an open loop at a fixed rate where each operation's latency
/// counts from when it was due, so a stall is charged to every operation it delayed
/// (coordinated omission corrected).
struct WorkloadRunner: Sendable {
    let target: any BenchTarget
    let plan: RunPlan

    /// Writes records 0..<recordCount, `concurrency` batches at a time.
    func load() async throws -> Duration {
        let clock = ContinuousClock()
        let start = clock.now
        let next = InsertCounter(0)
        let batch: UInt64 = 256
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<plan.concurrency {
                group.addTask {
                    var random = BenchRandom(seed: plan.seed &+ UInt64(worker) &* 0x9E37_79B9)
                    while true {
                        let first = next.value.add(batch, ordering: .relaxed).newValue - batch
                        guard first < plan.recordCount else { return }
                        let last = min(first + batch, plan.recordCount)
                        let pairs = (first..<last).map { (plan.keySpace.key($0), Self.value(plan.valueSizeBytes, &random)) }
                        try await target.writeMany(pairs)
                    }
                }
            }
            try await group.waitForAll()
        }
        return clock.now - start
    }

    /// Runs the mix; returns the measured time (after the warm-up) and the CPU samples at its ends.
    func run(recorder: Recorder) async -> RunMeasurement {
        let clock = ContinuousClock()
        let start = clock.now
        let measureFrom = start + plan.warmup
        let deadline = plan.duration.map { measureFrom + $0 }
        let state = RunState(recordCount: plan.recordCount)
        let chooser = KeyChooser(distribution: plan.mix.distribution, recordCount: max(1, plan.recordCount))
        if plan.warmup == .zero {
            state.startMeasuring(recorder, at: clock.now, watching: plan.watchPIDs)
        }

        let reporter = Task {
            var second = 0
            while !state.done.load(ordering: .relaxed) {
                try? await Task.sleep(for: .seconds(1))
                second += 1
                if state.measuredStart.withLock({ $0 }) == nil, clock.now >= measureFrom {
                    state.startMeasuring(recorder, at: clock.now, watching: plan.watchPIDs)
                }
                let interval = recorder.takeInterval()
                if plan.liveLine && !state.done.load(ordering: .relaxed) {
                    let phase = clock.now < measureFrom ? " (warm-up)" : ""
                    print("[\(Format.pad("\(second)", 4)) s] \(Format.pad("\(interval.operations)", 8)) ops/s  p50 \(Format.latency(interval.p50))"
                          + "  p99 \(Format.latency(interval.p99))  errors \(interval.errors)\(phase)")
                }
            }
        }

        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<plan.concurrency {
                group.addTask {
                    var random = BenchRandom(seed: plan.seed ^ (UInt64(worker + 1) &* 0xD1B5_4A32_D192_ED03))
                    let observer = RetryObserver()
                    await FlotillaClient.$retryObserver.withValue(observer) {
                        while true {
                            let index = state.issued.add(1, ordering: .relaxed).newValue - 1
                            if let count = plan.operationCount, index >= count { return }
                            var due = clock.now
                            if let rate = plan.rateOpsPerSecond {
                                due = start + .nanoseconds(Int64(Double(index) / rate * 1e9))
                                if due > clock.now { try? await Task.sleep(until: due, clock: clock) }
                            }
                            if let deadline, clock.now >= deadline { return }
                            let kind = plan.mix.operation(for: random.unit())
                            var failure: String?
                            var conflict = false
                            do {
                                conflict = try await perform(kind, random: &random, chooser: chooser, inserted: state.inserted)
                            } catch {
                                failure = "\(error)"
                            }
                            let latency = clock.now - due
                            let micros = UInt64(max(0, latency.components.seconds * 1_000_000 + latency.components.attoseconds / 1_000_000_000_000))
                            recorder.record(kind, latencyMicroseconds: micros, error: failure, retries: observer.take(), conflict: conflict)
                        }
                    }
                }
            }
        }
        let cpuAtEnd = CPUSample.take(watching: plan.watchPIDs)
        state.done.store(true, ordering: .relaxed)
        reporter.cancel()
        let began = state.measuredStart.withLock { $0 } ?? clock.now
        return RunMeasurement(duration: clock.now - began, cpuAtStart: state.cpuAtStart.withLock { $0 } ?? cpuAtEnd, cpuAtEnd: cpuAtEnd)
    }

    /// Performs one operation; returns whether a compare-and-swap found another value.
    private func perform(_ kind: OperationKind, random: inout BenchRandom, chooser: KeyChooser, inserted: InsertCounter) async throws -> Bool {
        switch kind {
        case .read:
            let key = plan.keySpace.key(chooser.choose(&random, inserted: inserted.value.load(ordering: .relaxed)))
            _ = try await target.read(key)
        case .update:
            let key = plan.keySpace.key(chooser.choose(&random, inserted: inserted.value.load(ordering: .relaxed)))
            try await target.write(key, Self.value(plan.valueSizeBytes, &random))
        case .insert:
            let number = inserted.value.add(1, ordering: .relaxed).newValue - 1
            try await target.write(plan.keySpace.key(number), Self.value(plan.valueSizeBytes, &random))
        case .scan:
            let key = plan.keySpace.key(chooser.choose(&random, inserted: inserted.value.load(ordering: .relaxed)))
            let length = 1 + Int(random.next() % UInt64(max(1, plan.mix.maxScanLength)))
            _ = try await target.scan(from: key, count: length)
        case .readModifyWrite:
            let key = plan.keySpace.key(chooser.choose(&random, inserted: inserted.value.load(ordering: .relaxed)))
            let current = try await target.read(key)
            let swapped = try await target.compareAndSwap(key, expected: current, newValue: Self.value(plan.valueSizeBytes, &random))
            return !swapped
        }
        return false
    }

    /// A printable value of `size` bytes.
    static func value(_ size: Int, _ random: inout BenchRandom) -> Data {
        var bytes = [UInt8](repeating: 0, count: size)
        var bits = random.next()
        for position in 0..<size {
            if position % 8 == 0 { bits = random.next() }
            bytes[position] = 0x61 + UInt8(bits & 0xF)
            bits >>= 8
        }
        return Data(bytes)
    }
}

/// Records inserted so far (loaded ones included).
final class InsertCounter: Sendable {
    let value: Atomic<UInt64>
    init(_ initial: UInt64) { value = Atomic(initial) }
}

/// Shared state of one run's workers and reporter.
final class RunState: Sendable {
    let inserted: InsertCounter
    let issued = Atomic<Int>(0)
    let done = Atomic<Bool>(false)
    let measuredStart = Mutex<ContinuousClock.Instant?>(nil)
    let cpuAtStart = Mutex<CPUSample?>(nil)

    init(recordCount: UInt64) { inserted = InsertCounter(recordCount) }

    func startMeasuring(_ recorder: Recorder, at now: ContinuousClock.Instant, watching pids: [Int32]) {
        cpuAtStart.withLock { $0 = CPUSample.take(watching: pids) }
        recorder.startRecording()
        measuredStart.withLock { $0 = now }
    }
}
