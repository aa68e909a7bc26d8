import FlotillaProto
import Foundation
import RaftStore

/// Who waits for a simulated store's answer: a client's operation, or the store's own PD
/// agent (a split it proposed).
enum SimulatedWaiter {
    case write(client: Int, operation: UInt64)
    case read(client: Int, operation: UInt64, key: Data, regionID: UInt64, epoch: Flotilla_V1_RegionEpoch)
    case agent(String)
}

/// The simulation's edge of a store's `StoreLoop`: messages and answers go on the simulated
/// network as the loop hands them out, in the loop's order (leaders' appends and answers to
/// applied writes before the turn's log sync, the rest after), so a crash inside the turn
/// finds exactly what production would have let out.
final class SimulatedStoreEdge: StoreLoopEdge {
    typealias Waiter = SimulatedWaiter
    let storeID: UInt64
    unowned let simulation: ClusterSimulation
    /// Reads that failed for a reason other than a store's answer (the run fails with it).
    private(set) var failures: [String] = []

    init(storeID: UInt64, simulation: ClusterSimulation) {
        self.storeID = storeID
        self.simulation = simulation
    }

    func takeFailures() -> [String] {
        defer { failures = [] }
        return failures
    }

    func send(_ messagesByStore: [UInt64: [Flotilla_V1_RaftMessage]]) {
        for (destination, messages) in messagesByStore.sorted(by: { $0.key < $1.key }) {
            for message in messages { simulation.send(.raft(message), from: .store(storeID), to: .store(destination)) }
        }
    }

    func sendSnapshot(_ snapshot: OutgoingSnapshot) {
        simulation.sendSnapshot(snapshot, from: storeID)
    }

    func complete(_ waiter: Waiter, with result: Result<Flotilla_V1_WriteResult, StoreRequestError>) {
        switch waiter {
        case .write(let client, let operation):
            simulation.send(.reply(SimReply(operation: operation, result: result.map { .write($0) })), from: .store(storeID), to: .client(client))
        case .read(let client, let operation, _, _, _):
            failures.append("store \(storeID) answered client \(client)'s read \(operation) as a write")
        case .agent(let what):
            switch result {
            case .success(let written) where written.refused.isEmpty: simulation.note("store \(storeID): \(what) applied")
            case .success(let written): simulation.note("store \(storeID): \(what) refused: \(written.refused)")
            case .failure(let error): simulation.note("store \(storeID): \(what) not applied here: \(error)")
            }
        }
    }

    func serveRead(_ waiter: Waiter, from core: Result<StoreCore, StoreRequestError>) {
        guard case .read(let client, let operation, let key, let regionID, let epoch) = waiter else {
            failures.append("store \(storeID) answered a write as a read")
            return
        }
        let result: Result<SimAnswer, StoreRequestError>
        switch core {
        case .failure(let error): result = .failure(error)
        case .success(let core):
            do {
                result = .success(.read(try core.get(key, regionID: regionID, epoch: epoch)))
            } catch let error as StoreRequestError {
                result = .failure(error)
            } catch {
                failures.append("store \(storeID) could not read: \(error)")
                return
            }
        }
        simulation.send(.reply(SimReply(operation: operation, result: result)), from: .store(storeID), to: .client(client))
    }

    func discard(_ snapshot: ReceivedSnapshot) {
        try? FileManager.default.removeItem(atPath: snapshot.directory)
    }

    func notice(_ notice: StoreLoopNotice) {
        switch notice {
        case .splitsApplied(let splits, _):
            simulation.splitsApplied(splits, at: storeID)
        case .taskDone(let task):
            simulation.note("store \(storeID) carried out \(task)")
        case .taskRefused(let task, let error):
            simulation.note("store \(storeID) refused \(task): \(error)")
        case .consistencyAlarm(let alarm):
            failures.append("store \(storeID) consistency alarm: \(alarm)")
        case .storesPresumedDead(let stores, let woken):
            simulation.note("store \(storeID) presumes stores \(stores) dead: \(woken) sleeping regions woke")
        case .consistencyCheck, .refusal, .snapshotNotTaken, .stalled:
            break
        }
    }
}
