import FlotillaNode
import FlotillaProto
import Foundation
import PlacementDriver
import RaftStore
import Synchronization

/// PD's metadata as a region state machine: the PD commands in PD's Raft log applied to a
/// `PlacementDriver` on every member, its records kept as the region's data (so PD's log
/// storage, turn, snapshots and log GC are the stores' own).
///
/// `pd` is touched on the store thread only (in `apply`, `restore` and read bodies); what
/// the gRPC threads need without a store-thread hop (cluster id, members' addresses) is
/// published under a lock as it changes.
final class PDMachine: RegionStateMachine, @unchecked Sendable {
    private(set) var pd: PlacementDriver
    /// The Raft term this member leads in with its leader memory set up; 0 when not leading.
    private(set) var leaderTerm: UInt64 = 0
    private let clock = ContinuousClock()
    private let started: ContinuousClock.Instant

    struct Published: Sendable {
        var clusterID: UInt64 = 0
        var members: [UInt64: Flotilla_V1_PDMember] = [:]
    }
    let published = Mutex(Published())

    init(timings: PDTimings) {
        pd = PlacementDriver(timings: timings)
        started = clock.now
    }

    /// Milliseconds since this process started: PD's leader memory never outlives a process.
    var nowMs: UInt64 {
        let elapsed = clock.now - started
        return UInt64(max(0, elapsed.components.seconds)) * 1000 + UInt64(max(0, elapsed.components.attoseconds / 1_000_000_000_000_000))
    }

    func apply(command: Data, regionID: UInt64, index: UInt64) -> (reply: Data, writes: [StateMachineWrite]) {
        guard let decoded = try? Flotilla_V1_PDCommand(serializedBytes: command) else {
            return (Self.encode(.invalidArgument("a PD command that does not decode")), [])
        }
        let (outcome, writes) = pd.apply(decoded)
        publish()
        let mapped = writes.map { write -> StateMachineWrite in
            switch write {
            case .put(let key, let value): .put(key: key, value: value)
            case .delete(let key): .delete(key: key)
            }
        }
        switch outcome {
        case .success: return (Data(), mapped)
        case .failure(let failure): return (Self.encode(failure), [])
        }
    }

    func restore(regionID: UInt64, records: [(key: Data, value: Data)]) throws {
        pd.restore(try ClusterState.load(records))
        publish()
    }

    private func publish() {
        let state = pd.state
        published.withLock { $0 = Published(clusterID: state.clusterID, members: state.members) }
    }

    /// Called on the store thread once a read index confirmed this member leads in `term`
    /// (so every entry of earlier terms is applied): sets up the leader memory once per term.
    func confirmLeader(term: UInt64) {
        guard term != leaderTerm else { return }
        pd.becomeFollower(nowMs: nowMs)
        pd.becomeLeader(nowMs: nowMs, term: term)
        leaderTerm = term
    }

    /// Called on the store thread when this member found it does not lead.
    func confirmFollower() {
        guard leaderTerm != 0 else { return }
        pd.becomeFollower(nowMs: nowMs)
        leaderTerm = 0
    }

    /// Runs `body` on the leader's state (store thread).
    func withLeader<T>(_ body: (inout PlacementDriver, UInt64) -> T) -> T {
        body(&pd, nowMs)
    }

    static func encode(_ failure: PDFailure) -> Data {
        (try? failure.proto.serializedData()) ?? Data(failure.description.utf8)
    }

    /// The error a state-machine reply carries, nil for success.
    static func decodeReply(_ reply: Data) -> Flotilla_V1_PDError? {
        guard !reply.isEmpty else { return nil }
        return (try? Flotilla_V1_PDError(serializedBytes: reply)) ?? PDFailure.invalidArgument(String(decoding: reply, as: UTF8.self)).proto
    }
}
