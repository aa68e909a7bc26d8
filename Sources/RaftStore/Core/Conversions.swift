import FlotillaProto
import Foundation
import Raft

extension Flotilla_V1_ConfState {
    init(_ conf: ConfState) {
        self.init()
        voters = conf.voters.sorted()
        votersOutgoing = conf.votersOutgoing.sorted()
        learners = conf.learners.sorted()
        learnersNext = conf.learnersNext.sorted()
        autoLeave = conf.autoLeave
    }

    var core: ConfState {
        ConfState(voters: Set(voters), votersOutgoing: Set(votersOutgoing), learners: Set(learners),
                  learnersNext: Set(learnersNext), autoLeave: autoLeave)
    }
}

extension Flotilla_V1_RaftCoreMessage {
    init(_ message: Message) {
        self.init()
        kind = UInt32(message.kind.rawValue)
        from = message.from
        to = message.to
        term = message.term
        logTerm = message.logTerm
        index = message.index
        entries = message.entries.map { entry in
            var stored = Flotilla_V1_RaftEntry()
            stored.term = entry.term
            stored.index = entry.index
            stored.kind = UInt32(entry.kind.rawValue)
            stored.data = Data(entry.data)
            return stored
        }
        commit = message.commit
        reject = message.reject
        rejectHint = message.rejectHint
        rejectHintTerm = message.rejectHintTerm
        if let snapshot = message.snapshot {
            var metadata = Flotilla_V1_SnapshotMetadata()
            metadata.index = snapshot.metadata.index
            metadata.term = snapshot.metadata.term
            metadata.confState = Flotilla_V1_ConfState(snapshot.metadata.confState)
            self.snapshot = metadata
        }
        context = Data(message.context)
        sentAtTick = message.sentAtTick
        isLeaderTransfer = message.isLeaderTransfer
        sleep = message.sleep
    }

    /// The core message, or nil when a field is out of range (a peer running other code).
    var core: Message? {
        guard let kind = UInt8(exactly: kind).flatMap(MessageKind.init(rawValue:)) else { return nil }
        var message = Message(kind: kind, from: from, to: to)
        message.term = term
        message.logTerm = logTerm
        message.index = index
        var converted: [Entry] = []
        converted.reserveCapacity(entries.count)
        for entry in entries {
            guard let entryKind = UInt8(exactly: entry.kind).flatMap(EntryKind.init(rawValue:)) else { return nil }
            converted.append(Entry(term: entry.term, index: entry.index, kind: entryKind, data: [UInt8](entry.data)))
        }
        message.entries = converted
        message.commit = commit
        message.reject = reject
        message.rejectHint = rejectHint
        message.rejectHintTerm = rejectHintTerm
        if hasSnapshot {
            message.snapshot = Raft.Snapshot(metadata: SnapshotMetadata(index: snapshot.index, term: snapshot.term,
                                                                        confState: snapshot.confState.core))
        }
        message.context = [UInt8](context)
        message.sentAtTick = sentAtTick
        message.isLeaderTransfer = isLeaderTransfer
        message.sleep = sleep
        return message
    }
}

extension Flotilla_V1_Region {
    /// The configuration the region's peer list describes (voters and learners).
    public var confState: ConfState {
        ConfState(voters: Set(peers.filter { $0.role == .voter }.map(\.id)),
                  learners: Set(peers.filter { $0.role == .learner }.map(\.id)))
    }

    func peer(withID id: UInt64) -> Flotilla_V1_Peer? { peers.first { $0.id == id } }
    func peer(onStore storeID: UInt64) -> Flotilla_V1_Peer? { peers.first { $0.storeID == storeID } }
}

extension StoreCore {
    /// A bound on the changes of one PD step a store carries out (a region has at most 16 peers).
    public static let changesPerStepMax = 16

    /// The Raft membership changes that carry out PD's peer changes (one step: a single
    /// change, or the changes of one joint configuration), each with the role its peer takes;
    /// nil when the step is empty, too large, or names a change this store does not know.
    public static func membershipChanges(for changes: [Flotilla_V1_ChangePeer]) -> [(kind: ConfChangeKind, peer: Flotilla_V1_Peer)]? {
        guard !changes.isEmpty, changes.count <= changesPerStepMax else { return nil }
        var proposed: [(kind: ConfChangeKind, peer: Flotilla_V1_Peer)] = []
        for change in changes {
            var peer = change.peer
            switch change.kind {
            case .addLearner:
                peer.role = .learner
                proposed.append((.addLearner, peer))
            case .promoteLearner:
                peer.role = .voter
                proposed.append((.addVoter, peer))
            case .demoteVoter:
                peer.role = .learner
                proposed.append((.addLearner, peer))
            case .removePeer:
                proposed.append((.remove, peer))
            case .UNRECOGNIZED:
                return nil
            }
        }
        return proposed
    }
}
