import Foundation
import Histogram
import Synchronization

/// Latencies (µs, HdrHistogram, 3 significant digits, up to 10 minutes) and outcome counts of
/// one operation type.
struct OperationStats: Sendable {
    var latency = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    var errors = 0
    var retries = 0
    /// Compare-and-swap attempts that found another value (not errors).
    var conflicts = 0
    var lastError: String?
}

/// Collects every operation's latency and outcome from all workers, plus a per-second
/// interval for the live line. Recording is off during the warm-up.
final class Recorder: Sendable {
    private struct State {
        var byKind: [OperationKind: OperationStats] = [:]
        var interval = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .two)
        var intervalErrors = 0
        var recording = false
    }

    private let state = Mutex(State())

    func startRecording() { state.withLock { $0.recording = true } }

    func record(_ kind: OperationKind, latencyMicroseconds: UInt64, error: String?, retries: Int, conflict: Bool = false) {
        state.withLock { state in
            guard state.recording else { return }
            // Mutated in place: a copy of the stats would copy the histogram's counts on
            // every operation (copy-on-write of a shared buffer).
            Self.update(&state.byKind[kind, default: OperationStats()], latencyMicroseconds: latencyMicroseconds,
                        error: error, retries: retries, conflict: conflict)
            if error != nil {
                state.intervalErrors += 1
            } else {
                _ = state.interval.record(max(1, latencyMicroseconds))
            }
        }
    }

    private static func update(_ stats: inout OperationStats, latencyMicroseconds: UInt64, error: String?, retries: Int, conflict: Bool) {
        if let error {
            stats.errors += 1
            stats.lastError = error
        } else {
            _ = stats.latency.record(max(1, latencyMicroseconds))
        }
        stats.retries += retries
        if conflict { stats.conflicts += 1 }
    }

    /// The last interval's completed operations, errors, p50 and p99 (µs); starts a new one.
    func takeInterval() -> (operations: UInt64, errors: Int, p50: UInt64, p99: UInt64) {
        state.withLock { state in
            let result = (state.interval.totalCount, state.intervalErrors, state.interval.valueAtPercentile(50), state.interval.valueAtPercentile(99))
            state.interval.reset()
            state.intervalErrors = 0
            return result
        }
    }

    var snapshot: [OperationKind: OperationStats] { state.withLock { $0.byKind } }
}

/// One operation type's figures in a result.
struct OperationResult: Codable, Sendable {
    var count: UInt64
    var errors: Int
    var retries: Int
    var conflicts: Int
    var throughputOpsPerSecond: Double
    var p50Microseconds: UInt64
    var p90Microseconds: UInt64
    var p99Microseconds: UInt64
    var p999Microseconds: UInt64
    var maxMicroseconds: UInt64
    var meanMicroseconds: Double
    var lastError: String?

    init(_ stats: OperationStats, seconds: Double) {
        count = stats.latency.totalCount
        errors = stats.errors
        retries = stats.retries
        conflicts = stats.conflicts
        throughputOpsPerSecond = seconds > 0 ? Double(count) / seconds : 0
        p50Microseconds = stats.latency.valueAtPercentile(50)
        p90Microseconds = stats.latency.valueAtPercentile(90)
        p99Microseconds = stats.latency.valueAtPercentile(99)
        p999Microseconds = stats.latency.valueAtPercentile(99.9)
        maxMicroseconds = stats.latency.max
        meanMicroseconds = stats.latency.mean
        lastError = stats.lastError
    }
}

/// What a store loop did during the run (Flotilla targets): from `StoreAdmin.Status` deltas.
struct StoreActivity: Codable, Sendable {
    var storeID: UInt64
    var logSyncsPerSecond: Double
    /// Regions whose log writes shared one synced batch, on average.
    var regionsPerLogBatch: Double
    var entriesAppliedPerSecond: Double
    var leaders: UInt64
}

/// The machine a result was measured on.
struct MachineInfo: Codable, Sendable {
    var hostname: String
    var cores: Int
    var memoryBytes: UInt64
    var operatingSystem: String

    static var current: MachineInfo {
        MachineInfo(hostname: ProcessInfo.processInfo.hostName, cores: ProcessInfo.processInfo.activeProcessorCount,
                    memoryBytes: ProcessInfo.processInfo.physicalMemory,
                    operatingSystem: ProcessInfo.processInfo.operatingSystemVersionString)
    }
}

