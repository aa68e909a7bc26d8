import FlotillaProto
import Foundation
import Raft
import RocksDB

/// One region replica on this store.
final class RegionPeer {
    var region: Flotilla_V1_Region
    let peerID: UInt64
    var raft: RaftNode
    let storage: RegionRaftStorage
    /// The region's range and data are here (bootstrapped, opened or restored from a
    /// snapshot). A peer created by a message from a new leader is not, until its snapshot.
    var isInitialized: Bool
    /// The configuration as of the applied index (persisted with it).
    var appliedConfState: ConfState
    /// This peer was removed from the region by an applied membership change.
    var isRemoved = false
    /// Client writes accepted since the last turn, encoded, in arrival order: the next turn
    /// proposes them together.
    var queuedWrites: [(command: [UInt8], id: ProposalID)] = []
    /// Proposed entries not yet applied, by index: the term they were proposed in and the
    /// requests they carry (one per command of a batch, or the membership change).
    var pendingWrites: [UInt64: (term: UInt64, ids: [ProposalID])] = [:]
    var readsAwaitingIndex: [[UInt8]: ProposalID] = [:]
    var readsAwaitingApply: [(index: UInt64, id: ProposalID)] = []
    var sessions: [UInt64: Flotilla_V1_ClientSession] = [:]
    /// Peers learnt from messages (a new peer's region descriptor arrives with its snapshot).
    var knownPeers: [UInt64: Flotilla_V1_Peer] = [:]
    /// A snapshot received and stepped into Raft, waiting for Raft to hand it out to install.
    var receivedSnapshot: ReceivedSnapshot?
    /// Ticks in a row this leader had nothing to do (it sleeps at `regionSleepAfterQuietTicks`).
    var quietTicks = 0
    /// Approximate bytes of log entries written since the last truncation.
    var logBytesSinceTruncation = 0
    /// Bytes of keys and values applied since the leader last checked the region's size.
    var bytesWrittenSinceSplitCheck = 0
    /// The size was checked since this replica opened (a store checks each led region once).
    var sizeCheckedOnce = false
    /// The newest consistency check applied here.
    var consistencyCheck: ConsistencyCheckState?
    /// Requests to this region since the last load report (leaders), with the keys and bytes
    /// read and written.
    var load = LoadCounter()
    /// The regions the last split applied here made from this one, as they were made (for
    /// `EpochNotMatch`).
    var splitChildren: [Flotilla_V1_Region] = []
    /// The membership changes this replica applied (or found in its stored state), oldest
    /// first, at most `confChangeRecordsMax`.
    var confChanges: [Flotilla_V1_ConfChangeRecord] = []

    /// Membership changes a replica keeps in its local state.
    static let confChangeRecordsMax = 16

    init(region: Flotilla_V1_Region, peerID: UInt64, raft: RaftNode, storage: RegionRaftStorage,
         isInitialized: Bool, appliedConfState: ConfState) {
        self.region = region
        self.peerID = peerID
        self.raft = raft
        self.storage = storage
        self.isInitialized = isInitialized
        self.appliedConfState = appliedConfState
    }

    func peer(withID id: UInt64) -> Flotilla_V1_Peer? { region.peer(withID: id) ?? knownPeers[id] }

    var leaderPeer: Flotilla_V1_Peer? { raft.leader == noNode ? nil : peer(withID: raft.leader) }

    var localState: Flotilla_V1_RegionLocalState {
        var state = Flotilla_V1_RegionLocalState()
        state.region = region
        state.state = .normal
        state.confState = Flotilla_V1_ConfState(appliedConfState)
        state.confChanges = confChanges
        return state
    }
}
