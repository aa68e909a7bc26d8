import FlotillaClient
import Foundation
import Linearizability
import Synchronization
import Testing

/// What users do while the cluster changes under them, run through one `FlotillaClient`:
///   - writers, one per key prefix `<prefix><writer>-`: each puts its next key and reads it
///     back at once (one writer per key: the read must return exactly what was acknowledged),
///     and advances a compare-and-swap chain `counter-<writer>` (each retried write applied
///     once). Any error the client does not retry by itself fails the writer, and the test.
///   - register clients: reads, writes and compare-and-swaps on a few shared keys, recorded
///     with their outcome (unknown when a call failed) for the linearizability checker.
/// `finish()` stops them and checks everything: linearizable, nothing acknowledged lost, each
/// key once in a scan, the chains exact.
final class ClientWorkload: Sendable {
    let client: FlotillaClient
    let prefix: String
    let registers: [String]
    private let stopFlag = ManagedAtomicFlag()
    private let history = HistoryLog()
    private let origin = ContinuousClock.now
    private let running = Mutex<(writers: Task<[(Int, Int, [String])], Error>, registers: Task<Void, Error>)?>(nil)

    /// Starts `writers` writers (each writes at least `minimumWrites` keys, at most 2,000) and
    /// `registerClients` register clients on `registers`.
    ///
    /// With `rotateRegistersEvery`, register clients move on to fresh keys (`<key>-e<n>`) each
    /// such period, so a long run's history is many short ones the checker takes key by key.
    init(client: FlotillaClient, prefix: String = "k", writers: Int = 4, minimumWrites: Int = 60,
         registers: [String], registerClients: Int = 4, rotateRegistersEvery: Duration? = nil) {
        self.client = client
        self.prefix = prefix
        self.registers = registers
        let stop = stopFlag, history = history, origin = origin
        @Sendable func nanoseconds() -> UInt64 {
            let elapsed = (ContinuousClock.now - origin).components
            return UInt64(elapsed.seconds) * 1_000_000_000 + UInt64(elapsed.attoseconds / 1_000_000_000)
        }
        let registerTask = Task {
            try await withThrowingTaskGroup(of: Void.self) { clients in
                for clientIndex in 0..<registerClients {
                    clients.addTask {
                        var step = 0
                        while !stop.isSet {
                            step += 1
                            var key = registers[(clientIndex * 7 + step * 3) % registers.count]
                            if let period = rotateRegistersEvery {
                                key += "-e\(Int((ContinuousClock.now - origin) / period))"
                            }
                            let value = "c\(clientIndex)-\(step)"
                            var operation = RegisterOperation(client: clientIndex, key: key, invokedAt: nanoseconds(), returnedAt: nil,
                                                              kind: .read(observed: nil))
                            switch step % 3 {
                            case 0:
                                do {
                                    let read = try await client.get(Data(key.utf8))
                                    operation.kind = .read(observed: read.map { String(decoding: $0, as: UTF8.self) })
                                    operation.returnedAt = nanoseconds()
                                } catch { continue }  // a failed read tells nothing
                            case 1:
                                operation.kind = .write(value)
                                do {
                                    try await client.put(Data(key.utf8), Data(value.utf8))
                                    operation.returnedAt = nanoseconds()
                                } catch {}  // outcome unknown
                            default:
                                let expected = try? await client.get(Data(key.utf8))
                                operation.invokedAt = nanoseconds()
                                let expectedText = expected.map { String(decoding: $0, as: UTF8.self) }
                                operation.kind = .compareAndSwap(expected: expectedText, new: value, succeeded: nil)
                                do {
                                    let outcome = try await client.compareAndSwap(Data(key.utf8), expected: expected, newValue: Data(value.utf8))
                                    operation.kind = .compareAndSwap(expected: expectedText, new: value, succeeded: outcome.succeeded)
                                    operation.returnedAt = nanoseconds()
                                } catch {}
                            }
                            history.append(operation)
                        }
                    }
                }
                try await clients.waitForAll()
            }
        }
        let writerTask = Task {
            try await withThrowingTaskGroup(of: (Int, Int, [String]).self) { load in
                for writer in 0..<writers {
                    load.addTask {
                        var written = 0
                        var problems: [String] = []
                        let counter = Data("counter-\(writer)".utf8)
                        var count = 0
                        while !stop.isSet || written < minimumWrites {
                            let key = Data((prefix + String(format: "%d-%05d", writer, written)).utf8)
                            let value = Data("v\(written)".utf8)
                            try await client.put(key, value)
                            let read = try await client.get(key)
                            if read != value { problems.append("\(String(decoding: key, as: UTF8.self)) read \(String(describing: read))") }
                            let swapped = try await client.compareAndSwap(counter, expected: count == 0 ? nil : Data("\(count)".utf8),
                                                                          newValue: Data("\(count + 1)".utf8))
                            if swapped.succeeded { count += 1 } else { problems.append("CAS \(count) failed: found \(String(describing: swapped.previous))") }
                            written += 1
                            if written > 2_000 { break }
                        }
                        return (writer, written, problems)
                    }
                }
                var results: [(Int, Int, [String])] = []
                for try await result in load { results.append(result) }
                return results
            }
        }
        running.withLock { $0 = (writerTask, registerTask) }
    }

