import FlotillaProto
import Foundation
import Raft
import RaftStore

/// The simulation's one source of randomness (Raft's SplitMix64), so a seed replays a run
/// exactly.
struct SeededRandom {
    private var generator: SplitMix64

    init(seed: UInt64) { generator = SplitMix64(seed: seed &+ 0x9E37_79B9_7F4A_7C15) }

    mutating func next() -> UInt64 { generator.next() }

    /// True with probability `p`.
    mutating func chance(_ p: Double) -> Bool { p > 0 && Double(next() >> 11) / Double(1 << 53) < p }

    /// Uniform in `range` (non-empty).
    mutating func int(in range: ClosedRange<UInt64>) -> UInt64 {
        range.lowerBound + next() % (range.upperBound - range.lowerBound + 1)
    }

    mutating func pick<T>(_ items: [T]) -> T? {
        items.isEmpty ? nil : items[Int(next() % UInt64(items.count))]
    }
}

/// Where a simulated message goes: a store, PD, or a client.
enum SimNode: Hashable, Comparable, CustomStringConvertible {
    case pd
    case store(UInt64)
    case client(Int)

    var description: String {
        switch self {
        case .pd: "pd"
        case .store(let id): "s\(id)"
        case .client(let index): "c\(index)"
        }
    }
}

/// A client's request to a store: a linearizable read of `key` (no command) or a write.
struct SimRequest {
    let client: Int
    let operation: UInt64
    let context: Flotilla_V1_RequestContext
    let key: Data
    let command: Flotilla_V1_WriteCommand?
}

enum SimAnswer {
    case read(Data?)
    case write(Flotilla_V1_WriteResult)
}

struct SimReply {
    let operation: UInt64
    let result: Result<SimAnswer, StoreRequestError>
}

/// What travels on the simulated network.
enum SimPayload {
    case raft(Flotilla_V1_RaftMessage)
    /// A snapshot as its sender produced it; read chunk by chunk when it arrives (dropped if
    /// the sender restarted meanwhile: its files went with the crash).
    case snapshot(OutgoingSnapshot, senderGeneration: Int)
    case request(SimRequest)
    case reply(SimReply)
    case regionHeartbeat(Flotilla_V1_RegionHeartbeatRequest)
    case heartbeatAnswer(Flotilla_V1_RegionHeartbeatResponse)
    case askSplit(region: Flotilla_V1_Region, keys: [Data])
    case splitIDs(region: Flotilla_V1_Region, keys: [Data], ids: [Flotilla_V1_SplitRegionIDs])
}

struct SimEnvelope {
    let deliverAt: UInt64
    let order: UInt64
    let from: SimNode
    let to: SimNode
    let payload: SimPayload
}

/// A violated invariant, with the seed and the one command that replays it.
public struct ClusterSimulationFailure: Error, CustomStringConvertible {
    public let seed: UInt64
    public let tick: UInt64
    public let invariant: String
    public let recentEvents: [String]

    public var description: String {
        """
        Cluster simulation failed: \(invariant)
          seed \(seed), at tick \(tick)
          replay: SWIFT_DETERMINISTIC_HASHING=1 FLOTILLA_CLUSTER_SIM_SEED=\(seed) swift test --filter ClusterSimulationTests
        last events:
        \(recentEvents.suffix(80).map { "  " + $0 }.joined(separator: "\n"))
        """
    }
}

