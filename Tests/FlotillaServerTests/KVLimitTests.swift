import FlotillaClient
import FlotillaProto
@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import Foundation
import Synchronization
import GRPCCore
import GRPCNIOTransportHTTP2
import RaftStore
import Testing

/// Each client-facing limit, at the limit and one past it, through a real server.
@Suite("KV limits at and past each bound", .serialized)
struct KVLimitTests {
    @Test func keysValuesBatchesMessagesAndScanAnswers() async throws {
        let server = try await InProcessServer()
        defer { Task { await server.stop() } }
        try await server.withClient { kv in
            // Key: 8 KiB accepted, one byte more refused with the field named.
            let longest = Data(repeating: 0x61, count: KVLimits.keyBytesMax)
            try await kv.put(longest, Data("v".utf8))
            #expect(try await kv.get(longest) == Data("v".utf8))
            await #expect(throws: FlotillaClientError.self) { try await kv.put(longest + [0x61], Data("v".utf8)) }
            // Value: 4 MiB accepted and read back whole, one byte more refused.
            let biggest = Data(repeating: 7, count: KVLimits.valueBytesMax)
            try await kv.put(Data("big".utf8), biggest)
            #expect(try await kv.get(Data("big".utf8)) == biggest)
            do {
                try await kv.put(Data("big".utf8), biggest + [7])
                Issue.record("a value over the limit was accepted")
            } catch {
                #expect("\(error)".contains("\(KVLimits.valueBytesMax)"), "\(error)")
            }
            // Batch: 10,000 pairs accepted, 10,001 refused.
            let pairs = (0..<KVLimits.batchItemsMax).map { (key: Data("b\($0)".utf8), value: Data("x".utf8)) }
            try await kv.batchPut(pairs)
            await #expect(throws: FlotillaClientError.self) { try await kv.batchPut(pairs + [(key: Data("b-extra".utf8), value: Data())]) }
            // Scan answers: more than one bound's worth (6 × 1 MiB > 4 MiB) arrives whole, in pieces.
            for index in 0..<6 { try await kv.put(Data("scan-\(index)".utf8), Data(repeating: UInt8(index), count: 1 << 20)) }
            let scanned = try await kv.scan(from: Data("scan-".utf8), to: Data("scan.".utf8), limit: 100)
            #expect(scanned.map(\.key) == (0..<6).map { Data("scan-\($0)".utf8) })
            #expect(scanned.allSatisfy { $0.value.count == 1 << 20 })
            await #expect(throws: FlotillaClientError.self) { _ = try await kv.scan(from: Data(), to: Data(), limit: 0) }
        }
        await server.stop()
    }

    @Test func aStoreOfAStaticClusterRefusesSplitsWithAReason() async throws {
        let server = try await InProcessServer()
        defer { Task { await server.stop() } }
        try await server.withClient { kv in
            var refusal = "none"
            do { _ = try await kv.split(at: [Data("m".utf8)]) } catch { refusal = "\(error)" }
            #expect(refusal.contains("static cluster"), "\(refusal)")
            let stillThere = try await kv.get(Data("in-process-server-ready".utf8))
            #expect(stillThere == Data())
        }
        await server.stop()
    }

    @Test func aMessageOverTheLimitIsResourceExhaustedNamingTheLimit() async throws {
        let server = try await InProcessServer()
        defer { Task { await server.stop() } }
        let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: server.address.host, port: server.address.port), transportSecurity: .plaintext)
        try await withGRPCClient(transport: transport) { grpc in
            let kv = Flotilla_V1_KV.Client(wrapping: grpc)
            var options = CallOptions.defaults
            options.maxRequestMessageBytes = 64 << 20
            var request = Flotilla_V1_PutRequest()
            request.context.regionID = 1
            request.key = Data("k".utf8)
            // The largest message: refused for its value size (a typed answer), not for its size.
            request.value = Data(repeating: 1, count: KVLimits.requestMessageBytesMax - 16)
            let within = try await kv.put(request, options: options)
            #expect(within.error.invalidArgument.field == "value")
            request.value = Data(repeating: 1, count: KVLimits.requestMessageBytesMax + 1)
            do {
                _ = try await kv.put(request, options: options)
                Issue.record("accepted a message over the limit")
            } catch let error as RPCError {
                #expect(error.code == .resourceExhausted, "\(error)")
                #expect(error.message.contains("\(KVLimits.requestMessageBytesMax)"), "\(error)")
            }
        }
        await server.stop()
    }
}

/// The write fence a consistent backup raises on each store.
@Suite("Store: write fence")
struct WriteFenceTests {
    static func request(id: UInt64 = 0, holdMilliseconds: UInt32 = 1_000, lift: Bool = false) -> Flotilla_V1_WriteFenceRequest {
        var request = Flotilla_V1_WriteFenceRequest()
        request.fenceID = id
        request.holdMs = holdMilliseconds
        request.lift = lift
        return request
    }

