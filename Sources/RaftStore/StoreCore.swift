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
}

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

/// One node's multi-Raft engine as a synchronous state machine: regions' Raft cores, the group
/// commit of their logs, the apply of committed commands to user data, snapshots and log
/// truncation. The caller feeds it ticks, messages, snapshots and requests, runs `runTurn()`
/// and carries out what it returns; sockets, timers and threads live outside.
///
/// Guarantees: every turn writes the log entries and hard states of all ready regions in one
/// synced batch; committed commands are applied with the apply state, region state and client
/// sessions in one atomic batch, so after a crash data and applied index agree; a retried
/// (client, sequence) gets the first reply and is not applied twice; a snapshot is installed
/// under an `applying` marker that a restart completes.
public final class StoreCore {
    public let storeID: UInt64
    let db: Database
    let settings: StoreSettings
    let dataCF: ColumnFamily
    let metaCF: ColumnFamily
    let makeRaftConfig: @Sendable (UInt64) -> RaftConfig
    /// Applies `state_machine_command`s (PD's metadata); nil on a KV store, which refuses them.
    let stateMachine: (any RegionStateMachine)?
    var peers: [UInt64: RegionPeer] = [:]
    private var nextProposal: UInt64 = 1
    /// Writes and reads accepted and not yet completed, over all regions.
    var pendingRequests = 0
    /// Queued writes that could not be proposed (leadership moved): reported by the next turn.
    var refusedQueuedWrites: [(id: ProposalID, error: StoreRequestError)] = []
    /// The ranges of the initialized replicas: no two may overlap.
    var regionMap = RegionMap()
    /// Splits applied by the running turn (handed out in its output).
    var appliedSplits: [AppliedSplit] = []
    /// Peers with stale reads to serve on the next turn.
    var peersWithImmediateReads: Set<UInt64> = []
    /// Regions that may have a Ready: touched by an event since their last turn, or left with
    /// work by it. A turn looks at these only, not at every region.
    var touchedRegions: Set<UInt64> = []
    /// Regions whose replica here was found removed (a newer replica of the region on this
    /// store was addressed): destroyed at the end of the next turn.
    var supersededRegions: Set<UInt64> = []
    /// Raft messages refused as impossible (forged, corrupt): counted, and the first reasons kept.
    public private(set) var raftMessagesRefused: UInt64 = 0
    /// Committed entries that did not decode or carried commands breaking a rule.
    public internal(set) var malformedEntries: UInt64 = 0
    private var refusalReports: [String] = []
    /// Consistency checks whose digest here differed from the leader's, and their alarms not
    /// yet logged.
    public internal(set) var consistencyMismatches: UInt64 = 0
    var consistencyAlarms: [String] = []
    static let refusalReportsMax = 32
    /// Crash tests only: called before every write to the disk, with what it holds; throwing
    /// fails the operation (the turn) right there, as a crash at that point would.
    public var diskWriteObserver: ((StoreDiskWrite) throws -> Void)?

    /// Every write of the store goes through here (and `ingest`), so a crash test can stop
    /// the store between any two of them.
    func write(_ batch: WriteBatch, sync: Bool, _ what: StoreDiskWrite) throws {
        try diskWriteObserver?(what)
        try db.write(batch, sync: sync)
    }

    func ingest(_ file: String, into columnFamily: ColumnFamily) throws {
        try diskWriteObserver?(.snapshotIngest)
        try db.ingestExternalFiles([file], into: columnFamily)
    }

    /// Opens the store's regions from `db`: every normal `RegionLocalState`, finishing any
    /// snapshot install a crash interrupted, and removes staged snapshots no region refers to.
    ///
    /// `stateMachine` applies the `state_machine_command`s of this store's regions (PD's
    /// metadata); it is given each opened region's data before the first turn.
    public init(db: Database, storeID: UInt64, settings: StoreSettings,
                raftConfig: @escaping @Sendable (UInt64) -> RaftConfig,
                stateMachine: (any RegionStateMachine)? = nil) throws {
        self.db = db
        self.stateMachine = stateMachine
        self.storeID = storeID
        self.settings = settings
        self.makeRaftConfig = raftConfig
        dataCF = db.defaultColumnFamily
        metaCF = try db.columnFamily(StoreKeys.metaColumnFamily)
        try FileManager.default.createDirectory(atPath: settings.snapshotDirectory, withIntermediateDirectories: true)
        let iterator = db.makeIterator(in: metaCF, lowerBound: [StoreKeys.regionStatePrefix],
                                       upperBound: [StoreKeys.regionStatePrefix + 1])
        iterator.seekToFirst()
        var states: [Flotilla_V1_RegionLocalState] = []
        while iterator.isValid {
            states.append(try Flotilla_V1_RegionLocalState(serializedBytes: iterator.value))
            iterator.next()
        }
        try iterator.checkError()
        var directoriesInUse: Set<String> = []
        for var state in states {
            if state.state == .applying {
                directoriesInUse.insert(state.applyingDirectory)
                try finishSnapshotInstall(state)
                state.state = .normal
            }
            if state.state == .normal { try openPeer(state) }
        }
        try removeStagedSnapshots(except: directoriesInUse)
        for regionID in regionIDs { try restoreStateMachine(regionID) }
    }

