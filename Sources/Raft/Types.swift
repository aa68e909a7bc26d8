/// Identifies a Raft peer within one group. 0 means "none".
public typealias NodeID = UInt64

/// The value of `NodeID` that names no node.
public let noNode: NodeID = 0

/// What an entry carries: an application command or a membership change.
public enum EntryKind: UInt8, Sendable, Equatable {
    case normal = 0
    case confChange = 1
}

/// One log entry. Immutable once committed.
public struct Entry: Sendable, Equatable, CustomStringConvertible {
    public var term: UInt64
    public var index: UInt64
    public var kind: EntryKind
    public var data: [UInt8]

    public init(term: UInt64, index: UInt64, kind: EntryKind = .normal, data: [UInt8] = []) {
        self.term = term
        self.index = index
        self.kind = kind
        self.data = data
    }

    /// Bytes counted against size limits (payload plus a fixed header estimate).
    public var sizeBytes: Int { data.count + 24 }

    public var description: String { "\(index)@\(term)\(kind == .confChange ? "cc" : "")[\(data.count)B]" }
}

/// The state that must be on stable storage before messages that depend on it are sent.
public struct HardState: Sendable, Equatable {
    public var term: UInt64
    public var vote: NodeID
    public var commit: UInt64

    public init(term: UInt64 = 0, vote: NodeID = noNode, commit: UInt64 = 0) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }
}

/// A node's role in its group.
public enum Role: String, Sendable, Equatable {
    case follower, preCandidate, candidate, leader
}

/// Volatile state worth reporting when it changes: who leads and what this node is.
public struct SoftState: Sendable, Equatable {
    public var leader: NodeID
    public var role: Role
}

/// The voters and learners of a configuration, as stored with snapshots.
public struct ConfState: Sendable, Equatable {
    /// Voters of the (incoming) configuration.
    public var voters: Set<NodeID>
    /// Voters of the outgoing configuration; empty unless joint.
    public var votersOutgoing: Set<NodeID>
    public var learners: Set<NodeID>
    /// Voters of the outgoing configuration that become learners when the joint state is left.
    public var learnersNext: Set<NodeID>
    /// Whether the leader leaves the joint configuration by itself once it is applied.
    public var autoLeave: Bool

    public init(voters: Set<NodeID> = [], votersOutgoing: Set<NodeID> = [], learners: Set<NodeID> = [],
                learnersNext: Set<NodeID> = [], autoLeave: Bool = false) {
        self.voters = voters
        self.votersOutgoing = votersOutgoing
        self.learners = learners
        self.learnersNext = learnersNext
        self.autoLeave = autoLeave
    }

    /// Whether this is a joint configuration (C_old,new).
    public var isJoint: Bool { !votersOutgoing.isEmpty }

    /// Every node that gets replicated to.
    public var allNodes: Set<NodeID> { voters.union(votersOutgoing).union(learners).union(learnersNext) }
}

/// Where a snapshot stands in the log, and the configuration at that point.
public struct SnapshotMetadata: Sendable, Equatable {
    public var index: UInt64
    public var term: UInt64
    public var confState: ConfState

    public init(index: UInt64 = 0, term: UInt64 = 0, confState: ConfState = ConfState()) {
        self.index = index
        self.term = term
        self.confState = confState
    }
}

/// The application state up to `metadata.index`, opaque to Raft.
public struct Snapshot: Sendable, Equatable {
    public var metadata: SnapshotMetadata
    public var data: [UInt8]

    public init(metadata: SnapshotMetadata = SnapshotMetadata(), data: [UInt8] = []) {
        self.metadata = metadata
        self.data = data
    }

    public var isEmpty: Bool { metadata.index == 0 }
}

/// A confirmed linearizable read: once the state machine has applied `index`, a read tagged
/// `context` may be served from it.
public struct ReadState: Sendable, Equatable {
    public var index: UInt64
    public var context: [UInt8]

    public init(index: UInt64, context: [UInt8]) {
        self.index = index
        self.context = context
    }
}

