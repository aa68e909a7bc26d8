import Foundation
import Raft
import RaftSimulation
import Testing

/// Seeded whole-group simulations with injected faults. CI runs `defaultSeedCount` seeds;
/// `FLOTILLA_SIM_SEEDS=N` runs N seeds, `FLOTILLA_SIM_SEED=S` replays one.
@Suite("Raft simulation")
struct RaftSimulationTests {
    static let defaultSeedCount = 2_000
    static let nodeCounts = [1, 3, 5, 7]

    static var seeds: [UInt64] {
        let environment = ProcessInfo.processInfo.environment
        if let one = environment["FLOTILLA_SIM_SEED"].flatMap(UInt64.init) { return [one] }
        let count = environment["FLOTILLA_SIM_SEEDS"].flatMap(Int.init) ?? defaultSeedCount
        return (1...UInt64(max(count, 1))).map { $0 }
    }

    /// The node count a seed runs with: every count gets a quarter of the seeds.
    static func nodeCount(for seed: UInt64) -> Int { nodeCounts[Int(seed % UInt64(nodeCounts.count))] }

    /// Every other group of four seeds runs under heavy leader churn.
    static func options(for seed: UInt64) -> SimulationOptions {
        let nodeCount = nodeCount(for: seed)
        return (seed / 4) % 2 == 1 ? .stormy(nodeCount: nodeCount) : SimulationOptions(nodeCount: nodeCount)
    }

    /// Seeds are split into this many batches, which run in parallel.
    static let batchCount = 8

    static func seeds(inBatch batch: Int) -> [UInt64] {
        seeds.enumerated().filter { $0.offset % batchCount == batch }.map(\.element)
    }

    @Test(arguments: 0..<batchCount)
    func seedsKeepEveryInvariant(batch: Int) {
        let seeds = Self.seeds(inBatch: batch)
        guard !seeds.isEmpty else { return }
        var reads = 0
        var writes = 0
        for seed in seeds {
            var simulation = Simulation(seed: seed, options: Self.options(for: seed))
            do {
                try simulation.run()
            } catch {
                Issue.record("\(error)")
                return
            }
            if ProcessInfo.processInfo.environment["FLOTILLA_SIM_TRACE"] != nil {
                print("seed \(seed):\n" + simulation.events.joined(separator: "\n"))
            }
            reads += simulation.readsChecked
            writes += simulation.writesAcknowledged
        }
        #expect(writes > seeds.count, "the workload acknowledged writes (\(writes))")
        #expect(reads > seeds.count / 2, "the workload checked reads (\(reads))")
    }
}
