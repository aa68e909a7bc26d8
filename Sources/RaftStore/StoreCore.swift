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
    case epochNotMatch(current: Flotilla_V1_Region)
    case keyNotInRegion(key: Data, region: Flotilla_V1_Region)
    case serverIsBusy(reason: String)
    case proposalDropped
    case invalidArgument(field: String, reason: String)

    public var description: String {
        switch self {
        case .regionNotFound(let id): "region \(id) is not on this store"
        case .notLeader(let id, let leader): "not the leader of region \(id)" + (leader.map { "; leader is peer \($0.id) on store \($0.storeID)" } ?? "; leader unknown")
        case .epochNotMatch(let region): "stale epoch for region \(region.id): now conf_ver \(region.epoch.confVer), version \(region.epoch.version)"
        case .keyNotInRegion(let key, let region): "key \(key.map { String(format: "%02x", $0) }.joined()) is outside region \(region.id)"
        case .serverIsBusy(let reason): "server is busy: \(reason)"
        case .proposalDropped: "the proposal was dropped (leadership changed before it committed)"
        case .invalidArgument(let field, let reason): "invalid \(field): \(reason)"
        }
    }
}

/// What one store-loop turn produced: messages to send (grouped by destination store), writes
/// and reads that completed, and what the group commit did.
public struct StoreTurnOutput {
    public var messagesByStore: [UInt64: [Flotilla_V1_RaftMessage]] = [:]
    public var completedWrites: [(id: ProposalID, result: Result<Flotilla_V1_WriteResult, StoreRequestError>)] = []
    /// Reads whose region has applied their read index: serve them now with `read(...)`.
    public var readyReads: [(id: ProposalID, regionID: UInt64)] = []
    /// Reads that can no longer be confirmed here (leadership moved).
    public var failedReads: [(id: ProposalID, error: StoreRequestError)] = []
    /// Regions whose log writes went into this turn's single synced batch.
    public var regionsInLogBatch = 0
    /// Synced writes this turn (0 or 1).
    public var logSyncs = 0
}

/// One region replica on this store.
final class RegionPeer {
    var region: Flotilla_V1_Region
    let peerID: UInt64
    var raft: RaftNode
    let storage: RegionRaftStorage
    /// Entries up to here changed the data already (before a restart): replay skips them.
    var persistedApplied: UInt64
    var pendingWrites: [UInt64: (term: UInt64, id: ProposalID)] = [:]
    var readsAwaitingIndex: [[UInt8]: ProposalID] = [:]
    var readsAwaitingApply: [(index: UInt64, id: ProposalID)] = []
    var sessions: [UInt64: Flotilla_V1_ClientSession] = [:]

    init(region: Flotilla_V1_Region, peerID: UInt64, raft: RaftNode, storage: RegionRaftStorage, persistedApplied: UInt64) {
        self.region = region
        self.peerID = peerID
        self.raft = raft
        self.storage = storage
        self.persistedApplied = persistedApplied
    }
}

/// One node's multi-Raft engine as a synchronous state machine: regions' Raft cores, the group
/// commit of their logs, and the apply of committed commands to user data. The caller feeds it
/// ticks, messages and requests, runs `runTurn()` and sends what it returns; sockets, timers and
/// threads live outside.
///
/// Guarantees: every turn writes the log entries and hard states of all ready regions in one
/// synced batch; committed commands are applied with the apply state and client sessions in one
/// atomic batch, so after a crash data and applied index agree; a retried (client, sequence)
/// gets the first reply and is not applied twice.
public final class StoreCore {
    public let storeID: UInt64
    let db: Database
    private let dataCF: ColumnFamily
    private let metaCF: ColumnFamily
    private let makeRaftConfig: @Sendable (UInt64) -> RaftConfig
    var peers: [UInt64: RegionPeer] = [:]
    private var nextProposal: UInt64 = 1

    /// Opens the store's regions from `db` (every non-tombstone `RegionLocalState`).
    public init(db: Database, storeID: UInt64, raftConfig: @escaping @Sendable (UInt64) -> RaftConfig) throws {
        self.db = db
        self.storeID = storeID
        self.makeRaftConfig = raftConfig
        dataCF = db.defaultColumnFamily
        metaCF = try db.columnFamily(StoreKeys.metaColumnFamily)
        let iterator = db.makeIterator(in: metaCF, lowerBound: [StoreKeys.regionStatePrefix],
                                       upperBound: [StoreKeys.regionStatePrefix + 1])
        iterator.seekToFirst()
        var states: [Flotilla_V1_RegionLocalState] = []
        while iterator.isValid {
            states.append(try Flotilla_V1_RegionLocalState(serializedBytes: iterator.value))
            iterator.next()
        }
        try iterator.checkError()
        for state in states where state.state == .normal {
            try openPeer(state.region)
        }
    }

