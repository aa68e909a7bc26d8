import FlotillaProto
import Foundation
import RaftStore
import Synchronization

/// Client writes held on this store for a consistent backup (`StoreAdmin.FenceWrites`): while
/// a fence is up, new writes are refused with ServerIsBusy (clients retry). One fence at a
/// time; it lapses at its deadline unless renewed, so a backup that dies never wedges writes.
/// In memory only: a restarted store has none (and a lift then says it was not held).
public final class WriteFence: Sendable {
    /// The longest a fence holds without renewal.
    public static let holdMillisecondsMax: UInt32 = 60_000

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
    func handle(_ request: Flotilla_V1_WriteFenceRequest, now: ContinuousClock.Instant = .now) throws(StoreRequestError) -> (id: UInt64, held: Bool) {
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

/// Region snapshots a consistent backup opened while writes were fenced, streamed afterwards
/// by id. Bounded in count and age.
final class HeldBackups: Sendable {
    static let countMax = 65_536
    static let lifetime: Duration = .seconds(600)

    private let state = Mutex<(readers: [UInt64: (reader: RegionBackupReader, expires: ContinuousClock.Instant)], nextID: UInt64)>(([:], 1))

    /// Keeps `reader`; nil when the store holds `countMax` already.
    func hold(_ reader: RegionBackupReader, now: ContinuousClock.Instant = .now) -> UInt64? {
        state.withLock { state in
            state.readers = state.readers.filter { $0.value.expires > now }
            guard state.readers.count < Self.countMax else { return nil }
            let id = state.nextID
            state.nextID += 1
            state.readers[id] = (reader, now + Self.lifetime)
            return id
        }
    }

    /// Takes a held reader out (each streams once).
    func take(_ id: UInt64, now: ContinuousClock.Instant = .now) -> RegionBackupReader? {
        state.withLock { state in
            guard let held = state.readers.removeValue(forKey: id), held.expires > now else { return nil }
            return held.reader
        }
    }
}
