import FlotillaProto
import Foundation
import Raft

// Sleeping regions and store-level liveness (TiKV's hibernation, CockroachDB's store
// liveness): an idle region costs nothing per tick, and one heartbeat per store pair stands
// for the heartbeats of every sleeping region between them.
//
// The store's half of the rules (Raft's half is in `Raft/Sleep.swift`):
// - Only awake regions tick. A leader's region falls asleep after `regionSleepAfterQuietTicks`
//   ticks in a row with nothing to do here (no queued or pending writes, no reads, no snapshot)
//   and nothing to do in Raft (`RaftNode.canSleep`); its followers sleep when its sleep
//   heartbeat finds them caught up.
// - A sleeping region's Raft clock is brought to the store's before it steps anything, so its
//   leases and vote refusals count real time.
// - It wakes on a request (every request passes `initializedPeer`), a snapshot, a message
//   Raft says wakes it, or the death of a store holding one of its replicas: a store not heard
//   from for `storeDeadAfterTicks` (any message counts, and every store heartbeats the stores
//   it shares regions with every `storeHeartbeatIntervalTicks`). Liveness is judged after the
//   turn's arrivals were taken, so a loop that was late itself never presumes others dead.

/// Which other stores were heard from lately: a pure value fed the store's ticks.
///
/// A store is presumed dead after `deadAfterTicks` ticks without a sign of life, or after
/// `gapsPerDeath` times the longest gap it was heard with lately if that is longer (at most
/// `deadAfterTicksMaxFactor` × `deadAfterTicks`): a store whose own loop is slow (overloaded,
/// its turns seconds long) speaks seldom but is alive, and presuming it dead wakes every
/// region it shares (measured at 100,000 regions: 1.2 million wakes per store in two minutes
/// while all three stores were merely slow). The recent gap decays by an eighth per sign of
/// life, so a store back to normal gets the short span again within a few seconds (a
/// phi-accrual-like detector, as Cassandra's and Akka's).
///
/// Guarantees: never presumed dead before `deadAfterTicks` of silence nor kept alive past
/// `deadAfterTicksMaxFactor` × `deadAfterTicks` of it (a store first tracked gets the short
/// span), and alive again at its next sign of life.
public struct StoreLiveness: Sendable {
    public let deadAfterTicks: UInt64
    /// A store is presumed dead after this many of its recent gaps of silence.
    public static let gapsPerDeath: UInt64 = 4
    /// The adaptive span is at most this many `deadAfterTicks`.
    public static let deadAfterTicksMaxFactor: UInt64 = 5
    private var lastHeardTick: [UInt64: UInt64] = [:]
    /// Per store: the longest gap between its signs of life lately (decaying).
    private var recentGapTicks: [UInt64: UInt64] = [:]
    public private(set) var presumedDead: Set<UInt64> = []

    public init(deadAfterTicks: UInt64) {
        precondition(deadAfterTicks >= 1, "a store has at least a tick to speak")
        self.deadAfterTicks = deadAfterTicks
    }

    /// A sign of life from `storeID` at `tick`.
    public mutating func heard(_ storeID: UInt64, at tick: UInt64) {
        // A gap that ended a presumed death counts too: the store was only slow, or it
        // restarted (then the longer span decays within a few seconds of heartbeats).
        if let last = lastHeardTick[storeID], last <= tick {
            let decayed = (recentGapTicks[storeID] ?? 0) * 7 / 8
            recentGapTicks[storeID] = max(tick - last, decayed)
        }
        lastHeardTick[storeID] = tick
        if !presumedDead.isEmpty { presumedDead.remove(storeID) }
    }

    /// Ticks of silence after which `storeID` is presumed dead now.
    public func deadSpanTicks(_ storeID: UInt64) -> UInt64 {
        let adaptive = min((recentGapTicks[storeID] ?? 0) * Self.gapsPerDeath, deadAfterTicks * Self.deadAfterTicksMaxFactor)
        let span = max(deadAfterTicks, adaptive)
        precondition(span >= deadAfterTicks && span <= deadAfterTicks * Self.deadAfterTicksMaxFactor, "the dead span within its bounds")
        return span
    }

    /// Starts watching a store this one shares regions with (it has `deadAfterTicks` to speak).
    public mutating func watch(_ storeID: UInt64, at tick: UInt64) {
        if lastHeardTick[storeID] == nil { lastHeardTick[storeID] = tick }
    }

