import Foundation

/// One operation of a history on a register (one key), as a client saw it: when it was invoked
/// and when it returned (nil: its outcome is unknown — a write that may or may not have taken
/// effect), what it asked and what it got. Operations that certainly did nothing (refused
/// before being applied) are left out of a history.
public struct RegisterOperation: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// Read; `observed` is what it returned (nil: absent).
        case read(observed: String?)
        case write(String?)
        /// Compare-and-swap: set `new` if the register holds `expected` (nil: absent).
        /// `succeeded` is nil when the outcome is unknown.
        case compareAndSwap(expected: String?, new: String?, succeeded: Bool?)
    }

    public var client: Int
    public var key: String
    public var invokedAt: UInt64
    public var returnedAt: UInt64?
    public var kind: Kind

    public init(client: Int, key: String, invokedAt: UInt64, returnedAt: UInt64?, kind: Kind) {
        self.client = client
        self.key = key
        self.invokedAt = invokedAt
        self.returnedAt = returnedAt
        self.kind = kind
    }

    public var description: String {
        let value: (String?) -> String = { $0.map { "\"\($0)\"" } ?? "absent" }
        let what = switch kind {
        case .read(let observed): "read → \(value(observed))"
        case .write(let written): "write \(value(written))"
        case .compareAndSwap(let expected, let new, let succeeded):
            "cas \(value(expected)) → \(value(new)) " + (succeeded.map { $0 ? "ok" : "failed" } ?? "unknown")
        }
        return "client \(client) [\(invokedAt), \(returnedAt.map(String.init) ?? "∞")] \(key): \(what)"
    }

    /// The register after this operation from `state`, or nil when the operation cannot have
    /// happened there.
    func step(_ state: String?) -> String?? {
        switch kind {
        case .read(let observed): return observed == state ? .some(state) : nil
        case .write(let written): return .some(written)
        case .compareAndSwap(let expected, let new, let succeeded):
            let matches = state == expected
            switch succeeded {
            case true?: return matches ? .some(new) : nil
            case false?: return matches ? nil : .some(state)
            case nil: return .some(matches ? new : state)
            }
        }
    }
}

/// What a check concluded.
public enum LinearizabilityVerdict: Sendable, Equatable {
    case linearizable
    /// Not linearizable: the smallest subset of one key's operations found that still is not.
    case violation(key: String, counterexample: [RegisterOperation])
    /// The search ran out of time on this key (nothing is claimed).
    case timedOut(key: String)
}

/// Checks histories of register operations for linearizability with the Wing–Gong search as
/// Lowe improved it (and Porcupine and Knossos use): a depth-first search over which pending
/// operation takes effect next, memoizing (set of operations done, register value) pairs.
/// Keys are independent registers, checked one by one. An operation with an unknown outcome
/// returns "at infinity": it may take effect at any point after its invocation, or never.
public enum RegisterChecker {
    public static func check(_ history: [RegisterOperation], initial: String? = nil,
                             timeout: Duration = .seconds(10)) -> LinearizabilityVerdict {
        let deadline = ContinuousClock.now + timeout
        let byKey = Dictionary(grouping: history, by: \.key)
        for key in byKey.keys.sorted() {
            let operations = byKey[key] ?? []
            switch search(operations, initial: initial, deadline: deadline) {
            case true?: continue
            case nil: return .timedOut(key: key)
            case false?:
                return .violation(key: key, counterexample: minimize(operations, initial: initial, deadline: deadline))
            }
        }
        return .linearizable
    }

