import ArgumentParser
import FlotillaClient
import FlotillaCluster
import FlotillaProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Histogram
import PlacementDriver
import Synchronization

/// How many region heartbeats one PD leader handles per second, and how long a route lookup
/// takes, against a fresh PD group (which it bootstraps with one pretend store and fills with
/// `--regions` regions). Also the same heartbeats through `PlacementDriver` in this process,
/// without gRPC and PD's Raft group, to show what the decisions themselves cost. With
/// `--stores 3` every region has a replica on each of three pretend stores (100,000 regions:
/// 300,000 replicas); `--rate` paces the steady heartbeats (sleeping regions report once a
/// slow period); `--watch-pids` reports the PD members' RSS and CPU per heartbeat.
struct PDHeartbeats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pd-heartbeats",
        abstract: "Measure region heartbeats per second and route lookups on a fresh PD group.")

    @Option(name: .customLong("pd"), help: "Endpoints of a fresh, unbootstrapped PD group (default: FLOTILLA_PD).")
    var pd: String?

    @Option(help: "Regions to report.")
    var regions = 10_000

    @Option(help: "Heartbeat streams (each a store's), each with up to 256 heartbeats unanswered.")
    var concurrency = 4

    @Option(help: "Seconds of steady heartbeats.")
    var duration = 10

    @Option(help: "Heartbeats per RegionHeartbeatBatch message (0: one message per heartbeat on RegionHeartbeats).")
    var batch = 256

    @Option(help: "Pretend stores; every region has a replica on each (1 to 7).")
    var stores = 1

    @Option(help: "Steady heartbeats per second over all streams (0: as fast as PD answers; needs --batch > 0).")
    var rate = 0

    @Option(name: .customLong("watch-pids"), help: "PD member process ids (comma-separated, Linux): RSS and CPU per heartbeat.")
    var watchPIDs: String?

    func validate() throws {
        guard (1...7).contains(stores) else { throw ValidationError("--stores must be 1 to 7") }
        guard (0...10_000_000).contains(rate) else { throw ValidationError("--rate must be 0 to 10000000 heartbeats/s") }
        guard rate == 0 || batch > 0 else { throw ValidationError("--rate needs --batch > 0") }
        if let watchPIDs {
            do { _ = try ProcessCPU.parsePIDs(watchPIDs) } catch { throw ValidationError(error.description) }
        }
        guard (1...1_000_000).contains(regions) else { throw ValidationError("--regions must be 1 to 1000000") }
        guard (1...1_024).contains(concurrency) else { throw ValidationError("--concurrency must be 1 to 1024") }
        guard (1...3_600).contains(duration) else { throw ValidationError("--duration must be 1 to 3600 seconds") }
        guard (0...1_024).contains(batch) else { throw ValidationError("--batch must be 0 to 1024") }
    }

    static func key(_ index: Int) -> Data { Data(String(format: "r%08d", index).utf8) }

    func run() async throws {
        let inProcess = try Self.inProcessRate(regions: regions)
        print(String(format: "in process (PlacementDriver alone): %.0f steady heartbeats/s over %d regions", inProcess, regions))
        guard let endpoints = (pd ?? ProcessInfo.processInfo.environment["FLOTILLA_PD"])?.split(separator: ",").map(String.init) else {
            throw ValidationError("no PD endpoints: pass --pd or set FLOTILLA_PD")
        }
        let client = try PDClient(endpoints: endpoints, requestTimeout: .seconds(30))
        let connections = Task { try await client.run() }
        defer {
            client.close()
            connections.cancel()
        }
        guard try await client.clusterInfo().bootstrapped == false else {
            throw ValidationError("the PD group is bootstrapped already: start a fresh one (this command fills it with pretend regions)")
        }
        var store = Flotilla_V1_Store()
        store.address = "127.0.0.1:9"
        store.raftAddress = "127.0.0.1:10"
        store = try await client.putStore(store)
        var storeIDs = [store.id]
        for index in 1..<stores {
            var other = Flotilla_V1_Store()
            other.address = "127.0.0.1:\(9 + 2 * index)"
            other.raftAddress = "127.0.0.1:\(10 + 2 * index)"
            storeIDs.append(try await client.putStore(other).id)
        }
        let first = try await client.allocateIDs(UInt32(min(regions * (1 + stores), Int(PDLimits.idsPerAllocationMax))))
        var nextID = first
        var idsLeft = UInt64(min(regions * (1 + stores), Int(PDLimits.idsPerAllocationMax)))
        func takeID() async throws -> UInt64 {
            if idsLeft == 0 {
                nextID = try await client.allocateIDs(PDLimits.idsPerAllocationMax)
                idsLeft = UInt64(PDLimits.idsPerAllocationMax)
            }
            idsLeft -= 1
            nextID += 1
            return nextID - 1
        }
        var layout: [Flotilla_V1_RegionInfo] = []
        for index in 0..<regions {
            var region = Flotilla_V1_Region()
            region.id = try await takeID()
            region.startKey = index == 0 ? Data() : Self.key(index)
            region.endKey = index == regions - 1 ? Data() : Self.key(index + 1)
            // One voter at the bootstrap, then one conf change per further store.
            region.epoch.confVer = UInt64(storeIDs.count)
            region.epoch.version = 2
            for storeID in storeIDs {
                var peer = Flotilla_V1_Peer()
                peer.id = try await takeID()
                peer.storeID = storeID
                region.peers.append(peer)
            }
            var info = Flotilla_V1_RegionInfo()
            info.region = region
            info.leader = region.peers[index % region.peers.count]
            layout.append(info)
        }
        // Bootstrapped as one region over every key; the reported layout is its split (version 2).
        var whole = layout[0].region
        whole.endKey = Data()
        whole.epoch.version = 1
        whole.epoch.confVer = 1
        whole.peers = Array(whole.peers.prefix(1))
        try await client.bootstrap(store: store, region: whole)
        let watched = watchPIDs.flatMap { try? ProcessCPU.parsePIDs($0) } ?? []
        // The first heartbeat of each region is a new route: proposed through PD's log.
        let clock = ContinuousClock()
        let learnStarted = clock.now
        try await Self.send(layout, client: client, concurrency: concurrency, until: nil)
        let learn = clock.now - learnStarted
        print(String(format: "new routes: %d regions (%d replicas) reported in %.2f s (%.0f/s; each one a PD log write)",
                     regions, regions * stores, learn.seconds, Double(regions) / max(learn.seconds, 1e-9)))
        for pid in watched { print("PD process \(pid) after the routes: RSS \(Self.rssMiB(pid: pid).map(String.init) ?? "?") MiB") }
        let cpuBefore = watched.map { ProcessCPU.seconds(pid: $0) }
        let steadyStarted = clock.now
        let sent = batch > 0
            ? try await Self.sendBatches(layout, client: client, concurrency: concurrency,
                                         until: steadyStarted + .seconds(duration), batch: batch, rate: rate)
            : try await Self.send(layout, client: client, concurrency: concurrency, until: steadyStarted + .seconds(duration))
        let steady = clock.now - steadyStarted
        print(String(format: "steady heartbeats: %d in %.2f s = %.0f/s on %d streams (%d regions, %@%@)",
                     sent, steady.seconds, Double(sent) / max(steady.seconds, 1e-9), concurrency, regions,
                     batch > 0 ? "\(batch) per RegionHeartbeatBatch" : "one per message", rate > 0 ? ", paced at \(rate)/s" : ""))
        for (pid, before) in zip(watched, cpuBefore) {
            guard let before, let after = ProcessCPU.seconds(pid: pid) else { continue }
            let cpu = after - before
            print(String(format: "PD process %d over the steady window: %.1f %% of a core, %.1f µs CPU per heartbeat, RSS %@ MiB",
                         pid, 100 * cpu / max(steady.seconds, 1e-9), 1e6 * cpu / Double(max(sent, 1)),
                         Self.rssMiB(pid: pid).map(String.init) ?? "?"))
        }
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        for index in 0..<1_000 {
            let key = Self.key((index * 7_919) % regions)
            let started = clock.now
            _ = try await client.region(key: key)
            histogram.record(UInt64((clock.now - started).microseconds))
        }
        print("route lookup through PD (a client cache miss), 1000 sequential GetRegion: p50 \(histogram.valueAtPercentile(50)) µs, p99 \(histogram.valueAtPercentile(99)) µs")
    }

    /// Heartbeats for every region of `layout` on `concurrency` streams, each with at most
    /// `window` unanswered (as a store sends a round's heartbeats on one stream); with
    /// `until`, round and round until then. Returns how many were answered without error.
    @discardableResult
    static func send(_ layout: [Flotilla_V1_RegionInfo], client: PDClient, concurrency: Int,
                     until deadline: ContinuousClock.Instant?, window: Int = 256) async throws -> Int {
        let next = ManagedCounter()
        return try await onLeaderStreams(client: client, concurrency: concurrency) { pd, sentHeader in
            let answered = ManagedCounter()
            let failed = ManagedCounter()
            try await pd.regionHeartbeats(requestProducer: { writer in
                var written = 0
                while true {
                    if let deadline { if ContinuousClock.now >= deadline { return } }
                    let ticket = next.take()
                    if deadline == nil && ticket >= layout.count { return }
                    while written - answered.value >= window { try await Task.sleep(for: .microseconds(200)) }
                    var request = Flotilla_V1_RegionHeartbeatRequest()
                    request.header = sentHeader
                    request.region = layout[ticket % layout.count]
                    request.storeID = request.region.leader.storeID
                    try await writer.write(request)
                    written += 1
                }
            }, onResponse: { response in
                for try await answer in response.messages {
                    if answer.header.hasError { _ = failed.take() }
                    _ = answered.take()
                }
            })
            if failed.value > 0 { throw ValidationError("PD refused \(failed.value) heartbeats") }
            return answered.value
        }
    }

    /// Like `send`, with `batch` heartbeats per `RegionHeartbeatBatch` message and at most
    /// `window` batches unanswered per stream.
    static func sendBatches(_ layout: [Flotilla_V1_RegionInfo], client: PDClient, concurrency: Int,
                            until deadline: ContinuousClock.Instant, batch: Int, rate: Int = 0, window: Int = 4) async throws -> Int {
        let next = ManagedCounter()
        // Paced: each stream sends a batch every `interval`, so all of them send `rate` a second.
        let interval: Duration? = rate > 0 ? .nanoseconds(Int64(1e9 * Double(batch * concurrency) / Double(rate))) : nil
        return try await onLeaderStreams(client: client, concurrency: concurrency) { pd, sentHeader in
            let answered = ManagedCounter()
            let batchesAnswered = ManagedCounter()
            let failed = ManagedCounter()
            try await pd.regionHeartbeatBatches(requestProducer: { writer in
                var written = 0
                var sendAt = ContinuousClock.now
                while ContinuousClock.now < deadline {
                    if let interval {
                        sendAt += interval
                        guard sendAt < deadline else { return }
                        try await Task.sleep(until: sendAt, clock: .continuous)
                    }
                    while written - batchesAnswered.value >= window { try await Task.sleep(for: .microseconds(200)) }
                    var message = Flotilla_V1_RegionHeartbeatBatch()
                    message.header = sentHeader
                    message.heartbeats = (0..<batch).map { _ in
                        var request = Flotilla_V1_RegionHeartbeatRequest()
                        request.region = layout[next.take() % layout.count]
                        request.storeID = request.region.leader.storeID
                        return request
                    }
                    try await writer.write(message)
                    written += 1
                }
            }, onResponse: { response in
                for try await message in response.messages {
                    if message.header.hasError { _ = failed.take() }
                    for answer in message.answers {
                        if answer.header.hasError { _ = failed.take() }
                        _ = answered.take()
                    }
                    _ = batchesAnswered.take()
                }
            })
            if failed.value > 0 { throw ValidationError("PD refused \(failed.value) heartbeats") }
            return answered.value
        }
    }

    /// Runs `stream` `concurrency` times at once on one connection to PD's leader, with the
    /// request header of the cluster; returns the sum of what they return.
    static func onLeaderStreams(client: PDClient, concurrency: Int,
                                _ stream: @escaping @Sendable (Flotilla_V1_PD.Client<HTTP2ClientTransport.Posix>, Flotilla_V1_PDRequestHeader) async throws -> Int) async throws -> Int {
        _ = try await client.clusterInfo()  // learns the cluster id
        let leader = try await client.members().leader.clientAddress
        guard let address = HostPort(dialable: leader) else { throw ValidationError("PD's leader address \(leader) is not host:port") }
        var header = Flotilla_V1_PDRequestHeader()
        header.clusterID = client.clusterID
        let sentHeader = header
        return try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: address.host, port: address.port), transportSecurity: .plaintext)) { grpc in
            let pd = Flotilla_V1_PD.Client(wrapping: grpc)
            return try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<concurrency { group.addTask { try await stream(pd, sentHeader) } }
                return try await group.reduce(0, +)
            }
        }
    }

    /// A process's resident set (`VmRSS` of `/proc/<pid>/status`) in MiB, or nil.
    static func rssMiB(pid: Int32) -> Int? {
        guard let handle = FileHandle(forReadingAtPath: "/proc/\(pid)/status") else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: 16_384), let text = String(data: data, encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
        return kib / 1_024
    }

    /// Steady heartbeats through the PlacementDriver alone (no gRPC, no Raft): per second.
    static func inProcessRate(regions: Int) throws -> Double {
        var pd = PlacementDriver()
        pd.becomeLeader(nowMs: 0)
        var commands: [Flotilla_V1_PDCommand] = []
        func apply(_ command: Flotilla_V1_PDCommand) throws {
            if case .failure(let failure) = pd.apply(command).outcome { throw ValidationError("in-process PD refused a command: \(failure)") }
        }
        var setID = Flotilla_V1_PDCommand()
        setID.setClusterID = 1
        try apply(setID)
        var reserve = Flotilla_V1_PDCommand()
        reserve.reserveIdsThrough = UInt64(regions * 2 + 10)
        try apply(reserve)
        var store = Flotilla_V1_Store()
        store.id = 1
        store.address = "127.0.0.1:9"
        store.raftAddress = "127.0.0.1:10"
        var layout: [Flotilla_V1_RegionHeartbeatRequest] = []
        for index in 0..<regions {
            var region = Flotilla_V1_Region()
            region.id = UInt64(2 + 2 * index)
            region.startKey = index == 0 ? Data() : key(index)
            region.endKey = index == regions - 1 ? Data() : key(index + 1)
            region.epoch.confVer = 1
            region.epoch.version = 2
            var peer = Flotilla_V1_Peer()
            peer.id = region.id + 1
            peer.storeID = 1
            region.peers = [peer]
            var request = Flotilla_V1_RegionHeartbeatRequest()
            request.header.clusterID = 1
            request.storeID = 1
            request.region.region = region
            request.region.leader = peer
            layout.append(request)
        }
        var bootstrap = Flotilla_V1_PDCommand()
        bootstrap.bootstrap.header.clusterID = 1
        bootstrap.bootstrap.store = store
        bootstrap.bootstrap.region = layout[0].region.region
        bootstrap.bootstrap.region.endKey = Data()
        bootstrap.bootstrap.region.epoch.version = 1
        try apply(bootstrap)
        for request in layout {
            commands += try pd.regionHeartbeat(request, nowMs: 0).commands
        }
        for command in commands { try apply(command) }
        let clock = ContinuousClock()
        let started = clock.now
        var count = 0
        while clock.now - started < .seconds(2) {
            for request in layout.prefix(10_000) {
                _ = try pd.regionHeartbeat(request, nowMs: 0)
                count += 1
            }
        }
        return Double(count) / (clock.now - started).seconds
    }
}

/// A shared ticket counter for the heartbeat senders.
final class ManagedCounter: Sendable {
    private let count = Atomic<Int>(0)
    func take() -> Int { count.add(1, ordering: .relaxed).oldValue }
    var value: Int { count.load(ordering: .relaxed) }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
    var microseconds: Int64 { components.seconds * 1_000_000 + components.attoseconds / 1_000_000_000_000 }
}
