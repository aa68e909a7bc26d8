import Foundation
import Raft

/// A libFuzzer target for the Raft core: bytes become a sequence of messages (any kind, any
/// numbers) and ticks fed to a live three-node group, whose Readies are persisted and whose
/// messages are delivered. The core must never trap, whatever arrives.
///
///     ops/fuzz raft-step 60        # libFuzzer for 60 s (swiftc -sanitize=fuzzer)
///     swift run raft-step-fuzzer crash-file …   # replays inputs without libFuzzer
enum RaftStepFuzzer {
    /// Reads little values from the input, running dry as zeros.
    struct Input {
        var bytes: ArraySlice<UInt8>
        mutating func byte() -> UInt8 { bytes.popFirst() ?? 0 }
        /// A number biased to the interesting: small, near the bounds, or anything.
        mutating func number() -> UInt64 {
            switch byte() % 8 {
            case 0: return 0
            case 1: return UInt64(byte() % 16)
            case 2: return RaftLimits.termMax &+ UInt64(byte() % 3) &- 1
            case 3: return RaftLimits.indexMax &+ UInt64(byte() % 3) &- 1
            case 4: return .max &- UInt64(byte() % 2)
            default:
                var value: UInt64 = 0
                for _ in 0..<8 { value = value << 8 | UInt64(byte()) }
                return value
            }
        }
    }

    static func run(_ data: [UInt8]) {
        var storages: [NodeID: MemoryStorage] = [:]
        var nodes: [NodeID: RaftNode] = [:]
        for id: NodeID in 1...3 {
            let storage = MemoryStorage()
            storage.bootstrap(voters: [1, 2, 3])
            var config = RaftConfig(id: id)
            config.randomSeed = 1
            storages[id] = storage
            nodes[id] = RaftNode(config: config, storage: storage)
        }
        var queue: [Message] = []
        func settle() {
            for _ in 0..<20 {
                for id in nodes.keys.sorted() {
                    guard var node = nodes[id], node.hasReady, let storage = storages[id] else { continue }
                    let ready = node.ready()
                    // A write no correct node asks for is a finding: trap so libFuzzer keeps it.
                    do { try storage.persist(ready) } catch { preconditionFailure("\(error)") }
                    queue += ready.messagesNow + ready.messagesAfterPersist
                    node.advance(ready)
                    nodes[id] = node
                }
                if queue.isEmpty { return }
                let delivering = queue
                queue = []
                for message in delivering { nodes[message.to]?.step(message) }
            }
        }
        nodes[1]?.campaign()
        settle()
        var input = Input(bytes: data[...])
        while !input.bytes.isEmpty {
            let action = input.byte()
            if action % 5 == 0 {
                for id in nodes.keys.sorted() { nodes[id]?.tick() }
            } else if action % 5 == 1 {
                _ = try? nodes[nodes.keys.sorted().first { nodes[$0]?.role == .leader } ?? 1]?.propose([input.byte()])
            } else {
                guard let kind = MessageKind(rawValue: input.byte() % 12) else { continue }
                var message = Message(kind: kind, from: NodeID(input.byte() % 4), to: NodeID(input.byte() % 3 + 1))
                message.term = input.number()
                message.logTerm = input.number()
                message.index = input.number()
                message.commit = input.number()
                message.reject = input.byte() % 2 == 0
                message.rejectHint = input.number()
                message.rejectHintTerm = input.number()
                message.sentAtTick = input.number()
                for position in 0..<Int(input.byte() % 4) {
                    message.entries.append(Entry(term: input.number(), index: message.index &+ UInt64(position) &+ 1, data: [input.byte()]))
                }
                if kind == .installSnapshot {
                    message.snapshot = Snapshot(metadata: SnapshotMetadata(index: input.number(), term: input.number(),
                                                                           confState: ConfState(voters: [1, 2, 3])))
                }
                nodes[message.to]?.step(message)
            }
            settle()
        }
    }
}

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    RaftStepFuzzer.run(Array(UnsafeRawBufferPointer(start: start, count: count)))
    return 0
}

/// libFuzzer's driver, called from the entry point SwiftPM gives an executable target.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafeRawPointer?, Int) -> CInt) -> CInt

@_cdecl("raft_step_fuzzer_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return withUnsafeMutablePointer(to: &count) { countPointer in
        withUnsafeMutablePointer(to: &arguments) { argumentsPointer in
            LLVMFuzzerRunDriver(countPointer, argumentsPointer, fuzzOneInput)
        }
    }
}
#else
/// Without libFuzzer: replays the files given as arguments (a corpus or crash inputs), or a
/// seeded batch of random inputs when none is given.
@main
struct RaftStepFuzzerMain {
    static func main() throws {
        let paths = CommandLine.arguments.dropFirst()
        if paths.isEmpty {
            var random = SplitMix64(seed: 1)
            for _ in 0..<500 {
                RaftStepFuzzer.run((0..<Int.random(in: 0...512, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) })
            }
            print("raft-step-fuzzer: 500 random inputs, no trap")
            return
        }
        for path in paths { RaftStepFuzzer.run([UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))) }
        print("raft-step-fuzzer: \(paths.count) inputs, no trap")
    }
}
#endif
