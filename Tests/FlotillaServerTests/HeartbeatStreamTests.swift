import FlotillaProto
@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import Foundation
import GRPCCore
import Synchronization
import Testing

/// PD's heartbeat stream loop, fed directly: answers in order, and a bound on what waits.
@Suite("PD heartbeat stream")
struct HeartbeatStreamTests {
    static func heartbeats(_ count: Int) -> AsyncStream<Flotilla_V1_RegionHeartbeatRequest> {
        AsyncStream { continuation in
            for index in 0..<count {
                var request = Flotilla_V1_RegionHeartbeatRequest()
                request.region.region.id = UInt64(index + 1)
                continuation.yield(request)
            }
            continuation.finish()
        }
    }

    static func answers(_ requests: [Flotilla_V1_RegionHeartbeatRequest]) -> [Flotilla_V1_RegionHeartbeatResponse] {
        requests.map { request in
            var answer = Flotilla_V1_RegionHeartbeatResponse()
            answer.regionID = request.region.region.id
            return answer
        }
    }

    @Test func everyHeartbeatIsAnsweredInOrder() async throws {
        let written = Mutex<[UInt64]>([])
        try await PDService.serveHeartbeatStream(Self.heartbeats(5_000), pendingMax: 4_096, decide: { Self.answers($0) },
                                                 write: { answers in written.withLock { $0 += answers.map(\.regionID) } })
        #expect(written.withLock { $0 } == (1...5_000).map { UInt64($0) })
    }

    @Test func aSenderThatNeverReadsItsAnswersIsReadNoFurtherThanTheBound() async throws {
        let pulled = Atomic<Int>(0)
        let endless = AsyncStream<Flotilla_V1_RegionHeartbeatRequest> {
            pulled.add(1, ordering: .relaxed)
            return Flotilla_V1_RegionHeartbeatRequest()
        }
        // The answers' writer blocks (the sender reads nothing) while heartbeats keep coming.
        let serving = Task {
            try await PDService.serveHeartbeatStream(endless, pendingMax: 4_096, decide: { Self.answers($0) },
                                                     write: { _ in try await Task.sleep(for: .seconds(3_600)) })
        }
        // It reads up to the bound (however slow this machine is), then stops.
        let deadline = ContinuousClock.now + .seconds(60)
        while pulled.load(ordering: .relaxed) < 4_096 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        try await Task.sleep(for: .milliseconds(200))
        let read = pulled.load(ordering: .relaxed)
        #expect(read >= 4_096)
        #expect(read <= 4_096 + PDService.heartbeatBatchMax + 2, "read ahead of the answers: \(read)")
        try await Task.sleep(for: .milliseconds(500))
        #expect(pulled.load(ordering: .relaxed) == read, "reading stopped")
        serving.cancel()
        _ = try? await serving.value
    }
}
