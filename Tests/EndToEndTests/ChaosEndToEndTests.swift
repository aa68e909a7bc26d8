import FlotillaClient
import FlotillaProto
import Foundation
import Raft
import Synchronization
import Testing

/// The process nemesis (`ops/chaos` runs it for as long as asked; the suite for a minute):
/// three PD members and four stores on loopback, one store's data directory on a small tmpfs.
/// Register, writer and bank clients run through `FlotillaClient` while a seeded nemesis,
/// one fault at a time, kill -9s and restarts stores and PD members, SIGSTOPs and SIGCONTs
/// them, cuts a store's Raft links (`StoreAdmin.InjectFault`), fills the small disk, and asks
/// PD for splits, moves and leader transfers. Afterwards: the register history is
/// linearizable, every acknowledged write is there, the bank's total is unchanged, and
/// `flotillactl region check --all` finds every region's replicas identical.
///
/// `FLOTILLA_CHAOS_SECONDS` (default 60) and `FLOTILLA_CHAOS_SEED` (default: random, printed).
@Suite("Process nemesis", .serialized)
struct ChaosEndToEndTests {
    @Test func theClusterKeepsEveryRuleUnderAProcessNemesis() async throws {
        let environment = ProcessInfo.processInfo.environment
        let seconds = environment["FLOTILLA_CHAOS_SECONDS"].flatMap(Double.init) ?? 60
        let seed = environment["FLOTILLA_CHAOS_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...999_999)
        print("chaos: seed \(seed), \(Int(seconds)) s of faults (FLOTILLA_CHAOS_SEED=\(seed) FLOTILLA_CHAOS_SECONDS=\(Int(seconds)) ops/chaos replays the schedule)")
        guard getuid() == 0 else {
            Issue.record("the process nemesis mounts a size-limited tmpfs for the disk-full fault: run it as root")
            return
        }
        let pd = try LocalPD(members: 3)
        let smallDisk = pd.root + "/store-3"
        try FileManager.default.createDirectory(atPath: smallDisk, withIntermediateDirectories: true)
        let mounted = try LocalCluster.runToEnd("/bin/mount", ["-t", "tmpfs", "-o", "size=\(ChaosRun.smallDiskBytes)", "tmpfs", smallDisk])
        try #require(mounted.status == 0, "mount a tmpfs for the small disk: \(mounted.output)")
        defer {
            for index in 0..<4 { pd.killStore(index) }
            for index in 0..<3 { pd.kill(index) }
            _ = try? LocalCluster.runToEnd("/bin/umount", ["-l", smallDisk])
        }
        pd.storeArguments = ["--stale-replica-seconds", "3", "--enable-fault-injection", "--disk-reserve-mb", "\(ChaosRun.reserveMegabytes)"]
        for index in 0..<4 { try pd.startStore(index) }
        try await pd.withClient(timeout: .seconds(30)) { routes in
            try await ChaosRun(pd: pd, routes: routes, seed: seed, seconds: seconds, smallDisk: smallDisk).run()
        }
    }
}

/// One nemesis run against a started cluster.
struct ChaosRun {
    static let smallDiskBytes = 512 << 20
    static let reserveMegabytes = 16
    let pd: LocalPD
    let routes: PDClient
    let seed: UInt64
    let seconds: Double
    let smallDisk: String

