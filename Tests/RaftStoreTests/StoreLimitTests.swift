import FlotillaProto
import Foundation
@testable import RaftStore
import Testing

/// The store's side of the limit chain and of the request rules a hostile or confused client
/// meets: ranges outside the region, answers bounded in pairs and bytes, writes too large for
/// one Raft entry, a (client, sequence) reused for another write.
@Suite("Store core: limits and request rules")
struct StoreLimitTests {
    @Test func aScanReachingOutsideItsRegionIsAStaleRouteNotAnEmptyAnswer() throws {
        let cluster = try InProcessCluster(storeCount: 1, splitKeys: ["m"])
        try cluster.rounds(40)
        _ = try cluster.write(InProcessCluster.put("p", "1"), key: "p").get()
        let first = try #require(cluster.region(for: "a"))
        let second = try #require(cluster.region(for: "p"))
        let store = try #require(cluster.stores[1])
        // [p, q) sent as region 1 (which ends at m): KeyNotInRegion naming p, as Get would.
        #expect(throws: StoreRequestError.keyNotInRegion(key: Data("p".utf8), region: first)) {
            _ = try store.scan(regionID: first.id, from: Data("p".utf8), to: Data("q".utf8), limit: 10, reverse: false)
        }
        // A range that starts inside and ends past the region's end names its end.
        #expect(throws: StoreRequestError.keyNotInRegion(key: Data("z".utf8), region: first)) {
            _ = try store.scan(regionID: first.id, from: Data("a".utf8), to: Data("z".utf8), limit: 10, reverse: false)
        }
        // At the boundary: [a, m) is inside region 1; [m, end) inside region 2.
        #expect(try store.scan(regionID: first.id, from: Data(), to: Data("m".utf8), limit: 10, reverse: false).isEmpty)
        #expect(try store.scan(regionID: second.id, from: Data("m".utf8), to: Data(), limit: 10, reverse: false).map(\.0) == [Data("p".utf8)])
    }

    @Test func scanAnswersAreBoundedInPairsAndBytesAndSayWhereToResume() throws {
        let cluster = try InProcessCluster(storeCount: 1, splitKeys: [])
        try cluster.rounds(40)
        let store = try #require(cluster.stores[1])
        var command = Flotilla_V1_WriteCommand()
        command.puts = (0..<50).map { index in
            var pair = Flotilla_V1_KeyValue()
            pair.key = Data(String(format: "k%03d", index).utf8)
            pair.value = Data(repeating: 7, count: 100)
            return pair
        }
        _ = try cluster.write(command, key: "k000").get()
        let plan = try store.planScan(regionID: 1, from: Data(), to: Data(), limit: 1_000, reverse: false)
        // At the pair bound: exactly 20, resume after the 20th.
        let byPairs = try plan.run(pairsMax: 20, bytesMax: 1 << 20)
        #expect(byPairs.pairs.count == 20 && byPairs.truncated)
        #expect(byPairs.resumeKey == Data("k019".utf8) + [0])
        // At the byte bound (104 bytes a pair): 10 pairs fit in 1,040 bytes, the 11th does not.
        let byBytes = try plan.run(pairsMax: 1_000, bytesMax: 1_040)
        #expect(byBytes.pairs.count == 10 && byBytes.truncated)
        #expect(try plan.run(pairsMax: 1_000, bytesMax: 1_039).pairs.count == 9)
        // One pair always goes, whatever its size.
        #expect(try plan.run(pairsMax: 1_000, bytesMax: 1).pairs.count == 1)
        // Reverse: resume at the last key returned (the new exclusive end).
        let reverse = try store.planScan(regionID: 1, from: Data(), to: Data(), limit: 1_000, reverse: true).run(pairsMax: 5, bytesMax: 1 << 20)
        #expect(reverse.pairs.first?.key == Data("k049".utf8) && reverse.resumeKey == Data("k045".utf8))
        // The client's own limit reached: not truncated by the server.
        let limited = try store.planScan(regionID: 1, from: Data(), to: Data(), limit: 5, reverse: false).run()
        #expect(limited.pairs.count == 5 && !limited.truncated)
        // Reading all of it in pieces gets every pair once.
        var cursor = Data()
        var all: [Data] = []
        while true {
            let piece = try store.planScan(regionID: 1, from: cursor, to: Data(), limit: 1_000, reverse: false).run(pairsMax: 7, bytesMax: 1 << 20)
            all += piece.pairs.map(\.key)
            guard piece.truncated else { break }
            cursor = piece.resumeKey
        }
        #expect(all.count == 50 && Set(all).count == 50)
    }

    @Test func aScanPlanReadsTheDataAsOfItsSnapshot() throws {
        let cluster = try InProcessCluster(storeCount: 1, splitKeys: [])
        try cluster.rounds(40)
        _ = try cluster.write(InProcessCluster.put("a", "1"), key: "a").get()
        let store = try #require(cluster.stores[1])
        let plan = try store.planScan(regionID: 1, from: Data(), to: Data(), limit: 10, reverse: false)
        _ = try cluster.write(InProcessCluster.put("b", "2"), key: "b").get()
        #expect(try plan.run().pairs.map(\.key) == [Data("a".utf8)], "a write after the plan is not seen")
    }

    @Test func aWriteLargerThanOneRaftEntryIsRefusedAtTheLimitAndAcceptedBelowIt() throws {
        let cluster = try InProcessCluster(storeCount: 1, splitKeys: [])
        try cluster.rounds(40)
        let store = try #require(cluster.stores[1])
        func batch(totalValueBytes: Int) -> Flotilla_V1_WriteCommand {
            var command = Flotilla_V1_WriteCommand()
            var remaining = totalValueBytes
            var index = 0
            while remaining > 0 {
                var pair = Flotilla_V1_KeyValue()
                pair.key = Data("big-\(index)".utf8)
                pair.value = Data(repeating: 1, count: min(remaining, KVLimits.valueBytesMax))
                remaining -= pair.value.count
                index += 1
                command.puts.append(pair)
            }
            return command
        }
        // Find the largest batch that encodes to the limit exactly: it is accepted and applied.
        var fits = batch(totalValueBytes: KVLimits.commandBytesMax - 64)
        while try (fits.serializedBytes() as [UInt8]).count < KVLimits.commandBytesMax {
            fits.puts[fits.puts.count - 1].value.append(1)
        }
        #expect(try (fits.serializedBytes() as [UInt8]).count == KVLimits.commandBytesMax)
        #expect(try cluster.write(fits, key: "big-0").get().succeeded)
        // One byte more: a typed error naming the limit, nothing proposed.
        var over = fits
        over.puts[over.puts.count - 1].value.append(1)
        let refusal = #expect(throws: StoreRequestError.self) {
            _ = try store.proposeWrite(over, context: cluster.context(1))
        }
        if case .invalidArgument(let field, let reason)? = refusal {
            #expect(field == "request" && reason.contains("\(KVLimits.commandBytesMax)"))
        } else {
            Issue.record("expected invalidArgument, got \(String(describing: refusal))")
        }
        // The chain: the largest entry fits a Raft frame with room to spare.
        #expect(KVLimits.entryBytesMax + (1 << 20) <= KVLimits.raftFrameBytesMax)
        #expect(KVLimits.requestMessageBytesMax > KVLimits.commandBytesMax)
    }

    @Test func aSequenceReusedForAnotherWriteIsRefusedAndNotApplied() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        #expect(try cluster.write(InProcessCluster.put("x", "1", client: 5, sequence: 1), key: "x").get().succeeded)
        // The same tag, another payload: refused with a typed error.
        let reused = try cluster.write(InProcessCluster.put("x", "2", client: 5, sequence: 1), key: "x")
        guard case .failure(.invalidArgument(let field, let reason)) = reused else {
            Issue.record("expected invalidArgument, got \(reused)")
            return
        }
        #expect(field == "context.sequence" && reason.contains("different write"))
        // The same tag and payload: a retry, answered with the first reply.
        #expect(try cluster.write(InProcessCluster.put("x", "1", client: 5, sequence: 1), key: "x").get().succeeded)
        try cluster.rounds(3)
        for storeID in cluster.storeIDs {
            #expect(try cluster.stores[storeID]?.get(Data("x".utf8), regionID: 1) == Data("1".utf8), "store \(storeID) kept the first write")
        }
    }

    @Test func forgedEntriesInTheLogAreAppliedAsNothingOnEveryReplicaAndNoTurnFails() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["m"])
        try cluster.rounds(40)
        let first = try #require(cluster.region(for: "a"))
        let leader = try #require(cluster.leader(of: first.id))
        let peer = try #require(cluster.stores[leader]?.peers[first.id])
        // Garbage, and a well-formed batch whose put lies in the other region, straight into the log.
        _ = try peer.raft.propose([0x0A, 0xFF, 0xFF, 0x01, 0x02])
        var outside = InProcessCluster.put("zebra", "forged")
        outside.clientID = 0
        var entry: [UInt8] = []
        CommandBatchEncoding.append(try outside.serializedBytes(), to: &entry)
        _ = try peer.raft.propose(entry)
        try cluster.rounds(10)
        #expect(try cluster.write(InProcessCluster.put("apple", "ok"), key: "apple").get().succeeded, "the region still serves")
        try cluster.rounds(5)
        for storeID in cluster.storeIDs {
            let store = try #require(cluster.stores[storeID])
            #expect(store.malformedEntries >= 1, "store \(storeID) reported the garbage entry")
            #expect(try store.keys(in: first.id).map { String(decoding: $0, as: UTF8.self) } == ["apple"], "nothing forged was written")
            let second = try #require(cluster.region(for: "zebra"))
            #expect(try store.keys(in: second.id).isEmpty)
        }
    }

    @Test func aDeleteRangePastTheRegionNamesTheKeyOutside() throws {
        let cluster = try InProcessCluster(storeCount: 1, splitKeys: ["m"])
        try cluster.rounds(40)
        let first = try #require(cluster.region(for: "a"))
        let store = try #require(cluster.stores[1])
        var command = Flotilla_V1_WriteCommand()
        command.deleteRange.startKey = Data("a".utf8)
        command.deleteRange.endKey = Data("q".utf8)
        #expect(throws: StoreRequestError.keyNotInRegion(key: Data("q".utf8), region: first)) {
            _ = try store.proposeWrite(command, context: cluster.context(first.id))
        }
        command.deleteRange.startKey = Data("n".utf8)
        #expect(throws: StoreRequestError.keyNotInRegion(key: Data("n".utf8), region: first)) {
            _ = try store.proposeWrite(command, context: cluster.context(first.id))
        }
    }
}
