// Throughput ceiling of the Raft core: a 3-node group in memory, driven in a loop with
// lossless, immediate delivery. Nothing here touches a disk or a socket, so the figures are
// what `RaftNode` itself costs per committed entry.
//
// Run: cd Benchmarks && swift package benchmark --target RaftBenchmarks
import Benchmark
import Raft

/// Three nodes, their storages, and a message pump.
final class InMemoryGroup: @unchecked Sendable {
    var nodes: [RaftNode]
    let storages: [MemoryStorage]
    private var inbox: [Message] = []
    private(set) var appliedEntries = 0

    init() {
        let voters: Set<NodeID> = [1, 2, 3]
        let storages = voters.sorted().map { _ in MemoryStorage() }
        storages.forEach { $0.bootstrap(voters: voters) }
        self.storages = storages
        nodes = voters.sorted().enumerated().map { position, id in
            var config = RaftConfig(id: id)
            config.maxUncommittedBytes = 1 << 30
            return RaftNode(config: config, storage: storages[position])
        }
        pump()
        for _ in 0..<1_000 where !nodes.contains(where: { $0.role == .leader }) { tickAll() }
        guard let leader = nodes.firstIndex(where: { $0.role == .leader }) else {
            preconditionFailure("no leader after 1,000 ticks")
        }
        leaderPosition = leader
    }

    /// Position of the leader in `nodes`.
    private(set) var leaderPosition = 0

    func tickAll() {
        for position in nodes.indices { nodes[position].tick() }
        pump()
    }

    /// Handles every Ready and delivers every message until the group is quiet.
    func pump() {
        var moved = true
        while moved {
            moved = false
            for position in nodes.indices where nodes[position].hasReady {
                moved = true
                let ready = nodes[position].ready()
                let storage = storages[position]
                do { try storage.persist(ready) } catch { preconditionFailure("\(error)") }
                inbox.append(contentsOf: ready.messagesNow)
                inbox.append(contentsOf: ready.messagesAfterPersist)
                if position == leaderPosition { appliedEntries += ready.committedEntries.count }
                nodes[position].advance(ready)
            }
            if !inbox.isEmpty {
                moved = true
                let delivering = inbox
                inbox.removeAll(keepingCapacity: true)
                for message in delivering { nodes[Int(message.to) - 1].step(message) }
            }
        }
        // Keep memory flat over long runs: compact what every node has applied.
        let applied = nodes.map(\.appliedIndex).min() ?? 0
        if applied > storages[0].firstIndex + 10_000 {
            for (position, storage) in storages.enumerated() {
                try? storage.createSnapshot(at: applied, confState: nodes[position].confState, data: [])
            }
        }
    }

    /// Proposes `count` entries of `payload` at the leader and runs until they are applied there.
    func commit(_ count: Int, payload: [UInt8]) {
        let target = appliedEntries + count
        for _ in 0..<count {
            do { try nodes[leaderPosition].propose(payload) } catch { preconditionFailure("proposal refused: \(error)") }
        }
        pump()
        precondition(appliedEntries >= target, "entries were not committed")
    }
}

let payload = [UInt8](repeating: 0xAB, count: 100)

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 10,
        maxDuration: .seconds(3),
        maxIterations: 1_000_000
    )
    for batch in [1, 64] {
        // One iteration: propose `batch` 100-byte entries and run until all are applied on the
        // leader (every node has persisted and acknowledged them). Entries/s = batches/s × batch.
        Benchmark("3-node group, proposal batch \(batch)",
                  configuration: .init(scalingFactor: batch == 1 ? .kilo : .one),
                  closure: { benchmark in
            let group = InMemoryGroup()
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { group.commit(batch, payload: payload) }
            benchmark.stopMeasurement()
        })
    }
}
