import Foundation
import FlotillaProto
import Raft
@testable import RaftStore
import Testing

/// A replica's life on a store: created by its leader's message, initialized by a snapshot,
/// removed by an applied membership change, destroyed to a tombstone. A removed or
/// tombstoned replica never comes back, whatever stale message arrives, before or after a
/// restart; only a successor (a new peer id at a newer conf_ver) is created in its place.
@Suite("Peer life: removed replicas never come back")
struct PeerLifeTests {
    /// A region on stores 1-3 that had a learner on store 4, removed and destroyed there;
    /// every message store 4 received while it was a member, kept for replay.
    private func removedLearner() throws -> (cluster: InProcessCluster, region: Flotilla_V1_Region, leader: UInt64,
                                              learner: Flotilla_V1_Peer, seen: [Flotilla_V1_RaftMessage]) {
        let cluster = try InProcessCluster(storeCount: 4, splitKeys: [], replicas: 3)
        try cluster.rounds(40)
        for index in 0..<10 { _ = try cluster.write(InProcessCluster.put("k\(index)", "v\(index)"), key: "k\(index)") }
        let region = try #require(cluster.region(for: "k"))
        let leader = try #require(cluster.leader(of: region.id))
        let recorder = Recorder()
        cluster.holdBack = { destination, message in
            if destination == 4 { recorder.messages.append(message) }
            return false
        }
        let learner = peer(region.id * 100 + 4, store: 4, .learner)
        let add = try #require(try cluster.stores[leader]?.proposeMembershipChange(regionID: region.id, changes: [(.addLearner, learner)]))
        for _ in 0..<80 where cluster.completed[add] == nil || cluster.snapshotsInstalled[4, default: 0] == 0 { try cluster.round() }
        for index in 10..<15 { _ = try cluster.write(InProcessCluster.put("k\(index)", "v\(index)"), key: "k\(index)") }
        try cluster.rounds(5)
        #expect(cluster.digests(region.id)[4]?.keyCount == 15, "the learner caught up")
        _ = try #require(try cluster.stores[leader]?.proposeMembershipChange(regionID: region.id, changes: [(.remove, learner)]))
        for _ in 0..<40 where cluster.stores[4]?.raftStatus(region.id) != nil { try cluster.round() }
        cluster.holdBack = nil
        #expect(cluster.stores[4]?.raftStatus(region.id) == nil, "the removed replica was destroyed")
        let current = try #require(cluster.stores[leader]?.region(region.id))
        return (cluster, current, leader, learner, recorder.messages)
    }

    final class Recorder: @unchecked Sendable { var messages: [Flotilla_V1_RaftMessage] = [] }

    /// Replays `messages` into store 4 and expects none of them to bring region back.
    private func expectNoneRecreates(_ messages: [Flotilla_V1_RaftMessage], _ cluster: InProcessCluster, region: UInt64, _ what: String) throws {
        for message in messages {
            let taken = cluster.stores[4]?.step(message) ?? false
            #expect(!taken, "\(what): a \(message.message.core.map { "\($0.kind)" } ?? "?") message was taken")
        }
        try cluster.round(tick: false)
        #expect(cluster.stores[4]?.raftStatus(region) == nil, "\(what): the removed replica came back")
        #expect(cluster.stores[4]?.regionIDs == [], "\(what): the store holds a region again")
    }

    @Test func staleMessagesNeverBringATombstonedReplicaBack() throws {
        let (cluster, region, _, learner, seen) = try removedLearner()
        let kinds = Set(seen.compactMap { $0.message.core?.kind })
        #expect(kinds.isSuperset(of: [.appendEntries, .heartbeat]), "the replay holds appends and heartbeats: \(kinds)")
        try expectNoneRecreates(seen, cluster, region: region.id, "replayed")

        // The same peer id at any later conf_ver: the tombstone lists it, so it is refused.
        var later = try #require(seen.last { $0.message.core?.kind == .heartbeat })
        later.epoch.confVer = region.epoch.confVer + 5
        try expectNoneRecreates([later], cluster, region: region.id, "the same peer at a newer conf_ver")

        // A vote request never creates a replica (outside a split's first election).
        var vote = later
        var core = try #require(vote.message.core)
        core.kind = .requestVote
        core.term += 1
        vote.message = Flotilla_V1_RaftCoreMessage(core)
        try expectNoneRecreates([vote], cluster, region: region.id, "a vote request")

        // After a restart, from what the disk holds.
        cluster.crash(4)
        try cluster.restart(4)
        try expectNoneRecreates(seen + [later], cluster, region: region.id, "after a restart")
        #expect(throws: (any Error).self, "the store answers that the region is not here") { try cluster.stores[4]?.keys(in: region.id) }
        _ = learner
    }