/// Everything a run measured, with the exact parameters: what `--json` writes.
struct BenchResult: Codable, Sendable {
    var tool = "flotilla-bench"
    var target: String
    var label: String?
    var commandLine: [String]
    var parameters: RunParameters
    var machine: MachineInfo
    var startedAt: Date
    var measuredSeconds: Double
    var throughputOpsPerSecond: Double
    var operations: [String: OperationResult]
    var totalErrors: Int
    var totalRetries: Int
    var stores: [StoreActivity]?
    /// Connections the client opened during the run (etcd's driver; nil when not counted).
    /// More than it starts with means connections were lost and reopened (churn).
    var connectionsOpened: Int?
    /// Connections the client keeps when none fails (nil when not counted).
    var connectionSlots: Int?
    /// CPU per operation of the client and of each watched server process (nil in results
    /// written before it was measured).
    var cpu: CPUFigures?

    /// "2 retries, 3 connections reopened" when the client met failures; nil when it met none.
    var churn: String? {
        var parts: [String] = []
        if totalRetries > 0 { parts.append("\(totalRetries) retries") }
        if let opened = connectionsOpened, let slots = connectionSlots, opened > slots { parts.append("\(opened - slots) connections reopened") }
        return parts.isEmpty ? nil : parts.joined(separator: ", ")
    }
}

/// The parameters of a run, as recorded in its result.
struct RunParameters: Codable, Sendable {
    var workload: String
    var proportions: [String: Double]
    var distribution: KeyDistribution
    var recordCount: UInt64
    var valueSizeBytes: Int
    var keyPrefix: String
    var concurrency: Int
    var durationSeconds: Double?
    var operationCount: Int?
    var warmupSeconds: Double
    var rateOpsPerSecond: Double?
    var seed: UInt64
    var maxScanLength: Int
}

enum Format {
    /// A latency in µs as "0.84 ms" / "12.3 ms" / "1.20 s".
    static func latency(_ microseconds: UInt64) -> String {
        let ms = Double(microseconds) / 1_000
        if ms < 10 { return String(format: "%.2f ms", ms) }
        if ms < 1_000 { return String(format: "%.1f ms", ms) }
        return String(format: "%.2f s", ms / 1_000)
    }

    static func rate(_ value: Double) -> String { String(format: "%.0f", value) }

    static func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
        let padding = String(repeating: " ", count: max(0, width - text.count))
        return left ? text + padding : padding + text
    }

    /// The final table of one result.
    static func table(_ result: BenchResult) -> String {
        var lines: [String] = []
        lines.append("\(result.target)\(result.label.map { " (\($0))" } ?? ""): workload \(result.parameters.workload), "
                     + "\(result.parameters.concurrency) clients, \(String(format: "%.1f", result.measuredSeconds)) s measured, "
                     + "\(rate(result.throughputOpsPerSecond)) ops/s")
        let header = [pad("operation", 18, left: true), pad("count", 9), pad("ops/s", 9), pad("p50", 10), pad("p90", 10),
                      pad("p99", 10), pad("p99.9", 10), pad("max", 10), pad("errors", 7), pad("retries", 8), pad("conflicts", 10)]
        lines.append(header.joined(separator: " "))
        for kind in OperationKind.allCases {
            guard let op = result.operations[kind.rawValue] else { continue }
            lines.append([pad(kind.rawValue, 18, left: true), pad("\(op.count)", 9), pad(rate(op.throughputOpsPerSecond), 9),
                          pad(latency(op.p50Microseconds), 10), pad(latency(op.p90Microseconds), 10), pad(latency(op.p99Microseconds), 10),
                          pad(latency(op.p999Microseconds), 10), pad(latency(op.maxMicroseconds), 10), pad("\(op.errors)", 7),
                          pad("\(op.retries)", 8), pad("\(op.conflicts)", 10)].joined(separator: " "))
            if let error = op.lastError { lines.append("  last \(kind.rawValue) error: \(error)") }
        }
        if let connections = result.connectionsOpened {
            lines.append("connections opened: \(connections)\(result.connectionSlots.map { " (\($0) kept)" } ?? ""), retries: \(result.totalRetries)")
        }
        if let cpu = result.cpu { lines.append("CPU per operation: \(cpu.summary)") }
        for store in result.stores ?? [] {
            lines.append("store \(store.storeID): \(String(format: "%.0f", store.logSyncsPerSecond)) syncs/s, "
                         + "\(String(format: "%.1f", store.regionsPerLogBatch)) regions per log batch, "
                         + "\(String(format: "%.0f", store.entriesAppliedPerSecond)) entries applied/s, \(store.leaders) leaders")
        }
        return lines.joined(separator: "\n")
    }
}