    /// The nemesis's choices, from the seed.
    private struct SplitMix {
        var generator: SplitMix64
        init(state: UInt64) { generator = SplitMix64(seed: state) }
        mutating func next() -> UInt64 { generator.next() }
        mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(max(1, bound))) }
        mutating func seconds(_ range: ClosedRange<Double>) -> Duration {
            .milliseconds(Int((range.lowerBound + Double(next() % 1_000) / 1_000 * (range.upperBound - range.lowerBound)) * 1_000))
        }
    }

    func run() async throws {
        #expect(await eventually(seconds: 60) { (try? await routes.region(key: Data())).map { MoveEndToEndTests.isWhole($0.region) } ?? false },
                "the first region reaches three voters")
        let ids = try await MoveEndToEndTests.storeIDs(pd, routes)
        try #require(ids.count == 4, "four stores joined: \(ids)")
        let client = try FlotillaClient(pd: pd.clientAddresses, requestTimeout: .seconds(40))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            defer { client.close(); group.cancelAll() }
            #expect(try await MoveEndToEndTests.presplit(client, routes, count: 8), "8 regions, each with three voters")
            let bank = try await Bank(client: client, accounts: 8, clients: 2)
            let workload = ClientWorkload(client: client, prefix: "r", writers: 2, minimumWrites: 20,
                                          registers: ["r01-register", "r04-register", "r06-register"], registerClients: 3,
                                          rotateRegistersEvery: .seconds(60))
            var random = SplitMix(state: seed)
            let faults = try await nemesis(&random, client: client, ids: ids)
            try await heal(client: client, ids: ids)
            print("chaos: \(faults.count) faults: \(Dictionary(grouping: faults, by: { $0 }).mapValues(\.count).sorted { $0.key < $1.key })")
            let (keys, operations) = try await workload.finish("chaos")
            print("chaos: \(keys.count) keys written and read back, \(operations) register operations checked")
            try await bank.finish()
            let check = try LocalCluster.runToEnd(OperationsEndToEndTests.ctl, ["region", "check", "--all", "--pd", pd.clientAddresses.joined(separator: ",")])
            #expect(check.status == 0, "region check --all after the nemesis: \(check.output)")
            print("chaos: region check --all: \(check.output.split(separator: "\n").filter { $0.contains("consistent") || $0.contains("INCONSISTENT") }.joined(separator: "; "))")
        }
    }

    /// Faults one at a time until the time is up; returns their names.
    private func nemesis(_ random: inout SplitMix, client: FlotillaClient, ids: [Int: UInt64]) async throws -> [String] {
        let deadline = ContinuousClock.now + .seconds(seconds)
        var faults: [String] = []
        while ContinuousClock.now < deadline {
            try await Task.sleep(for: random.seconds(0.5...2))
            let store = random.below(4)
            let member = random.below(3)
            let hold = random.seconds(1...5)
            let choice = random.below(9)
            switch choice {
            case 0:
                faults.append("kill -9 store")
                pd.killStore(store)
                try await Task.sleep(for: hold)
                try pd.startStore(store)
            case 1:
                faults.append("kill -9 PD member")
                pd.kill(member)
                try await Task.sleep(for: hold)
                try pd.start(member)
            case 2, 3:
                // SIGSTOP a store or a PD member, SIGCONT after the hold.
                let paused = choice == 2 ? pd.stores[store] : pd.processes[member]
                faults.append(choice == 2 ? "SIGSTOP store" : "SIGSTOP PD member")
                guard let process = paused else { continue }
                kill(process.processIdentifier, SIGSTOP)
                try await Task.sleep(for: hold)
                kill(process.processIdentifier, SIGCONT)
            case 4:
                faults.append("cut a store's Raft links")
                try await cut(store, ids: ids, client: client)
                try await Task.sleep(for: hold)
                try await healLinks(ids: ids, client: client)
            case 5:
                faults.append("fill the small disk")
                try await fillSmallDisk(client: client, ids: ids, hold: hold)
            case 6:
                faults.append("split")
                if let regions = try? await routes.scanRegions().regions, let info = regions.randomElement(),
                   let key = Self.keyInside(info.region, random: &random) {
                    _ = try? await routes.splitRegion(info.region.id, at: [key])
                }
            case 7:
                faults.append("move")
                if let regions = try? await routes.scanRegions().regions, !regions.isEmpty {
                    let info = regions[random.below(regions.count)]
                    let holders = Set(info.region.peers.map(\.storeID))
                    if let from = info.region.peers.first?.storeID, let to = ids.values.sorted().first(where: { !holders.contains($0) }) {
                        _ = try? await routes.movePeer(info.region.id, from: from, to: to)
                    }
                }
            default:
                faults.append("transfer leader")
                if let regions = try? await routes.scanRegions().regions, !regions.isEmpty {
                    let info = regions[random.below(regions.count)]
                    if let to = info.region.peers.filter({ $0.role == .voter && $0.storeID != info.leader.storeID }).first {
                        _ = try? await routes.transferLeader(info.region.id, to: to.storeID)
                    }
                }
            }
        }
        return faults
    }

    /// A key strictly inside the region, of the workloads' shape (`rNN-...`).
    private static func keyInside(_ region: Flotilla_V1_Region, random: inout SplitMix) -> Data? {
        for _ in 0..<20 {
            let key = Data(String(format: "r%02d-%05d", random.below(8), random.below(2_000)).utf8)
            if region.contains(key) && key != region.startKey { return key }
        }
        return nil
    }

    /// Cuts store `index` off from every other store (both ends told, so both drop frames).
    private func cut(_ index: Int, ids: [Int: UInt64], client: FlotillaClient) async throws {
        guard let victim = ids[index] else { return }
        let others = ids.values.filter { $0 != victim }.sorted()
        _ = try? await client.injectFault(cutStoreIDs: others, storeID: victim)
        for other in others { _ = try? await client.injectFault(cutStoreIDs: [victim], storeID: other) }
    }

    private func healLinks(ids: [Int: UInt64], client: FlotillaClient) async throws {
        for id in ids.values.sorted() { _ = try? await client.injectFault(cutStoreIDs: [], storeID: id) }
    }

    /// Fills the tmpfs under store 3 to below its reserve: a write to a region it leads is
    /// refused with "disk full" (and the store keeps running); once the filler is gone,
    /// the same write succeeds.
    private func fillSmallDisk(client: FlotillaClient, ids: [Int: UInt64], hold: Duration) async throws {
        guard let storeID = ids[3], pd.stores[3] != nil else { return }
        // A region led by the small store, so a write meets its guard.
        var led = (try? await routes.scanRegions().regions)?.first { $0.leader.storeID == storeID }
        if led == nil, let regions = try? await routes.scanRegions().regions,
           let candidate = regions.first(where: { $0.region.peers.contains { $0.storeID == storeID && $0.role == .voter } }),
           let op = try? await routes.transferLeader(candidate.region.id, to: storeID) {
            _ = await MoveEndToEndTests.ended(routes, operator: op.id, seconds: 15)
            led = (try? await routes.scanRegions().regions)?.first { $0.leader.storeID == storeID }
        }
        let filler = smallDisk + "/filler"
        let leave = UInt64(Self.reserveMegabytes / 2) << 20
        guard DiskSpace.available(smallDisk) > leave, FileManager.default.createFile(atPath: filler, contents: nil) else { return }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: filler))
        defer { try? FileManager.default.removeItem(atPath: filler) }
        var written: UInt64 = 0
        /// Tops the filler up to leave half the reserve free (the store's own files come and go).
        func topUp() {
            let chunk = Data(count: 1 << 20)
            while DiskSpace.available(smallDisk) > leave + UInt64(chunk.count) {
                do { try handle.write(contentsOf: chunk) } catch { break }
                written += UInt64(chunk.count)
            }
        }
        topUp()
        if let info = led, let key = Self.keyInRegion(info.region) {
            // The guard reads the free space every half second.
            try await Task.sleep(for: .seconds(1))
            topUp()
            try await Task.sleep(for: .milliseconds(600))
            let probe = try FlotillaClient(pd: pd.clientAddresses, requestTimeout: .seconds(3))
            let address = pd.storeAddresses[3]?.address ?? ""
            let smallDisk = self.smallDisk
            await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await probe.run() }
                defer { probe.close(); group.cancelAll() }
                var refusal: String?
                do { try await probe.put(key, Data("disk-probe".utf8)) } catch { refusal = "\(error)" }
                // Judged by the full store itself: whether it leads the region now, and the
                // free space then (a fault may have moved the leader, the store's own files
                // may have shrunk back above the reserve, PD's routes lag).
                let free = DiskSpace.available(smallDisk)
                let regions = (try? await MoveEndToEndTests.status(address))?.regionStatus ?? []
                let leads = regions.contains { $0.regionID == info.region.id && $0.role == "leader" }
                let full = free < UInt64(Self.reserveMegabytes) << 20
                if let refusal {
                    #expect(refusal.contains("disk full") || !leads, "the full store's refusal names the cause: \(refusal)")
                    print("chaos: the probe write was refused (the full store leads its region: \(leads)): \(String(refusal.prefix(200)))")
                } else {
                    #expect(!leads || !full, "a write to region \(info.region.id), led by the full store (\(free >> 20) MiB free), was accepted")
                    print("chaos: the probe write went through (the full store leads its region: \(leads), \(free >> 20) MiB free)")
                }
            }
        }
        try? handle.close()
        try await Task.sleep(for: hold)
        try? FileManager.default.removeItem(atPath: filler)
        #expect(pd.stores[3].map { $0.isRunning } ?? true, "the store with the full disk keeps running")
        print("chaos: small disk filled (\(written >> 20) MiB filler, \(DiskSpace.available(smallDisk) >> 20) MiB free after)")
    }

    private static func keyInRegion(_ region: Flotilla_V1_Region) -> Data? {
        for index in 0..<100 {
            let key = Data(String(format: "r%02d-probe", index).utf8)
            if region.contains(key) { return key }
        }
        return region.contains(Data("probe".utf8)) ? Data("probe".utf8) : nil
    }

    /// Every process back, links healed, the filler gone; the cluster serves again.
    private func heal(client: FlotillaClient, ids: [Int: UInt64]) async throws {
        for index in 0..<4 where pd.stores[index] == nil { try pd.startStore(index) }
        for index in 0..<3 where pd.processes[index] == nil { try pd.start(index) }
        for process in Array(pd.stores.values) + Array(pd.processes.values) { kill(process.processIdentifier, SIGCONT) }
        try await healLinks(ids: ids, client: client)
        try? FileManager.default.removeItem(atPath: smallDisk + "/filler")
        let healed = ContinuousClock.now
        let served = await eventually(seconds: 60) {
            guard (try? await client.put(Data("r00-after-heal".utf8), Data("ok".utf8))) != nil else { return false }
            do { _ = try await client.get(Data("r07-after-heal".utf8)) } catch { return false }
            return true
        }
        #expect(served, "the cluster serves again within 60 s of the heal")
        print("chaos: serving again \(ContinuousClock.now - healed) after the heal")
    }
}