    @Test func aFenceHoldsWritesUntilLiftedOrLapsedAndSaysWhetherItHeld() throws {
        let fence = WriteFence()
        let start = ContinuousClock.now
        #expect(fence.refusal(now: start) == nil)
        let raised = try fence.handle(Self.request(holdMilliseconds: 500), now: start)
        #expect(raised.held && fence.refusal(now: start)?.contains("fence \(raised.id)") == true)
        // One fence at a time: a second backup is told so.
        #expect(throws: StoreRequestError.self) { try fence.handle(Self.request(), now: start + .milliseconds(10)) }
        // Renewed before it lapses: still held, and longer.
        #expect(try fence.handle(Self.request(id: raised.id, holdMilliseconds: 500), now: start + .milliseconds(400)).held)
        #expect(fence.refusal(now: start + .milliseconds(800)) != nil)
        #expect(try fence.handle(Self.request(id: raised.id, lift: true), now: start + .milliseconds(850)).held)
        #expect(fence.refusal(now: start + .milliseconds(860)) == nil)
        // A fence that lapsed lets writes through and says it did not hold.
        let lapsing = try fence.handle(Self.request(holdMilliseconds: 100), now: start + .seconds(1))
        #expect(fence.refusal(now: start + .milliseconds(1_200)) == nil)
        #expect(try !fence.handle(Self.request(id: lapsing.id, lift: true), now: start + .milliseconds(1_300)).held)
        // An unknown fence (a restarted store has none) did not hold.
        #expect(try !fence.handle(Self.request(id: 77, lift: true), now: start + .seconds(2)).held)
    }

    @Test func holdTimesOutsideTheBoundAreRefused() {
        let fence = WriteFence()
        for holdMilliseconds in [0, WriteFence.holdMillisecondsMax + 1, UInt32.max] {
            #expect(throws: StoreRequestError.self) { try fence.handle(Self.request(holdMilliseconds: holdMilliseconds)) }
        }
        #expect(fence.refusal() == nil)
    }
}

/// Disk-full protection and the fault-injection switch of a store.
@Suite("Store: disk reserve and fault injection", .serialized)
struct DiskAndFaultTests {
    final class FakeDisk: Sendable {
        let free = Mutex<UInt64?>(1 << 30)
    }

    @Test func writesAreRefusedBelowTheReserveAndResumeWhenSpaceReturns() {
        let disk = FakeDisk()
        let guardian = DiskSpaceGuard(path: "/data", reserveBytes: 64 << 20, refreshInterval: .milliseconds(500)) { _ in disk.free.withLock { $0 } }
        let start = ContinuousClock.now
        #expect(guardian.refusal(now: start) == nil)
        disk.free.withLock { $0 = 10 << 20 }
        #expect(guardian.refusal(now: start + .milliseconds(100)) == nil, "measured at most every half second")
        let refusal = guardian.refusal(now: start + .milliseconds(600))
        #expect(refusal?.contains("disk full: 10.0 MiB free under /data, below the 64.0 MiB reserve") == true, "\(String(describing: refusal))")
        disk.free.withLock { $0 = 65 << 20 }
        #expect(guardian.refusal(now: start + .milliseconds(1_200)) == nil, "writes resume once space is back")
        disk.free.withLock { $0 = nil }
        #expect(guardian.refusal(now: start + .milliseconds(1_800)) == nil, "an unreadable filesystem does not stop writes")
        let off = DiskSpaceGuard(path: "/data", reserveBytes: 0) { _ in 0 }
        #expect(off.refusal() == nil, "a zero reserve turns the guard off")
        #expect(DiskSpaceGuard.availableBytes(FileManager.default.temporaryDirectory.path).map { $0 > 0 } == true)
    }

    @Test func aStoreBelowItsReserveRefusesWritesWithTheCauseAndStillServesReads() async throws {
        let server = try await InProcessServer(readyByRead: true) { $0.diskReserveBytes = 1 << 60 }
        defer { Task { await server.stop() } }
        try await server.withClient { kv in
            var refusal = "none"
            do { try await kv.put(Data("k".utf8), Data("v".utf8)) } catch { refusal = "\(error)" }
            #expect(refusal.contains("disk full") && refusal.contains("--disk-reserve-mb"), "\(refusal)")
            let read = try await kv.get(Data("k".utf8))
            #expect(read == nil, "reads go on")
        }
        await server.stop()
    }

    @Test func faultInjectionIsRefusedUnlessEnabledAndBounded() async throws {
        let plain = try await InProcessServer()
        try await plain.withClient { kv in
            var refusal = "none"
            do { try await kv.injectFault(cutStoreIDs: [2], storeID: 1) } catch { refusal = "\(error)" }
            #expect(refusal.contains("--enable-fault-injection"), "\(refusal)")
        }
        await plain.stop()
        let enabled = try await InProcessServer { $0.faultInjectionEnabled = true }
        defer { Task { await enabled.stop() } }
        try await enabled.withClient { kv in
            let cut = try await kv.injectFault(cutStoreIDs: [3, 2, 3], storeID: 1)
            #expect(cut == [2, 3])
            await #expect(throws: FlotillaClientError.self) {
                try await kv.injectFault(cutStoreIDs: (1...1_025).map { UInt64($0) }, storeID: 1)
            }
            let healed = try await kv.injectFault(cutStoreIDs: [], storeID: 1)
            #expect(healed == [], "healed")
            try await kv.put(Data("after".utf8), Data("ok".utf8))
        }
        await enabled.stop()
    }
}

/// Progress of snapshots being received, as a store's status reports it.
@Suite("Store: snapshot receive progress")
struct SnapshotProgressTests {
    @Test func bytesAreCountedPerRegionUntilTheStreamEnds() {
        let receiving = SnapshotReceiveCount()
        #expect(receiving.inFlight.isEmpty)
        receiving.received(1_000, regionID: 7)
        receiving.received(500, regionID: 7)
        receiving.received(10, regionID: 3)
        #expect(receiving.inFlight.map(\.regionID) == [3, 7])
        #expect(receiving.inFlight.first { $0.regionID == 7 }?.bytes == 1_500)
        receiving.ended(regionID: 7)
        #expect(receiving.inFlight.map(\.regionID) == [3])
    }
}
