import FlotillaNode
import Foundation
import RaftStore
import Synchronization

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
