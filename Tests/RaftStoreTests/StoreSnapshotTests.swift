import FlotillaProto
import Foundation
import Raft
import RaftStore
import RocksDB
import Testing

@Suite("Store core: log truncation, snapshots, membership, reads, limits")
struct StoreSnapshotTests {
    /// Writes `count` keys `prefix0…` through the leader with client sessions.
    private func writeMany(_ cluster: InProcessCluster, prefix: String, count: Int, client: UInt64 = 0, from sequence: UInt64 = 1) throws {
        for index in 0..<count {
            let key = "\(prefix)\(index)"
            let result = try cluster.write(InProcessCluster.put(key, "value-\(index)", client: client, sequence: client == 0 ? 0 : sequence + UInt64(index)), key: key)
            #expect((try? result.get().succeeded) == true, "write \(key): \(result)")
        }
    }

    @Test func laggingReplicaCatchesUpBySnapshotAfterLogTruncation() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["m"]) { _, settings in
            settings.logGCCountThreshold = 20
            settings.snapshotChunkBytes = 256  // many chunks
        }
        try cluster.rounds(40)
        let region = try #require(cluster.region(for: "a"))
        let leader = try #require(cluster.leader(of: region.id))
        let follower = try #require(cluster.storeIDs.first { $0 != leader })
        cluster.crash(follower)
        try writeMany(cluster, prefix: "a", count: 120, client: 9)
        try cluster.rounds(3)
        let leaderFirst = try #require(cluster.stores[leader]?.logBounds(region.id)?.first)
        #expect(leaderFirst > 60, "the leader truncated its log (first index \(leaderFirst))")
        try cluster.restart(follower)
        try cluster.rounds(40)
        #expect(cluster.snapshotsInstalled[follower, default: 0] >= 1, "the restarted replica needed a snapshot")
        let digests = cluster.digests(region.id)
        #expect(digests.count == 3)
        #expect(Set(digests.values.map(\.checksum)).count == 1, "data and sessions agree on every replica: \(digests)")
        #expect(digests[follower]?.keyCount == 120)
        // The sessions travelled with the snapshot: a retry at a new leader is answered, not applied.
        _ = try cluster.write(InProcessCluster.put("zz-after", "x"), key: "zz-after").get()
        let before = try #require(try cluster.stores[follower]?.regionDigest(region.id))
        _ = try cluster.write(InProcessCluster.put("a5", "value-5", client: 9, sequence: 6), key: "a5")
        try cluster.rounds(5)
        #expect(try cluster.stores[follower]?.regionDigest(region.id).checksum == before.checksum)
    }

    @Test func anApplyThatOutlivedItsCommitIndexIsRecoveredOnRestart() throws {
        // Applying overlaps the log write carrying the commit index; after a machine crash the
        // apply state can be ahead of the stored commit. The store must open and serve.
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        try writeMany(cluster, prefix: "c", count: 10)
        try cluster.rounds(5)
        let leader = try #require(cluster.leader(of: 1))
        let follower = try #require(cluster.storeIDs.first { $0 != leader })
        cluster.crash(follower)
        do {
            let db = try Database(path: (cluster.paths[follower] ?? "") + "/db",
                                  columnFamilies: [StoreKeys.raftColumnFamily, StoreKeys.metaColumnFamily])
            let raftCF = try db.columnFamily(StoreKeys.raftColumnFamily)
            var hardState = try #require(try db.get(StoreKeys.hardState(region: 1), in: raftCF))
            hardState.replaceSubrange(16..<24, with: [0, 0, 0, 0, 0, 0, 0, 1])  // commit 1, below what was applied
            try db.put(StoreKeys.hardState(region: 1), hardState, in: raftCF, sync: true)
        }
        try cluster.restart(follower)
        let status = try #require(cluster.stores[follower]?.raftStatus(1))
        #expect(status.applied >= 10, "the applied index survived: \(status)")
        try writeMany(cluster, prefix: "d", count: 3)
        try cluster.rounds(5)
        let digests = cluster.digests(1)
        #expect(digests.count == 3 && Set(digests.values.map(\.checksum)).count == 1, "\(digests)")
    }

    @Test func interruptedSnapshotInstallIsFinishedOnRestart() throws {
        for fault in [StoreFault.afterSnapshotMarker, .afterSnapshotIngest] {
            var faulty: UInt64 = 0
            let cluster = try InProcessCluster(storeCount: 3, splitKeys: []) { storeID, settings in
                settings.logGCCountThreshold = 10
                if storeID == faulty { settings.injectedFault = fault }
            }
            try cluster.rounds(40)
            let region = try #require(cluster.region(for: "k"))
            let leader = try #require(cluster.leader(of: region.id))
            let follower = try #require(cluster.storeIDs.first { $0 != leader })
            cluster.crash(follower)
            try writeMany(cluster, prefix: "k", count: 50)
            faulty = follower
            try cluster.restart(follower)
            var failed = false
            for _ in 0..<40 where !failed {
                do { try cluster.round() } catch is InjectedFault { failed = true }
            }
            #expect(failed, "the install hit the injected crash at \(fault)")
            cluster.crash(follower)
            faulty = 0
            try cluster.restart(follower)  // finishes the install before serving
            #expect(try cluster.stores[follower]?.keys(in: region.id).count == 50)
            try cluster.rounds(20)
            let digests = cluster.digests(region.id)
            #expect(Set(digests.values.map(\.checksum)).count == 1, "\(fault): \(digests)")
            let staged = try FileManager.default.contentsOfDirectory(atPath: (cluster.paths[follower] ?? "") + "/snapshots")
            #expect(staged.isEmpty, "no staged snapshot is left behind: \(staged)")
        }
    }

    @Test func newMemberIsCreatedByItsLeaderAndOldMemberIsDestroyed() throws {
        let cluster = try InProcessCluster(storeCount: 4, splitKeys: [], replicas: 3)
        try cluster.rounds(40)
        try writeMany(cluster, prefix: "n", count: 30, client: 4)
        let region = try #require(cluster.region(for: "n"))
        #expect(cluster.stores[4]?.regionIDs == [], "store 4 starts empty")
        let leader = try #require(cluster.leader(of: region.id))
        var newPeer = Flotilla_V1_Peer()
        newPeer.id = region.id * 100 + 4
        newPeer.storeID = 4
        newPeer.role = .learner
        let addID = try #require(try cluster.stores[leader]?.proposeMembershipChange(regionID: region.id, changes: [(.addLearner, newPeer)]))
        for _ in 0..<60 where cluster.completed[addID] == nil || cluster.stores[4]?.regionIDs != [region.id] { try cluster.round() }
        #expect((try? cluster.completed[addID]?.get())?.succeeded == true)
        try cluster.rounds(10)
        #expect(cluster.stores[4]?.regionIDs == [region.id], "store 4 created the peer from the leader's messages")
        #expect(cluster.snapshotsInstalled[4, default: 0] == 1)
        #expect(cluster.digests(region.id)[4]?.keyCount == 30)
        // Promote it and remove a non-leader voter in one (joint) change.
        let removed = try #require(cluster.storeIDs.first { $0 != leader && $0 != 4 })
        newPeer.role = .voter
        var oldPeer = Flotilla_V1_Peer()
        oldPeer.id = region.id * 100 + removed
        oldPeer.storeID = removed
        let swapID = try #require(try cluster.stores[leader]?.proposeMembershipChange(regionID: region.id,
                                                                                        changes: [(.addVoter, newPeer), (.remove, oldPeer)]))
        for _ in 0..<60 where cluster.completed[swapID] == nil || cluster.stores[removed]?.regionIDs != [] { try cluster.round() }
        try cluster.rounds(20)
        let current = try #require(cluster.stores[leader]?.region(region.id))
        #expect(Set(current.peers.map(\.storeID)) == Set(cluster.storeIDs).subtracting([removed]), "\(current.peers)")
        #expect(current.epoch.confVer > region.epoch.confVer)
        #expect(cluster.stores[removed]?.regionIDs == [], "the removed replica was destroyed")
        try writeMany(cluster, prefix: "after", count: 5)
        try cluster.rounds(5)
        let digests = cluster.digests(region.id)
        #expect(digests.count == 3 && Set(digests.values.map(\.checksum)).count == 1, "\(digests)")
        // Neither a restart nor messages bring the removed replica back.
        cluster.crash(removed)
        try cluster.restart(removed)
        try cluster.rounds(20)
        #expect(cluster.stores[removed]?.regionIDs == [])
    }

    @Test func followerAndStaleReadsAreServedByAnyReplica() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        try writeMany(cluster, prefix: "r", count: 3)
        let region = try #require(cluster.region(for: "r"))
        let leader = try #require(cluster.leader(of: region.id))
        let follower = try #require(cluster.storeIDs.first { $0 != leader })
        var context = cluster.context(region.id)
        #expect(throws: StoreRequestError.self, "linearizable reads need the leader") {
            _ = try cluster.stores[follower]?.proposeRead(context: context)
        }
        for consistency in [Flotilla_V1_ReadConsistency.follower, .stale] {
            context.readConsistency = consistency
            let id = try #require(try cluster.stores[follower]?.proposeRead(context: context))
            for _ in 0..<20 where cluster.readyReads[id] == nil { try cluster.round(tick: false) }
            #expect(cluster.readyReads[id] == region.id, "\(consistency) read served by a follower")
            #expect(try cluster.stores[follower]?.get(Data("r2".utf8), regionID: region.id) == Data("value-2".utf8))
        }
    }

    @Test func sessionsExpireAtTheSameIndexOnEveryReplica() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: []) { _, settings in
            settings.sessionExpiryEntries = 10
            settings.sessionSweepIntervalEntries = 4
        }
        try cluster.rounds(40)
        var cas = Flotilla_V1_WriteCommand()
        cas.clientID = 31
        cas.sequence = 1
        cas.compareAndSwap.key = Data("once".utf8)
        cas.compareAndSwap.expectExists = false
        cas.compareAndSwap.newValue = Data("1".utf8)
        #expect(try cluster.write(cas, key: "once").get().succeeded)
        #expect(try cluster.write(cas, key: "once").get().succeeded, "a retry within the session gets the first reply")
        try writeMany(cluster, prefix: "filler", count: 20)
        // The session expired: the same sequence is a new write now, and the key exists.
        #expect(try cluster.write(cas, key: "once").get().succeeded == false)
        try cluster.rounds(5)
        let digests = cluster.digests(1)
        #expect(Set(digests.values.map(\.checksum)).count == 1, "\(digests)")
    }

    @Test func storeRefusesRequestsBeyondItsBoundWithServerIsBusy() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: []) { _, settings in settings.maxPendingRequests = 2 }
        try cluster.rounds(40)
        let leaderID = try #require(cluster.leader(of: 1))
        let leader = try #require(cluster.stores[leaderID])
        _ = try leader.proposeWrite(InProcessCluster.put("a", "1"), context: cluster.context(1))
        _ = try leader.proposeWrite(InProcessCluster.put("b", "1"), context: cluster.context(1))
        let refused = #expect(throws: StoreRequestError.self) {
            _ = try leader.proposeWrite(InProcessCluster.put("c", "1"), context: cluster.context(1))
        }
        if case .serverIsBusy? = refused {} else { Issue.record("expected serverIsBusy, got \(String(describing: refused))") }
        try cluster.rounds(5)
        #expect(leader.pendingRequestCount == 0, "completed requests free their slots")
        _ = try leader.proposeWrite(InProcessCluster.put("c", "1"), context: cluster.context(1))
    }
}

