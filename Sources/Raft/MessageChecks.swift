/// Bounds on the values a Raft group can reach. A message beyond them cannot come from a correct
/// peer (it was forged, corrupted or sent by other code), and arithmetic on values up to them
/// can never overflow.
public enum RaftLimits {
    /// No real group reaches this term: an election every millisecond would take 8,900 years.
    /// A node whose term is at the bound no longer campaigns (`termExhausted`); it never traps.
    public static let termMax: UInt64 = 1 << 48
    /// No real log reaches this index; `index + entries` and `index + 1` stay far from overflow.
    public static let indexMax: UInt64 = 1 << 62
    /// Entries in one append message (a leader sends at most `maxAppendBytes`, one entry each
    /// being at least 24 bytes: far below this).
    public static let entriesPerMessageMax = 1 << 20
}

/// Why `RaftNode.step` refused a message: it cannot have come from a correct peer in this
/// node's state. Nothing was changed by it.
public struct MessageRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: String
    public var description: String { reason }
}

extension Message {
    /// Why this message cannot come from a correct peer whatever the receiver's state, or nil.
    /// Checks terms and indexes against `RaftLimits`, and that appended entries follow the
    /// previous index one by one with terms that never decrease nor exceed the message's.
    public var implausibility: String? {
        guard term <= RaftLimits.termMax else { return "term \(term) above the limit \(RaftLimits.termMax)" }
        guard logTerm <= term else { return "log term \(logTerm) above the message term \(term)" }
        guard rejectHintTerm <= term else { return "hint term \(rejectHintTerm) above the message term \(term)" }
        for (name, value) in [("index", index), ("commit", commit), ("reject hint", rejectHint)] where value > RaftLimits.indexMax {
            return "\(name) \(value) above the limit \(RaftLimits.indexMax)"
        }
        if !entries.isEmpty {
            guard kind == .appendEntries else { return "\(kind) carries entries" }
            guard entries.count <= RaftLimits.entriesPerMessageMax else { return "\(entries.count) entries in one message" }
            var previousTerm = logTerm
            for (offset, entry) in entries.enumerated() {
                guard entry.index == index + 1 + UInt64(offset) else {
                    return "entry \(offset) has index \(entry.index), expected \(index + 1 + UInt64(offset))"
                }
                guard entry.term >= previousTerm, entry.term <= term else {
                    return "entry \(entry.index) has term \(entry.term) outside [\(previousTerm), \(term)]"
                }
                previousTerm = entry.term
            }
        }
        if let snapshot {
            guard kind == .installSnapshot else { return "\(kind) carries a snapshot" }
            let metadata = snapshot.metadata
            guard metadata.index <= RaftLimits.indexMax else { return "snapshot index \(metadata.index) above the limit" }
            guard metadata.term <= term else { return "snapshot term \(metadata.term) above the message term \(term)" }
            guard metadata.index > 0, metadata.term > 0 else { return "empty snapshot" }
        } else if kind == .installSnapshot {
            return "installSnapshot without a snapshot"
        }
        return nil
    }
}

extension RaftNode {
    /// Why `message` cannot come from a correct peer given this node's state, or nil: the
    /// stateless checks, plus what only the receiver can know (a follower acknowledging an
    /// index beyond the leader's log, a send tick from the leader's future, an append that
    /// would overwrite a committed entry).
    func refusal(of message: Message) -> String? {
        if let reason = message.implausibility { return reason }
        guard message.term >= term else { return nil }  // stale: answered or dropped, never acted on
        switch (role, message.kind) {
        case (.leader, .appendResponse) where message.term == term, (.leader, .heartbeatResponse) where message.term == term:
            if message.sentAtTick > tickCount {
                return "acknowledges a send at tick \(message.sentAtTick), after this leader's tick \(tickCount)"
            }
            if message.kind == .appendResponse && !message.reject && message.index > log.lastIndex {
                return "acknowledges index \(message.index) beyond the leader's last index \(log.lastIndex)"
            }
        case (_, .appendEntries):
            // A conflict at or below the commit index would rewrite committed history.
            for entry in message.entries where entry.index <= log.committed {
                if let local = try? log.term(at: entry.index), local != entry.term {
                    return "entry \(entry.index)@\(entry.term) conflicts with committed \(entry.index)@\(local)"
                }
            }
        default:
            break
        }
        return nil
    }
}
