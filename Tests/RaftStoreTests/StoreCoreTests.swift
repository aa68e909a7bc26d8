import FlotillaProto
import Foundation
import Raft
import RaftStore
import RocksDB
import Testing

/// Several `StoreCore`s in one process, wired by direct message delivery: the store loop
/// without sockets, driven turn by turn.
final class InProcessCluster {
    let storeIDs: [UInt64]
    var paths: [UInt64: String] = [:]
    var stores: [UInt64: StoreCore] = [:]
    var down: Set<UInt64> = []
    let regions: [Flotilla_V1_Region]
    var completed: [ProposalID: Result<Flotilla_V1_WriteResult, StoreRequestError>] = [:]
    var readyReads: [ProposalID: UInt64] = [:]
    var maxRegionsInOneBatch = 0
    var turnsWithSync = 0
    var snapshotsInstalled: [UInt64: Int] = [:]
    var snapshotsSent = 0
    var logsTruncated = 0
    var settings: (UInt64, inout StoreSettings) -> Void
    /// Messages this says to hold back (destination store, message) wait in `held` until
    /// `releaseHeld()`.
    var holdBack: ((UInt64, Flotilla_V1_RaftMessage) -> Bool)?
    var held: [(UInt64, Flotilla_V1_RaftMessage)] = []
    /// Splits each store applied, in order.
    var splitsApplied: [UInt64: [AppliedSplit]] = [:]
    /// Each store's state machine for `state_machine_command`s (none: KV only).
    let stateMachine: (UInt64) -> (any RegionStateMachine)?

    /// `splitKeys` cut the key space into regions; every region has a peer on each of the
    /// first `replicas` stores (all by default).
    init(storeCount: Int, splitKeys: [String], replicas: Int? = nil,
         settings: @escaping (UInt64, inout StoreSettings) -> Void = { _, _ in },
         stateMachine: @escaping (UInt64) -> (any RegionStateMachine)? = { _ in nil }) throws {
        self.settings = settings
        self.stateMachine = stateMachine
        storeIDs = (1...UInt64(storeCount)).map { $0 }
        let regionStores = storeIDs.prefix(replicas ?? storeCount)
        let bounds = [Data()] + splitKeys.map { Data($0.utf8) } + [Data()]
        var regions: [Flotilla_V1_Region] = []
        for position in 0..<(bounds.count - 1) {
            var region = Flotilla_V1_Region()
            region.id = UInt64(position + 1)
            region.startKey = bounds[position]
            region.endKey = bounds[position + 1]
            region.epoch.confVer = 1
            region.epoch.version = 1
            region.peers = regionStores.map { storeID in
                var peer = Flotilla_V1_Peer()
                peer.id = region.id * 100 + storeID
                peer.storeID = storeID
                peer.role = .voter
                return peer
            }
            regions.append(region)
        }
        self.regions = regions
        for storeID in storeIDs {
            paths[storeID] = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-cluster-\(UUID().uuidString)").path
            try open(storeID)
            if regionStores.contains(storeID) {
                for region in regions { try stores[storeID]?.bootstrapRegion(region) }
            }
        }
    }

    func open(_ storeID: UInt64) throws {
        let path = paths[storeID] ?? ""
        let db = try StoreDatabase.open(path: path + "/db")
        var storeSettings = StoreSettings(snapshotDirectory: path + "/snapshots")
        settings(storeID, &storeSettings)
        stores[storeID] = try StoreCore(db: db, storeID: storeID, settings: storeSettings, raftConfig: { id in
            var config = RaftConfig(id: id)
            config.randomSeed = id
            return config
        }, stateMachine: stateMachine(storeID))
    }

    func crash(_ storeID: UInt64) {
        stores[storeID] = nil
        down.insert(storeID)
    }

    func restart(_ storeID: UInt64) throws {
        try open(storeID)
        down.remove(storeID)
    }

    /// One round: tick, run each store's turn, deliver its messages.
    func round(tick: Bool = true) throws {
        for storeID in storeIDs {
            guard let store = stores[storeID] else { continue }
            if tick { store.tick() }
            let output = try store.runTurn()
            maxRegionsInOneBatch = max(maxRegionsInOneBatch, output.regionsInLogBatch)
            turnsWithSync += output.logSyncs
            snapshotsInstalled[storeID, default: 0] += output.snapshotsInstalled
            logsTruncated += output.logsTruncated
            for (id, result) in output.completedWrites { completed[id] = result }
            for read in output.readyReads { readyReads[read.id] = read.regionID }
            for read in output.failedReads { readyReads[read.id] = 0 }
            splitsApplied[storeID, default: []] += output.splits
            for (destination, messages) in output.messagesByStore where !down.contains(destination) {
                for message in messages {
                    if let holdBack, holdBack(destination, message) { held.append((destination, message)) } else {
                        stores[destination]?.step(message)
                    }
                }
            }
            for snapshot in output.snapshotsToSend where !down.contains(snapshot.toStoreID) {
                try deliver(snapshot)
            }
        }
    }