    /// Hands the state machine the region's data as it is on disk now.
    func restoreStateMachine(_ regionID: UInt64) throws {
        guard let stateMachine, let region = peers[regionID]?.region else { return }
        let iterator = db.makeIterator(in: dataCF, lowerBound: [UInt8](region.startKey), upperBound: StoreKeys.dataUpperBound(region))
        iterator.seekToFirst()
        var records: [(key: Data, value: Data)] = []
        while iterator.isValid {
            records.append((Data(iterator.key), Data(iterator.value)))
            iterator.next()
        }
        try iterator.checkError()
        try stateMachine.restore(regionID: regionID, records: records)
    }

    /// Regions hosted here, by id (initialized peers only).
    public var regionIDs: [UInt64] { peers.filter { $0.value.isInitialized }.keys.sorted() }

    public func region(_ id: UInt64) -> Flotilla_V1_Region? { peers[id].flatMap { $0.isInitialized ? $0.region : nil } }

    /// The Raft role and leader of a region's replica here.
    public func raftStatus(_ regionID: UInt64) -> (role: Role, leader: UInt64, term: UInt64, applied: UInt64)? {
        peers[regionID].map { ($0.raft.role, $0.raft.leader, $0.raft.term, $0.raft.appliedIndex) }
    }

    /// A region's log bounds here: first index still held and last index.
    public func logBounds(_ regionID: UInt64) -> (first: UInt64, last: UInt64)? {
        peers[regionID].map { ($0.storage.firstIndex, $0.storage.lastIndex) }
    }

    /// Whether a turn would do anything now (a region may have a Ready, or reads wait).
    public var hasPendingWork: Bool { !touchedRegions.isEmpty || !peersWithImmediateReads.isEmpty }

    /// Requests accepted and not yet completed.
    public var pendingRequestCount: Int { pendingRequests }

    func openPeer(_ state: Flotilla_V1_RegionLocalState) throws {
        let region = state.region
        guard let me = region.peer(onStore: storeID) else {
            throw StoreCorruption(region: region.id, what: "stored region has no peer on store \(storeID)")
        }
        let confState = state.hasConfState ? state.confState.core : region.confState
        let storage = try RegionRaftStorage(db: db, regionID: region.id, confState: confState)
        let applyState = try db.get(StoreKeys.applyState(region: region.id), in: metaCF)
            .map { bytes throws(StoreCorruption) in try StoredValues.decodeApplyState(bytes, region: region.id) }
        let applied = applyState?.applied ?? 0
        // A turn writes its apply before the log write that may carry the commit index of
        // what it applied; after a machine crash the apply can survive without it. Applied entries were
        // committed and are in the log: the commit index is at least the applied index.
        guard applied <= storage.lastIndex else {
            throw StoreCorruption(region: region.id, what: "applied \(applied) beyond the last log index \(storage.lastIndex)")
        }
        storage.recoverCommit(atLeast: applied)
        var config = makeRaftConfig(me.id)
        config.id = me.id
        config.appliedIndex = applied
        let peer = RegionPeer(region: region, peerID: me.id, raft: RaftNode(config: config, storage: storage),
                              storage: storage, isInitialized: true, appliedConfState: confState)
        peer.storage.snapshotPoint = SnapshotMetadata(index: applied, term: (try? storage.term(at: applied)) ?? 0, confState: confState)
        peer.confChanges = Array(state.confChanges.suffix(RegionPeer.confChangeRecordsMax))
        // Stored state is input: overlapping regions on disk are corruption, not a trap.
        let overlapping = regionMap.overlapping(start: region.startKey, end: region.endKey).filter { $0 != region.id }
        guard overlapping.isEmpty else {
            throw StoreCorruption(region: region.id, what: "stored range overlaps regions \(overlapping) held here")
        }
        peers[region.id] = peer
        regionMap.set(region)
        touchedRegions.insert(region.id)
        if peer.raft.termExhausted {
            refusalReports.append("region \(region.id): persisted term \(peer.raft.term) is at or above the limit \(RaftLimits.termMax) "
                                  + "(a forged message accepted by an earlier version?); this replica will never campaign")
        }
    }