    /// Regions hosted here, by id.
    public var regionIDs: [UInt64] { peers.keys.sorted() }

    public func region(_ id: UInt64) -> Flotilla_V1_Region? { peers[id]?.region }

    /// The Raft role and leader of a region's replica here.
    public func raftStatus(_ regionID: UInt64) -> (role: Role, leader: UInt64, term: UInt64, applied: UInt64)? {
        peers[regionID].map { ($0.raft.role, $0.raft.leader, $0.raft.term, $0.raft.appliedIndex) }
    }

    private func openPeer(_ region: Flotilla_V1_Region) throws {
        guard let me = region.peer(onStore: storeID) else {
            throw StoreCorruption(region: region.id, what: "stored region has no peer on store \(storeID)")
        }
        let storage = try RegionRaftStorage(db: db, regionID: region.id, confState: region.confState)
        let applyState = try db.get(StoreKeys.applyState(region: region.id), in: metaCF)
            .map { bytes throws(StoreCorruption) in try StoredValues.decodeApplyState(bytes, region: region.id) }
        var config = makeRaftConfig(me.id)
        config.id = me.id
        let raft = RaftNode(config: config, storage: storage)
        peers[region.id] = RegionPeer(region: region, peerID: me.id, raft: raft, storage: storage,
                                      persistedApplied: applyState?.applied ?? 0)
    }

    /// Creates a region replica from its descriptor, as every founding store of a static
    /// cluster does: the region state, and log entry 1 adding the initial members, committed.
    /// Does nothing when the region exists already.
    public func bootstrapRegion(_ region: Flotilla_V1_Region) throws {
        guard peers[region.id] == nil else { return }
        guard region.peer(onStore: storeID) != nil else {
            throw StoreRequestError.invalidArgument(field: "region.peers", reason: "no peer on store \(storeID)")
        }
        var localState = Flotilla_V1_RegionLocalState()
        localState.region = region
        localState.state = .normal
        let changes = region.peers.sorted { $0.id < $1.id }.map { peer in
            ConfChangeSingle(peer.role == .voter ? .addVoter : .addLearner, peer.id)
        }
        let storage = try RegionRaftStorage(db: db, regionID: region.id, confState: ConfState())
        var ready = Ready()
        ready.entriesToPersist = [Entry(term: 1, index: 1, kind: .confChange, data: ConfChangeV2(changes: changes).encoded())]
        ready.hardState = HardState(term: 1, vote: noNode, commit: 1)
        let batch = db.makeWriteBatch()
        let staged = storage.stage(ready, into: batch)
        batch.put(StoreKeys.regionState(region: region.id), try localState.serializedBytes(), in: metaCF)
        try db.write(batch, sync: true)
        storage.commit(staged)
        try openPeer(region)
    }

    // MARK: Events

    /// Advances every region's logical clock by one tick.
    public func tick() {
        for peer in peers.values { peer.raft.tick() }
    }

    /// Delivers a Raft message from another store. Messages for unknown regions or peers are
    /// dropped (peer creation for new members arrives with membership changes).
    @discardableResult
    public func step(_ message: Flotilla_V1_RaftMessage) -> Bool {
        guard let peer = peers[message.regionID], message.toPeer.id == peer.peerID,
              let core = message.message.core else { return false }
        peer.raft.step(core)
        return true
    }

