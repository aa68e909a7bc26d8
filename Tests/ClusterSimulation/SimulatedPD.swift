import FlotillaProto
import Foundation
import PlacementDriver

/// PD in the simulation: the real `PlacementDriver` state machine, its commands applied in
/// order and its records kept as PD's Raft group keeps them. A leader change drops the
/// leader's memory (routes, store liveness, id window, running operators) and elects a new
/// leader from the records alone after an outage, as a PD failover does. (PD's own log
/// replication is the stores' `StoreCore` and is not simulated again here.)
struct SimulatedPD {
    private(set) var pd: PlacementDriver
    private(set) var records: [Data: Data] = [:]
    private(set) var term: UInt64 = 1
    let timings: PDTimings
    /// PD answers nothing before this tick (an election in progress).
    var downUntil: UInt64 = 0

    init(timings: PDTimings) {
        self.timings = timings
        pd = PlacementDriver(timings: timings)
    }

    func isUp(at tick: UInt64) -> Bool { tick >= downUntil && pd.isLeader }

    @discardableResult
    mutating func apply(_ command: Flotilla_V1_PDCommand) -> Result<Void, PDFailure> {
        let (outcome, writes) = pd.apply(command)
        for write in writes { write.apply(to: &records) }
        return outcome
    }

    /// Ids as PD's service hands them out, reserving a batch through the log when needed.
    mutating func allocate(_ count: UInt32) -> UInt64? {
        for _ in 0..<3 {
            switch try? pd.allocateIDs(count: count) {
            case .ids(let first, _)?: return first
            case .reserve(let command)?:
                guard case .success = apply(command) else { return nil }
            case nil: return nil
            }
        }
        return nil
    }

    mutating func becomeLeader(nowMs: UInt64) {
        pd.becomeLeader(nowMs: nowMs, term: term)
    }

    /// The leader fails over: a new one loads the records and leads from `downUntil`.
    mutating func changeLeader(nowMs: UInt64, downUntil: UInt64) throws {
        pd.becomeFollower(nowMs: nowMs)
        var next = PlacementDriver(timings: timings)
        next.restore(try ClusterState.load(records.sorted { $0.key.lexicographicallyPrecedes($1.key) }.map { (key: $0.key, value: $0.value) }))
        term += 1
        pd = next
        self.downUntil = downUntil
    }

    /// Runs `body` on the leader's state.
    mutating func withLeader<T>(_ body: (inout PlacementDriver) throws -> T) rethrows -> T {
        try body(&pd)
    }
}
