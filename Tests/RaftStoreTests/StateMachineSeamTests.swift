import FlotillaProto
import Foundation
import Raft
import RaftStore
import Testing

/// A journal: each command is appended under its index; the reply is how many entries it
/// holds. Its memory is rebuilt from its records, as PD's metadata is.
final class JournalMachine: RegionStateMachine {
    var entries: [String] = []
    var restores = 0

    func apply(command: Data, regionID: UInt64, index: UInt64) -> (reply: Data, writes: [StateMachineWrite]) {
        let text = String(decoding: command, as: UTF8.self)
        entries.append(text)
        let key = Data("journal/".utf8) + withUnsafeBytes(of: index.bigEndian) { Data($0) }
        return (Data("\(entries.count)".utf8), [.put(key: key, value: command)])
    }

    func restore(regionID: UInt64, records: [(key: Data, value: Data)]) throws {
        restores += 1
        entries = records.map { String(decoding: $0.value, as: UTF8.self) }
    }
}

@Suite("Store core: the state-machine seam (PD's metadata on the region machinery)")
struct StateMachineSeamTests {
    static func command(_ text: String) -> Flotilla_V1_WriteCommand {
        var command = Flotilla_V1_WriteCommand()
        command.stateMachineCommand = Data(text.utf8)
        return command
    }

    @Test func commandsApplyOnEveryReplicaAndSurviveRestartAndSnapshots() throws {
        var machines: [UInt64: JournalMachine] = [:]
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: [], settings: { _, settings in
            settings.logGCCountThreshold = 5
        }, stateMachine: { storeID in
            let machine = JournalMachine()
            machines[storeID] = machine
            return machine
        })
        try cluster.rounds(30)
        for n in 1...3 {
            let result = try cluster.write(Self.command("entry \(n)"), key: "").get()
            #expect(String(decoding: result.stateMachineReply, as: UTF8.self) == "\(n)")
        }
        try cluster.rounds(3)
        for storeID in cluster.storeIDs {
            #expect(machines[storeID]?.entries == ["entry 1", "entry 2", "entry 3"])
        }

        // Store 3 is down while the log moves on and is truncated: it comes back by snapshot,
        // and its machine is restored from the snapshot's records.
        cluster.crash(3)
        for n in 4...20 { _ = try cluster.write(Self.command("entry \(n)"), key: "").get() }
        try cluster.restart(3)
        #expect(machines[3]?.entries.count == 3, "restored from its own records at start")
        try cluster.rounds(40)
        #expect(cluster.snapshotsInstalled[3, default: 0] >= 1)
        #expect(machines[3]?.entries == (1...20).map { "entry \($0)" })
        #expect(machines[3]?.entries == machines[1]?.entries)
    }

    @Test func aKVStoreRefusesStateMachineCommands() throws {
        let cluster = try InProcessCluster(storeCount: 1, splitKeys: [])
        try cluster.rounds(30)
        let leader = try #require(cluster.leader(of: 1).flatMap { cluster.stores[$0] })
        #expect(throws: StoreRequestError.self) { try leader.proposeWrite(Self.command("x"), context: cluster.context(1)) }
        // Nor may one command carry a state-machine command and a KV operation.
        var both = InProcessCluster.put("k", "v")
        both.stateMachineCommand = Data("x".utf8)
        #expect(throws: StoreRequestError.self) { try leader.proposeWrite(both, context: cluster.context(1)) }
    }
}