    /// Proposes a client write to a region this store leads.
    public func proposeWrite(_ command: Flotilla_V1_WriteCommand, context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> ProposalID {
        let peer = try leaderPeer(for: context)
        try validate(command, in: peer.region)
        let data: [UInt8]
        do { data = try command.serializedBytes() } catch {
            throw .invalidArgument(field: "command", reason: "cannot be encoded: \(error)")
        }
        let index: UInt64
        do {
            index = try peer.raft.propose(data)
        } catch {
            throw mapRaftError(error, peer: peer)
        }
        let id = makeProposalID()
        peer.pendingWrites[index] = (peer.raft.term, id)
        return id
    }

    /// Starts a linearizable read of a region; it appears in `readyReads` once the region has
    /// applied the confirmed read index.
    public func proposeRead(context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> ProposalID {
        let peer = try leaderPeer(for: context)
        let id = makeProposalID()
        var readContext: [UInt8] = []
        StoreKeys.appendBigEndian(id.value, to: &readContext)
        do {
            try peer.raft.readIndex(context: readContext)
        } catch {
            throw mapRaftError(error, peer: peer)
        }
        peer.readsAwaitingIndex[readContext] = id
        return id
    }

    /// Reads `key` from the region's applied data. Call for reads in `readyReads`.
    public func get(_ key: Data, regionID: UInt64) throws -> Data? {
        guard let peer = peers[regionID] else { throw StoreRequestError.regionNotFound(regionID: regionID) }
        guard peer.region.contains(key) else { throw StoreRequestError.keyNotInRegion(key: key, region: peer.region) }
        return try db.get([UInt8](key), in: dataCF).map { Data($0) }
    }

    /// Up to `limit` pairs of the region in [start, end) (an empty end: the region's end),
    /// ascending or, with `reverse`, descending. The range is clipped to the region.
    public func scan(regionID: UInt64, from start: Data, to end: Data, limit: Int, reverse: Bool) throws -> [(Data, Data)] {
        guard let peer = peers[regionID] else { throw StoreRequestError.regionNotFound(regionID: regionID) }
        let region = peer.region
        let lower = start.lexicographicallyPrecedes(region.startKey) ? region.startKey : start
        var upper: Data? = end.isEmpty ? nil : end
        if !region.endKey.isEmpty, upper.map({ region.endKey.lexicographicallyPrecedes($0) }) ?? true { upper = region.endKey }
        let iterator = db.makeIterator(in: dataCF, lowerBound: [UInt8](lower), upperBound: upper.map { [UInt8]($0) })
        if reverse { iterator.seekToLast() } else { iterator.seekToFirst() }
        return try iterator.collect(limit: limit, reverse: reverse).map { (Data($0.key), Data($0.value)) }
    }

    /// Every key the region holds here, in order (for checks and tools; not a client API).
    public func keys(in regionID: UInt64) throws -> [[UInt8]] {
        guard let peer = peers[regionID] else { throw StoreRequestError.regionNotFound(regionID: regionID) }
        let iterator = db.makeIterator(in: dataCF, lowerBound: [UInt8](peer.region.startKey),
                                       upperBound: peer.region.endKey.isEmpty ? nil : [UInt8](peer.region.endKey))
        iterator.seekToFirst()
        var keys: [[UInt8]] = []
        while iterator.isValid { keys.append(iterator.key); iterator.next() }
        try iterator.checkError()
        return keys
    }

    private func leaderPeer(for context: Flotilla_V1_RequestContext) throws(StoreRequestError) -> RegionPeer {
        guard let peer = peers[context.regionID] else { throw .regionNotFound(regionID: context.regionID) }
        if context.hasEpoch && context.epoch != peer.region.epoch { throw .epochNotMatch(current: peer.region) }
        guard peer.raft.role == .leader else { throw .notLeader(regionID: peer.region.id, leader: peer.region.peer(withID: peer.raft.leader)) }
        return peer
    }

    private func makeProposalID() -> ProposalID {
        defer { nextProposal += 1 }
        return ProposalID(value: nextProposal)
    }

    private func mapRaftError(_ error: RaftError, peer: RegionPeer) -> StoreRequestError {
        switch error {
        case .notLeader(let leader): .notLeader(regionID: peer.region.id, leader: peer.region.peer(withID: leader))
        case .leaderTransferInProgress: .serverIsBusy(reason: "leader transfer in progress")
        case .uncommittedLimitExceeded(let limit): .serverIsBusy(reason: "more than \(limit) bytes proposed and not committed")
        default: .proposalDropped
        }
    }

    private func validate(_ command: Flotilla_V1_WriteCommand, in region: Flotilla_V1_Region) throws(StoreRequestError) {
        let kinds = [!command.puts.isEmpty, !command.deletes.isEmpty, command.hasDeleteRange, command.hasCompareAndSwap]
        guard kinds.filter({ $0 }).count == 1 else {
            throw .invalidArgument(field: "command", reason: "exactly one of puts, deletes, delete_range, compare_and_swap must be set")
        }
        for key in command.puts.map(\.key) + command.deletes + (command.hasCompareAndSwap ? [command.compareAndSwap.key] : [])
        where !region.contains(key) {
            throw .keyNotInRegion(key: key, region: region)
        }
        if command.hasDeleteRange {
            let range = command.deleteRange
            guard range.endKey.isEmpty || range.startKey.lexicographicallyPrecedes(range.endKey) || range.startKey == range.endKey else {
                throw .invalidArgument(field: "delete_range", reason: "start key after end key")
            }
            guard region.contains(range.startKey) || range.startKey == region.startKey,
                  region.endKey.isEmpty || (!range.endKey.isEmpty && !region.endKey.lexicographicallyPrecedes(range.endKey)) else {
                throw .keyNotInRegion(key: range.startKey, region: region)
            }
        }
    }
}
