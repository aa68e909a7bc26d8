import Foundation
import Raft

/// How a store runs the Raft group of each region it hosts: the one place these settings are
/// written. `flotilla-server`, PD's own group, the cluster simulation and the bench build
/// every region's `RaftConfig` from it.
public struct RegionRaftPolicy: Sendable {
    /// Ticks without a leader before a follower campaigns (randomized up to twice this).
    public var electionTimeoutTicks = 10
    /// A leader heartbeats every this many ticks (also carrying the commit index).
    public var heartbeatIntervalTicks = 2
    /// Off: a leader's new commit index rides on its next append or heartbeat instead of an
    /// empty append to every follower, which halves the Raft messages per write under load
    /// (followers apply a little later; clients are not delayed).
    public var broadcastCommit = false
    /// Mixed into every peer's randomized election timeout, so two processes started at once
    /// do not campaign in step (production: the process id; tests: a seed).
    public var seed: UInt64

    public init(seed: UInt64) {
        self.seed = seed
    }

    /// The policy of a process: its seed from the process id.
    public static func process() -> RegionRaftPolicy {
        RegionRaftPolicy(seed: UInt64(UInt32(truncatingIfNeeded: ProcessInfo.processInfo.processIdentifier)))
    }

    /// The Raft configuration of the region peer `peerID`.
    public func config(forPeer peerID: UInt64) -> RaftConfig {
        precondition(electionTimeoutTicks > heartbeatIntervalTicks && heartbeatIntervalTicks >= 1,
                     "heartbeats (every \(heartbeatIntervalTicks) ticks) must come well within the election timeout (\(electionTimeoutTicks))")
        var config = RaftConfig(id: peerID)
        config.electionTimeoutTicks = electionTimeoutTicks
        config.heartbeatIntervalTicks = heartbeatIntervalTicks
        config.broadcastCommit = broadcastCommit
        config.randomSeed = peerID &* 0x9E37_79B9 ^ seed
        return config
    }
}
