/// One membership operation.
public enum ConfChangeKind: UInt8, Sendable, Equatable {
    case addVoter = 0, addLearner = 1, remove = 2
}

/// One membership operation on one node.
public struct ConfChangeSingle: Sendable, Equatable {
    public var kind: ConfChangeKind
    public var nodeID: NodeID

    public init(_ kind: ConfChangeKind, _ nodeID: NodeID) {
        self.kind = kind
        self.nodeID = nodeID
    }
}

/// How a change moves between configurations.
public enum ConfChangeTransition: UInt8, Sendable, Equatable {
    /// A single voter change applies directly; anything larger goes through a joint
    /// configuration that the leader leaves by itself.
    case auto = 0
    /// Always through a joint configuration, left automatically.
    case jointImplicit = 1
    /// Always through a joint configuration, left only by an explicit empty change.
    case jointExplicit = 2
}

/// A membership change: any mix of additions, removals, promotions and demotions. An empty
/// change leaves a joint configuration.
public struct ConfChangeV2: Sendable, Equatable {
    public var changes: [ConfChangeSingle]
    public var transition: ConfChangeTransition
    /// Opaque to Raft; the application's description of the change (a store puts the new
    /// peers' addresses here).
    public var context: [UInt8]

    public init(changes: [ConfChangeSingle] = [], transition: ConfChangeTransition = .auto, context: [UInt8] = []) {
        self.changes = changes
        self.transition = transition
        self.context = context
    }

    /// The change that leaves a joint configuration.
    public static let leaveJoint = ConfChangeV2()

    public var isLeaveJoint: Bool { changes.isEmpty }

    /// A compact binary form for log entries: transition, count, (kind, id) pairs, then the
    /// context.
    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = [transition.rawValue, UInt8(truncatingIfNeeded: changes.count >> 8), UInt8(truncatingIfNeeded: changes.count)]
        for change in changes {
            bytes.append(change.kind.rawValue)
            withUnsafeBytes(of: change.nodeID.bigEndian) { bytes.append(contentsOf: $0) }
        }
        bytes.append(contentsOf: context)
        return bytes
    }

    /// Decodes `encoded()`; nil for malformed bytes.
    public init?(decoding bytes: [UInt8]) {
        guard bytes.count >= 3, let transition = ConfChangeTransition(rawValue: bytes[0]) else { return nil }
        let count = Int(bytes[1]) << 8 | Int(bytes[2])
        guard bytes.count >= 3 + count * 9 else { return nil }
        var changes: [ConfChangeSingle] = []
        for item in 0..<count {
            let base = 3 + item * 9
            guard let kind = ConfChangeKind(rawValue: bytes[base]) else { return nil }
            var id: UInt64 = 0
            for byte in bytes[(base + 1)...(base + 8)] { id = id << 8 | UInt64(byte) }
            changes.append(ConfChangeSingle(kind, id))
        }
        self.init(changes: changes, transition: transition, context: Array(bytes[(3 + count * 9)...]))
    }
}

extension ConfState {
    /// The configuration after `change`, or a typed error when it does not apply.
    public func applying(_ change: ConfChangeV2) throws(RaftError) -> ConfState {
        if change.isLeaveJoint {
            guard isJoint else { throw .invalidConfChange("not in a joint configuration") }
            var next = self
            next.votersOutgoing = []
            next.learners.formUnion(learnersNext)
            next.learnersNext = []
            next.autoLeave = false
            return next
        }
        guard !isJoint else { throw .invalidConfChange("already in a joint configuration; leave it first") }
        let ids = change.changes.map(\.nodeID)
        guard !ids.contains(noNode) else { throw .invalidConfChange("node id 0 is reserved") }
        guard Set(ids).count == ids.count else { throw .invalidConfChange("a node appears twice in one change") }

        // Apply to the incoming half.
        var incoming = self
        for single in change.changes {
            switch single.kind {
            case .addVoter:
                incoming.voters.insert(single.nodeID)
                incoming.learners.remove(single.nodeID)
            case .addLearner:
                incoming.voters.remove(single.nodeID)
                incoming.learners.insert(single.nodeID)
            case .remove:
                incoming.voters.remove(single.nodeID)
                incoming.learners.remove(single.nodeID)
            }
        }
        guard !incoming.voters.isEmpty else { throw .invalidConfChange("no voters would remain") }

        let votersChanged = voters.symmetricDifference(incoming.voters).count
        // From no voters at all (bootstrap) there is nothing to be joint with.
        if voters.isEmpty || (change.transition == .auto && votersChanged <= 1) {
            return incoming
        }
        // Joint: C_old stays as the outgoing half. A demoted outgoing voter becomes a learner
        // only when the joint configuration is left.
        var joint = incoming
        joint.votersOutgoing = voters
        for learner in incoming.learners where voters.contains(learner) {
            joint.learners.remove(learner)
            joint.learnersNext.insert(learner)
        }
        joint.autoLeave = change.transition != .jointExplicit
        return joint
    }
}
