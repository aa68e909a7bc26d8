import ArgumentParser
import FlotillaClient
import FlotillaProto
import Foundation
import Histogram

/// Replica moves on a running cluster of at least four stores (`--pd`): how fast a move's
/// snapshot goes and how long a whole move of a region of `--region-mib` takes, then the
/// writers' latency while PD moves `--moves` replicas against an equally long window without.
struct MoveBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "move",
        abstract: "Measure a replica move (snapshot MB/s, time) and write latency during moves.")

    @Option(name: .customLong("pd"), help: "PD endpoints (default: FLOTILLA_PD).")
    var pd: String?

    @Option(name: .customLong("region-mib"), help: "MiB of data in the region moved first (0: skip that part).")
    var regionMiB = 64

    @Option(help: "Replica moves during the write window (at most 4 at once).")
    var moves = 16

    @Option(help: "Concurrent writers.")
    var concurrency = 16

    @Option(name: .customLong("baseline-seconds"), help: "Seconds of writes without moves, measured first.")
    var baselineSeconds = 10

    func validate() throws {
        guard (0...4_096).contains(regionMiB) else { throw ValidationError("--region-mib must be 0 to 4096") }
        guard (1...1_000).contains(moves) else { throw ValidationError("--moves must be 1 to 1000") }
        guard (1...1_024).contains(concurrency) else { throw ValidationError("--concurrency must be 1 to 1024") }
        guard (1...3_600).contains(baselineSeconds) else { throw ValidationError("--baseline-seconds must be 1 to 3600") }
    }

    func run() async throws {
        guard let endpoints = (pd ?? ProcessInfo.processInfo.environment["FLOTILLA_PD"])?.split(separator: ",").map(String.init) else {
            throw ValidationError("no PD endpoints: pass --pd or set FLOTILLA_PD")
        }
        let routes = try PDClient(endpoints: endpoints, requestTimeout: .seconds(30))
        let client = try FlotillaClient(pd: endpoints, requestTimeout: .seconds(30))
        let connections = Task { try await client.run() }
        let pdConnections = Task { try await routes.run() }
        defer {
            client.close()
            routes.close()
            connections.cancel()
            pdConnections.cancel()
        }
        let stores = try await routes.stores(excludeTombstones: true).filter { $0.liveness == .up }.map(\.store.id)
        guard stores.count >= 4 else { throw ValidationError("a move needs a store without the region: start at least 4 stores (PD sees \(stores.count) up)") }
        // The bench chooses what moves: the balancers stay off meanwhile, then are restored.
        let saved = try await routes.schedulerSettings()
        var quiet = saved
        quiet.balanceRegionEnabled = false
        quiet.balanceLeaderEnabled = false
        quiet.hotRegionEnabled = false
        try await routes.setSchedulerSettings(quiet)
        defer { Task { [routes] in try? await routes.setSchedulerSettings(saved) } }

        if regionMiB > 0 { try await moveOneBigRegion(client: client, routes: routes, stores: stores) }
        try await writesDuringMoves(client: client, routes: routes, stores: stores)
        try await routes.setSchedulerSettings(saved)
    }

    /// Fills a region of its own with `regionMiB` MiB, moves a follower's replica to a store
    /// without one, and reports the snapshot's rate (until the learner caught up) and the
    /// move's time.
    private func moveOneBigRegion(client: FlotillaClient, routes: PDClient, stores: [UInt64]) async throws {
        let prefix = "mvbig/"
        _ = try? await client.split(at: [Data(prefix.utf8), Data("mvbig0".utf8)])
        let value = Data(repeating: UInt8(ascii: "m"), count: 1_000)
        let keyCount = regionMiB << 20 / (value.count + 16)
        let fillStarted = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            let perWriter = (keyCount + 15) / 16
            for writer in 0..<16 {
                group.addTask {
                    var index = writer * perWriter
                    while index < min(keyCount, (writer + 1) * perWriter) {
                        let end = min(index + 64, min(keyCount, (writer + 1) * perWriter))
                        try await client.batchPut((index..<end).map { (Data(String(format: "\(prefix)%09d", $0).utf8), value) })
                        index = end
                    }
                }
            }
            try await group.waitForAll()
        }
        print("filled \(regionMiB) MiB (\(keyCount) keys of \(value.count) bytes) in \(ContinuousClock.now - fillStarted)")
        try await Task.sleep(for: .seconds(3))  // the leader reports the region's size
        let info = try await routes.region(key: Data(prefix.utf8)).region
        guard let source = info.region.peers.first(where: { $0.storeID != info.leader.storeID }),
              let target = stores.first(where: { id in !info.region.peers.contains { $0.storeID == id } }) else {
            throw ValidationError("region \(info.region.id) has no follower or no store is free of it")
        }
        let started = ContinuousClock.now
        let op = try await routes.movePeer(info.region.id, from: source.storeID, to: target)
        var caughtUp: Duration?
        var ended: Flotilla_V1_OperatorInfo?
        while ended == nil, ContinuousClock.now - started < .seconds(600) {
            try await Task.sleep(for: .milliseconds(20))
            let found = try await routes.operators(includeHistory: true).first { $0.id == op.id }
            if caughtUp == nil, let found, found.currentStep >= 1 || found.status == .succeeded { caughtUp = ContinuousClock.now - started }
            if let found, found.status != .running { ended = found }
        }
        let bytes = Double(keyCount * (value.count + 16))
        guard let ended, ended.status == .succeeded, let caughtUp else {
            print("move of region \(info.region.id) did not succeed: \(ended.map { "\($0.status) \($0.reason)" } ?? "still running")")
            return
        }
        let seconds = Double(caughtUp.components.seconds) + Double(caughtUp.components.attoseconds) / 1e18
        print(String(format: "move of a %d MiB region (store %llu → %llu): learner caught up by snapshot in %.2f s (%.1f MB/s), whole move %@",
                     regionMiB, source.storeID, target, seconds, bytes / seconds / 1e6, "\(ContinuousClock.now - started)"))
    }

    /// Writers at random keys over a window without moves, then over `moves` replica moves of
    /// regions of their range (at most 4 at once).
    private func writesDuringMoves(client: FlotillaClient, routes: PDClient, stores: [UInt64]) async throws {
        let key: @Sendable (UInt64) -> Data = { value in Data(String(format: "mvw%012llu", value).utf8) }
        _ = try? await client.split(at: (0..<16).map { key(UInt64($0) * 62_500_000_000) })
        let shared = SplitBench.Shared()
        let writers = SplitBench.startWriters(client: client, concurrency: concurrency, shared: shared,
                                              value: Data(repeating: UInt8(ascii: "v"), count: 100), key: key)
        try await Task.sleep(for: .seconds(2))
        let baseline = SplitBench.Window()
        shared.current.withLock { $0 = baseline }
        try await Task.sleep(for: .seconds(baselineSeconds))
        let during = SplitBench.Window()
        shared.current.withLock { $0 = during }
        let started = ContinuousClock.now
        var done = 0, failed = 0
        var running: [UInt64] = []
        var moving: Set<UInt64> = []
        var next = 0
        while done + failed < moves, ContinuousClock.now - started < .seconds(600) {
            let ops = try await routes.operators(includeHistory: true)
            for id in running {
                if let op = ops.first(where: { $0.id == id }), op.status != .running {
                    if op.status == .succeeded { done += 1 } else { failed += 1 }
                    running.removeAll { $0 == id }
                    moving.remove(op.regionID)
                }
            }
            while running.count < 4 && next < moves {
                next += 1
                let regions = try await routes.scanRegions(from: key(0), to: Data("mvx".utf8)).regions
                guard !regions.isEmpty else { break }
                let busy = Set(ops.filter { $0.status == .running }.map(\.regionID)).union(moving)
                guard let info = regions.filter({ !busy.contains($0.region.id) && !$0.joint && $0.region.peers.allSatisfy { $0.role == .voter } }).randomElement(),
                      let source = info.region.peers.filter({ $0.storeID != info.leader.storeID }).randomElement(),
                      let target = stores.filter({ id in !info.region.peers.contains { $0.storeID == id } }).randomElement() else {
                    failed += 1
                    continue
                }
                do {
                    running.append(try await routes.movePeer(info.region.id, from: source.storeID, to: target).id)
                    moving.insert(info.region.id)
                } catch {
                    failed += 1
                    print("a move of region \(info.region.id) was refused: \(error)")
                }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let window = ContinuousClock.now - started
        shared.current.withLock { $0 = nil }
        shared.stop.store(true, ordering: .relaxed)
        await writers.value
        print("writes without moves (\(baselineSeconds) s): \(baseline.summary)")
        print("writes during \(done) moves (\(failed) failed) over \(window): \(during.summary)")
    }
}

/// Waits until the replicas and leaders of every up store are within `--tolerance-percent` of
/// the mean (PD's routes, every region whole), printing the time it took and the counts: run
/// it right after adding a store to time a rebalance.
struct BalanceWait: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balance-wait",
        abstract: "Time until replicas and leaders per store are within a tolerance of the mean.")

    @Option(name: .customLong("pd"), help: "PD endpoints (default: FLOTILLA_PD).")
    var pd: String?

    @Option(name: .customLong("tolerance-percent"), help: "How far from the mean a store may be.")
    var tolerancePercent = 20.0

    @Option(name: .customLong("timeout-seconds"), help: "Give up after this long.")
    var timeoutSeconds = 1_800

    func run() async throws {
        guard let endpoints = (pd ?? ProcessInfo.processInfo.environment["FLOTILLA_PD"])?.split(separator: ",").map(String.init) else {
            throw ValidationError("no PD endpoints: pass --pd or set FLOTILLA_PD")
        }
        let routes = try PDClient(endpoints: endpoints, requestTimeout: .seconds(30))
        let connections = Task { try await routes.run() }
        defer {
            routes.close()
            connections.cancel()
        }
        let started = ContinuousClock.now
        var lastPrint = started
        while ContinuousClock.now - started < .seconds(timeoutSeconds) {
            let stores = try await routes.stores(excludeTombstones: true).filter { $0.liveness == .up && $0.store.state == .up }.map(\.store.id)
            let regions = try await routes.scanRegions().regions
            var replicas: [UInt64: Int] = [:], leaders: [UInt64: Int] = [:]
            for info in regions {
                for peer in info.region.peers { replicas[peer.storeID, default: 0] += 1 }
                if info.hasLeader { leaders[info.leader.storeID, default: 0] += 1 }
            }
            func within(_ counts: [UInt64: Int]) -> Bool {
                let values = stores.map { Double(counts[$0] ?? 0) }
                let mean = values.reduce(0, +) / Double(max(1, values.count))
                return values.allSatisfy { abs($0 - mean) <= mean * tolerancePercent / 100 }
            }
            let whole = regions.allSatisfy { !$0.joint && $0.region.peers.allSatisfy { $0.role == .voter } }
            let table = stores.sorted().map { "store \($0): \(replicas[$0] ?? 0) replicas, \(leaders[$0] ?? 0) leaders" }.joined(separator: "; ")
            if whole && within(replicas) && within(leaders) {
                print("balanced within \(tolerancePercent) % after \(ContinuousClock.now - started) (\(regions.count) regions): \(table)")
                return
            }
            if ContinuousClock.now - lastPrint > .seconds(10) {
                lastPrint = .now
                print("\(ContinuousClock.now - started): \(table)")
            }
            try await Task.sleep(for: .milliseconds(500))
        }
        throw ValidationError("not balanced after \(timeoutSeconds) s")
    }
}
