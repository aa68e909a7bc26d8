import Foundation

/// CPU time (user + system) of processes, from Linux's `/proc/<pid>/stat`: the client's own
/// and the servers' a run watches (`--watch-pids`), so every figure can be set beside the CPU
/// each side spent per operation. On this 2-core machine the client and the servers share the
/// cores, so CPU per operation explains much of the spread between runs.
enum ProcessCPU {
    /// Processes one run may watch.
    static let watchedProcessesMax = 64

    /// Seconds of CPU the process has used, or nil when it cannot be read (gone, not Linux).
    /// `pid` nil: this process.
    static func seconds(pid: Int32?) -> Double? {
        let path = pid.map { "/proc/\($0)/stat" } ?? "/proc/self/stat"
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        // One line, well under 1 KiB; bounded anyway.
        guard let data = try? handle.read(upToCount: 4_096), let line = String(data: data, encoding: .utf8) else { return nil }
        return secondsFromStatLine(line)
    }

    /// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds. The command
    /// name (field 2) is in parentheses and may hold spaces and ')': fields are counted from
    /// the last ')'.
    static func secondsFromStatLine(_ line: String) -> Double? {
        guard let close = line.lastIndex(of: ")") else { return nil }
        let fields = line[line.index(after: close)...].split(separator: " ")
        // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
        guard fields.count > 12, let user = UInt64(fields[11]), let system = UInt64(fields[12]) else { return nil }
        let ticksPerSecond = Double(max(1, sysconf(Int32(_SC_CLK_TCK))))
        return Double(user + system) / ticksPerSecond
    }

    /// The process's command name (`/proc/<pid>/comm`), or "?".
    static func name(pid: Int32) -> String {
        guard let handle = FileHandle(forReadingAtPath: "/proc/\(pid)/comm") else { return "?" }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: 64), let name = String(data: data, encoding: .utf8) else { return "?" }
        return name.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Parses `--watch-pids`: comma-separated positive process ids, at most `watchedProcessesMax`.
    static func parsePIDs(_ text: String) throws(CPUWatchError) -> [Int32] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count <= watchedProcessesMax else { throw .tooMany(parts.count) }
        return try parts.map { part throws(CPUWatchError) in
            guard let pid = Int32(part.trimmingCharacters(in: .whitespaces)), pid > 0 else { throw .notAPID(String(part)) }
            return pid
        }
    }
}

enum CPUWatchError: Error, CustomStringConvertible {
    case tooMany(Int)
    case notAPID(String)

    var description: String {
        switch self {
        case .tooMany(let count): "--watch-pids names \(count) processes; at most \(ProcessCPU.watchedProcessesMax)"
        case .notAPID(let text): "--watch-pids: '\(text)' is not a positive process id"
        }
    }
}

/// CPU used by the client and each watched process between two samples.
struct CPUSample: Sendable {
    var client: Double?
    var watched: [Int32: Double]

    static func take(watching pids: [Int32]) -> CPUSample {
        var watched: [Int32: Double] = [:]
        for pid in pids { watched[pid] = ProcessCPU.seconds(pid: pid) }
        return CPUSample(client: ProcessCPU.seconds(pid: nil), watched: watched)
    }
}

/// CPU per operation over a run's measured window, as recorded in its result.
struct CPUFigures: Codable, Sendable {
    struct Process: Codable, Sendable {
        var pid: Int32
        var name: String
        var microsecondsPerOperation: Double
    }

    var clientMicrosecondsPerOperation: Double?
    /// The watched processes (servers), in the order given.
    var processes: [Process]

    /// The watched processes together.
    var serversMicrosecondsPerOperation: Double? { Self.total(processes) }

    /// The CPU per operation of `processes` together; nil when none was watched.
    static func total(_ processes: [Process]) -> Double? {
        processes.isEmpty ? nil : processes.reduce(0) { $0 + $1.microsecondsPerOperation }
    }

    init?(from start: CPUSample, to end: CPUSample, pids: [Int32], operations: Int) {
        guard operations > 0 else { return nil }
        let perOperation = { (seconds: Double) in seconds * 1e6 / Double(operations) }
        if let before = start.client, let after = end.client { clientMicrosecondsPerOperation = perOperation(after - before) }
        processes = pids.compactMap { pid in
            guard let before = start.watched[pid], let after = end.watched[pid] else { return nil }
            return Process(pid: pid, name: ProcessCPU.name(pid: pid), microsecondsPerOperation: perOperation(after - before))
        }
    }

    /// "client 21 µs, servers 140 µs (etcd 52, etcd 45, etcd 43)".
    var summary: String {
        var parts: [String] = []
        if let client = clientMicrosecondsPerOperation { parts.append("client \(String(format: "%.0f", client)) µs") }
        if let servers = serversMicrosecondsPerOperation {
            let each = processes.map { "\($0.name) \(String(format: "%.0f", $0.microsecondsPerOperation))" }.joined(separator: ", ")
            parts.append("servers \(String(format: "%.0f", servers)) µs (\(each))")
        }
        return parts.joined(separator: ", ")
    }
}