    /// Removes operations one at a time while the rest is still not linearizable and still
    /// explains itself: every value a kept operation saw is written by a kept one (or is the
    /// initial value), so the counterexample is a story, not an orphan read.
    static func minimize(_ operations: [RegisterOperation], initial: String?, deadline: ContinuousClock.Instant) -> [RegisterOperation] {
        func explained(_ subset: [RegisterOperation]) -> Bool {
            var written: Set<String?> = [initial]
            for operation in subset {
                switch operation.kind {
                case .write(let value): written.insert(value)
                case .compareAndSwap(_, let new, let succeeded) where succeeded != false: written.insert(new)
                default: break
                }
            }
            return subset.allSatisfy { operation in
                switch operation.kind {
                case .read(let observed): written.contains(observed)
                case .compareAndSwap(let expected, _, true?): written.contains(expected)
                default: true
                }
            }
        }
        var kept = operations
        var position = 0
        while position < kept.count, ContinuousClock.now < deadline {
            var without = kept
            without.remove(at: position)
            if explained(without), search(without, initial: initial, deadline: deadline) == false { kept = without } else { position += 1 }
        }
        return kept.sorted { $0.invokedAt < $1.invokedAt }
    }

    /// true: linearizable; false: not; nil: out of time.
    static func search(_ operations: [RegisterOperation], initial: String?, deadline: ContinuousClock.Instant) -> Bool? {
        let count = operations.count
        guard count > 0 else { return true }
        // Events: a call and a return per operation, in time order (a return before a call at
        // the same instant: operations that touch are not concurrent... and calls before
        // returns would only add orderings; returns first is the stricter reading).
        struct Event { var time: UInt64; var isCall: Bool; var operation: Int }
        var events: [Event] = []
        events.reserveCapacity(2 * count)
        for (index, operation) in operations.enumerated() {
            events.append(Event(time: operation.invokedAt, isCall: true, operation: index))
            events.append(Event(time: operation.returnedAt ?? .max, isCall: false, operation: index))
        }
        events.sort { ($0.time, $0.isCall ? 1 : 0, $0.operation) < ($1.time, $1.isCall ? 1 : 0, $1.operation) }
        // A doubly linked list over events with a head sentinel at index `total`.
        let total = events.count
        var next = Array(repeating: -1, count: total + 1)
        var previous = Array(repeating: -1, count: total + 1)
        var returnOf = Array(repeating: -1, count: count)
        var callOf = Array(repeating: -1, count: count)
        for (position, event) in events.enumerated() {
            if event.isCall { callOf[event.operation] = position } else { returnOf[event.operation] = position }
        }
        let head = total
        var last = head
        for position in 0..<total {
            next[last] = position
            previous[position] = last
            last = position
        }
        func unlink(_ position: Int) {
            let before = previous[position], after = next[position]
            next[before] = after
            if after >= 0 { previous[after] = before }
        }
        func relink(_ position: Int) {
            let before = previous[position], after = next[position]
            next[before] = position
            if after >= 0 { previous[after] = position }
        }
        struct Done: Hashable { var bits: [UInt64]; var state: String? }
        var bits = Array(repeating: UInt64(0), count: (count + 63) / 64)
        var seen: Set<Done> = []
        var state = initial
        var stack: [(operation: Int, state: String?)] = []
        var entry = next[head]
        var steps = 0
        while next[head] >= 0 {
            steps += 1
            if steps & 0x3FF == 0, ContinuousClock.now >= deadline { return nil }
            guard entry >= 0 else { return false }
            let event = events[entry]
            if event.isCall {
                let operation = event.operation
                if let after = operations[operation].step(state) {
                    var newBits = bits
                    newBits[operation / 64] |= 1 << UInt64(operation % 64)
                    if seen.insert(Done(bits: newBits, state: after)).inserted {
                        stack.append((operation, state))
                        state = after
                        bits = newBits
                        unlink(callOf[operation])
                        unlink(returnOf[operation])
                        entry = next[head]
                        continue
                    }
                }
                entry = next[entry]
            } else {
                // An operation returned before any order of the pending ones fitted: undo the
                // last choice and try the next candidate after it.
                guard let undone = stack.popLast() else { return false }
                state = undone.state
                bits[undone.operation / 64] &= ~(1 << UInt64(undone.operation % 64))
                relink(returnOf[undone.operation])
                relink(callOf[undone.operation])
                entry = next[callOf[undone.operation]]
            }
        }
        return true
    }
}