    /// Stops watching stores that share no region with this one any more.
    public mutating func keepWatching(only stores: Set<UInt64>) {
        lastHeardTick = lastHeardTick.filter { stores.contains($0.key) }
        recentGapTicks = recentGapTicks.filter { stores.contains($0.key) }
        presumedDead.formIntersection(stores)
    }

    public func isAlive(_ storeID: UInt64) -> Bool { !presumedDead.contains(storeID) }

    /// Ticks since `storeID` was last heard from (0 for a store not watched).
    public func ticksSilent(_ storeID: UInt64, at tick: UInt64) -> UInt64 {
        guard let heardAt = lastHeardTick[storeID], heardAt <= tick else { return 0 }
        return tick - heardAt
    }

    /// The stores that fell silent for their dead span by `tick`: presumed dead from now on.
    public mutating func expire(at tick: UInt64) -> [UInt64] {
        var fallen: [UInt64] = []
        for (storeID, heardAt) in lastHeardTick where !presumedDead.contains(storeID) && tick >= heardAt &+ deadSpanTicks(storeID) {
            fallen.append(storeID)
        }
        fallen.sort()
        presumedDead.formUnion(fallen)
        precondition(fallen.allSatisfy { presumedDead.contains($0) }, "a fallen store is presumed dead")
        return fallen
    }
}

extension StoreCore {
    /// How often the set of stores sharing regions with this one is recomputed.
    static let remoteStoresRefreshTicks: UInt64 = 50

    /// Regions asleep here now.
    public var sleepingRegionCount: Int { sleepingRegions.count }
    public func isAsleep(_ regionID: UInt64) -> Bool { sleepingRegions[regionID] != nil }

    /// One line of a replica's Raft and sleep state, for failure reports.
    public func sleepState(_ regionID: UInt64) -> String? {
        guard let peer = peers[regionID] else { return nil }
        let raft = peer.raft
        return "peer \(peer.peerID) \(raft.role) term \(raft.term) leader \(raft.leader) last \(raft.lastIndex)@\((try? raft.term(at: raft.lastIndex)) ?? 0) "
            + "commit \(raft.committedIndex) voters \(raft.confState.voters.sorted()) learners \(raft.confState.learners.sorted()) "
            + "asleep \(raft.isAsleep) since-leader \(raft.ticksSinceLeaderContact)"
    }

    /// Why a region led here does not sleep now (nil: it sleeps, falls asleep, or is not led here).
    public func sleepBlocker(_ regionID: UInt64) -> String? {
        guard let peer = peers[regionID], peer.raft.role == .leader, !peer.raft.isAsleep else { return nil }
        guard settings.regionSleepAfterQuietTicks > 0 else { return "regions never sleep on this store" }
        guard peer.isInitialized, !peer.isRemoved else { return "the replica is not initialized or removed" }
        guard peer.queuedWrites.isEmpty, peer.pendingWrites.isEmpty else { return "writes in flight" }
        guard peer.readsAwaitingIndex.isEmpty, peer.readsAwaitingApply.isEmpty else { return "reads in flight" }
        guard peer.receivedSnapshot == nil else { return "a snapshot to install" }
        if let blocker = peer.raft.sleepBlocker(excusing: deadFollowers(of: peer)) { return blocker }
        if peer.raft.isFallingAsleep { return nil }
        return "quiet for \(peer.quietTicks) of \(settings.regionSleepAfterQuietTicks) ticks"
    }
    /// Stores presumed dead now (not heard from for `storeDeadAfterTicks`).
    public var storesPresumedDead: Set<UInt64> { liveness.presumedDead }

    func insert(_ peer: RegionPeer) {
        let regionID = peer.region.id
        peers[regionID] = peer
        sleepingRegions[regionID] = nil
        sleepingWithExcusedFollowers.remove(regionID)
        awakeRegions.insert(regionID)
        precondition(!peer.raft.isAsleep, "region \(regionID): a replica starts awake")
    }

    func removePeer(_ regionID: UInt64) {
        peers[regionID] = nil
        sleepingRegions[regionID] = nil
        sleepingWithExcusedFollowers.remove(regionID)
        awakeRegions.remove(regionID)
    }

    // MARK: Time

