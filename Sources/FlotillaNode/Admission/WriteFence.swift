import FlotillaCluster
import FlotillaProto
import Foundation
import RaftStore
import Synchronization

/// Client writes held on this store for a consistent backup (`StoreAdmin.FenceWrites`): while
/// a fence is up, new writes are refused with ServerIsBusy (clients retry). One fence at a
/// time; it lapses at its deadline unless renewed, so a backup that dies never wedges writes.
/// In memory only: a restarted store has none (and a lift then says it was not held).
public final class WriteFence: Sendable {
    /// The longest a fence holds without renewal (shared with `flotillactl backup`).
    public static let holdMillisecondsMax = StoreAdminLimits.writeFenceHoldMillisecondsMax

    private struct Fence {
        let id: UInt64
        var until: ContinuousClock.Instant
    }

    private let state = Mutex<(fence: Fence?, nextID: UInt64)>((nil, 1))

    public init() {}

    /// Why a write must wait now, or nil.
    public func refusal(now: ContinuousClock.Instant = .now) -> String? {
        state.withLock { state in
            guard let fence = state.fence, now < fence.until else { return nil }
            return "writes are held by fence \(fence.id) for a consistent backup; retry shortly"
        }
    }

    /// Raises a new fence (refused while another is up), or renews or lifts fence `id`.
    /// Returns the fence id and whether it held, unbroken, until now.
    package func handle(_ request: Flotilla_V1_WriteFenceRequest, now: ContinuousClock.Instant = .now) throws(StoreRequestError) -> (id: UInt64, held: Bool) {
        guard request.lift || (1...Self.holdMillisecondsMax).contains(request.holdMs) else {
            throw .invalidArgument(field: "hold_ms", reason: "\(request.holdMs) is not 1 to \(Self.holdMillisecondsMax)")
        }
        return try state.withLock { state throws(StoreRequestError) in
            if request.fenceID == 0 {
                if let fence = state.fence, now < fence.until {
                    throw .serverIsBusy(reason: "fence \(fence.id) is up (another consistent backup is running)")
                }
                let fence = Fence(id: state.nextID, until: now + .milliseconds(Int(request.holdMs)))
                state.nextID += 1
                state.fence = fence
                return (fence.id, true)
            }
            guard var fence = state.fence, fence.id == request.fenceID else { return (request.fenceID, false) }
            let held = now < fence.until
            if request.lift || !held {
                state.fence = nil
            } else {
                fence.until = now + .milliseconds(Int(request.holdMs))
                state.fence = fence
            }
            return (fence.id, held)
        }
    }
}
