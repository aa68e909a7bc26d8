import FlotillaProto
import Foundation
import Raft
import RaftStore
import RocksDB

/// One store of the simulation: the real `StoreCore` on a RocksDB in a temporary directory,
/// driven by the production `StoreLoop` (the edge is the simulated network), and the real
/// `PDReporting` decisions of its PD agent; plus the simulation's faults: a crash keeps only
/// what RocksDB synced (or, for a process crash, everything written), and may fall between
/// any two disk writes of a turn; a pause stops the loop (SIGSTOP); a slow disk runs the loop
/// every few ticks only.
final class SimulatedStore {
    let id: UInt64
    let path: String
    private let raftSeed: UInt64
    private let electionTimeoutTicks: Int
    private(set) var loop: StoreLoop<SimulatedStoreEdge>?
    var core: StoreCore? { loop?.core }
    /// The PD agent's decisions, as production makes them (its memory goes with a crash).
    var reporting = PDReporting()
    /// A crash armed to fall before the store's `atWrite`-th disk write from now (0: the
    /// next one), inside whichever turn makes it, keeping unsynced writes (a process crash)
    /// or not (a power loss); armed at tick `armedAt`.
    private(set) var crashInTurn: (atWrite: Int, keepUnsynced: Bool, armedAt: UInt64)?
    private var writesSinceArmed = 0
    /// Set by the disk-write observer when the armed crash fell: the turn failed there.
    private(set) var crashedInTurn: StoreDiskWrite?
    /// Bumped by every crash: snapshots read from an earlier life are dropped.
    private(set) var generation = 0
    var restartAt: UInt64?
    var pausedUntil: UInt64 = 0
    var slowUntil: UInt64 = 0
    var slowEveryTicks: UInt64 = 1
    var inbox: [SimEnvelope] = []
    /// Splits applied here since the last heartbeat round (the agent reports at once).
    var splitsSinceHeartbeat = false

    var isUp: Bool { loop != nil }
    /// Region sleeps and wakes counted by the store's cores before its last restart.
    var sleepsOfEarlierLives: UInt64 = 0
    var wakesOfEarlierLives: UInt64 = 0
    var regionSleepsTotal: UInt64 { sleepsOfEarlierLives + (loop?.core.regionSleepsTotal ?? 0) }
    var regionWakesTotal: UInt64 { wakesOfEarlierLives + (loop?.core.regionWakesTotal ?? 0) }

    init(id: UInt64, root: String, raftSeed: UInt64, electionTimeoutTicks: Int, reporting: PDReporting.Settings,
         edge: SimulatedStoreEdge) throws {
        self.id = id
        self.path = root + "/store-\(id)"
        self.raftSeed = raftSeed
        self.electionTimeoutTicks = electionTimeoutTicks
        self.reportingSettings = reporting
        self.edge = edge
        try open(at: .zero)
    }

    private let reportingSettings: PDReporting.Settings
    let edge: SimulatedStoreEdge

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

    /// Opens the store and its loop, whose clock starts at `now` (simulated time).
    func open(at now: Duration) throws {
        let db = try StoreDatabase.open(path: path + "/db", tuning: Self.tuning)
        var settings = StoreSettings(snapshotDirectory: path + "/snapshots")
        settings.logGCCountThreshold = 200
        settings.logGCSizeThresholdBytes = 1 << 20
        settings.peerDownTicks = UInt64(electionTimeoutTicks * 30)
        settings.snapshotChunkBytes = 64 << 10
        // Regions sleep after 2–20 quiet ticks (seeded), so runs cover eager and lazy sleep.
        settings.regionSleepAfterQuietTicks = Int(raftSeed % 19) + 2
        settings.storeDeadAfterTicks = Self.storeDeadAfterTicks
        let seed = raftSeed
        let election = electionTimeoutTicks
        let generation = UInt64(self.generation)
        // The production policy; the seed replays the run (and differs per life of the store).
        var policy = RegionRaftPolicy(seed: seed ^ (generation << 48))
        policy.electionTimeoutTicks = election
        let core = try StoreCore(db: db, storeID: id, settings: settings, raftConfig: { [policy] in policy.config(forPeer: $0) })
        core.diskWriteObserver = { [unowned self] what in try self.observe(what, db: db) }
        loop = StoreLoop(core: core, tickInterval: SimulatedStore.tickInterval, tickCatchUpMax: 2 * electionTimeoutTicks + 1, startingAt: now)
        reporting = PDReporting(settings: reportingSettings)
    }

    /// A store not heard from for this many ticks is presumed dead by the others.
    static let storeDeadAfterTicks: UInt64 = 20

    /// A simulated tick is 10 ms of the loop's time.
    static let tickInterval = Duration.milliseconds(10)

    /// Called before every disk write of the store: the armed crash falls here, imaging the
    /// files as they are at this point (first writing RocksDB's buffered log to its file for a
    /// process crash, which keeps unsynced writes; a power loss keeps only the synced).
    private func observe(_ what: StoreDiskWrite, db: Database) throws {
        guard let armed = crashInTurn else { return }
        defer { writesSinceArmed += 1 }
        guard writesSinceArmed == armed.atWrite else { return }
        if armed.keepUnsynced { try db.flushWAL(sync: false) }
        try image()
        crashedInTurn = what
        throw SimulatedCrash(at: what)
    }

    /// Arms a crash before the `atWrite`-th disk write from now.
    func armCrash(atWrite: Int, keepUnsynced: Bool, tick: UInt64) {
        crashInTurn = (atWrite, keepUnsynced, tick)
        writesSinceArmed = 0
    }

    /// Crashes the store as a power loss would: the files are copied as they are (unsynced
    /// writes are still in RocksDB's buffer, not in them), the process's state is dropped, and
    /// the copy becomes the store's directory.
    func crash() throws {
        guard let running = loop else { return }
        sleepsOfEarlierLives += running.core.regionSleepsTotal
        wakesOfEarlierLives += running.core.regionWakesTotal
        if crashedInTurn == nil { try image() }
        loop = nil  // closes RocksDB; what it flushes on close goes to the discarded directory
        let image = path + ".image"
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.moveItem(atPath: image, toPath: path)
        generation += 1
        inbox = []
        splitsSinceHeartbeat = false
        crashInTurn = nil
        crashedInTurn = nil
    }

    /// Copies the store's files as they are now: what a crash at this instant leaves.
    private func image() throws {
        let image = path + ".image"
        try? FileManager.default.removeItem(atPath: image)
        try FileManager.default.copyItem(atPath: path, toPath: image)
    }

    func restart(at now: Duration) throws {
        precondition(loop == nil, "restart of a running store")
        try open(at: now)
        restartAt = nil
    }

    /// Whether the loop runs this tick (not paused, and a slow disk's turn is due).
    func runs(at tick: UInt64) -> Bool {
        guard loop != nil, tick >= pausedUntil else { return false }
        return tick >= slowUntil || tick % slowEveryTicks == 0
    }
}

/// A crash the simulation made fall inside a turn, before a disk write.
struct SimulatedCrash: Error, CustomStringConvertible {
    let at: StoreDiskWrite
    var description: String { "simulated crash before the \(at)" }
}
