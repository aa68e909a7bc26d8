import ClusterSimulation
import Foundation
import Testing

/// Seeded whole-cluster runs (see docs/testing.md). `FLOTILLA_CLUSTER_SIM_SEED=S` replays one
/// seed; `FLOTILLA_CLUSTER_SIM_SEEDS=N` runs N seeds from `FLOTILLA_CLUSTER_SIM_FIRST_SEED`
/// (1); `FLOTILLA_CLUSTER_SIM_SECONDS=T` keeps running seeds for T seconds (the long mode).
/// Set `SWIFT_DETERMINISTIC_HASHING=1` too for a replay step for step (`.ci/run` does).
@Suite("Whole-cluster simulation with a nemesis")
struct ClusterSimulationTests {
    static let defaultSeedCount = 40

    @Test func seededRunsKeepEveryRule() throws {
        let environment = ProcessInfo.processInfo.environment
        let first = environment["FLOTILLA_CLUSTER_SIM_FIRST_SEED"].flatMap(UInt64.init) ?? 1
        let replay = environment["FLOTILLA_CLUSTER_SIM_SEED"].flatMap(UInt64.init)
        let seconds = environment["FLOTILLA_CLUSTER_SIM_SECONDS"].flatMap(Double.init)
        let count = replay == nil ? (environment["FLOTILLA_CLUSTER_SIM_SEEDS"].flatMap(Int.init) ?? Self.defaultSeedCount) : 1
        let started = ContinuousClock.now
        var seed = replay ?? first
        var totals = ClusterSimulationReport()
        var runs = 0
        var failedSeeds: [UInt64] = []
        while true {
            if let seconds {
                guard ContinuousClock.now - started < .seconds(seconds) else { break }
            } else if runs >= count {
                break
            }
            let runStarted = ContinuousClock.now
            runs += 1
            defer { seed += 1 }
            do {
                let report = try ClusterSimulation(seed: seed).run()
                totals.add(report)
                print("cluster simulation seed \(seed): \(report.summary) in \(ContinuousClock.now - runStarted)")
            } catch let failure as ClusterSimulationFailure {
                Issue.record("\(failure)")
                failedSeeds.append(seed)
                // The long mode goes on to find more; a bounded run stops at the first.
                if seconds == nil { return }
            }
        }
        print("cluster simulation: \(runs) seeds from \(replay ?? first) in \(ContinuousClock.now - started): \(totals.summary)"
              + (failedSeeds.isEmpty ? "" : "; FAILED seeds: \(failedSeeds.map(String.init).joined(separator: ", "))"))
    }
}