@Suite("Snapshot streams: what a receiver refuses")
struct SnapshotStreamTests {
    func header(region: UInt64 = 5, start: String = "b", end: String = "m") -> Flotilla_V1_SnapshotChunk {
        var chunk = Flotilla_V1_SnapshotChunk()
        chunk.message.regionID = region
        chunk.message.region.id = region
        chunk.message.region.startKey = Data(start.utf8)
        chunk.message.region.endKey = Data(end.utf8)
        chunk.message.message.snapshot.index = 10
        chunk.message.message.snapshot.term = 2
        return chunk
    }

    func pair(_ key: String, _ column: Flotilla_V1_SnapshotColumn = .data) -> Flotilla_V1_SnapshotPair {
        var pair = Flotilla_V1_SnapshotPair()
        pair.column = column
        pair.key = Data(key.utf8)
        pair.value = Data("v".utf8)
        return pair
    }

    func staging() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-snapshot-stream-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func refusal(_ body: () throws -> Void) -> String {
        do { try body() } catch let error as SnapshotTransferError { return error.reason } catch { return "other error: \(error)" }
        return "accepted"
    }

    @Test func badStreamsAreRefusedWithTheReason() throws {
        let root = try staging()
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(refusal { _ = try SnapshotBuilder(firstChunk: Flotilla_V1_SnapshotChunk(), stagingDirectory: root) }
            .contains("first chunk must carry"))
        var outside = header()
        outside.pairs = [pair("z")]
        #expect(refusal { _ = try SnapshotBuilder(firstChunk: outside, stagingDirectory: root) }.contains("outside region 5"))
        var unordered = header()
        unordered.pairs = [pair("d"), pair("c")]
        #expect(refusal { _ = try SnapshotBuilder(firstChunk: unordered, stagingDirectory: root) }.contains("writing the SST file failed"))
        let builder = try SnapshotBuilder(firstChunk: header(), stagingDirectory: root)
        var last = Flotilla_V1_SnapshotChunk()
        last.pairs = [pair("c")]
        last.last = true
        last.pairCount = 2  // the sender claims more than arrived
        #expect(refusal { try builder.add(last) }.contains("received 1 pairs"))
        builder.abandon()
        #expect(!FileManager.default.fileExists(atPath: builder.directory), "abandoned files are removed")
        let unfinished = try SnapshotBuilder(firstChunk: header(), stagingDirectory: root)
        #expect(refusal { _ = try unfinished.finish() }.contains("ended before the last chunk"))
        unfinished.abandon()
    }

    @Test func aWholeStreamBecomesSSTFiles() throws {
        let root = try staging()
        defer { try? FileManager.default.removeItem(atPath: root) }
        var first = header()
        first.pairs = [pair("c"), pair("d")]
        let builder = try SnapshotBuilder(firstChunk: first, stagingDirectory: root)
        var last = Flotilla_V1_SnapshotChunk()
        var sessionKey = StoreKeys.sessionsStart(region: 5)
        sessionKey.append(contentsOf: [0, 0, 0, 0, 0, 0, 0, 9])
        var session = Flotilla_V1_SnapshotPair()
        session.column = .sessions
        session.key = Data(sessionKey)
        session.value = Data([1])
        last.pairs = [session]
        last.last = true
        last.pairCount = 3
        var checksum = SnapshotChecksum()
        for item in first.pairs + last.pairs { checksum.add(item) }
        last.checksum = checksum.value
        try builder.add(last)
        let received = try builder.finish()
        #expect(FileManager.default.fileExists(atPath: received.directory + "/data.sst"))
        #expect(FileManager.default.fileExists(atPath: received.directory + "/sessions.sst"))
        #expect(refusal { try builder.add(last) }.contains("after the last one"))
    }
}
