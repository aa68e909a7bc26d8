/// Everything the application must do after the node changed: persist, send, apply. Take it
/// with `ready()`, do it in order (persist before `messagesAfterPersist`), then `advance`.
public struct Ready: Sendable {
    /// Role or leader changed.
    public var softState: SoftState?
    /// Term, vote or commit changed: persist before sending `messagesAfterPersist`.
    public var hardState: HardState?
    /// Entries to append to stable storage (replacing any at or after the first's index).
    public var entriesToPersist: [Entry] = []
    /// A leader's snapshot to persist and install into the state machine.
    public var snapshotToInstall: Snapshot?
    /// Messages that may be sent right away (a leader's appends, heartbeats, snapshots).
    public var messagesNow: [Message] = []
    /// Messages that may be sent only once this Ready's state is persisted.
    public var messagesAfterPersist: [Message] = []
    /// Committed entries to apply to the state machine, in order.
    public var committedEntries: [Entry] = []
    /// Confirmed linearizable reads.
    public var readStates: [ReadState] = []

    /// An empty Ready (tests and tools build their own).
    public init() {}

    public var isEmpty: Bool {
        softState == nil && hardState == nil && entriesToPersist.isEmpty && snapshotToInstall == nil
            && messagesNow.isEmpty && messagesAfterPersist.isEmpty && committedEntries.isEmpty && readStates.isEmpty
    }
}

extension RaftNode {
    /// Whether `ready()` has anything to hand out.
    public var hasReady: Bool {
        softState != lastReadySoftState || hardState != lastReadyHardState
            || !log.entriesToPersist.isEmpty || log.unstableSnapshot != nil
            || !messagesNow.isEmpty || !messagesAfterPersist.isEmpty || !readStates.isEmpty
            || !log.entriesToApply(maxBytes: 1).isEmpty
    }

    /// Takes what must be persisted, sent and applied. Call `advance` with it before the next.
    public mutating func ready() -> Ready {
        var ready = Ready()
        if softState != lastReadySoftState {
            ready.softState = softState
            lastReadySoftState = softState
        }
        if hardState != lastReadyHardState {
            ready.hardState = hardState
            lastReadyHardState = hardState
        }
        ready.entriesToPersist = log.entriesToPersist
        ready.snapshotToInstall = log.unstableSnapshot
        ready.messagesNow = messagesNow
        ready.messagesAfterPersist = messagesAfterPersist
        ready.committedEntries = log.entriesToApply(maxBytes: config.maxApplyBytesPerReady)
        ready.readStates = readStates
        messagesNow = []
        messagesAfterPersist = []
        readStates = []
        return ready
    }

    /// Records that `ready` was carried out: its entries and snapshot are persisted and its
    /// committed entries applied. Membership changes among them take effect here.
    public mutating func advance(_ ready: Ready) {
        if let snapshot = ready.snapshotToInstall {
            log.snapshotPersisted(index: snapshot.metadata.index)
        }
        if let last = ready.entriesToPersist.last {
            log.stable(to: last.index, term: last.term)
            if role == .leader {
                // The leader counts itself toward a quorum only once its own write is done.
                if progress[id]?.maybeUpdate(log.stableLastIndex) == true, maybeCommit() {
                    broadcastCommitted()
                }
            }
        }
        for entry in ready.committedEntries where entry.kind == .confChange {
            if let change = ConfChangeV2(decoding: entry.data) { applyConfChange(change) }
        }
        if let last = ready.committedEntries.last {
            log.applied(to: last.index)
        }
        // A leader elected inside a joint configuration that leaves by itself leaves it once
        // everything in its log at election is applied (the old leader may have died before
        // its leave entry got anywhere): a region is never left joint.
        if role == .leader, confState.isJoint, confState.autoLeave, pendingConfIndex <= log.applied, leadTransferee == noNode {
            pendingConfIndex = appendAsLeader([Entry(term: 0, index: 0, kind: .confChange, data: ConfChangeV2.leaveJoint.encoded())])
            broadcastAppend()
        }
    }
}
