/// Settings of one Raft node. Every limit is explicit.
public struct RaftConfig: Sendable {
    /// This node's id; never `noNode`.
    public var id: NodeID
    /// Followers start an election after a random timeout in
    /// `[electionTimeoutTicks, 2 × electionTimeoutTicks)` without hearing from a leader.
    public var electionTimeoutTicks = 10
    /// The leader sends heartbeats every this many ticks.
    public var heartbeatIntervalTicks = 1
    /// Run a pre-vote round before a real election, so a partitioned node cannot disrupt.
    public var preVote = true
    /// The leader steps down when it has not heard from a quorum for an election timeout,
    /// and followers ignore vote requests within an election timeout of hearing from a leader.
    public var checkQuorum = true
    /// Serve reads from the leader's lease (needs `checkQuorum`) instead of a heartbeat round.
    public var leaseReads = true
    /// Bound on how far two nodes' clocks part over an election timeout, taken off the lease
    /// (which also loses one tick to the phase between nodes' timers: it lasts
    /// `electionTimeoutTicks - leaseClockDriftTicks - 1` ticks after the acknowledged send).
    public var leaseClockDriftTicks = 1
    /// Maximum bytes of entries in one append message (at least one entry is always sent).
    public var maxAppendBytes = 1 << 20
    /// Maximum appends in flight to one follower in the replicate state.
    public var maxInflightMessages = 256
    /// Maximum bytes of appends in flight to one follower.
    public var maxInflightBytes = 16 << 20
    /// Proposals are refused once this many bytes are proposed and not yet committed.
    public var maxUncommittedBytes = 64 << 20
    /// Maximum bytes of committed entries handed out in one `Ready`.
    public var maxApplyBytesPerReady = 16 << 20
    /// When the leader's commit index moves, tell every follower at once (an empty append if
    /// there is nothing new to send). false: the new commit index travels with the next append
    /// or heartbeat, which under load halves the messages per entry (followers then apply a
    /// little later; the leader, and so clients, are not delayed).
    public var broadcastCommit = true
    /// Seed of the election timeout randomization (mixed with `id`).
    public var randomSeed: UInt64 = 0
    /// On restart: the last index the application had applied (and whose configuration the
    /// storage's `initialState().confState` is). Committed entries are handed out after it.
    /// 0: everything after the storage's first index is handed out again.
    public var appliedIndex: UInt64 = 0

    public init(id: NodeID) {
        precondition(id != noNode, "node id 0 is reserved")
        self.id = id
    }
}

/// SplitMix64: a small, fast, seeded generator so elections replay exactly from a seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
