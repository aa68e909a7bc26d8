import FlotillaProto
import Foundation
import Raft
import RocksDB

/// Identifies a write or read submitted to a `StoreCore` until it completes.
public struct ProposalID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let value: UInt64
    public static func < (lhs: ProposalID, rhs: ProposalID) -> Bool { lhs.value < rhs.value }
    public var description: String { "#\(value)" }
}

/// Why a store refused or could not complete a request. Each maps to a protocol `Error`.
public enum StoreRequestError: Error, Equatable, Sendable, CustomStringConvertible {
    case regionNotFound(regionID: UInt64)
    case notLeader(regionID: UInt64, leader: Flotilla_V1_Peer?)
    /// The request's epoch is stale: the region now, and the regions split from it held here.
    case epochNotMatch(current: [Flotilla_V1_Region])
    case keyNotInRegion(key: Data, region: Flotilla_V1_Region)
    case serverIsBusy(reason: String)
    case proposalDropped
    /// The store could not finish the request within its deadline (its outcome is unknown for a write).
    case timeout(reason: String)
    case invalidArgument(field: String, reason: String)

    public var description: String {
        switch self {
        case .regionNotFound(let id): "region \(id) is not on this store"
        case .notLeader(let id, let leader): "not the leader of region \(id)" + (leader.map { "; leader is peer \($0.id) on store \($0.storeID)" } ?? "; leader unknown")
        case .epochNotMatch(let regions):
            regions.first.map { "stale epoch for region \($0.id): now conf_ver \($0.epoch.confVer), version \($0.epoch.version)" }
                ?? "stale epoch"
        case .keyNotInRegion(let key, let region): "key \(key.map { String(format: "%02x", $0) }.joined()) is outside region \(region.id)"
        case .serverIsBusy(let reason): "server is busy: \(reason)"
        case .proposalDropped: "the proposal was dropped (leadership changed before it committed)"
        case .timeout(let reason): "timed out: \(reason)"
        case .invalidArgument(let field, let reason): "invalid \(field): \(reason)"
        }
    }
}

/// Limits and thresholds of one store. Every queue has a bound.
public struct StoreSettings: Sendable {
    /// Where received snapshots are staged as SST files until they are installed.
    public var snapshotDirectory: String
    /// A region's log is truncated once it holds more applied entries than this...
    public var logGCCountThreshold: UInt64 = 10_000
    /// ...or more bytes of entries than this (approximate: counted as entries are written).
    public var logGCSizeThresholdBytes = 32 << 20
    /// Writes and reads in flight over all regions; beyond it requests get `serverIsBusy`.
    public var maxPendingRequests = 16_384
    /// A client's session in a region expires once this many entries were applied in the
    /// region without the client writing there (checked at every multiple of
    /// `sessionSweepIntervalEntries`, identically on every replica).
    public var sessionExpiryEntries: UInt64 = 1_000_000
    public var sessionSweepIntervalEntries: UInt64 = 4_096
    /// Replies a session keeps for one client's writes in flight; beyond it the oldest are
    /// forgotten (and their writes, if retried, reported as stale duplicates).
    public var sessionRepliesMax = 1_024
    /// Client writes a leader proposes in one Raft entry: every write queued for a region
    /// since the last turn goes into as few entries as these bounds allow.
    public var commandsPerEntryMax = 1_024
    public var entryBytesMax = 1 << 20
    /// Snapshot chunks carry at most about this many bytes of pairs.
    public var snapshotChunkBytes = 1 << 20
    /// A leader reports a peer down once it has not heard from it for this many ticks
    /// (the server sets it from seconds; TiKV's `max-peer-down-duration` is 10 minutes).
    public var peerDownTicks: UInt64 = 3_000
    /// A leader's region sleeps once it had nothing to do for this many ticks in a row (its
    /// followers with it, see `RaftNode.sleep()`); 0: regions never sleep.
    public var regionSleepAfterQuietTicks = 20
    /// A store sends every store it shares regions with a heartbeat this often (in ticks), and
    /// presumes one it has not heard from for `storeDeadAfterTicks` gone: every sleeping
    /// region with a replica there wakes (its followers then elect a leader as usual).
    public var storeHeartbeatIntervalTicks: UInt64 = 2
    public var storeDeadAfterTicks: UInt64 = 20
    /// Crash tests only: fail the turn at this point, as a process crash there would.
    public var injectedFault: StoreFault?