/// Kinds of messages exchanged between peers of one group.
public enum MessageKind: UInt8, Sendable, Equatable {
    case appendEntries, appendResponse
    case requestVote, voteResponse
    case requestPreVote, preVoteResponse
    case heartbeat, heartbeatResponse
    case installSnapshot
    case timeoutNow
    case readIndex, readIndexResponse
}

/// A message between two peers of one Raft group.
public struct Message: Sendable, Equatable, CustomStringConvertible {
    public var kind: MessageKind
    public var from: NodeID
    public var to: NodeID
    public var term: UInt64 = 0
    /// For appends: the term of the entry before `entries`; for votes: the candidate's last term.
    public var logTerm: UInt64 = 0
    /// For appends: the index before `entries`; for votes: the candidate's last index; for
    /// responses: the follower's last matching index (or the rejected index).
    public var index: UInt64 = 0
    public var entries: [Entry] = []
    public var commit: UInt64 = 0
    public var reject = false
    /// On a rejected append: the follower's guess of the last index that may match.
    public var rejectHint: UInt64 = 0
    /// On a rejected append: the term at `rejectHint` in the follower's log.
    public var rejectHintTerm: UInt64 = 0
    public var snapshot: Snapshot? = nil
    /// ReadIndex context, echoed by heartbeats and their responses.
    public var context: [UInt8] = []
    /// Leader tick at which an append or heartbeat was sent, echoed in the response (leases).
    public var sentAtTick: UInt64 = 0
    /// A vote request caused by leader transfer: receivers grant it even within a lease.
    public var isLeaderTransfer = false
    /// On a heartbeat: the leader's group sleeps, and so may the follower (see `sleep()`); on
    /// a heartbeat response: the follower sleeps.
    public var sleep = false

    public init(kind: MessageKind, from: NodeID, to: NodeID) {
        self.kind = kind
        self.from = from
        self.to = to
    }

    public var description: String {
        var text = "\(from)→\(to) \(kind) t\(term)"
        switch kind {
        case .appendEntries:
            text += " prev=\(index)@\(logTerm) entries=\(entries.map(\.index)) commit=\(commit)"
        case .appendResponse:
            text += reject ? " reject \(index) hint=\(rejectHint)@\(rejectHintTerm)" : " ok \(index)"
        case .requestVote, .requestPreVote:
            text += " last=\(index)@\(logTerm)\(isLeaderTransfer ? " transfer" : "")"
        case .voteResponse, .preVoteResponse:
            text += reject ? " reject" : " grant"
        case .installSnapshot:
            text += " snap=\(snapshot?.metadata.index ?? 0)@\(snapshot?.metadata.term ?? 0)"
        case .heartbeat:
            text += " commit=\(commit)"
            if !context.isEmpty { text += " ctx=\(context)" }
        case .readIndex, .readIndexResponse, .heartbeatResponse, .timeoutNow:
            if !context.isEmpty { text += " ctx=\(context)" }
            if kind == .readIndexResponse { text += " index=\(index)" }
        }
        return text
    }
}

/// Why a request to the Raft core was refused. Nothing was changed when one is thrown.
public enum RaftError: Error, Sendable, Equatable, CustomStringConvertible {
    /// This node is not the leader; `leader` is the one it knows of, or `noNode`.
    case notLeader(leader: NodeID)
    /// A leader transfer is in progress; proposals wait until it ends.
    case leaderTransferInProgress
    /// Too many bytes are proposed but not yet committed.
    case uncommittedLimitExceeded(limitBytes: Int)
    /// A configuration change is already proposed and not yet applied.
    case confChangePending
    /// The change does not apply to the current configuration.
    case invalidConfChange(String)
    /// The requested entries are compacted away.
    case compacted
    /// The requested entries are beyond the last index.
    case unavailable

    public var description: String {
        switch self {
        case .notLeader(let leader): "not the leader (leader: \(leader == noNode ? "unknown" : String(leader)))"
        case .leaderTransferInProgress: "leader transfer in progress"
        case .uncommittedLimitExceeded(let limit): "more than \(limit) bytes proposed and not committed"
        case .confChangePending: "a configuration change is still pending"
        case .invalidConfChange(let why): "invalid configuration change: \(why)"
        case .compacted: "log entries compacted"
        case .unavailable: "log entries unavailable"
        }
    }
}
