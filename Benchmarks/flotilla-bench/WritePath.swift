import ArgumentParser
import FlotillaProto
import Foundation
import Raft
import RaftStore
import RocksDB

/// The store's write path alone: three `StoreCore`s in this process, each on its own RocksDB,
/// their Raft messages framed and parsed as the transport does (one `RaftMessageBatch` per
/// destination per turn), no gRPC and no sockets. Every round each region's leader gets
/// writes (each from its own client, with a session, as `FlotillaClient` sends them) and every
/// store runs one turn; the pipeline stays full. Reports what a write costs: CPU, RocksDB
/// records, messages, frames and turns — the figures issue 13's write-path work is judged by,
/// steady where the end-to-end load test drifts with the disk and the scheduler.
struct WritePath: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write-path",
        abstract: "Measure the store write path in one process: CPU, RocksDB records, messages and frames per write.")

    @Option(help: "Regions (each with a replica on all three stores).")
    var regions = 64

    @Option(name: .customLong("writes-per-region"), help: "Writes proposed at each region's leader per round (1: one write per entry).")
    var writesPerRegion = 1

    @Option(help: "Measured rounds.")
    var rounds = 2_000

    @Option(help: "Directory for the three databases (default: a temporary directory; /dev/shm takes the disk out).")
    var directory: String?

    @Option(name: .customLong("in-flight"), help: "Writes in flight per region at most (the pipeline depth).")
    var inFlight = 4

    func validate() throws {
        guard (1...4_096).contains(regions) else { throw ValidationError("--regions must be 1 to 4096") }
        guard (1...1_024).contains(writesPerRegion) else { throw ValidationError("--writes-per-region must be 1 to 1024") }
        guard (1...1_000_000).contains(rounds) else { throw ValidationError("--rounds must be 1 to 1000000") }
        guard (1...10_000).contains(inFlight) else { throw ValidationError("--in-flight must be 1 to 10000") }
    }

    func run() throws {
        let root = (directory ?? FileManager.default.temporaryDirectory.path) + "/flotilla-write-path-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cluster = try WritePathCluster(root: root, regionCount: regions)
        try cluster.electLeaders()
        // Warm-up: a tenth of the rounds, unmeasured.
        try cluster.run(rounds: max(1, rounds / 10), writesPerRegion: writesPerRegion, inFlightMax: inFlight)
        cluster.resetCounters()
        let cpuBefore = ProcessCPU.seconds(pid: nil) ?? 0
        let clock = ContinuousClock()
        let started = clock.now
        try cluster.run(rounds: rounds, writesPerRegion: writesPerRegion, inFlightMax: inFlight)
        let elapsed = clock.now - started
        let cpu = (ProcessCPU.seconds(pid: nil) ?? 0) - cpuBefore
        let writes = Double(max(1, cluster.writesCompleted))
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print("write path: \(regions) regions, 3 replicas, \(writesPerRegion) write(s) per region per round, \(rounds) rounds")
        print("writes completed: \(cluster.writesCompleted) in \(String(format: "%.2f", seconds)) s (\(Format.rate(writes / max(seconds, 1e-9))) writes/s, all three stores on this thread)")
        print(String(format: "per write: CPU %.1f µs (three stores), RocksDB records %.2f, messages %.2f, frames %.2f (%.0f bytes), turns %.2f, synced log writes %.2f",
                     cpu * 1e6 / writes, Double(cluster.recordsWritten) / writes, Double(cluster.messages) / writes,
                     Double(cluster.frames) / writes, Double(cluster.frameBytes) / writes, Double(cluster.turns) / writes,
                     Double(cluster.logSyncs) / writes))
        if cluster.writesFailed > 0 { print("writes failed: \(cluster.writesFailed)") }
    }
}

/// Three stores wired by in-memory frames.
final class WritePathCluster {
    private var stores: [UInt64: StoreCore] = [:]
    private let regions: [Flotilla_V1_Region]
    private var inFlight: [UInt64: Int] = [:]
    private var regionOfProposal: [ProposalID: UInt64] = [:]
    private var sequences: [UInt64: UInt64] = [:]
    private var keyCounter: UInt64 = 0
    private(set) var writesCompleted = 0
    private(set) var writesFailed = 0
    private(set) var recordsWritten = 0
    private(set) var messages = 0
    private(set) var frames = 0
    private(set) var frameBytes = 0
    private(set) var turns = 0
    private(set) var logSyncs = 0
    private var round = 0