    /// Creates a region replica from its descriptor, as every founding store of a static
    /// cluster does: the region state and a log that starts after index 1, as if restored
    /// from a snapshot holding the initial members and no data. A peer added later has an
    /// empty log, so the leader always sends it a snapshot. Does nothing when the region exists.
    public func bootstrapRegion(_ region: Flotilla_V1_Region) throws {
        guard peers[region.id] == nil else { return }
        guard region.peer(onStore: storeID) != nil else {
            throw StoreRequestError.invalidArgument(field: "region.peers", reason: "no peer on store \(storeID)")
        }
        let confState = region.confState
        var localState = Flotilla_V1_RegionLocalState()
        localState.region = region
        localState.state = .normal
        localState.confState = Flotilla_V1_ConfState(confState)
        let raftCF = try db.columnFamily(StoreKeys.raftColumnFamily)
        let batch = db.makeWriteBatch()
        batch.put(StoreKeys.hardState(region: region.id), StoredValues.encode(HardState(term: 1, vote: noNode, commit: 1)), in: raftCF)
        batch.put(StoreKeys.applyState(region: region.id),
                  StoredValues.encodeApplyState(applied: 1, truncatedIndex: 1, truncatedTerm: 1), in: metaCF)
        batch.put(StoreKeys.regionState(region: region.id), try localState.serializedBytes(), in: metaCF)
        try write(batch, sync: true, .bootstrap)
        try openPeer(localState)
    }

    // MARK: Events

    /// Advances every region's logical clock by one tick.
    public func tick() {
        for peer in peers.values { peer.raft.tick() }
        touchedRegions.formUnion(peers.keys)
    }

    /// Delivers a Raft message from another store. A message for a region this store does not
    /// have creates an (uninitialized) peer when it comes from a leader to a new member;
    /// others, and snapshots (which arrive through `stepSnapshot`), are dropped.
    @discardableResult
    public func step(_ message: Flotilla_V1_RaftMessage) -> Bool {
        guard let core = message.message.core, core.kind != .installSnapshot else { return false }
        if supersedes(message) { return false }
        guard let peer = peers[message.regionID] ?? createPeer(for: message, kind: core.kind),
              message.toPeer.id == peer.peerID else { return false }
        if message.fromPeer.id != 0 { peer.knownPeers[message.fromPeer.id] = message.fromPeer }
        if let refusal = peer.raft.step(core) {
            report(refusal: refusal, regionID: peer.region.id)
            return false
        }
        touchedRegions.insert(peer.region.id)
        return true
    }

    /// Replicas here that have not heard from a leader for `minTicks` (candidates for a check
    /// with PD: a replica removed while it could not hear of it never hears again), with their
    /// peer id and the conf_ver they know.
    public func silentReplicas(minTicks: UInt64) -> [(regionID: UInt64, peerID: UInt64, confVer: UInt64)] {
        peers.keys.sorted().compactMap { regionID in
            guard let peer = peers[regionID], !peer.isRemoved, peer.raft.ticksSinceLeaderContact >= minTicks else { return nil }
            return (regionID, peer.peerID, peer.region.epoch.confVer)
        }
    }

    /// Destroys the replica `peerID` of `regionID` here (at the end of the next turn) when the
    /// region, as of `confVer` newer than this replica knows, no longer lists it: peer ids are
    /// never reused, so a replica once removed is never a member again. Returns whether it will.
    @discardableResult
    public func destroyIfRemoved(regionID: UInt64, peerID: UInt64, region current: Flotilla_V1_Region) -> Bool {
        guard let held = peers[regionID], held.peerID == peerID, current.id == regionID,
              current.epoch.confVer > held.region.epoch.confVer, !current.peers.contains(where: { $0.id == peerID }) else { return false }
        supersededRegions.insert(regionID)
        touchedRegions.insert(regionID)
        if !held.isRemoved {
            held.isRemoved = true
            report(refusedMessage: "replica \(peerID) is no longer a member (conf_ver \(current.epoch.confVer) > \(held.region.epoch.confVer)): destroying it",
                   regionID: regionID)
        }
        return true
    }

    /// A message to a newer replica of a region on this store than the one here, from a newer
    /// configuration, shows the one here was removed while it could not hear of it (stopped,
    /// cut off): peer ids are never reused and a region has at most one replica per store.
    /// The old replica is destroyed at the end of the next turn (a tombstone, its data gone);
    /// the leader's next message then creates the new one. Without this the old replica
    /// swallows every message for the new one and the move never finishes.
    private func supersedes(_ message: Flotilla_V1_RaftMessage) -> Bool {
        guard let held = peers[message.regionID], message.toPeer.storeID == storeID, message.toPeer.id > held.peerID,
              message.epoch.confVer > held.region.epoch.confVer else { return false }
        supersededRegions.insert(message.regionID)
        touchedRegions.insert(message.regionID)
        if !held.isRemoved {
            held.isRemoved = true
            report(refusedMessage: "replica \(held.peerID) was removed from the region (a message for its successor \(message.toPeer.id) arrived): destroying it",
                   regionID: message.regionID)
        }
        return true
    }

    /// Counts a Raft message the core refused and keeps its reason for the caller's log
    /// (bounded: beyond `refusalReportsMax` unread reports, only the count grows).
    private func report(refusal: MessageRefusal, regionID: UInt64) { report(refusedMessage: refusal.reason, regionID: regionID) }

    private func report(refusedMessage reason: String, regionID: UInt64) {
        raftMessagesRefused += 1
        if refusalReports.count < Self.refusalReportsMax { refusalReports.append("region \(regionID): \(reason)") }
    }

