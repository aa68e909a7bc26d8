import Foundation

/// The seam between a region's Raft machinery and what its committed commands mean. The KV
/// commands (puts, deletes, compare-and-swap, with client sessions) are built in; a store
/// given a `RegionStateMachine` also applies `state_machine_command`s through it: PD's
/// metadata runs this way, on the same log storage, turn, snapshots and log GC as the
/// stores' regions.
///
/// Called on the store thread only. `apply` must be deterministic: the same commands in the
/// same order give the same replies and writes on every replica.
public protocol RegionStateMachine: AnyObject {
    /// Applies one committed command of region `regionID` at log index `index`. The writes
    /// go into the region's atomic apply batch (the default column family; keys inside the
    /// region's range), with the applied index. Returns the reply for the proposer.
    func apply(command: Data, regionID: UInt64, index: UInt64) -> (reply: Data, writes: [StateMachineWrite])

    /// The region's data is now exactly `records` (in key order): at the store's start, and
    /// after a snapshot replaced it. The machine rebuilds its memory from them.
    func restore(regionID: UInt64, records: [(key: Data, value: Data)]) throws
}

/// One record a state machine's apply writes.
public enum StateMachineWrite: Equatable, Sendable {
    case put(key: Data, value: Data)
    case delete(key: Data)
}