    /// Stops the clients and checks what they saw; returns the keys written (sorted) and the
    /// number of register operations checked.
    @discardableResult
    func finish(_ name: String) async throws -> (keys: [Data], registerOperations: Int) {
        stopFlag.set()
        guard let (writerTask, registerTask) = running.withLock({ $0 }) else { return ([], 0) }
        let results = try await writerTask.value
        try await registerTask.value
        let recorded = history.operations
        let verdict = RegisterChecker.check(recorded, timeout: .seconds(60))
        #expect(verdict == .linearizable, "\(name): \(recorded.count) register operations: \(verdict)")
        print("\(name): \(recorded.count) register operations checked: \(verdict)")
        var expected: [Data: Data] = [:]
        for (writer, written, problems) in results {
            #expect(problems.isEmpty, "\(name): writer \(writer): \(problems.prefix(5))")
            for index in 0..<written {
                expected[Data((prefix + String(format: "%d-%05d", writer, index)).utf8)] = Data("v\(index)".utf8)
            }
            let chain = try await client.get(Data("counter-\(writer)".utf8))
            #expect(chain == Data("\(written)".utf8), "\(name): writer \(writer)'s CAS chain: each write applied once")
        }
        // A scan over the writers' keys returns every acknowledged key once, in order.
        let registerKeys = Set(registers.map { Data($0.utf8) })
        var end = Data(prefix.utf8)
        end.append(0xFF)
        // Only keys of the writers' shape (prefix, writer, '-', five digits): others may share the prefix.
        let prefix = self.prefix
        let writerKey = { (key: Data) -> Bool in
            let text = String(decoding: key, as: UTF8.self)
            guard text.hasPrefix(prefix) else { return false }
            let parts = text.dropFirst(prefix.count).split(separator: "-", omittingEmptySubsequences: false)
            return parts.count == 2 && Int(parts[0]) != nil && parts[1].count == 5 && Int(parts[1]) != nil
        }
        let scanned = try await client.scan(from: Data(prefix.utf8), to: end, limit: 1_000_000).filter { !registerKeys.contains($0.key) && writerKey($0.key) }
        #expect(scanned.count == expected.count, "\(name): scan: \(scanned.count) keys, \(expected.count) written")
        #expect(zip(scanned, scanned.dropFirst()).allSatisfy { $0.key.lexicographicallyPrecedes($1.key) }, "\(name): in order, no repeats")
        #expect(scanned.allSatisfy { expected[$0.key] == $0.value }, "\(name): every value as written")
        return (expected.keys.sorted { $0.lexicographicallyPrecedes($1) }, recorded.count)
    }
}

/// Operations recorded by many tasks.
final class HistoryLog: Sendable {
    private let log = Mutex<[RegisterOperation]>([])
    var operations: [RegisterOperation] { log.withLock { $0 } }
    func append(_ operation: RegisterOperation) { log.withLock { $0.append(operation) } }
}

/// A flag set once, read by many tasks.
final class ManagedAtomicFlag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
}
