import FlotillaCluster
import FlotillaNode
import RaftStore

/// One numeric setting of a store process, described once: its flag, its key in the TOML
/// config file, its bounds, its default (read from `ServerSettings`/`StoreSettings`, never
/// written twice) and where it lands. `flotilla-server`'s flags and help, the config file's
/// reader and the checks all come from `StoreTunable.all`.
///
/// Guarantees: a value outside `range` is refused with a message naming the flag, the file
/// key and the bounds; nothing out of range reaches `ServerSettings`.
public struct StoreTunable: Sendable {
    /// The flag without dashes, e.g. `log-gc-count-threshold`.
    public let flag: String
    /// The config file's table (`raft-log-gc`, `limits`), nil for the top level.
    public let section: String?
    public let key: String
    public let range: ClosedRange<Int>
    public let summary: String
    /// Read only by a store that joins through PD (a static cluster has no PD to report to).
    public let withPDOnly: Bool
    let read: @Sendable (ServerSettings) -> Int
    let write: @Sendable (inout ServerSettings, Int) -> Void

    /// The default, as `ServerSettings` holds it.
    public var defaultValue: Int { read(ServerSettings.defaults) }

    /// `summary` with the bounds and the default, for `--help`.
    public var help: String {
        let text = withPDOnly ? "With --pd: " + summary.prefix(1).lowercased() + summary.dropFirst() : summary
        return "\(text) (\(range.lowerBound)-\(range.upperBound); default \(defaultValue))."
    }

    /// Where the value is read from in a config file, for messages: `'key' in [section]`.
    public var fileName: String { section.map { "'\(key)' in [\($0)]" } ?? "'\(key)'" }

    /// Refuses a value outside `range`, naming the flag, the file key and the bounds.
    public func check(_ value: Int) throws(ConfigError) {
        guard range.contains(value) else {
            throw ConfigError("--\(flag) (\(fileName) in the config file) must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
        }
    }

    /// Sets `value` in `settings` after checking it is in range.
    public func apply(_ value: Int, to settings: inout ServerSettings) throws(ConfigError) {
        try check(value)
        write(&settings, value)
        precondition(read(settings) == value, "tunable \(flag) did not land where it reads from")
    }

    init(_ flag: String, section: String? = nil, key: String? = nil, _ range: ClosedRange<Int>, withPDOnly: Bool = false,
         _ summary: String, read: @escaping @Sendable (ServerSettings) -> Int, write: @escaping @Sendable (inout ServerSettings, Int) -> Void) {
        precondition(range.contains(read(ServerSettings.defaults)), "the default of \(flag) is outside its range")
        self.flag = flag
        self.section = section
        self.key = key ?? flag
        self.range = range
        self.withPDOnly = withPDOnly
        self.summary = summary
        self.read = read
        self.write = write
    }
}

extension StoreTunable {
    public static let tickIntervalMilliseconds = StoreTunable(
        "tick-interval-ms", 10...10_000, "Raft tick interval in milliseconds",
        read: { Int($0.tickInterval.milliseconds) }, write: { $0.tickInterval = .milliseconds($1) })
    public static let electionTimeoutTicks = StoreTunable(
        "election-timeout-ticks", 3...1_000, "Raft election timeout in ticks",
        read: { $0.electionTimeoutTicks }, write: { $0.electionTimeoutTicks = $1 })
    public static let logGCCountThreshold = StoreTunable(
        "log-gc-count-threshold", section: "raft-log-gc", key: "count-threshold", 1...(1 << 40),
        "Truncate a region's log beyond this many applied entries",
        read: { Int($0.store.logGCCountThreshold) }, write: { $0.store.logGCCountThreshold = UInt64($1) })
    public static let logGCSizeThresholdBytes = StoreTunable(
        "log-gc-size-threshold-bytes", section: "raft-log-gc", key: "size-threshold-bytes", 4_096...(1 << 40),
        "...or beyond this many bytes of entries",
        read: { $0.store.logGCSizeThresholdBytes }, write: { $0.store.logGCSizeThresholdBytes = $1 })
    public static let maxPendingRequests = StoreTunable(
        "max-pending-requests", section: "limits", 1...(1 << 20), "Requests in flight before ServerIsBusy",
        read: { $0.store.maxPendingRequests }, write: { $0.store.maxPendingRequests = $1 })
    public static let snapshotSendsMax = StoreTunable(
        "snapshot-sends-max", section: "limits", 1...64, "Snapshots this store sends at once",
        read: { $0.snapshotSendsMax }, write: { $0.snapshotSendsMax = $1 })
    public static let diskReserveMegabytes = StoreTunable(
        "disk-reserve-mb", section: "limits", 0...(1 << 20),
        "Refuse client writes (\"disk full\") while the data directory's filesystem has less free space than this, in MiB (0: never)",
        read: { Int($0.diskReserveBytes >> 20) }, write: { $0.diskReserveBytes = UInt64($1) << 20 })
    public static let staleReplicaSeconds = StoreTunable(
        "stale-replica-seconds", 1...86_400, withPDOnly: true,
        "Check a replica with PD after this long without a leader, and destroy it if it was removed",
        read: { Int($0.staleReplicaSeconds) }, write: { $0.staleReplicaSeconds = UInt64($1) })
    public static let regionHeartbeatIntervalMilliseconds = StoreTunable(
        "region-heartbeat-interval-ms", 500...600_000, withPDOnly: true,
        "How often each led region reports to PD (the store reports every second, or as often as this if sooner)",
        read: { Int($0.regionHeartbeatInterval.milliseconds) },
        write: { $0.regionHeartbeatInterval = .milliseconds($1); $0.storeHeartbeatInterval = .milliseconds(min(1_000, $1)) })

    public static let regionSleepAfterQuietTicks = StoreTunable(
        "region-sleep-after-quiet-ticks", 0...1_000_000,
        "A region led here sleeps (no ticks, no heartbeats) after this many ticks with nothing to do (0: regions never sleep)",
        read: { $0.store.regionSleepAfterQuietTicks }, write: { $0.store.regionSleepAfterQuietTicks = $1 })
    public static let storeDeadAfterTicks = StoreTunable(
        "store-dead-after-ticks", 4...1_000_000,
        "Presume a store gone after this many ticks without a message from it, and wake the sleeping regions it holds replicas of",
        read: { Int($0.store.storeDeadAfterTicks) }, write: { $0.store.storeDeadAfterTicks = UInt64($1) })

    /// Every tunable, in the order `--help` and the docs list them.
    public static let all: [StoreTunable] = [
        tickIntervalMilliseconds, electionTimeoutTicks, logGCCountThreshold, logGCSizeThresholdBytes,
        maxPendingRequests, snapshotSendsMax, diskReserveMegabytes, staleReplicaSeconds, regionHeartbeatIntervalMilliseconds,
        regionSleepAfterQuietTicks, storeDeadAfterTicks,
    ]
}

extension Duration {
    /// Whole milliseconds (rounded down).
    var milliseconds: Int64 { components.seconds * 1_000 + components.attoseconds / 1_000_000_000_000_000 }
}