/// The bank workload: `accounts` accounts in different regions, each holding
/// "balance:transfer-id"; clients move money between two accounts with a compare-and-swap
/// on each (the id makes every value unique, so no swap applies twice and an unknown outcome
/// is settled by reading). The total never changes.
final class Bank: Sendable {
    static let initialBalance = 1_000
    let client: FlotillaClient
    let keys: [Data]
    private let stop = ManagedAtomicFlag()
    private let task: Mutex<Task<Int, Error>?> = Mutex(nil)

    init(client: FlotillaClient, accounts: Int, clients: Int) async throws {
        self.client = client
        keys = (0..<accounts).map { Data(String(format: "r%02d-account", $0).utf8) }
        for key in keys { try await client.put(key, Data("\(Self.initialBalance):0".utf8)) }
        let keys = self.keys, stop = self.stop
        task.withLock {
            $0 = Task {
                try await withThrowingTaskGroup(of: Int.self) { group in
                    for clientIndex in 0..<clients {
                        group.addTask {
                            var transfers = 0
                            var generator = SystemRandomNumberGenerator()
                            while !stop.isSet {
                                let from = keys[Int.random(in: 0..<keys.count, using: &generator)]
                                let to = keys[Int.random(in: 0..<keys.count, using: &generator)]
                                guard from != to else { continue }
                                let id = "\(clientIndex)-\(transfers + 1)"
                                let amount = Int.random(in: 1...50, using: &generator)
                                guard try await Self.change(client, from, by: -amount, id: id) else { continue }
                                _ = try await Self.change(client, to, by: amount, id: id)
                                transfers += 1
                            }
                            return transfers
                        }
                    }
                    var total = 0
                    for try await count in group { total += count }
                    return total
                }
            }
        }
    }

