import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Refuses client writes while the store's data filesystem has less free space than a
/// reserve (TiKV's disk-full protection): a store that runs out of space mid-write stops
/// (RocksDB turns read-only), so writes stop first, with a clear error, while reads, Raft
/// traffic and the space kept in reserve let the replicas here keep up. Writes resume by
/// themselves once space returns. The free space is read (statvfs) at most every
/// `refreshInterval`.
public final class DiskSpaceGuard: Sendable {
    public let path: String
    public let reserveBytes: UInt64
    private let refreshInterval: Duration
    private let measure: @Sendable (String) -> UInt64?
    private let state = Mutex<(checkedAt: ContinuousClock.Instant?, availableBytes: UInt64?)>((nil, nil))

    /// `reserveBytes` 0 turns the guard off.
    public init(path: String, reserveBytes: UInt64, refreshInterval: Duration = .milliseconds(500),
                measure: @escaping @Sendable (String) -> UInt64? = DiskSpaceGuard.availableBytes) {
        self.path = path
        self.reserveBytes = reserveBytes
        self.refreshInterval = refreshInterval
        self.measure = measure
    }

    /// Bytes an unprivileged writer may still use on the filesystem holding `path`.
    public static func availableBytes(_ path: String) -> UInt64? {
        var stats = statvfs()
        guard statvfs(path, &stats) == 0 else { return nil }
        let (product, overflow) = UInt64(stats.f_bavail).multipliedReportingOverflow(by: UInt64(stats.f_frsize))
        return overflow ? .max : product
    }

    /// The free space as last measured (refreshed when older than the interval).
    public func availableBytes(now: ContinuousClock.Instant = .now) -> UInt64? {
        let stale = state.withLock { state in state.checkedAt.map { now - $0 >= refreshInterval } ?? true }
        guard stale else { return state.withLock { $0.availableBytes } }
        let measured = measure(path)
        state.withLock { $0 = (now, measured) }
        return measured
    }

    /// Why a write must be refused now, or nil.
    public func refusal(now: ContinuousClock.Instant = .now) -> String? {
        guard reserveBytes > 0, let available = availableBytes(now: now), available < reserveBytes else { return nil }
        return "disk full: \(Self.mebibytes(available)) MiB free under \(path), below the \(Self.mebibytes(reserveBytes)) MiB reserve "
            + "(--disk-reserve-mb); writes resume once space is freed"
    }

    private static func mebibytes(_ bytes: UInt64) -> String { String(format: "%.1f", Double(bytes) / 1_048_576) }
}
