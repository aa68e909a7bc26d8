import CLinuxEvents
import FlotillaCluster
import Foundation

/// Wakes a store thread waiting in `RaftSocketTransport.wait`: an eventfd that any thread may
/// signal. Signals coalesce: many before the store thread looks cost it one wake-up.
final class StoreThreadWakeup: Sendable {
    package let fd: Int32

    package init() throws(ConfigError) {
        fd = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        guard fd >= 0 else { throw ConfigError("eventfd() failed: \(String(cString: strerror(errno)))") }
    }

    package func wake() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(fd, $0.baseAddress, 8) }
    }

    /// Resets the eventfd after a wake-up (store thread).
    package func reset() {
        var count: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &count) { read(fd, $0.baseAddress, 8) }
    }

    deinit { close(fd) }
}
