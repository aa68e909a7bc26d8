import FlotillaProto
import Foundation
import FuzzSupport
import Raft
@testable import RaftStore
import Testing

/// Seeded mutation fuzzing of what a store decodes from outside: Raft messages (as the transport
/// hands them to the store after decoding a frame), snapshot chunks, and stored values read back
/// from RocksDB. Valid inputs are mutated (bit flips, byte changes, truncation, duplicated or
/// inserted bytes, extreme varints); every mutant must be refused or handled, never crash, hang
/// or grow memory without bound. `FLOTILLA_FUZZ_ITERATIONS` runs longer; a failing run names its
/// seed and iteration (`FLOTILLA_FUZZ_SEED` replays).
@Suite("Fuzz: decoders and the store's inputs")
struct DecoderFuzzTests {
    static var iterations: Int { Mutator.iterations(default: 2_000) }
    static var seed: UInt64 { Mutator.seed(default: 20_261_128) }

    /// Valid Raft messages for region 1 between the cluster's peers: appends, heartbeats, votes,
    /// responses, as the leader and followers really send them.
    static func sampleMessages(_ cluster: InProcessCluster) throws -> [Flotilla_V1_RaftMessage] {
        var samples: [Flotilla_V1_RaftMessage] = []
        for storeID in cluster.storeIDs {
            guard let output = try cluster.stores[storeID]?.runTurn() else { continue }
            samples += output.messagesByStore.values.flatMap { $0 }
        }
        return samples
    }

