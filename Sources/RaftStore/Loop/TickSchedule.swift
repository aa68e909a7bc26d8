/// The store loop's clock: how many Raft ticks are due at an instant. Every interval that
/// passed counts — also those the loop missed while the process was paused or a turn stalled
/// on a slow disk — because leases count ticks: a leader that resumed with its ticks behind
/// would serve reads from a lease that ran out in real time (the Raft simulator shows it).
/// Catching up is bounded by `catchUpTicksMax` (at least an election timeout, so every lease
/// and check-quorum round that real time ended does end); ticks beyond it are dropped and
/// counted. A pure value fed the loop's time: the time since the loop started, from a real clock
/// in production and from the simulated one in the cluster simulation.
public struct TickSchedule: Sendable {
    public let interval: Duration
    public let catchUpTicksMax: Int
    /// When the next tick is due, in loop time.
    public private(set) var nextTickAt: Duration
    /// Ticks that were due and not run because more than `catchUpTicksMax` were due at once.
    public private(set) var ticksDropped: UInt64 = 0

    public init(interval: Duration, catchUpTicksMax: Int, startingAt start: Duration = .zero) {
        precondition(interval > .zero, "a tick interval must be positive")
        precondition(catchUpTicksMax >= 1, "at least one tick runs when one is due")
        self.interval = interval
        self.catchUpTicksMax = catchUpTicksMax
        nextTickAt = start + interval
    }

    /// The ticks to run now: one for every interval that ended since the last call (at most
    /// `catchUpTicksMax`); the schedule moves past them.
    public mutating func ticksDue(at now: Duration) -> Int {
        guard now >= nextTickAt else { return 0 }
        let late = now - nextTickAt
        // Whole intervals past the due tick, without overflow for any pause length.
        let intervalsLate = Self.wholeIntervals(late, of: interval)
        let due = intervalsLate >= UInt64(catchUpTicksMax) ? UInt64(catchUpTicksMax) : intervalsLate + 1
        if intervalsLate + 1 > due {
            ticksDropped &+= intervalsLate + 1 - due
            // Resume the rhythm from now rather than owing ticks forever.
            nextTickAt = now + interval
        } else {
            nextTickAt = nextTickAt + interval * Int(due)
        }
        return Int(due)
    }

    /// How many whole `interval`s fit in `span` (both positive), saturating.
    public static func wholeIntervals(_ span: Duration, of interval: Duration) -> UInt64 {
        let spanAttoseconds = Self.attoseconds(span)
        let intervalAttoseconds = Self.attoseconds(interval)
        guard intervalAttoseconds > 0, spanAttoseconds > 0 else { return 0 }
        let (quotient, _) = spanAttoseconds.quotientAndRemainder(dividingBy: intervalAttoseconds)
        return quotient > Int128(UInt64.max) ? .max : UInt64(quotient)
    }

    private static func attoseconds(_ duration: Duration) -> Int128 {
        let (seconds, attoseconds) = duration.components
        return Int128(seconds) * 1_000_000_000_000_000_000 + Int128(attoseconds)
    }
}