    /// Advances the store's clock by `ticks` (more than one when the loop fell behind): every
    /// awake region runs them as one tick of work (`RaftNode.tick(passing:)`), quiet leaders
    /// fall asleep, and store heartbeats fall due. Sleeping regions cost nothing.
    public func tick(passing ticks: Int = 1) {
        precondition(ticks >= 1, "at least the tick that is due")
        let heartbeatDue = storeTick / settings.storeHeartbeatIntervalTicks != (storeTick + UInt64(ticks)) / settings.storeHeartbeatIntervalTicks
        let refreshDue = storeTick / Self.remoteStoresRefreshTicks != (storeTick + UInt64(ticks)) / Self.remoteStoresRefreshTicks
            || storeTick == 0
        storeTick += UInt64(ticks)
        var goingToSleep: [RegionPeer] = []
        for regionID in awakeRegions {
            guard let peer = peers[regionID] else { continue }
            peer.raft.tick(passing: UInt64(ticks))
            if isQuietLongEnough(peer, ticks: ticks) { goingToSleep.append(peer) }
        }
        touchedRegions.formUnion(awakeRegions)
        for peer in goingToSleep {
            peer.raft.startSleeping(excusing: deadFollowers(of: peer))
            // It sleeps once its followers answer (at once when it has none).
            if peer.raft.isAsleep { fallAsleep(peer) }
        }
        if refreshDue { refreshRemoteStores() }
        if heartbeatDue { queueStoreHeartbeats() }
    }

    /// Counts a leader's quiet ticks (all `ticks` that passed: a late loop's regions sleep
    /// after the same real time); true once it was quiet for `regionSleepAfterQuietTicks`.
    private func isQuietLongEnough(_ peer: RegionPeer, ticks: Int) -> Bool {
        guard settings.regionSleepAfterQuietTicks > 0, peer.raft.role == .leader, peer.isInitialized, !peer.isRemoved,
              peer.queuedWrites.isEmpty, peer.pendingWrites.isEmpty, peer.readsAwaitingIndex.isEmpty,
              peer.readsAwaitingApply.isEmpty, peer.receivedSnapshot == nil, peer.raft.canSleep(excusing: deadFollowers(of: peer)) else {
            peer.quietTicks = 0
            return false
        }
        guard !peer.raft.isFallingAsleep else {
            peer.quietTicks = 0
            return false
        }
        peer.quietTicks += ticks
        return peer.quietTicks >= settings.regionSleepAfterQuietTicks
    }

    /// The region's members on stores presumed dead (empty while every store lives).
    private func deadFollowers(of peer: RegionPeer) -> Set<NodeID> {
        guard !liveness.presumedDead.isEmpty else { return [] }
        return Set(peer.region.peers.filter { $0.id != peer.peerID && !liveness.isAlive($0.storeID) }.map(\.id))
    }

    private func fallAsleep(_ peer: RegionPeer) {
        let regionID = peer.region.id
        precondition(peer.raft.isAsleep, "region \(regionID): the store sleeps a region only once Raft does")
        awakeRegions.remove(regionID)
        sleepingRegions[regionID] = storeTick
        if peer.raft.role == .leader && !deadFollowers(of: peer).isEmpty { sleepingWithExcusedFollowers.insert(regionID) }
        peer.quietTicks = 0
        regionSleepsTotal += 1
        touchedRegions.insert(regionID)
    }

    /// Brings a sleeping region's Raft clock to the store's.
    private func catchUpClock(_ peer: RegionPeer) {
        guard let syncedAt = sleepingRegions[peer.region.id] else { return }
        precondition(syncedAt <= storeTick, "region \(peer.region.id): a sleeping clock ahead of the store's")
        if syncedAt < storeTick { peer.raft.passTicksAsleep(storeTick - syncedAt) }
        sleepingRegions[peer.region.id] = storeTick
    }

    /// Wakes the region if it sleeps (its clock first brought to the store's).
    func wakeIfAsleep(_ peer: RegionPeer) {
        guard sleepingRegions[peer.region.id] != nil else { return }
        catchUpClock(peer)
        let leaderStore = peer.leaderPeer?.storeID ?? 0
        let leaderAlive = leaderStore != 0 && leaderStore != storeID && liveness.isAlive(leaderStore)
        peer.raft.wake(leaderAlive: leaderAlive, campaignSoon: !leaderAlive && standsFirst(peer)) { [liveness, storeTick] nodeID in
            guard let store = peer.peer(withID: nodeID)?.storeID else { return 0 }
            return liveness.ticksSilent(store, at: storeTick)
        }
        regionWakesTotal += 1
        sleepingRegions[peer.region.id] = nil
        sleepingWithExcusedFollowers.remove(peer.region.id)
        awakeRegions.insert(peer.region.id)
        touchedRegions.insert(peer.region.id)
        precondition(!peer.raft.isAsleep && awakeRegions.contains(peer.region.id), "region \(peer.region.id): woken and ticking")
    }

