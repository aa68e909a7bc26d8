import FlotillaProto
import Foundation
import Raft
import RocksDB


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
    /// Regions that tick: every replica here that does not sleep (`Operation/Sleep.swift`).
    var awakeRegions: Set<UInt64> = []
    /// Sleeping regions, with the store tick their Raft clock was last brought to.
    var sleepingRegions: [UInt64: UInt64] = [:]
    /// Sleeping regions led here that fell asleep with followers on stores presumed dead
    /// excused: they wake when such a store is heard again, to catch its replica up.
    var sleepingWithExcusedFollowers: Set<UInt64> = []
    /// Ticks run since this store started: the clock sleeping regions catch up from.
    public internal(set) var storeTick: UInt64 = 0
    /// Times a region here fell asleep, and woke, since the store started.
    public internal(set) var regionSleepsTotal: UInt64 = 0
    public internal(set) var regionWakesTotal: UInt64 = 0
    /// Which other stores were heard from lately (store-level liveness).
    var liveness: StoreLiveness
    /// The other stores this one shares regions with (refreshed every `remoteStoresRefreshTicks`).
    var remoteStores: Set<UInt64> = []
    /// Store heartbeats to send with the next turn's messages.
    var storeHeartbeatsDue: [UInt64: [Flotilla_V1_RaftMessage]] = [:]
    /// Regions whose replica here was found removed (a newer replica of the region on this
    /// store was addressed): destroyed at the end of the next turn.
    var supersededRegions: Set<UInt64> = []
    /// Raft messages refused as impossible (forged, corrupt): counted, and the first reasons kept.
    public private(set) var raftMessagesRefused: UInt64 = 0
    /// Committed entries that did not decode or carried commands breaking a rule.
    public internal(set) var malformedEntries: UInt64 = 0
    var refusalReports: [String] = []
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
        liveness = StoreLiveness(deadAfterTicks: settings.storeDeadAfterTicks)
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

    /// Campaigns (pre-votes, elections, transfers) the replicas here started since they opened.
    public var campaignsStartedTotal: UInt64 { peers.values.reduce(0) { $0 + $1.raft.campaignsStarted } }

    /// A region's log bounds here: first index still held and last index.
    public func logBounds(_ regionID: UInt64) -> (first: UInt64, last: UInt64)? {
        peers[regionID].map { ($0.storage.firstIndex, $0.storage.lastIndex) }
    }

    /// Whether a turn would do anything now (a region may have a Ready, or reads wait).
    public var hasPendingWork: Bool { !touchedRegions.isEmpty || !peersWithImmediateReads.isEmpty || !storeHeartbeatsDue.isEmpty }

    /// Requests accepted and not yet completed.
    public var pendingRequestCount: Int { pendingRequests }

    // MARK: Events


    /// Delivers a Raft message from another store. A message for a region this store does not
    /// have creates an (uninitialized) peer when it comes from a leader to a new member;
    /// others, and snapshots (which arrive through `stepSnapshot`), are dropped. Returns whether
    /// a region took it. Any message is a sign of life of its sender's store; a store heartbeat
    /// is only that.
    @discardableResult
    public func step(_ message: Flotilla_V1_RaftMessage) -> Bool {
        if message.fromPeer.storeID != 0 && message.fromPeer.storeID != storeID { heard(fromStore: message.fromPeer.storeID) }
        if message.hasStoreHeartbeat { return false }  // liveness only: no region takes it
        guard let core = message.message.core, core.kind != .installSnapshot else { return false }
        if supersedes(message) { return false }
        guard let peer = peers[message.regionID] ?? createPeer(for: message, kind: core.kind),
              message.toPeer.id == peer.peerID else { return false }
        if message.fromPeer.id != 0 { peer.knownPeers[message.fromPeer.id] = message.fromPeer }
        prepareToStep(peer, core)
        if let refusal = peer.raft.step(core) {
            report(refusal: refusal, regionID: peer.region.id)
            return false
        }
        noteSleepAfterStep(peer)
        touchedRegions.insert(peer.region.id)
        return true
    }

    /// Counts a Raft message the core refused and keeps its reason for the caller's log
    /// (bounded: beyond `refusalReportsMax` unread reports, only the count grows).
    func report(refusal: MessageRefusal, regionID: UInt64) { report(refusedMessage: refusal.reason, regionID: regionID) }

    func report(refusedMessage reason: String, regionID: UInt64) {
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

    // MARK: Requests

    func makeProposalID() -> ProposalID {
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