/// What one run did (for the test's summary and docs/testing.md).
public struct ClusterSimulationReport: Sendable {
    public var seed: UInt64 = 0
    public var ticks: UInt64 = 0
    public var operationsChecked = 0
    public var operationsUnknown = 0
    public var messagesSent = 0
    public var messagesDropped = 0
    public var messagesDuplicated = 0
    public var crashes = 0
    /// Crashes that fell inside a turn, before one of its disk writes.
    public var crashesInTurn = 0
    public var pauses = 0
    public var slowDisks = 0
    public var partitions = 0
    public var oneWayPartitions = 0
    public var pdLeaderChanges = 0
    public var splitsApplied = 0
    public var movesAsked = 0
    public var transfersAsked = 0
    public var splitsAsked = 0
    public var snapshotsDelivered = 0
    public var regionsAtEnd = 0
    public var ticksToServeAfterHeal: UInt64 = 0
    public var linearizabilityTimedOut = 0
    /// Region sleeps and wakes over all stores; replicas asleep when the idle phase ended, of all.
    public var regionSleeps: UInt64 = 0
    public var regionWakes: UInt64 = 0
    public var replicasAsleep = 0
    public var replicasAtEnd = 0
    /// Ticks from killing the store that led most regions (all asleep) to a leader elsewhere for each.
    public var failoverTicks: UInt64 = 0
    /// Ticks from PD's transfer of a sleeping region to its new leader (the slowest seed's).
    public var sleepingTransferTicks: UInt64 = 0

    public init() {}

    public var faultsInjected: Int { crashes + pauses + slowDisks + partitions + pdLeaderChanges }
}

extension ClusterSimulationReport {
    /// Sums another run's counts into this one (for a summary over seeds).
    public mutating func add(_ other: ClusterSimulationReport) {
        ticks += other.ticks
        operationsChecked += other.operationsChecked
        operationsUnknown += other.operationsUnknown
        messagesSent += other.messagesSent
        messagesDropped += other.messagesDropped
        messagesDuplicated += other.messagesDuplicated
        crashes += other.crashes
        crashesInTurn += other.crashesInTurn
        pauses += other.pauses
        slowDisks += other.slowDisks
        partitions += other.partitions
        oneWayPartitions += other.oneWayPartitions
        pdLeaderChanges += other.pdLeaderChanges
        splitsApplied += other.splitsApplied
        movesAsked += other.movesAsked
        transfersAsked += other.transfersAsked
        splitsAsked += other.splitsAsked
        snapshotsDelivered += other.snapshotsDelivered
        regionsAtEnd += other.regionsAtEnd
        ticksToServeAfterHeal = max(ticksToServeAfterHeal, other.ticksToServeAfterHeal)
        linearizabilityTimedOut += other.linearizabilityTimedOut
        regionSleeps += other.regionSleeps
        regionWakes += other.regionWakes
        replicasAsleep += other.replicasAsleep
        replicasAtEnd += other.replicasAtEnd
        failoverTicks = max(failoverTicks, other.failoverTicks)
        sleepingTransferTicks = max(sleepingTransferTicks, other.sleepingTransferTicks)
    }

    public var summary: String {
        "\(ticks) ticks (\(ticks / 100) simulated s), \(operationsChecked) operations checked (\(operationsUnknown) unknown), "
            + "\(crashes) crashes (\(crashesInTurn) inside a turn), \(pauses) pauses, \(slowDisks) slow disks, \(partitions) partitions (\(oneWayPartitions) one-way), "
            + "\(pdLeaderChanges) PD failovers, \(messagesDropped)/\(messagesSent) messages dropped, \(messagesDuplicated) duplicated, "
            + "\(splitsAsked) splits asked (\(splitsApplied) applied by replicas), \(movesAsked) moves, \(transfersAsked) transfers, "
            + "\(snapshotsDelivered) snapshots, \(regionsAtEnd) regions at the end, served again \(ticksToServeAfterHeal) ticks after the heal"
            + ", \(regionSleeps) region sleeps and \(regionWakes) wakes, \(replicasAsleep)/\(replicasAtEnd) replicas asleep when idle, "
            + "every region led again \(failoverTicks) ticks after its sleeping leader's store was killed, "
            + "a sleeping region transferred by PD in \(sleepingTransferTicks) ticks"
            + (linearizabilityTimedOut > 0 ? ", \(linearizabilityTimedOut) checks timed out" : "")
    }
}
