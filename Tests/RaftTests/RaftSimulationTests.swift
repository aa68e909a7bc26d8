import Foundation
import Raft
import RaftSimulation
import Testing

/// Seeded whole-group simulations with injected faults. CI runs `defaultSeedCount` seeds;
/// `FLOTILLA_SIM_SEEDS=N` runs N seeds, `FLOTILLA_SIM_SEED=S` replays one (with
/// `FLOTILLA_SIM_TRACE=1`, printing its events, and `FLOTILLA_SIM_STATES=N`, every node's
/// state every N ticks among them). The run ends with a report of what it did.
@Suite("Raft simulation")
struct RaftSimulationTests {
    static let defaultSeedCount = 2_000

    static var seeds: [UInt64] {
        let environment = ProcessInfo.processInfo.environment
        if let one = environment["FLOTILLA_SIM_SEED"].flatMap(UInt64.init) { return [one] }
        let count = environment["FLOTILLA_SIM_SEEDS"].flatMap(Int.init) ?? defaultSeedCount
        return (1...UInt64(max(count, 1))).map { $0 }
    }

    /// Seeds run on this many workers at once.
    static let workerCount = 2

    /// Runs every `workerCount`-th seed from `first`; stops at the first failure.
    static func runSeeds(startingAt first: Int) -> (report: SimulationReport, failure: SimulationFailure?) {
        var report = SimulationReport()
        let trace = ProcessInfo.processInfo.environment["FLOTILLA_SIM_TRACE"] != nil
        for seed in seeds.dropFirst(first).enumerated().filter({ $0.offset % workerCount == 0 }).map(\.element) {
            var options = SimulationOptions.forSeed(seed)
            options.noteStatesEveryTicks = ProcessInfo.processInfo.environment["FLOTILLA_SIM_STATES"].flatMap(UInt64.init)
            if trace { options.eventsKeptMax = .max }
            var simulation = Simulation(seed: seed, options: options)
            do {
                try simulation.run()
            } catch {
                report.merge(simulation.report)
                return (report, error)
            }
            if trace { print("seed \(seed):\n" + simulation.events.joined(separator: "\n")) }
            report.merge(simulation.report)
        }
        return (report, nil)
    }

    @Test func seedsKeepEveryInvariant() async {
        let results = await withTaskGroup(of: (report: SimulationReport, failure: SimulationFailure?).self) { group in
            for worker in 0..<Self.workerCount { group.addTask { Self.runSeeds(startingAt: worker) } }
            var results: [(report: SimulationReport, failure: SimulationFailure?)] = []
            for await result in group { results.append(result) }
            return results
        }
        var report = SimulationReport()
        for result in results {
            report.merge(result.report)
            if let failure = result.failure { Issue.record("\(failure)") }
        }
        print(report)
        guard results.allSatisfy({ $0.failure == nil }) else { return }
        #expect(report.writesAcknowledged > report.seeds, "the workload acknowledged writes (\(report.writesAcknowledged))")
        #expect(report.readsChecked > report.seeds / 2, "the workload checked reads (\(report.readsChecked))")
        guard report.seeds >= 100 else { return }
        // The faults the simulator is for happened, in numbers.
        #expect(report.leaseReadsServed > UInt64(report.seeds), "lease reads were served (\(report.leaseReadsServed))")
        #expect(report.jointConfigurationsEntered > report.seeds / 4, "joint configurations were entered (\(report.jointConfigurationsEntered))")
        for fault in ["leader isolated", "leader paused", "crash: before persisting a vote or term change"] {
            #expect(report.faults.contains { $0.key.hasPrefix(fault) && $0.value > report.seeds / 20 }, "\(fault) happened")
        }
        #expect(report.faults.contains { $0.key.hasPrefix("leader cut from") }, "leaders were cut from one half of a joint configuration")
    }
}