    /// Keeps a problem found in the region's log (a forged or corrupt entry) for the log.
    func report(problem: String, regionID: UInt64) {
        malformedEntries += 1
        if refusalReports.count < Self.refusalReportsMax { refusalReports.append("region \(regionID): \(problem)") }
    }

    /// Reasons of Raft messages refused since the last call (at most `refusalReportsMax`).
    public func takeRefusalReports() -> [String] {
        defer { refusalReports = [] }
        return refusalReports
    }

    /// Delivers a snapshot received in full (its SST files staged in `received.directory`).
    /// Returns false when it is not for a peer here; the caller then removes the files.
    public func stepSnapshot(_ received: ReceivedSnapshot) -> Bool {
        let message = received.header
        if let refusal = refusalOfSnapshot(message) {
            report(refusedMessage: "snapshot at index \(message.message.snapshot.index) refused: \(refusal)", regionID: message.regionID)
            removeStagedSnapshot(received.directory)
            return true
        }
        guard let core = message.message.core, core.kind == .installSnapshot, core.snapshot != nil, !supersedes(message),
              let peer = peers[message.regionID] ?? createPeer(for: message, kind: core.kind),
              message.toPeer.id == peer.peerID, !peer.isRemoved else { return false }
        if message.fromPeer.id != 0 { peer.knownPeers[message.fromPeer.id] = message.fromPeer }
        if let previous = peer.receivedSnapshot { removeStagedSnapshot(previous.directory) }
        peer.receivedSnapshot = received
        if let refusal = peer.raft.step(core) {
            report(refusal: refusal, regionID: peer.region.id)
            peer.receivedSnapshot = nil
            removeStagedSnapshot(received.directory)
            return true
        }
        touchedRegions.insert(peer.region.id)
        return true
    }

    /// Why a snapshot may not be installed here (nil: it may). Its region must be what the
    /// message names, not older (by epoch) than the replica here, and its range must overlap
    /// no other replica on this store, initialized or about to be: one holding a newer epoch
    /// makes the snapshot stale; one holding an older epoch has not applied the split (or the
    /// removal) that gave the range away yet, and the snapshot waits for it (its leader sends
    /// again).
    func refusalOfSnapshot(_ message: Flotilla_V1_RaftMessage) -> String? {
        let incoming = message.region
        guard incoming.id == message.regionID, incoming.epoch == message.epoch else {
            return "its region descriptor (id \(incoming.id)) does not match the message (region \(message.regionID))"
        }
        guard incoming.endKey.isEmpty || incoming.startKey.lexicographicallyPrecedes(incoming.endKey) else {
            return "its range is empty or inverted"
        }
        if let local = peers[incoming.id], local.isInitialized {
            let epoch = local.region.epoch
            if incoming.epoch.version < epoch.version || incoming.epoch.confVer < epoch.confVer {
                return "its epoch (conf_ver \(incoming.epoch.confVer), version \(incoming.epoch.version)) is older than the replica's here (\(epoch.confVer), \(epoch.version))"
            }
        }
        for other in regionMap.overlapping(start: incoming.startKey, end: incoming.endKey) where other != incoming.id {
            let newer = (peers[other]?.region.epoch.version ?? 0) >= incoming.epoch.version
            return newer ? "region \(other) here holds part of its range at a newer epoch (the snapshot is stale)"
                         : "region \(other) here still holds part of its range (waiting for it to split or go)"
        }
        for (other, peer) in peers where other != incoming.id {
            guard let pending = peer.receivedSnapshot?.header.region else { continue }
            let overlaps = (pending.endKey.isEmpty || incoming.startKey.lexicographicallyPrecedes(pending.endKey))
                && (incoming.endKey.isEmpty || pending.startKey.lexicographicallyPrecedes(incoming.endKey))
            if overlaps { return "region \(other) here is installing a snapshot of an overlapping range" }
        }
        return nil
    }

