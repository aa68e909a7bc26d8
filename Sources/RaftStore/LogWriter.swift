import Foundation
import RocksDB

/// Writes a store's log batches on a thread of its own, so the store thread can apply
/// committed entries while the batch is written and synced. One write at a time.
final class LogWriter: @unchecked Sendable {
    /// A write in progress; `wait()` once.
    final class PendingWrite: @unchecked Sendable {
        fileprivate let done = DispatchSemaphore(value: 0)
        fileprivate var error: Error?

        func wait() throws {
            done.wait()
            if let error { throw error }
        }
    }

    private let db: Database
    private let queue = DispatchQueue(label: "flotilla-log-writer", qos: .userInitiated)

    init(db: Database) { self.db = db }

    /// Starts writing `batch`; it must not be touched until the write is waited for.
    func start(_ batch: WriteBatch, sync: Bool) -> PendingWrite {
        let pending = PendingWrite()
        let transfer = BatchTransfer(batch: batch)
        let db = self.db
        queue.async {
            do { try db.write(transfer.batch, sync: sync) } catch { pending.error = error }
            pending.done.signal()
        }
        return pending
    }

    /// Hands a batch to the writer; the store thread does not use it until the write is done.
    private struct BatchTransfer: @unchecked Sendable {
        let batch: WriteBatch
    }
}