    /// Whether this replica is the one of its group to campaign at once when its leader's store
    /// is presumed dead: the voter with the lowest peer id, other than the leader, on a store
    /// presumed alive. Every survivor picks the same one while they agree on liveness, so
    /// the group's first election is not split; a wrong pick only costs an election timeout.
    private func standsFirst(_ peer: RegionPeer) -> Bool {
        let leaderStore = peer.leaderPeer?.storeID ?? 0
        guard leaderStore != 0, !liveness.isAlive(leaderStore) else { return false }
        let first = peer.raft.confState.voters.sorted().first { nodeID in
            guard nodeID != peer.raft.leader, let store = peer.peer(withID: nodeID)?.storeID else { return false }
            return store == storeID || liveness.isAlive(store)
        }
        return first == peer.peerID
    }

    /// Before a sleeping region steps `message`: its clock catches up, and it wakes unless
    /// the message is its own group's sleep business.
    func prepareToStep(_ peer: RegionPeer, _ message: Message) {
        guard sleepingRegions[peer.region.id] != nil else { return }
        catchUpClock(peer)
        if peer.raft.wakes(on: message) { wakeIfAsleep(peer) }
    }

    /// After a step: a follower that fell asleep on its leader's sleep heartbeat stops ticking.
    func noteSleepAfterStep(_ peer: RegionPeer) {
        let storeSleeps = sleepingRegions[peer.region.id] != nil
        if peer.raft.isAsleep && !storeSleeps {
            fallAsleep(peer)
        } else if !peer.raft.isAsleep && storeSleeps {
            // Raft woke by itself (a newer term): the store follows.
            sleepingRegions[peer.region.id] = nil
            sleepingWithExcusedFollowers.remove(peer.region.id)
            awakeRegions.insert(peer.region.id)
        }
        precondition(peer.raft.isAsleep == (sleepingRegions[peer.region.id] != nil), "region \(peer.region.id): store and Raft agree on sleep")
    }

    // MARK: Store liveness

    /// A sign of life from another store (any message from it). A store presumed dead that
    /// is heard again wakes the sleeping regions led here that
    /// excused a follower there (the follower may have missed entries).
    func heard(fromStore storeID: UInt64) {
        let wasDead = !liveness.isAlive(storeID)
        liveness.heard(storeID, at: storeTick)
        guard wasDead, !sleepingWithExcusedFollowers.isEmpty else { return }
        for regionID in sleepingWithExcusedFollowers.sorted() {
            guard let peer = peers[regionID], peer.region.peers.contains(where: { $0.storeID == storeID }) else { continue }
            wakeIfAsleep(peer)
        }
    }

    private func refreshRemoteStores() {
        var stores: Set<UInt64> = []
        for peer in peers.values {
            for member in peer.region.peers where member.storeID != storeID && member.storeID != 0 { stores.insert(member.storeID) }
        }
        remoteStores = stores
        for store in stores { liveness.watch(store, at: storeTick) }
        liveness.keepWatching(only: stores)
    }

    private func queueStoreHeartbeats() {
        for store in remoteStores {
            var heartbeat = Flotilla_V1_RaftMessage()
            heartbeat.fromPeer.storeID = storeID
            heartbeat.toPeer.storeID = store
            heartbeat.storeHeartbeat.storeID = storeID
            storeHeartbeatsDue[store] = [heartbeat]
        }
    }

    /// The turn's liveness judgement, after its arrivals were taken: stores silent too long
    /// are presumed dead, and every sleeping region with a replica there wakes (before the
    /// turn collects its Readies).
    func expireSilentStores(output: inout StoreTurnOutput) {
        let fallen = liveness.expire(at: storeTick)
        guard !fallen.isEmpty else { return }
        output.storesPresumedDead = fallen
        let fallenSet = Set(fallen)
        for regionID in sleepingRegions.keys.sorted() {
            guard let peer = peers[regionID], peer.region.peers.contains(where: { fallenSet.contains($0.storeID) }) else { continue }
            wakeIfAsleep(peer)
            output.regionsWokenByStoreDeath += 1
        }
    }

    /// Store heartbeats due go out with the turn's last messages.
    func flushStoreHeartbeats(output: inout StoreTurnOutput) {
        for (store, heartbeats) in storeHeartbeatsDue { output.messagesByStore[store, default: []] += heartbeats }
        storeHeartbeatsDue = [:]
    }
}