    /// Delivers the held messages, in order, and stops holding any back.
    func releaseHeld() {
        holdBack = nil
        let messages = held
        held = []
        for (destination, message) in messages where !down.contains(destination) { stores[destination]?.step(message) }
    }

    /// Streams a snapshot chunk by chunk into the destination's staging directory, as the
    /// transport does, and hands it to the destination store.
    func deliver(_ snapshot: OutgoingSnapshot) throws {
        guard let destination = stores[snapshot.toStoreID], let path = paths[snapshot.toStoreID] else { return }
        var builder: SnapshotBuilder?
        while let chunk = try snapshot.reader.nextChunk() {
            if let builder { try builder.add(chunk) } else {
                builder = try SnapshotBuilder(firstChunk: chunk, stagingDirectory: path + "/snapshots")
            }
        }
        guard let received = try builder?.finish() else { return }
        snapshotsSent += 1
        if !destination.stepSnapshot(received) { builder?.abandon() }
    }

    func digests(_ regionID: UInt64) -> [UInt64: RegionDigest] {
        var result: [UInt64: RegionDigest] = [:]
        for storeID in storeIDs {
            if let digest = try? stores[storeID]?.regionDigest(regionID) { result[storeID] = digest }
        }
        return result
    }

    func rounds(_ count: Int) throws { for _ in 0..<count { try round() } }

    func leader(of regionID: UInt64) -> UInt64? {
        storeIDs.first { stores[$0]?.raftStatus(regionID)?.role == .leader }
    }

    func context(_ regionID: UInt64) -> Flotilla_V1_RequestContext {
        var context = Flotilla_V1_RequestContext()
        context.regionID = regionID
        return context
    }

    func region(for key: String) -> Flotilla_V1_Region? { regions.first { $0.contains(Data(key.utf8)) } }

    /// Proposes at the region's leader and runs rounds until the write completes.
    func write(_ command: Flotilla_V1_WriteCommand, key: String) throws -> Result<Flotilla_V1_WriteResult, StoreRequestError> {
        guard let region = region(for: key), let leader = leader(of: region.id), let store = stores[leader] else {
            throw StoreRequestError.proposalDropped
        }
        let id = try store.proposeWrite(command, context: context(region.id))
        for _ in 0..<50 where completed[id] == nil { try round(tick: false) }
        guard let result = completed[id] else { throw StoreRequestError.proposalDropped }
        return result
    }

    static func put(_ key: String, _ value: String, client: UInt64 = 0, sequence: UInt64 = 0) -> Flotilla_V1_WriteCommand {
        var command = Flotilla_V1_WriteCommand()
        var pair = Flotilla_V1_KeyValue()
        pair.key = Data(key.utf8)
        pair.value = Data(value.utf8)
        command.puts = [pair]
        command.clientID = client
        command.sequence = sequence
        return command
    }

    /// Every key-value pair each store holds, per region.
    func dump(_ storeID: UInt64, region: Flotilla_V1_Region) throws -> [[UInt8]: [UInt8]] {
        guard let store = stores[storeID] else { return [:] }
        var result: [[UInt8]: [UInt8]] = [:]
        for key in try store.keys(in: region.id) { result[key] = try store.get(Data(key), regionID: region.id).map { [UInt8]($0) } }
        return result
    }

    deinit { for path in paths.values { try? FileManager.default.removeItem(atPath: path) } }
}

/// A peer of the given id, store and role (tests of membership and peer life).
func peer(_ id: UInt64, store: UInt64, _ role: Flotilla_V1_PeerRole) -> Flotilla_V1_Peer {
    var peer = Flotilla_V1_Peer()
    peer.id = id
    peer.storeID = store
    peer.role = role
    return peer
}