    @Test func mutatedRaftMessagesNeverCrashOrStopAStore() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [])
        try cluster.rounds(40)
        _ = try cluster.write(InProcessCluster.put("a", "1"), key: "a").get()
        var samples: [Flotilla_V1_RaftMessage] = []
        for _ in 0..<5 {
            _ = try cluster.stores[cluster.leader(of: 1) ?? 1]?.proposeWrite(InProcessCluster.put("b", "2"), context: cluster.context(1))
            for storeID in cluster.storeIDs { cluster.stores[storeID]?.tick() }
            samples += try Self.sampleMessages(cluster)
        }
        #expect(!samples.isEmpty)
        var mutator = Mutator(seed: Self.seed)
        var decoded = 0
        let victim = try #require(cluster.stores[cluster.storeIDs.first { $0 != cluster.leader(of: 1) } ?? 2])
        for iteration in 0..<Self.iterations {
            let sample = mutator.pick(samples)
            let message: Flotilla_V1_RaftMessage
            if mutator.chance(2) {
                let bytes = mutator.mutate(try sample.serializedBytes())
                // As the transport: a frame that does not decode is refused before the store sees it.
                guard let decodable = try? Flotilla_V1_RaftMessage(serializedBytes: bytes) else { continue }
                message = decodable
            } else {
                message = Self.mutateFields(sample, using: &mutator.random)
            }
            decoded += 1
            _ = victim.step(message)
            if iteration % 50 == 0 { _ = try victim.runTurn() }
        }
        #expect(decoded > Self.iterations / 4, "the mutator keeps enough inputs decodable")
        print("fuzz: \(Self.iterations) mutated Raft messages tried (seed \(Self.seed)), \(decoded) decoded and stepped into a store")
        // Every store keeps running its turns (a throwing turn stops a server). Liveness after
        // forged messages with plausible values is not promised: a forged append at the
        // current term is indistinguishable from the leader's, which is why the Raft port
        // authenticates its peers (`RaftHandshake`) before any frame is read.
        try cluster.rounds(100)
        #expect(victim.raftMessagesRefused > 0, "some mutants were refused as impossible")
    }

    /// A structure-aware mutation: one to three of the core message's numbers set to an edge
    /// value (0, ±1, the bounds of `RaftLimits`, 2^64−1, random).
    static func mutateFields(_ message: Flotilla_V1_RaftMessage, using random: inout SplitMix64) -> Flotilla_V1_RaftMessage {
        var result = message
        for _ in 0..<Int.random(in: 1...3, using: &random) {
            let original = UInt64.random(in: 0...64, using: &random)
            let edges: [UInt64] = [0, 1, original &+ 1, original &- 1, RaftLimits.termMax, RaftLimits.termMax + 1,
                                   RaftLimits.indexMax, RaftLimits.indexMax + 1, .max, UInt64.random(in: 0...UInt64.max, using: &random)]
            let value = edges[Int.random(in: 0..<edges.count, using: &random)]
            switch Int.random(in: 0..<12, using: &random) {
            case 0: result.message.term = value
            case 1: result.message.logTerm = value
            case 2: result.message.index = value
            case 3: result.message.commit = value
            case 4: result.message.rejectHint = value
            case 5: result.message.rejectHintTerm = value
            case 6: result.message.sentAtTick = value
            case 7: result.message.kind = UInt32(truncatingIfNeeded: value % 16)
            case 8: result.message.reject.toggle()
            case 9 where !result.message.entries.isEmpty: result.message.entries[0].index = value
            case 10 where !result.message.entries.isEmpty: result.message.entries[result.message.entries.count - 1].term = value
            default: result.message.from = value % 4 == 0 ? value : result.message.from
            }
        }
        return result
    }

    @Test func mutatedSnapshotChunksAreRefusedWithAReason() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-fuzz-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        // A valid two-chunk stream: header, pairs, count and checksum.
        var region = Flotilla_V1_Region()
        region.id = 1
        var header = Flotilla_V1_RaftMessage()
        header.regionID = 1
        header.region = region
        var checksum = SnapshotChecksum()
        var first = Flotilla_V1_SnapshotChunk()
        first.message = header
        first.pairs = (0..<20).map { index in
            var pair = Flotilla_V1_SnapshotPair()
            pair.column = .data
            pair.key = Data("key-\(1_000 + index)".utf8)
            pair.value = Data(repeating: UInt8(index), count: 10)
            checksum.add(pair)
            return pair
        }
        var last = Flotilla_V1_SnapshotChunk()
        last.last = true
        last.pairCount = 20
        last.checksum = checksum.value
        let chunks: [[UInt8]] = [try first.serializedBytes(), try last.serializedBytes()]
        var mutator = Mutator(seed: Self.seed ^ 1)
        var refused = 0
        for iteration in 0..<(Self.iterations / 4) {
            let target = Int.random(in: 0..<chunks.count, using: &mutator.random)
            var stream = chunks
            stream[target] = mutator.mutate(stream[target])
            let directory = root + "/\(iteration)"
            do {
                guard let firstChunk = try? Flotilla_V1_SnapshotChunk(serializedBytes: stream[0]) else { refused += 1; continue }
                let builder = try SnapshotBuilder(firstChunk: firstChunk, stagingDirectory: directory)
                for bytes in stream.dropFirst() {
                    guard let chunk = try? Flotilla_V1_SnapshotChunk(serializedBytes: bytes) else { throw SnapshotTransferError(reason: "undecodable") }
                    try builder.add(chunk)
                }
                _ = try builder.finish()
            } catch {
                refused += 1
                #expect(!"\(error)".isEmpty)
            }
            try? FileManager.default.removeItem(atPath: directory)
        }
        #expect(refused > 0)
        print("fuzz: \(Self.iterations / 4) mutated snapshot streams tried (seed \(Self.seed ^ 1)), \(refused) refused with a reason")
    }

    @Test func mutatedStoredValuesAreReportedAsCorruptionNotCrashes() throws {
        let applyState = StoredValues.encodeApplyState(applied: 10, truncatedIndex: 5, truncatedTerm: 2)
        let hardState = StoredValues.encode(HardState(term: 3, vote: 1, commit: 9))
        var state = Flotilla_V1_RegionLocalState()
        state.region.id = 1
        state.region.endKey = Data("m".utf8)
        state.region.peers = [Flotilla_V1_Peer.with { $0.id = 65_537; $0.storeID = 1 }]
        state.confState.voters = [65_537]
        let regionState: [UInt8] = try state.serializedBytes()
        let entry = StoredValues.encode(Entry(term: 3, index: 7, data: Array("command".utf8)))
        var kept = Flotilla_V1_ClientSession()
        kept.ackedBelow = 4
        kept.replies = [Flotilla_V1_SessionReply.with { $0.sequence = 5; $0.reply = Data([1, 2]); $0.payloadDigest = 99 }]
        let session: [UInt8] = try kept.serializedBytes()
        let ident: [UInt8] = try Flotilla_V1_StoreIdent.with { $0.clusterID = 1; $0.storeID = 2 }.serializedBytes()
        var mutator = Mutator(seed: Self.seed ^ 2)
        var corruptionReports = 0
        for _ in 0..<Self.iterations {
            // Fixed-size values of another size are reported as corruption of region 1.
            for decode in [{ _ = try StoredValues.decodeApplyState(mutator.mutate(applyState), region: 1) },
                           { _ = try StoredValues.decodeHardState(mutator.mutate(hardState), region: 1) }] as [() throws -> Void] {
                do { try decode() } catch {
                    corruptionReports += 1
                    #expect("\(error)".contains("region 1: corrupt stored state"), "\(error)")
                }
            }
            _ = try? Flotilla_V1_RegionLocalState(serializedBytes: mutator.mutate(regionState))
            _ = try? StoredValues.decodeEntry(mutator.mutate(entry), index: 7, region: 1)
            _ = try? Flotilla_V1_ClientSession(serializedBytes: mutator.mutate(session))
            _ = try? Flotilla_V1_StoreIdent(serializedBytes: mutator.mutate(ident))
        }
        #expect(corruptionReports > 0, "mutants of the wrong size were reported")
        print("fuzz: \(Self.iterations * 6) mutated stored values tried (apply and hard states, region states, log entries, sessions, store idents; seed \(Self.seed ^ 2)), \(corruptionReports) reported as corruption")
    }
}