    init(root: String, regionCount: Int) throws {
        var regions: [Flotilla_V1_Region] = []
        for position in 0..<regionCount {
            var region = Flotilla_V1_Region()
            region.id = UInt64(position + 1)
            region.startKey = position == 0 ? Data() : Self.key(region: position, 0)
            region.endKey = position == regionCount - 1 ? Data() : Self.key(region: position + 1, 0)
            region.epoch.confVer = 1
            region.epoch.version = 1
            region.peers = (1...3).map { (storeID: UInt64) in
                var peer = Flotilla_V1_Peer()
                peer.id = region.id * 10 + storeID
                peer.storeID = storeID
                peer.role = .voter
                return peer
            }
            regions.append(region)
        }
        self.regions = regions
        for storeID in UInt64(1)...3 {
            let path = "\(root)/store-\(storeID)"
            let store = try StoreCore(db: try StoreDatabase.open(path: path + "/db"), storeID: storeID,
                                      settings: StoreSettings(snapshotDirectory: path + "/snapshots")) { peerID in
                // As flotilla-server configures its regions.
                RegionRaftPolicy(seed: 0).config(forPeer: peerID)
            }
            for region in regions { try store.bootstrapRegion(region) }
            stores[storeID] = store
        }
    }

    /// A key of region `position` (keys sort by region: "r" + 6 digits + "-" + 12 digits).
    static func key(region position: Int, _ number: UInt64) -> Data {
        Data(String(format: "r%06d-%012llu", position, number).utf8)
    }

    func electLeaders() throws {
        for _ in 0..<1_000 {
            if regions.allSatisfy({ leader(of: $0.id) != nil }) { return }
            for store in stores.values { store.tick() }
            try turn()
        }
        throw ValidationError("not every region elected a leader within 1,000 ticks")
    }

    private func leader(of regionID: UInt64) -> StoreCore? {
        stores.values.first { $0.raftStatus(regionID)?.role == .leader }
    }

    func resetCounters() {
        (writesCompleted, writesFailed, recordsWritten, messages, frames, frameBytes, turns, logSyncs) = (0, 0, 0, 0, 0, 0, 0, 0)
    }

    func run(rounds: Int, writesPerRegion: Int, inFlightMax: Int) throws {
        for _ in 0..<rounds {
            round += 1
            for (position, region) in regions.enumerated() {
                guard let store = leader(of: region.id) else { continue }
                for _ in 0..<writesPerRegion where inFlight[region.id, default: 0] < inFlightMax {
                    keyCounter += 1
                    // One client per region, sequences in order, as a client writing there would.
                    let client = region.id
                    let sequence = sequences[client, default: 0] + 1
                    sequences[client] = sequence
                    var command = Flotilla_V1_WriteCommand()
                    var pair = Flotilla_V1_KeyValue()
                    pair.key = Self.key(region: position, keyCounter % 100_000)
                    pair.value = Data(repeating: 0x61, count: 100)
                    command.puts = [pair]
                    command.clientID = client
                    command.sequence = sequence
                    command.firstIncompleteSequence = sequence - UInt64(inFlight[region.id, default: 0])
                    var context = Flotilla_V1_RequestContext()
                    context.regionID = region.id
                    context.epoch = region.epoch
                    let id = try store.proposeWrite(command, context: context)
                    regionOfProposal[id] = region.id
                    inFlight[region.id, default: 0] += 1
                }
            }
            // Ticks at about the server's rate against its turns (heartbeats cost too).
            if round % 10 == 0 { for store in stores.values { store.tick() } }
            try turn()
        }
    }

    /// One turn of every store; its messages are framed, parsed and delivered as the transport does.
    private func turn() throws {
        for storeID in stores.keys.sorted() {
            guard let store = stores[storeID] else { continue }
            let output = try store.runTurn()
            turns += 1
            logSyncs += output.logSyncs
            recordsWritten += output.recordsWritten
            for (id, result) in output.completedWrites {
                guard let regionID = regionOfProposal.removeValue(forKey: id) else { continue }
                inFlight[regionID, default: 1] -= 1
                if case .success = result { writesCompleted += 1 } else { writesFailed += 1 }
            }
            for destination in output.messagesByStore.keys.sorted() {
                guard let batch = output.messagesByStore[destination] else { continue }
                var frame = Flotilla_V1_RaftMessageBatch()
                frame.messages = batch
                let bytes: [UInt8] = try frame.serializedBytes()
                frames += 1
                messages += batch.count
                frameBytes += bytes.count
                for message in try Flotilla_V1_RaftMessageBatch(serializedBytes: bytes).messages { _ = stores[destination]?.step(message) }
            }
        }
    }
}