@Suite("Store core: many regions per store, group commit, apply, sessions")
struct StoreCoreTests {
    @Test func threeStoresServeWritesAndReadsInEveryRegion() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["g", "n", "t"])
        try cluster.rounds(40)
        for region in cluster.regions { #expect(cluster.leader(of: region.id) != nil, "region \(region.id) has a leader") }
        for key in ["apple", "hello", "orange", "zebra"] {
            #expect(try cluster.write(InProcessCluster.put(key, "v-\(key)"), key: key).get().succeeded)
        }
        // Linearizable read at the leader.
        let region = try #require(cluster.region(for: "orange"))
        let leader = try #require(cluster.leader(of: region.id))
        let readID = try #require(try cluster.stores[leader]?.proposeRead(context: cluster.context(region.id)))
        for _ in 0..<20 where cluster.readyReads[readID] == nil { try cluster.round(tick: false) }
        #expect(cluster.readyReads[readID] == region.id)
        #expect(try cluster.stores[leader]?.get(Data("orange".utf8), regionID: region.id) == Data("v-orange".utf8))
        // Every replica applied the same data.
        try cluster.rounds(5)
        for region in cluster.regions {
            let replicas = try cluster.storeIDs.map { try cluster.dump($0, region: region) }
            #expect(replicas.allSatisfy { $0 == replicas[0] }, "region \(region.id) replicas agree")
        }
    }

    @Test func logsOfManyRegionsShareOneSyncedBatch() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["b", "c", "d", "e", "f", "g", "h"])
        try cluster.rounds(40)
        // Propose in every region before running a turn: the leader writes them together.
        var ids: [ProposalID] = []
        for (position, region) in cluster.regions.enumerated() {
            let key = position == 0 ? "a" : String(UnicodeScalar(UInt8(ascii: "a") + UInt8(position)))
            let leader = try #require(cluster.leader(of: region.id))
            ids.append(try #require(try cluster.stores[leader]?.proposeWrite(InProcessCluster.put(key + "1", "x"), context: cluster.context(region.id))))
        }
        let before = cluster.maxRegionsInOneBatch
        cluster.maxRegionsInOneBatch = 0
        for _ in 0..<20 where ids.contains(where: { cluster.completed[$0] == nil }) { try cluster.round(tick: false) }
        #expect(ids.allSatisfy { (try? cluster.completed[$0]?.get().succeeded) == true })
        #expect(cluster.maxRegionsInOneBatch > 1, "one turn wrote several regions' logs in one batch (\(cluster.maxRegionsInOneBatch); before: \(before))")
    }

    @Test func writesQueuedBetweenTurnsShareOneEntryAndEachGetsItsOwnResult() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        let leaderID = try #require(cluster.leader(of: 1))
        let leader = try #require(cluster.stores[leaderID])
        let lastBefore = try #require(leader.logBounds(1)).last
        func cas(_ key: String, expect: String?, new: String?, client: UInt64, sequence: UInt64) -> Flotilla_V1_WriteCommand {
            var command = Flotilla_V1_WriteCommand()
            command.clientID = client
            command.sequence = sequence
            command.compareAndSwap.key = Data(key.utf8)
            command.compareAndSwap.expectExists = expect != nil
            command.compareAndSwap.expectedValue = Data((expect ?? "").utf8)
            if let new { command.compareAndSwap.newValue = Data(new.utf8) } else { command.compareAndSwap.deleteKey = true }
            return command
        }
        var wipe = Flotilla_V1_WriteCommand()
        wipe.deleteRange.startKey = Data("k".utf8)
        wipe.deleteRange.endKey = Data("l".utf8)
        // Each comparison must see the commands before it in the same entry (not yet in RocksDB).
        let commands: [(Flotilla_V1_WriteCommand, succeeded: Bool, previous: String?)] = [
            (cas("k1", expect: nil, new: "1", client: 5, sequence: 1), true, nil),
            (cas("k1", expect: "1", new: "2", client: 5, sequence: 2), true, "1"),
            (cas("k1", expect: "1", new: "3", client: 6, sequence: 1), false, "2"),
            // A retry of (5, 1) in the same entry: its first reply, not a second application.
            (cas("k1", expect: nil, new: "1", client: 5, sequence: 1), true, nil),
            (InProcessCluster.put("k2", "x"), true, nil),
            (wipe, true, nil),
            (cas("k2", expect: nil, new: "y", client: 6, sequence: 2), true, nil),
            (cas("k2", expect: "y", new: nil, client: 6, sequence: 3), true, "y"),
            (cas("k1", expect: nil, new: "4", client: 6, sequence: 4), true, nil),
        ]
        let ids = try commands.map { try leader.proposeWrite($0.0, context: cluster.context(1)) }
        for _ in 0..<20 where ids.contains(where: { cluster.completed[$0] == nil }) { try cluster.round(tick: false) }
        for (position, (id, expected)) in zip(ids, commands).enumerated() {
            let result = try #require(try cluster.completed[id]?.get(), "command \(position) completed")
            #expect(result.succeeded == expected.succeeded, "command \(position)")
            #expect(result.previousExists == (expected.previous != nil), "command \(position)")
            #expect(result.previousValue == Data((expected.previous ?? "").utf8), "command \(position)")
        }
        #expect(try #require(leader.logBounds(1)).last == lastBefore + 1, "nine writes, one entry")
        #expect(try leader.get(Data("k1".utf8), regionID: 1) == Data("4".utf8))
        #expect(try leader.get(Data("k2".utf8), regionID: 1) == nil)
        try cluster.rounds(5)
        let digests = cluster.digests(1)
        #expect(digests.count == 3 && Set(digests.values.map(\.checksum)).count == 1, "replicas agree: \(digests)")
        // The entry is bounded: more writes than an entry may carry take several entries.
        let small = try InProcessCluster(storeCount: 3, splitKeys: []) { _, settings in settings.commandsPerEntryMax = 4 }
        try small.rounds(40)
        let smallLeader = try #require(small.leader(of: 1).flatMap { small.stores[$0] })
        let start = try #require(smallLeader.logBounds(1)).last
        let smallIDs = try (0..<10).map { try smallLeader.proposeWrite(InProcessCluster.put("key\($0)", "v"), context: small.context(1)) }
        for _ in 0..<20 where smallIDs.contains(where: { small.completed[$0] == nil }) { try small.round(tick: false) }
        #expect(smallIDs.allSatisfy { (try? small.completed[$0]?.get().succeeded) == true })
        #expect(try #require(smallLeader.logBounds(1)).last == start + 3, "10 writes at most 4 per entry: 3 entries")
    }

    @Test func writesQueuedAtALeaderThatStepsDownFailWithNotLeader() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        let leaderID = try #require(cluster.leader(of: 1))
        let leader = try #require(cluster.stores[leaderID])
        let id = try leader.proposeWrite(InProcessCluster.put("a", "1"), context: cluster.context(1))
        // A message of a later term arrives before the turn that would propose the write.
        let term = try #require(leader.raftStatus(1)).term
        var message = Flotilla_V1_RaftMessage()
        message.regionID = 1
        let other = try #require(cluster.regions[0].peers.first { $0.storeID != leaderID })
        message.fromPeer = other
        message.toPeer = try #require(cluster.regions[0].peers.first { $0.storeID == leaderID })
        message.epoch = cluster.regions[0].epoch
        message.message.kind = UInt32(MessageKind.heartbeat.rawValue)
        message.message.from = other.id
        message.message.to = message.toPeer.id
        message.message.term = term + 1
        #expect(leader.step(message))
        try cluster.round(tick: false)
        guard case .failure(.notLeader)? = cluster.completed[id] else {
            Issue.record("expected notLeader, got \(String(describing: cluster.completed[id]))")
            return
        }
        #expect(leader.pendingRequestCount == 0)
    }

    @Test func retriedWriteGetsTheFirstReplyAndIsAppliedOnce() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        var cas = Flotilla_V1_WriteCommand()
        cas.clientID = 77
        cas.sequence = 1
        cas.compareAndSwap.key = Data("counter".utf8)
        cas.compareAndSwap.expectExists = false
        cas.compareAndSwap.newValue = Data("1".utf8)
        let first = try cluster.write(cas, key: "counter").get()
        #expect(first.succeeded && !first.previousExists)
        // The same (client, sequence) again: applying it twice would fail the comparison.
        let retry = try cluster.write(cas, key: "counter").get()
        #expect(retry == first, "the retry gets the first reply")
        // A new sequence is a new write: now the key exists, so the comparison fails.
        cas.sequence = 2
        let second = try cluster.write(cas, key: "counter").get()
        #expect(!second.succeeded && second.previousValue == Data("1".utf8))
    }

    @Test func oneClientsConcurrentWritesApplyInAnyOrderAndRetriesStillApplyOnce() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        func tagged(_ command: Flotilla_V1_WriteCommand, firstIncomplete: UInt64) -> Flotilla_V1_WriteCommand {
            var command = command
            command.firstIncompleteSequence = firstIncomplete
            return command
        }
        // Sequences 1 and 2 in flight; 2 reaches the log first. Both must apply.
        #expect(try cluster.write(tagged(InProcessCluster.put("b", "2", client: 8, sequence: 2), firstIncomplete: 1), key: "b").get().succeeded)
        #expect(try cluster.write(tagged(InProcessCluster.put("a", "1", client: 8, sequence: 1), firstIncomplete: 1), key: "a").get().succeeded)
        let leader = try #require(cluster.leader(of: 1))
        #expect(try cluster.stores[leader]?.get(Data("a".utf8), regionID: 1) == Data("1".utf8), "a lower sequence arriving later is not mistaken for a retry")
        // A retry of 1 (still unanswered as far as the client knows) is answered, not reapplied.
        _ = try cluster.write(InProcessCluster.put("later", "x"), key: "later")
        _ = try cluster.write(tagged(InProcessCluster.put("a", "overwritten?", client: 8, sequence: 1), firstIncomplete: 1), key: "a")
        #expect(try cluster.stores[leader]?.get(Data("a".utf8), regionID: 1) == Data("1".utf8))
        // The client reports it has every answer below 3: a late copy of 1 is refused.
        #expect(try cluster.write(tagged(InProcessCluster.put("c", "3", client: 8, sequence: 3), firstIncomplete: 3), key: "c").get().succeeded)
        let late = try cluster.write(tagged(InProcessCluster.put("a", "late", client: 8, sequence: 1), firstIncomplete: 1), key: "a")
        if case .failure(.invalidArgument(let field, _)) = late { #expect(field == "context.sequence") } else { Issue.record("expected a stale-duplicate refusal, got \(late)") }
        #expect(try cluster.stores[leader]?.get(Data("a".utf8), regionID: 1) == Data("1".utf8))
    }

    @Test func restartedStoreReplaysItsLogAndCatchesUp() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["m"])
        try cluster.rounds(40)
        for index in 0..<10 { _ = try cluster.write(InProcessCluster.put("a\(index)", "v\(index)"), key: "a\(index)") }
        // Stop a store that does not lead region 1, write more, bring it back.
        let region = try #require(cluster.region(for: "a0"))
        let follower = try #require(cluster.storeIDs.first { $0 != cluster.leader(of: region.id) })
        cluster.crash(follower)
        for index in 10..<20 { _ = try cluster.write(InProcessCluster.put("a\(index)", "v\(index)"), key: "a\(index)") }
        try cluster.restart(follower)
        try cluster.rounds(30)
        let expected = try cluster.dump(try #require(cluster.leader(of: region.id)), region: region)
        #expect(expected.count == 20)
        #expect(try cluster.dump(follower, region: region) == expected, "the restarted replica has every write, once")
    }

    @Test func requestsForTheWrongPlaceGetTypedErrors() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["m"])
        try cluster.rounds(40)
        let region = try #require(cluster.region(for: "a"))
        let leader = try #require(cluster.leader(of: region.id))
        let follower = try #require(cluster.storeIDs.first { $0 != leader })
        let store = try #require(cluster.stores[leader])
        #expect(throws: StoreRequestError.regionNotFound(regionID: 99)) {
            _ = try store.proposeWrite(InProcessCluster.put("a", "1"), context: cluster.context(99))
        }
        #expect(throws: StoreRequestError.keyNotInRegion(key: Data("zz".utf8), region: region)) {
            _ = try store.proposeWrite(InProcessCluster.put("zz", "1"), context: cluster.context(region.id))
        }
        var stale = cluster.context(region.id)
        stale.epoch.version = 0
        stale.epoch.confVer = 1
        #expect(throws: StoreRequestError.epochNotMatch(current: [region])) {
            _ = try store.proposeWrite(InProcessCluster.put("a", "1"), context: stale)
        }
        let notLeader = #expect(throws: StoreRequestError.self) {
            _ = try cluster.stores[follower]?.proposeWrite(InProcessCluster.put("a", "1"), context: cluster.context(region.id))
        }
        if case .notLeader(_, let known)? = notLeader { #expect(known?.storeID == leader) } else { Issue.record("expected notLeader, got \(String(describing: notLeader))") }
        #expect(throws: StoreRequestError.self, "a command with no operation") {
            _ = try store.proposeWrite(Flotilla_V1_WriteCommand(), context: cluster.context(region.id))
        }
    }
}