    /// A peer for a region this store does not have, when `message` is a leader's message to
    /// a member on this store, the region was not removed from here at a later epoch, and no
    /// replica here holds part of its range at the same or a newer epoch. (A replica holding
    /// it at an older epoch is a region that has not applied its split yet: the new peer is
    /// created and waits, uninitialized, until that split replaces it.)
    private func createPeer(for message: Flotilla_V1_RaftMessage, kind: MessageKind) -> RegionPeer? {
        guard message.regionID != 0, message.toPeer.storeID == storeID, message.toPeer.id != 0 else { return nil }
        let overlapping = regionMap.overlapping(start: message.startKey, end: message.endKey).filter { $0 != message.regionID }
        // A new region's first election (its replica on the split leader's store campaigns at
        // once, usually before the other stores applied the split): the vote is kept and
        // carried into the region when the split here creates it.
        let firstElectionOfSplit = (kind == .requestVote || kind == .requestPreVote)
            && message.message.term == Self.splitInitialIndex + 1
            && !overlapping.isEmpty && overlapping.allSatisfy { (peers[$0]?.region.epoch.version ?? .max) < message.epoch.version }
        guard [.appendEntries, .heartbeat, .installSnapshot].contains(kind) || firstElectionOfSplit else { return nil }
        if let stored = try? db.get(StoreKeys.regionState(region: message.regionID), in: metaCF),
           let state = try? Flotilla_V1_RegionLocalState(serializedBytes: stored),
           state.state == .tombstone,
           state.region.epoch.confVer >= message.epoch.confVer || state.region.peer(withID: message.toPeer.id) != nil
            || message.toPeer.id <= state.removedPeerID {
            // Removed from here: only a successor (a newer peer id, at a newer conf_ver) is made.
            return nil
        }
        for other in overlapping {
            if let held = peers[other], held.region.epoch.version >= message.epoch.version { return nil }
        }
        guard let storage = try? RegionRaftStorage(db: db, regionID: message.regionID, confState: ConfState()),
              storage.lastIndex == 0 else { return nil }
        var region = Flotilla_V1_Region()
        region.id = message.regionID
        region.epoch = message.epoch
        region.peers = [message.toPeer, message.fromPeer]
        var config = makeRaftConfig(message.toPeer.id)
        config.id = message.toPeer.id
        let peer = RegionPeer(region: region, peerID: message.toPeer.id, raft: RaftNode(config: config, storage: storage),
                              storage: storage, isInitialized: false, appliedConfState: ConfState())
        // Created for the new region's first election: it never had a leader, so no lease
        // binds this replica and it may vote at once.
        if firstElectionOfSplit { peer.raft.waiveStartupLease() }
        peers[region.id] = peer
        touchedRegions.insert(region.id)
        return peer
    }

    // MARK: Requests

