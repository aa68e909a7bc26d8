import FlotillaCluster
import FlotillaProto
@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import Foundation
import Glibc
import Logging
@testable import RaftStore
import RocksDB
import Testing

/// A snapshot sent to a store that accepts the connection and then says nothing (stopped with
/// SIGSTOP, say) is abandoned after the stall timeout, so the next attempt can go out.
@Suite("Snapshot send stalls")
struct SnapshotStallTests {
    @Test func aSendToASilentReceiverIsAbandonedAndFreesItsSlot() async throws {
        // A listener that never accepts: the kernel completes the TCP handshake, nothing answers.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(listener >= 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        #expect(bound == 0)
        #expect(listen(listener, 8) == 0)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        let port = Int(UInt16(bigEndian: address.sin_port))

        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stall-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let db = try StoreDatabase.open(path: path)
        var region = Flotilla_V1_Region()
        region.id = 2
        var header = Flotilla_V1_RaftMessage()
        header.regionID = 2
        header.toPeer.storeID = 9
        let reader = SnapshotReader(db: db, snapshot: db.makeSnapshot(), region: region, header: header, chunkBytes: 1 << 16)
        let target = try #require(HostPort("127.0.0.1:\(port)"))
        let sender = SnapshotSender(addresses: [9: target], sendsMax: 1, secret: [],
                                    logger: Logger(label: "test"), stallTimeout: .seconds(1))
        let started = ContinuousClock.now
        sender.sendSnapshot(OutgoingSnapshot(reader: reader))
        #expect(sender.sendingCount == 1)
        while sender.sendingCount > 0 && ContinuousClock.now - started < .seconds(300) { try await Task.sleep(for: .milliseconds(100)) }
        let took = ContinuousClock.now - started
        // Abandoned by the stall rule (about 1 s alone; the wait bound leaves room for a
        // machine busy with other tests, and stays well under the call's own ten minutes).
        #expect(sender.sendingCount == 0 && sender.abandonedCount.load(ordering: .relaxed) == 1, "after \(took)")
    }
}
