/// How the leader replicates to one follower.
public enum ReplicationState: String, Sendable {
    /// One append at a time until the follower's match index is known.
    case probe
    /// Optimistic pipelining within the inflight window.
    case replicate
    /// Waiting for a snapshot to be installed.
    case snapshot
}

/// A bounded window of appends sent and not yet acknowledged, counted in messages and bytes.
struct Inflights {
    let maxMessages: Int
    let maxBytes: Int
    private var entries: [(lastIndex: UInt64, bytes: Int)] = []
    private var head = 0
    private(set) var bytes = 0

    init(maxMessages: Int, maxBytes: Int) {
        precondition(maxMessages > 0 && maxBytes > 0, "inflight limits must be positive")
        self.maxMessages = maxMessages
        self.maxBytes = maxBytes
    }

    var count: Int { entries.count - head }
    var isFull: Bool { count >= maxMessages || bytes >= maxBytes }

    mutating func add(lastIndex: UInt64, bytes: Int) {
        entries.append((lastIndex, bytes))
        self.bytes += bytes
    }

    /// Frees every append whose last index is at or below `index`.
    mutating func free(upTo index: UInt64) {
        while head < entries.count && entries[head].lastIndex <= index {
            bytes -= entries[head].bytes
            head += 1
        }
        if head > 64 && head * 2 > entries.count {
            entries.removeFirst(head)
            head = 0
        }
    }

    mutating func freeFirst() {
        if head < entries.count { free(upTo: entries[head].lastIndex) }
    }

    mutating func reset() {
        entries = []
        head = 0
        bytes = 0
    }
}

/// The leader's view of one follower.
struct Progress {
    var match: UInt64 = 0
    var next: UInt64
    var state = ReplicationState.probe
    /// In probe: an append is out and unanswered.
    var probeSent = false
    /// In snapshot: the index of the snapshot being installed, and when it was sent.
    var pendingSnapshot: UInt64 = 0
    var snapshotSentAtTick: UInt64 = 0
    /// Heard from since the last check-quorum round.
    var recentActive = false
    /// The leader's tick when this follower was last heard from (or its progress began).
    var lastHeardTick: UInt64 = 0
    /// Latest leader tick echoed by this follower's responses (lease reads).
    var lastAckedSendTick: UInt64 = 0
    var inflights: Inflights
    var isLearner: Bool

    init(next: UInt64, isLearner: Bool, maxInflightMessages: Int, maxInflightBytes: Int) {
        self.next = next
        self.isLearner = isLearner
        inflights = Inflights(maxMessages: maxInflightMessages, maxBytes: maxInflightBytes)
    }

    var isPaused: Bool {
        switch state {
        case .probe: probeSent
        case .replicate: inflights.isFull
        case .snapshot: true
        }
    }

    mutating func becomeProbe() {
        if state == .snapshot {
            next = max(match + 1, pendingSnapshot + 1)
        } else {
            next = match + 1
        }
        state = .probe
        probeSent = false
        pendingSnapshot = 0
        inflights.reset()
    }

    mutating func becomeReplicate() {
        state = .replicate
        next = match + 1
        probeSent = false
        pendingSnapshot = 0
        inflights.reset()
    }

    mutating func becomeSnapshot(index: UInt64, atTick tick: UInt64) {
        state = .snapshot
        pendingSnapshot = index
        snapshotSentAtTick = tick
        probeSent = false
        inflights.reset()
    }

    /// Records an acknowledged index. Returns whether it moved the match forward.
    mutating func maybeUpdate(_ index: UInt64) -> Bool {
        var updated = false
        if match < index {
            match = index
            updated = true
            probeSent = false
        }
        next = max(next, index + 1)
        return updated
    }

    /// Handles a rejection of an append at `rejected`, with the follower's hint. Returns
    /// whether the rejection was current (not stale) and `next` moved.
    mutating func maybeDecrease(rejected: UInt64, hint: UInt64) -> Bool {
        if state == .replicate {
            // Stale unless it rejects exactly what comes after our match.
            if rejected <= match { return false }
            next = match + 1
            return true
        }
        // Probe: only the latest probe's rejection counts.
        if next == 0 || next - 1 != rejected { return false }
        next = max(min(rejected, hint + 1), match + 1)
        probeSent = false
        return true
    }
}