    /// Accepts a client write to a region this store leads. The next turn proposes it, with
    /// every other write the region received meanwhile, in one Raft entry (TiKV batches its
    /// proposals the same way): the log write, the replication messages and the apply state
    /// are paid once per entry, not once per write.
    public func proposeWrite(_ command: Flotilla_V1_WriteCommand, context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> ProposalID {
        let peer = try leaderPeer(for: context)
        try admitRequest()
        try validate(command, in: peer.region)
        let data: [UInt8]
        do { data = try command.serializedBytes() } catch {
            throw .invalidArgument(field: "command", reason: "cannot be encoded: \(error)")
        }
        // One write is one Raft entry at most, so it always fits an append and a frame.
        guard data.count <= KVLimits.commandBytesMax else {
            throw .invalidArgument(field: "request", reason: "the write encodes to \(data.count) bytes, more than the \(KVLimits.commandBytesMax)-byte limit of one Raft entry")
        }
        if let key = command.puts.first?.key ?? command.deletes.first ?? (command.hasCompareAndSwap ? command.compareAndSwap.key : nil) {
            recordLoad(peer, key: key)
        }
        let id = makeProposalID()
        peer.queuedWrites.append((data, id))
        pendingRequests += 1
        touchedRegions.insert(peer.region.id)
        return id
    }

    /// Proposes the region's queued writes as `CommandBatch` entries (bounded by
    /// `commandsPerEntryMax` and `entryBytesMax`; a larger command goes alone). Writes Raft
    /// refuses are reported by the next turn.
    func proposeQueuedWrites(_ peer: RegionPeer) {
        guard !peer.queuedWrites.isEmpty else { return }
        let queued = peer.queuedWrites
        peer.queuedWrites = []
        var start = 0
        while start < queued.count {
            var end = start
            var bytes = 0
            while end < queued.count, end - start < settings.commandsPerEntryMax,
                  end == start || bytes + queued[end].command.count + 11 <= settings.entryBytesMax {
                bytes += queued[end].command.count + 11
                end += 1
            }
            var entry: [UInt8] = []
            entry.reserveCapacity(bytes)
            for item in queued[start..<end] { CommandBatchEncoding.append(item.command, to: &entry) }
            let ids = queued[start..<end].map(\.id)
            do {
                let index = try peer.raft.propose(entry)
                peer.pendingWrites[index] = (peer.raft.term, ids)
            } catch {
                let refusal = mapRaftError(error, peer: peer)
                refusedQueuedWrites += ids.map { ($0, refusal) }
            }
            start = end
        }
    }

    /// Proposes a membership change of a region this store leads: each change names the peer
    /// (id, store, role) it adds, promotes, demotes or removes. Completes like a write once
    /// applied. Several changes at once go through a joint configuration.
    public func proposeMembershipChange(regionID: UInt64, changes: [(kind: ConfChangeKind, peer: Flotilla_V1_Peer)]) throws(StoreRequestError) -> ProposalID {
        var context = Flotilla_V1_RequestContext()
        context.regionID = regionID
        let peer = try leaderPeer(for: context)
        guard !changes.isEmpty else { throw .invalidArgument(field: "changes", reason: "empty") }
        var announced = Flotilla_V1_Region()
        announced.peers = changes.map(\.peer)
        let encodedContext: [UInt8]
        do { encodedContext = try announced.serializedBytes() } catch {
            throw .invalidArgument(field: "changes", reason: "cannot be encoded: \(error)")
        }
        // A leader is never demoted or removed by its own proposal (TiKV's pd#3499: a leader
        // demoted inside a joint configuration can lead it nowhere): move the leadership first.
        if let own = changes.first(where: { $0.peer.id == peer.peerID }), own.kind != .addVoter {
            throw .invalidArgument(field: "changes", reason: "peer \(peer.peerID) leads region \(regionID): transfer the leadership before demoting or removing it")
        }
        let change = ConfChangeV2(changes: changes.map { ConfChangeSingle($0.kind, $0.peer.id) }, context: encodedContext)
        // At most one replica of a region per store: a store tells a removed replica from its
        // successor by that (see `supersedes`).
        for (kind, added) in changes where kind != .remove {
            if let other = peer.region.peers.first(where: { $0.storeID == added.storeID && $0.id != added.id }) {
                throw .invalidArgument(field: "changes", reason: "store \(added.storeID) already holds replica \(other.id) of region \(regionID)")
            }
        }
        if let invalid = Result(catching: { () throws(RaftError) in try peer.appliedConfState.applying(change) }).failureDescription {
            throw .invalidArgument(field: "changes", reason: invalid)
        }
        try admitRequest()
        // Writes accepted before the change are proposed before it.
        proposeQueuedWrites(peer)
        let index: UInt64
        do {
            index = try peer.raft.proposeConfChange(change)
        } catch {
            throw mapRaftError(error, peer: peer)
        }
        touchedRegions.insert(peer.region.id)
        return trackWrite(peer: peer, index: index)
    }

    /// A replica's region as applied here, whether it is in a joint configuration, and its
    /// recent membership changes (nil for a region not here or not yet initialized).
    public func membership(of regionID: UInt64) -> (region: Flotilla_V1_Region, joint: Bool, confChanges: [Flotilla_V1_ConfChangeRecord])? {
        guard let peer = peers[regionID], peer.isInitialized else { return nil }
        return (peer.region, peer.appliedConfState.isJoint, peer.confChanges)
    }

    /// Hands the leadership of a region this store leads to its peer `peerID` (a voter).
    public func transferLeader(regionID: UInt64, to peerID: UInt64) throws(StoreRequestError) {
        var context = Flotilla_V1_RequestContext()
        context.regionID = regionID
        let peer = try leaderPeer(for: context)
        do { try peer.raft.transferLeader(to: peerID) } catch { throw mapRaftError(error, peer: peer) }
        touchedRegions.insert(regionID)
    }

    /// What a region's leader reports to PD: every region this store leads, with its leader
    /// peer, the peers still catching up (pending: never matched, or behind the leader's
    /// first log index, so they need a snapshot) and the peers not heard from for
    /// `peerDownTicks` (down).
    public func leaderReports() -> [(region: Flotilla_V1_Region, leader: Flotilla_V1_Peer, pending: [Flotilla_V1_Peer], down: [Flotilla_V1_Peer], joint: Bool)] {
        peers.keys.sorted().compactMap { regionID in
            guard let peer = peers[regionID], peer.isInitialized, peer.raft.role == .leader,
                  let me = peer.region.peer(withID: peer.peerID) else { return nil }
            let matches = peer.raft.matchIndexes
            let silent = peer.raft.silentTicks
            let pending = peer.region.peers.filter { other in
                guard other.id != peer.peerID else { return false }
                let match = matches[other.id] ?? 0
                return match == 0 || match < peer.storage.firstIndex
            }
            let down = peer.region.peers.filter { other in
                other.id != peer.peerID && (silent[other.id] ?? 0) >= settings.peerDownTicks
            }
            return (peer.region, me, pending, down, peer.appliedConfState.isJoint)
        }
    }

    /// Starts a read of a region. Linearizable reads need the leader (lease or ReadIndex);
    /// follower reads ask the leader for its read index from any replica; stale reads are
    /// served by any replica from what it applied. The read appears in `readyReads` once
    /// the replica has applied far enough.
    public func proposeRead(context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> ProposalID {
        let peer: RegionPeer
        switch context.readConsistency {
        case .linearizable, .UNRECOGNIZED: peer = try leaderPeer(for: context)
        case .follower, .stale: peer = try initializedPeer(for: context)
        }
        try admitRequest()
        let id = makeProposalID()
        if context.readConsistency == .stale {
            peer.readsAwaitingApply.append((0, id))
            peersWithImmediateReads.insert(peer.region.id)
            pendingRequests += 1
            return id
        }
        var readContext: [UInt8] = []
        StoreKeys.appendBigEndian(id.value, to: &readContext)
        do {
            try peer.raft.readIndex(context: readContext)
        } catch {
            throw mapRaftError(error, peer: peer)
        }
        touchedRegions.insert(peer.region.id)
        peer.readsAwaitingIndex[readContext] = id
        pendingRequests += 1
        return id
    }

    /// Reads `key` from the region's applied data. Call for reads in `readyReads`.
    /// With `epoch` (the request's), a region that split since answers `epochNotMatch`.
    public func get(_ key: Data, regionID: UInt64, epoch: Flotilla_V1_RegionEpoch? = nil) throws -> Data? {
        guard let peer = peers[regionID], peer.isInitialized else { throw StoreRequestError.regionNotFound(regionID: regionID) }
        guard peer.region.contains(key) else {
            if let epoch, epoch.version != peer.region.epoch.version { throw StoreRequestError.epochNotMatch(current: currentRegions(of: peer)) }
            throw StoreRequestError.keyNotInRegion(key: key, region: peer.region)
        }
        recordLoad(peer, key: key)
        let value = try db.get([UInt8](key), in: dataCF).map { Data($0) }
        peer.load.readKeys += 1
        peer.load.readBytes += key.count + (value?.count ?? 0)
        return value
    }

    /// Plans a scan of the region's applied data in [start, end) (an empty end: the region's
    /// end): checks the range lies inside the region — a range reaching outside is a stale
    /// route (`keyNotInRegion`), never a clipped answer — and takes a RocksDB snapshot, so the
    /// plan can be read off the store thread with `ScanPlan.run()` while other regions write.
    public func planScan(regionID: UInt64, from start: Data, to end: Data, limit: Int, reverse: Bool,
                         epoch: Flotilla_V1_RegionEpoch? = nil) throws(StoreRequestError) -> ScanPlan {
        guard let peer = peers[regionID], peer.isInitialized else { throw .regionNotFound(regionID: regionID) }
        let region = peer.region
        let splitSince = epoch.map { $0.version != region.epoch.version } ?? false
        guard region.contains(start) else {
            throw splitSince ? .epochNotMatch(current: currentRegions(of: peer)) : .keyNotInRegion(key: start, region: region)
        }
        if (end.isEmpty && !region.endKey.isEmpty) || (!end.isEmpty && !region.endKey.isEmpty && region.endKey.lexicographicallyPrecedes(end)) {
            if splitSince { throw .epochNotMatch(current: currentRegions(of: peer)) }
            if !end.isEmpty { throw .keyNotInRegion(key: end, region: region) }
        }
        recordLoad(peer, key: start)
        let upper = end.isEmpty ? StoreKeys.dataUpperBound(region) : [UInt8](end)
        return ScanPlan(db: db, snapshot: db.makeSnapshot(), column: dataCF, lower: [UInt8](start), upper: upper,
                        limit: max(1, limit), reverse: reverse)
    }

    /// Up to `limit` pairs of the region in [start, end), read on the calling thread (tests and
    /// tools; the server reads scans off the store thread through `planScan`).
    public func scan(regionID: UInt64, from start: Data, to end: Data, limit: Int, reverse: Bool) throws -> [(Data, Data)] {
        try planScan(regionID: regionID, from: start, to: end, limit: limit, reverse: reverse).run().pairs
    }

    /// Every key the region holds here, in order (for checks and tools; not a client API).
    public func keys(in regionID: UInt64) throws -> [[UInt8]] {
        guard let peer = peers[regionID], peer.isInitialized else { throw StoreRequestError.regionNotFound(regionID: regionID) }
        let iterator = db.makeIterator(in: dataCF, lowerBound: [UInt8](peer.region.startKey),
                                       upperBound: StoreKeys.dataUpperBound(peer.region))
        iterator.seekToFirst()
        var keys: [[UInt8]] = []
        while iterator.isValid { keys.append(iterator.key); iterator.next() }
        try iterator.checkError()
        return keys
    }

    /// A digest of the region's replicated state here: its applied index, key count and an
    /// FNV-1a checksum over its data and client sessions. Replicas that applied the same
    /// index must agree.
    public func regionDigest(_ regionID: UInt64) throws -> RegionDigest {
        guard let peer = peers[regionID], peer.isInitialized else { throw StoreRequestError.regionNotFound(regionID: regionID) }
        let reader = SnapshotReader(db: db, snapshot: db.makeSnapshot(), region: peer.region, header: Flotilla_V1_RaftMessage(),
                                    chunkBytes: settings.snapshotChunkBytes)
        var keys = 0
        while let chunk = try reader.nextChunk() {
            keys += chunk.pairs.filter { $0.column == .data }.count
        }
        return RegionDigest(regionID: regionID, appliedIndex: peer.raft.appliedIndex, keyCount: keys, checksum: reader.checksum.value)
    }

    private func initializedPeer(for context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> RegionPeer {
        guard let peer = peers[context.regionID], peer.isInitialized, !peer.isRemoved else {
            throw .regionNotFound(regionID: context.regionID)
        }
        if context.hasEpoch && context.epoch != peer.region.epoch { throw .epochNotMatch(current: currentRegions(of: peer)) }
        return peer
    }

    func leaderPeer(for context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> RegionPeer {
        let peer = try initializedPeer(for: context)
        guard peer.raft.role == .leader else { throw .notLeader(regionID: peer.region.id, leader: peer.leaderPeer) }
        return peer
    }

    func admitRequest() throws(StoreRequestError) {
        guard pendingRequests < settings.maxPendingRequests else {
            throw .serverIsBusy(reason: "\(pendingRequests) requests in flight on store \(storeID) (limit \(settings.maxPendingRequests))")
        }
    }

    func trackWrite(peer: RegionPeer, index: UInt64) -> ProposalID {
        let id = makeProposalID()
        peer.pendingWrites[index] = (peer.raft.term, [id])
        pendingRequests += 1
        return id
    }

    private func makeProposalID() -> ProposalID {
        defer { nextProposal += 1 }
        return ProposalID(value: nextProposal)
    }

    func mapRaftError(_ error: RaftError, peer: RegionPeer) -> StoreRequestError {
        switch error {
        case .notLeader: .notLeader(regionID: peer.region.id, leader: peer.leaderPeer)
        case .leaderTransferInProgress: .serverIsBusy(reason: "leader transfer in progress")
        case .uncommittedLimitExceeded(let limit): .serverIsBusy(reason: "more than \(limit) bytes proposed and not committed")
        case .confChangePending: .serverIsBusy(reason: "another membership change of region \(peer.region.id) is in progress")
        case .invalidConfChange(let reason): .invalidArgument(field: "changes", reason: reason)
        default: .proposalDropped
        }
    }

    /// The rules every write meets: one kind of operation, keys within bounds and inside the
    /// region. Checked when a write is accepted and again when it is applied.
    func validate(_ command: Flotilla_V1_WriteCommand, in region: Flotilla_V1_Region) throws(StoreRequestError) {
        let kinds = [!command.puts.isEmpty, !command.deletes.isEmpty, command.hasDeleteRange, command.hasCompareAndSwap,
                     !command.stateMachineCommand.isEmpty]
        guard kinds.filter({ $0 }).count == 1 else {
            throw .invalidArgument(field: "command", reason: "exactly one of puts, deletes, delete_range, compare_and_swap, state_machine_command must be set")
        }
        guard command.stateMachineCommand.isEmpty || stateMachine != nil else {
            throw .invalidArgument(field: "command", reason: "state_machine_command: this store's regions run KV commands only")
        }
        for key in command.puts.map(\.key) + command.deletes + (command.hasCompareAndSwap ? [command.compareAndSwap.key] : []) {
            guard key.count <= StoreKeys.dataKeyBytesMax else {
                throw .invalidArgument(field: "key", reason: "\(key.count) bytes, more than \(StoreKeys.dataKeyBytesMax)")
            }
            guard region.contains(key) else { throw .keyNotInRegion(key: key, region: region) }
        }
        if command.hasDeleteRange {
            let range = command.deleteRange
            guard range.endKey.isEmpty || range.startKey.lexicographicallyPrecedes(range.endKey) || range.startKey == range.endKey else {
                throw .invalidArgument(field: "delete_range", reason: "start key after end key")
            }
            guard region.contains(range.startKey) else { throw .keyNotInRegion(key: range.startKey, region: region) }
            // An empty end is "to the end of the key space": inside only the last region.
            guard region.endKey.isEmpty || (!range.endKey.isEmpty && !region.endKey.lexicographicallyPrecedes(range.endKey)) else {
                throw .keyNotInRegion(key: range.endKey, region: region)
            }
        }
    }
}

/// A region replica's replicated state in brief, to compare replicas.
public struct RegionDigest: Sendable, Equatable, CustomStringConvertible {
    public let regionID: UInt64
    public let appliedIndex: UInt64
    public let keyCount: Int
    public let checksum: UInt64

    public var description: String {
        "region \(regionID) applied \(appliedIndex) keys \(keyCount) checksum \(String(checksum, radix: 16))"
    }
}

extension Result where Failure == RaftError {
    init(catching body: () throws(RaftError) -> Success) {
        do { self = .success(try body()) } catch { self = .failure(error) }
    }

    var failureDescription: String? {
        if case .failure(let error) = self { return "\(error)" }
        return nil
    }
}

/// `CommandBatch` written by hand from commands already encoded: a repeated message field is
/// the concatenation of (tag, length, bytes) per element, so the batch costs one copy.
enum CommandBatchEncoding {
    /// Field 1, wire type 2 (length-delimited).
    static let commandsTag: UInt8 = 0x0A

    static func append(_ command: [UInt8], to entry: inout [UInt8]) {
        entry.append(commandsTag)
        var length = UInt64(command.count)
        while length >= 0x80 {
            entry.append(UInt8(truncatingIfNeeded: length) | 0x80)
            length >>= 7
        }
        entry.append(UInt8(length))
        entry.append(contentsOf: command)
    }
}