    @Test func aSuccessorAtANewerConfVerIsCreatedInItsPlace() throws {
        let (cluster, region, leader, learner, _) = try removedLearner()
        let successor = peer(learner.id + 1_000, store: 4, .learner)
        let add = try #require(try cluster.stores[leader]?.proposeMembershipChange(regionID: region.id, changes: [(.addLearner, successor)]))
        for _ in 0..<80 where cluster.completed[add] == nil || cluster.digests(region.id)[4]?.keyCount != 15 { try cluster.round() }
        #expect(cluster.stores[4]?.membership(of: region.id)?.region.peers.contains { $0.id == successor.id } == true)
        #expect(cluster.digests(region.id)[4]?.keyCount == 15, "the successor caught up: \(cluster.digests(region.id))")
    }

    /// A replica removed by an applied change but not yet destroyed (it still led, or its
    /// turn has not come) stays removed whatever arrives: it is destroyed, not revived.
    @Test func aRemovedReplicaIsDestroyedEvenWhileMessagesKeepArriving() throws {
        let cluster = try InProcessCluster(storeCount: 4, splitKeys: [], replicas: 3)
        try cluster.rounds(40)
        let region = try #require(cluster.region(for: "a"))
        let leader = try #require(cluster.leader(of: region.id))
        let learner = peer(region.id * 100 + 4, store: 4, .learner)
        let add = try #require(try cluster.stores[leader]?.proposeMembershipChange(regionID: region.id, changes: [(.addLearner, learner)]))
        for _ in 0..<80 where cluster.completed[add] == nil || cluster.snapshotsInstalled[4, default: 0] == 0 { try cluster.round() }
        // Remove it, while the old heartbeats keep coming (the recorded ones, before each round).
        let recorder = Recorder()
        cluster.holdBack = { destination, message in
            if destination == 4 { recorder.messages.append(message) }
            return false
        }
        try cluster.rounds(3)
        _ = try #require(try cluster.stores[leader]?.proposeMembershipChange(regionID: region.id, changes: [(.remove, learner)]))
        for _ in 0..<40 where cluster.stores[4]?.raftStatus(region.id) != nil {
            for message in recorder.messages.prefix(4) { cluster.stores[4]?.step(message) }
            try cluster.round()
        }
        #expect(cluster.stores[4]?.raftStatus(region.id) == nil, "the removed replica was never destroyed")
        cluster.holdBack = nil
        try expectNoneRecreates(recorder.messages, cluster, region: region.id, "after the destroy")
    }
}

/// A founding store creates its regions in synced batches, not one sync per region.
@Suite("Peer life: bootstrapping many regions")
struct BootstrapManyRegionsTests {
    @Test func manyRegionsAreCreatedInBatchesAndSurviveARestart() throws {
        let cluster = try InProcessCluster(storeCount: 1, splitKeys: [], replicas: 0)  // no region yet
        let count = 2 * 4_096 + 7
        let regions = (0..<count).map { index -> Flotilla_V1_Region in
            var region = Flotilla_V1_Region()
            region.id = UInt64(1_000 + 2 * index)
            region.startKey = Data(String(format: "z%06d", index).utf8)
            region.endKey = Data(String(format: "z%06d", index + 1).utf8)
            region.peers = [peer(region.id + 1, store: 1, .voter)]
            return region
        }
        do {  // the store let go before the restart (it holds the database open)
            let store = try #require(cluster.stores[1])
            var syncs = 0
            store.diskWriteObserver = { what in if what == .bootstrap { syncs += 1 } }
            try store.bootstrapRegions(regions)
            #expect(syncs == 3, "three (synced) bootstrap batches for \(count) regions, got \(syncs)")
            #expect(regions.allSatisfy { store.region($0.id) != nil })
            try store.bootstrapRegions(regions)
            #expect(syncs == 3, "regions that exist are skipped")
        }
        cluster.crash(1)
        try cluster.restart(1)
        let reopened = try #require(cluster.stores[1])
        #expect(regions.allSatisfy { reopened.region($0.id) == $0 }, "every region reopens from disk")
        var foreign = regions[0]
        foreign.id = 999_999
        foreign.peers = [peer(1_000_000, store: 2, .voter)]
        #expect(throws: StoreRequestError.self) { try reopened.bootstrapRegions([foreign]) }
    }
}