    public init(snapshotDirectory: String) {
        self.snapshotDirectory = snapshotDirectory
    }
}

/// A point where crash tests make a store turn fail, leaving RocksDB as a crash would.
public enum StoreFault: Sendable, Equatable {
    /// After the `applying` marker of a snapshot is synced, before its files are ingested.
    case afterSnapshotMarker
    /// After the snapshot's files are ingested, before the region is marked normal.
    case afterSnapshotIngest
    /// After a turn's apply batch holding a split is written, before the turn's log write.
    case afterSplitApply
    /// After the log write of a turn that applied a split, before the new regions open.
    case beforeSplitRegionsOpen
}

/// A write the store makes to its disk, by what it holds: the points at which a crash test
/// can stop a store between two writes of a turn.
public enum StoreDiskWrite: Sendable, Equatable, CustomStringConvertible {
    case bootstrap
    /// A turn's apply batch: data, apply states, region states and sessions (unsynced).
    case apply
    /// A turn's log batch: entries, hard states, snapshot markers (synced when it must be).
    case log(synced: Bool)
    case snapshotClear, snapshotIngest, snapshotMark
    case logTruncation
    case replicaDestroy
    case consistencyCheck

    public var description: String {
        switch self {
        case .bootstrap: "bootstrap"
        case .apply: "apply batch"
        case .log(let synced): synced ? "log batch (synced)" : "log batch (unsynced)"
        case .snapshotClear: "snapshot clear"
        case .snapshotIngest: "snapshot ingest"
        case .snapshotMark: "snapshot mark"
        case .logTruncation: "log truncation"
        case .replicaDestroy: "replica destroy"
        case .consistencyCheck: "consistency check"
        }
    }
}

/// The error a turn fails with at an injected fault.
public struct InjectedFault: Error, Sendable {
    public let fault: StoreFault
}

/// What one store-loop turn produced: messages to send (grouped by destination store),
/// snapshots to stream, writes and reads that completed, and what the group commit did.
public struct StoreTurnOutput {
    public var messagesByStore: [UInt64: [Flotilla_V1_RaftMessage]] = [:]
    /// Snapshots to stream to other stores (each from a RocksDB snapshot taken this turn).
    public var snapshotsToSend: [OutgoingSnapshot] = []
    public var completedWrites: [(id: ProposalID, result: Result<Flotilla_V1_WriteResult, StoreRequestError>)] = []
    /// Reads whose region has applied their read index: serve them now with `get`/`scan`.
    public var readyReads: [(id: ProposalID, regionID: UInt64)] = []
    /// Reads that can no longer be confirmed here (leadership moved, the peer was removed).
    public var failedReads: [(id: ProposalID, error: StoreRequestError)] = []
    /// Regions whose log writes went into this turn's single synced batch.
    public var regionsInLogBatch = 0
    /// Splits this turn applied here (heartbeat the regions to PD at once).
    public var splits: [AppliedSplit] = []
    /// Synced writes this turn (the log batch, plus one per installed snapshot).
    public var logSyncs = 0
    /// Committed entries applied this turn.
    public var entriesApplied = 0
    /// Snapshots installed and logs truncated this turn.
    public var snapshotsInstalled = 0
    public var logsTruncated = 0
    /// Records (puts, deletes, range deletions) this turn wrote to RocksDB: each is a memtable
    /// insert, the store's main cost per write after the messages.
    public var recordsWritten = 0
    /// Consistency checks applied this turn: digests to compute off the store's loop, then
    /// hand to `recordConsistencyDigest`.
    public var consistencyChecks: [ConsistencyCheckTask] = []
    /// Stores presumed dead this turn (silent for `storeDeadAfterTicks`), and the sleeping
    /// regions that woke for it.
    public var storesPresumedDead: [UInt64] = []
    public var regionsWokenByStoreDeath = 0
}