    /// Adds `delta` to the account, once: false when the balance would go negative.
    static func change(_ client: FlotillaClient, _ key: Data, by delta: Int, id: String) async throws -> Bool {
        while true {
            let current = try await client.get(key)
            let (balance, lastID) = Self.parse(current)
            if lastID == id { return true }  // an earlier attempt of this change applied
            guard balance + delta >= 0 else { return false }
            do {
                let swapped = try await client.compareAndSwap(key, expected: current, newValue: Data("\(balance + delta):\(id)".utf8))
                if swapped.succeeded { return true }
            } catch {
                // Outcome unknown: the next read settles it.
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    static func parse(_ value: Data?) -> (balance: Int, id: String) {
        let text = value.map { String(decoding: $0, as: UTF8.self) } ?? ""
        let parts = text.split(separator: ":", maxSplits: 1)
        return (parts.first.flatMap { Int($0) } ?? 0, parts.count > 1 ? String(parts[1]) : "")
    }

    /// Stops the transfers and checks the total.
    func finish() async throws {
        stop.set()
        let transfers = try await task.withLock { $0 }?.value ?? 0
        var total = 0
        for key in keys { total += Self.parse(try await client.get(key)).balance }
        #expect(total == Self.initialBalance * keys.count, "bank: the total is \(total) after \(transfers) transfers, not \(Self.initialBalance * keys.count)")
        print("chaos: bank: \(transfers) transfers, total \(total) unchanged")
    }
}

/// Free space of a filesystem.
enum DiskSpace {
    static func available(_ path: String) -> UInt64 {
        var stats = statvfs()
        guard statvfs(path, &stats) == 0 else { return 0 }
        return UInt64(stats.f_bavail) * UInt64(stats.f_frsize)
    }
}
