import ArgumentParser
import FlotillaClient
import FlotillaProto
import Foundation
import Histogram
import Synchronization

/// Splits under a write load on a running cluster (`--pd`): how long from a split request until
/// both halves serve (the split applied on the leader, and a write to each half acknowledged),
/// and the writers' p99 during a burst of splits against an equally long window without.
struct SplitBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "split",
        abstract: "Measure split latency and write latency during splits, under a write load.")

    @Option(name: .customLong("pd"), help: "PD endpoints (default: FLOTILLA_PD).")
    var pd: String?

    @Option(help: "Splits to make (one after another, at random keys).")
    var splits = 50

    @Option(help: "Concurrent writers.")
    var concurrency = 16

    @Option(name: .customLong("baseline-seconds"), help: "Seconds of writes without splits, measured first.")
    var baselineSeconds = 10

    func validate() throws {
        guard (1...1_000).contains(splits) else { throw ValidationError("--splits must be 1 to 1000") }
        guard (1...1_024).contains(concurrency) else { throw ValidationError("--concurrency must be 1 to 1024") }
        guard (1...3_600).contains(baselineSeconds) else { throw ValidationError("--baseline-seconds must be 1 to 3600") }
    }

    /// Write latencies of one window (µs).
    final class Window: Sendable {
        let histogram = Mutex(Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three))
        let errors = Atomic<Int>(0)
        func record(_ microseconds: UInt64) { histogram.withLock { _ = $0.record(microseconds) } }
        var summary: String {
            histogram.withLock { h in
                String(format: "%d writes, p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms, %d errors", Int(h.totalCount),
                       Double(h.valueAtPercentile(50)) / 1000, Double(h.valueAtPercentile(99)) / 1000,
                       Double(h.valueAtPercentile(99.9)) / 1000, Double(h.max) / 1000, errors.load(ordering: .relaxed))
            }
        }
    }

    /// What the writers and the burst share: the window writes are recorded in, and the stop.
    final class Shared: Sendable {
        let current = Mutex<Window?>(nil)
        let stop = Atomic<Bool>(false)
    }

    static func key(_ value: UInt64) -> Data { Data(String(format: "s%012llu", value).utf8) }

    /// `concurrency` writers putting `value` at random keys (`key` of a random number) until
    /// `shared.stop`, each write's latency recorded in the current window.
    static func startWriters(client: FlotillaClient, concurrency: Int, shared: Shared, value: Data,
                             key: @escaping @Sendable (UInt64) -> Data) -> Task<Void, Never> {
        Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<concurrency {
                    group.addTask {
                        var random = SystemRandomNumberGenerator()
                        while !shared.stop.load(ordering: .relaxed) {
                            let target = key(UInt64.random(in: 0..<1_000_000_000_000, using: &random))
                            let started = ContinuousClock.now
                            let window = shared.current.withLock { $0 }
                            do {
                                try await client.put(target, value)
                                let elapsed = (ContinuousClock.now - started).components
                                window?.record(UInt64(elapsed.seconds) * 1_000_000 + UInt64(elapsed.attoseconds / 1_000_000_000_000))
                            } catch {
                                window?.errors.add(1, ordering: .relaxed)
                            }
                        }
                    }
                }
            }
        }
    }

    func run() async throws {
        guard let endpoints = (pd ?? ProcessInfo.processInfo.environment["FLOTILLA_PD"])?.split(separator: ",").map(String.init) else {
            throw ValidationError("no PD endpoints: pass --pd or set FLOTILLA_PD")
        }
        let client = try FlotillaClient(pd: endpoints, requestTimeout: .seconds(20))
        let connections = Task { try await client.run() }
        defer {
            client.close()
            connections.cancel()
        }
        let shared = Shared()
        let value = Data(repeating: UInt8(ascii: "v"), count: 100)
        let writers = Self.startWriters(client: client, concurrency: concurrency, shared: shared, value: value, key: Self.key)
        // Warm up, then a window without splits.
        try await Task.sleep(for: .seconds(2))
        let baseline = Window()
        shared.current.withLock { $0 = baseline }
        try await Task.sleep(for: .seconds(baselineSeconds))
        // The burst: splits one after another at random keys, each timed until both halves serve.
        let during = Window()
        shared.current.withLock { $0 = during }
        let burstStarted = ContinuousClock.now
        var splitLatency = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var applyLatency = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var failures: [String] = []
        func microseconds(_ duration: Duration) -> UInt64 {
            UInt64(duration.components.seconds) * 1_000_000 + UInt64(duration.components.attoseconds / 1_000_000_000_000)
        }
        for _ in 0..<splits {
            let at = UInt64.random(in: 1..<1_000_000_000_000)
            let splitKey = Self.key(at)
            let started = ContinuousClock.now
            do {
                let regions = try await client.split(at: [splitKey])
                _ = applyLatency.record(microseconds(ContinuousClock.now - started))
                // Serving: a write acknowledged on each side of the split key.
                _ = regions
                try await client.put(Self.key(at - 1), value)
                try await client.put(splitKey, value)
                _ = splitLatency.record(microseconds(ContinuousClock.now - started))
            } catch {
                failures.append("\(error)")
            }
        }
        let burst = ContinuousClock.now - burstStarted
        shared.current.withLock { $0 = nil }
        shared.stop.store(true, ordering: .relaxed)
        await writers.value
        func ms(_ value: UInt64) -> Double { Double(value) / 1000 }
        print(String(format: "split applied on the leader: p50 %.2f ms, p99 %.2f ms, max %.2f ms (%d splits)",
                     ms(applyLatency.valueAtPercentile(50)), ms(applyLatency.valueAtPercentile(99)), ms(applyLatency.max), Int(applyLatency.totalCount)))
        print(String(format: "split request to both halves serving: p50 %.2f ms, p99 %.2f ms, max %.2f ms",
                     ms(splitLatency.valueAtPercentile(50)), ms(splitLatency.valueAtPercentile(99)), ms(splitLatency.max)))
        print("writes without splits (\(baselineSeconds) s): \(baseline.summary)")
        print("writes during \(splits) splits (\(burst)): \(during.summary)")
        if !failures.isEmpty { print("\(failures.count) splits failed, first: \(failures[0])") }
    }
}
