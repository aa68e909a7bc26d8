import FlotillaProto
import Foundation
import Raft
import RaftStore
import RocksDB

/// One store of the simulation: the real `StoreCore` on a RocksDB in a temporary directory,
/// driven as `StoreDriver` drives it (ticks owed first, then messages and requests, then a
/// turn), plus the simulation's faults: a crash keeps only what RocksDB synced, a pause stops
/// the loop (SIGSTOP), a slow disk runs a turn every few ticks only.
final class SimulatedStore {
    let id: UInt64
    let path: String
    private let raftSeed: UInt64
    private let electionTimeoutTicks: Int
    private(set) var core: StoreCore?
    /// Bumped by every crash: snapshots read from an earlier life are dropped.
    private(set) var generation = 0
    var restartAt: UInt64?
    var pausedUntil: UInt64 = 0
    var slowUntil: UInt64 = 0
    var slowEveryTicks: UInt64 = 1
    /// Ticks owed since the loop last ran (caught up on the next run, as the driver does).
    var ticksOwed = 0
    var inbox: [SimEnvelope] = []
    var pendingWrites: [ProposalID: (client: Int, operation: UInt64)] = [:]
    var pendingReads: [ProposalID: (client: Int, operation: UInt64, key: Data, regionID: UInt64, epoch: Flotilla_V1_RegionEpoch)] = [:]
    /// Regions whose split this store asked PD ids for, at which epoch version.
    var splitsAsked: [UInt64: UInt64] = [:]
    /// What the last region heartbeat reported, per region led here.
    var lastReported: [UInt64: (region: Flotilla_V1_Region, leader: Flotilla_V1_Peer)] = [:]

    var isUp: Bool { core != nil }

    init(id: UInt64, root: String, raftSeed: UInt64, electionTimeoutTicks: Int) throws {
        self.id = id
        self.path = root + "/store-\(id)"
        self.raftSeed = raftSeed
        self.electionTimeoutTicks = electionTimeoutTicks
        try open()
    }

    /// RocksDB as a crash test needs it: unsynced writes stay in RocksDB's buffer (so the
    /// files hold what a power loss leaves) and nothing changes the files in the background.
    static var tuning: DatabaseOptions {
        var options = StoreDatabase.options
        options.manualWALFlush = true
        options.autoCompactions = false
        options.writeBufferBytes = 256 << 20
        options.blockCacheBytes = 4 << 20
        options.compression = .none
        options.maxBackgroundJobs = 1
        return options
    }

    func open() throws {
        let db = try StoreDatabase.open(path: path + "/db", tuning: Self.tuning)
        var settings = StoreSettings(snapshotDirectory: path + "/snapshots")
        settings.logGCCountThreshold = 200
        settings.logGCSizeThresholdBytes = 1 << 20
        settings.peerDownTicks = UInt64(electionTimeoutTicks * 30)
        settings.snapshotChunkBytes = 64 << 10
        let seed = raftSeed
        let election = electionTimeoutTicks
        let generation = UInt64(self.generation)
        core = try StoreCore(db: db, storeID: id, settings: settings) { peerID in
            var config = RaftConfig(id: peerID)
            config.electionTimeoutTicks = election
            config.heartbeatIntervalTicks = 2
            config.broadcastCommit = false
            config.randomSeed = seed ^ (peerID &* 0x9E37_79B9) ^ (generation << 48)
            return config
        }
    }

    /// Crashes the store as a power loss would: the files are copied as they are (unsynced
    /// writes are still in RocksDB's buffer, not in them), the process's state is dropped, and
    /// the copy becomes the store's directory.
    func crash() throws {
        guard core != nil else { return }
        let image = path + ".image"
        try? FileManager.default.removeItem(atPath: image)
        try FileManager.default.copyItem(atPath: path, toPath: image)
        core = nil  // closes RocksDB; what it flushes on close goes to the discarded directory
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.moveItem(atPath: image, toPath: path)
        generation += 1
        inbox = []
        pendingWrites = [:]
        pendingReads = [:]
        splitsAsked = [:]
        lastReported = [:]
        ticksOwed = 0
    }

    func restart() throws {
        precondition(core == nil, "restart of a running store")
        try open()
        restartAt = nil
    }

    /// Whether the loop runs this tick (not paused, and a slow disk's turn is due).
    func runs(at tick: UInt64) -> Bool {
        guard core != nil, tick >= pausedUntil else { return false }
        return tick >= slowUntil || tick % slowEveryTicks == 0
    }
}
