import Foundation
import RocksDB

/// Writes a store's log batches on a thread of its own, so the store thread can apply
/// committed entries while the batch is written and synced. One write at a time.
///
/// A finished write holds no reference to the database or the batch: the store can close
/// RocksDB (and a restart reopen it) as soon as it has waited for its last write.
final class LogWriter: @unchecked Sendable {
    /// A write in progress; `wait()` once.
    final class PendingWrite: @unchecked Sendable {
        fileprivate let done = DispatchSemaphore(value: 0)
        fileprivate var error: Error?
        /// Cleared by the writer before it signals `done`.
        fileprivate var batch: WriteBatch?
        fileprivate unowned let db: Database
        fileprivate let sync: Bool

        fileprivate init(db: Database, batch: WriteBatch, sync: Bool) {
            self.db = db
            self.batch = batch
            self.sync = sync
        }

        func wait() throws {
            done.wait()
            if let error { throw error }
        }
    }

    /// The writer holds the database only while the store waits for a write, which keeps it
    /// open anyway.
    private unowned let db: Database
    private let queue = DispatchQueue(label: "flotilla-log-writer", qos: .userInitiated)

    init(db: Database) { self.db = db }

    /// Starts writing `batch`; it must not be touched until the write is waited for.
    func start(_ batch: WriteBatch, sync: Bool) -> PendingWrite {
        let pending = PendingWrite(db: db, batch: batch, sync: sync)
        queue.async {
            if let batch = pending.batch {
                do { try pending.db.write(batch, sync: pending.sync) } catch { pending.error = error }
            }
            pending.batch = nil
            pending.done.signal()
        }
        return pending
    }
}
