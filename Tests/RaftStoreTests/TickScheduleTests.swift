import RaftStore
import Testing

/// The store loop ticks for real time, missed intervals included: leases count ticks.
@Suite("Store loop tick schedule")
struct TickScheduleTests {
    let start = Duration.seconds(7)
    let interval = Duration.milliseconds(100)

    @Test func oneTickPerIntervalOnTime() {
        var schedule = TickSchedule(interval: interval, catchUpTicksMax: 21, startingAt: start)
        #expect(schedule.ticksDue(at: start + .milliseconds(99)) == 0)
        #expect(schedule.ticksDue(at: start + .milliseconds(100)) == 1)
        #expect(schedule.ticksDue(at: start + .milliseconds(150)) == 0)
        #expect(schedule.ticksDue(at: start + .milliseconds(210)) == 1)
        #expect(schedule.nextTickAt == start + .milliseconds(300), "the rhythm holds: no drift from late wake-ups")
    }

    /// A loop that stalled (a paused process, a slow fsync) runs every tick it missed before it
    /// takes a message or request; a leader's lease then ends when real time says so.
    @Test func missedIntervalsAreCaughtUp() {
        var schedule = TickSchedule(interval: interval, catchUpTicksMax: 21, startingAt: start)
        #expect(schedule.ticksDue(at: start + .milliseconds(1_250)) == 12, "a 1.25 s stall owes 12 ticks")
        #expect(schedule.nextTickAt == start + .milliseconds(1_300))
        #expect(schedule.ticksDropped == 0)
    }

    /// Past the bound (at least an election timeout, so every lease that real time ended does
    /// end), the rest is dropped and counted, and the rhythm restarts from now.
    @Test func catchUpIsBoundedAndCounted() {
        var schedule = TickSchedule(interval: interval, catchUpTicksMax: 21, startingAt: start)
        let later = start + .seconds(3_600)
        #expect(schedule.ticksDue(at: later) == 21)
        #expect(schedule.ticksDropped == 36_000 - 21)
        #expect(schedule.nextTickAt == later + interval)
        // No overflow for any pause length.
        #expect(TickSchedule.wholeIntervals(.seconds(Int64.max), of: .nanoseconds(1)) == .max)
        #expect(TickSchedule.wholeIntervals(.seconds(1), of: .milliseconds(300)) == 3)
    }
}
