import ArgumentParser
import FlotillaClient
import FlotillaProto
import Foundation

/// `flotillactl region list|show|split`: regions as PD routes them, and splitting one at once
/// through its leader.
struct Region: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "region",
        abstract: "List, show, split and move regions.",
        subcommands: [List.self, Show.self, Find.self, Split.self, Move.self, TransferLeader.self, Check.self]
    )

    struct Options: ParsableArguments {
        @Option(name: .customLong("pd"), help: "PD endpoints host:port,... (default: FLOTILLA_PD).")
        var pd: String?

        @Option(name: .customLong("timeout-ms"), help: "How long to wait for an answer, in milliseconds, retries included.")
        var timeoutMilliseconds = 10_000

        @Flag(name: .customLong("hex"), help: "Keys are given and shown in hexadecimal.")
        var hex = false

        @Flag(name: .customLong("base64"), help: "Keys are given and shown in base64.")
        var base64 = false

        func validate() throws {
            guard !(hex && base64) else { throw ValidationError("--hex and --base64 exclude each other") }
        }

        func endpoints() throws -> [String] {
            guard (1...3_600_000).contains(timeoutMilliseconds) else { throw ValidationError("--timeout-ms must be 1 to 3600000") }
            return try PDEndpoints.resolve(pd)
        }

        /// Runs `body` with a PD client; a PD error is one line on stderr and exit code 1.
        func withPD<T: Sendable>(_ body: @Sendable (PDClient) async throws -> T) async throws -> T {
            let client = try PDClient(endpoints: try endpoints(), requestTimeout: .milliseconds(timeoutMilliseconds))
            let connections = Task { try await client.run() }
            defer { client.close(); connections.cancel() }
            do { return try await body(client) } catch let error as PDClientError {
                FileHandle.standardError.write(Data("flotillactl: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }

        func key(_ text: String) throws -> Data {
            if base64 {
                guard let bytes = Data(base64Encoded: text) else { throw ValidationError("\(text) is not base64") }
                return bytes
            }
            guard hex else { return Data(text.utf8) }
            guard text.count % 2 == 0, let bytes = Optional(stride(from: 0, to: text.count, by: 2).compactMap({ offset -> UInt8? in
                let start = text.index(text.startIndex, offsetBy: offset)
                return UInt8(text[start..<text.index(start, offsetBy: 2)], radix: 16)
            })), bytes.count * 2 == text.count else { throw ValidationError("\(text) is not hexadecimal") }
            return Data(bytes)
        }

        func show(_ key: Data, end: Bool = false) -> String {
            if key.isEmpty { return end ? "end" : "\"\"" }
            if base64 { return key.base64EncodedString() }
            return hex ? key.map { String(format: "%02x", $0) }.joined() : String(decoding: key, as: UTF8.self)
        }

        func json(_ info: Flotilla_V1_RegionInfo) -> [String: Any] {
            let region = info.region
            return ["id": region.id, "startKey": region.startKey.isEmpty ? "" : show(region.startKey), "endKey": region.endKey.isEmpty ? "" : show(region.endKey),
                    "epoch": ["confVer": region.epoch.confVer, "version": region.epoch.version],
                    "peers": region.peers.map { ["id": $0.id, "storeId": $0.storeID, "role": $0.role == .voter ? "voter" : "learner"] },
                    "leader": info.hasLeader ? info.leader.storeID : 0, "joint": info.joint,
                    "pendingPeers": info.pendingPeers.map(\.id), "downPeers": info.downPeers.map(\.id),
                    "approximateSizeBytes": info.stats.approximateSizeBytes, "approximateKeys": info.stats.approximateKeys]
        }

        func line(_ info: Flotilla_V1_RegionInfo) -> String {
            let region = info.region
            let peers = region.peers.map { "\($0.storeID)\($0.role == .learner ? "(learner)" : "")" }.joined(separator: ",")
            var extra = info.joint ? "  joint" : ""
            if !info.pendingPeers.isEmpty { extra += "  pending \(info.pendingPeers.map { "\($0.id)" }.joined(separator: ","))" }
            if !info.downPeers.isEmpty { extra += "  down \(info.downPeers.map { "\($0.id)" }.joined(separator: ","))" }
            return "region \(region.id)  [\(show(region.startKey)), \(show(region.endKey, end: true)))  version \(region.epoch.version) conf_ver \(region.epoch.confVer)  stores \(peers)  leader \(info.hasLeader ? "store \(info.leader.storeID)" : "none")\(extra)"
        }
    }

    static func printJSON(_ object: Any) throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every region in key order, as PD routes them.")
        @OptionGroup var options: Options
        @Flag(name: .customLong("json"), help: "A JSON array.") var json = false

        func run() async throws {
            let regions = try await options.withPD { try await $0.scanRegions().regions }
            if json { return try Region.printJSON(regions.map(options.json)) }
            for region in regions { print(options.line(region)) }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One region by id.")
        @OptionGroup var options: Options
        @Argument(help: "The region's id.") var id: UInt64
        @Flag(name: .customLong("json"), help: "A JSON object.") var json = false

        func run() async throws {
            let regionID = id
            let info = try await options.withPD { try await $0.region(id: regionID).region }
            if json { return try Region.printJSON(options.json(info)) }
            print(options.line(info))
        }
    }

    struct Find: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The region holding a key.")
        @OptionGroup var options: Options
        @Argument(help: "The key (text, or --hex / --base64).") var key: String
        @Flag(name: .customLong("json"), help: "A JSON object.") var json = false

        func run() async throws {
            let bytes = try options.key(key)
            let info = try await options.withPD { try await $0.region(key: bytes).region }
            if json { return try Region.printJSON(options.json(info)) }
            print(options.line(info))
        }
    }

    struct Split: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Split a region at one or more keys, at once through its leader.",
            discussion: "Each key must lie strictly inside the region (not on its start). Prints the region and the regions it made.")
        @OptionGroup var options: Options
        @Argument(help: "The region's id.") var id: UInt64
        @Option(name: .customLong("at"), help: "A split key (repeat for several).") var at: [String] = []
        @Flag(name: .customLong("json"), help: "A JSON array of the regions after the split.") var json = false

        func run() async throws {
            guard !at.isEmpty else { throw ValidationError("give at least one --at key") }
            let keys = try at.map(options.key)
            let regionID = id
            let region = try await options.withPD { try await $0.region(id: regionID).region.region }
            for key in keys where !(region.startKey.lexicographicallyPrecedes(key) && region.contains(key)) {
                FileHandle.standardError.write(Data("flotillactl: key \(options.show(key)) is not strictly inside region \(region.id) [\(options.show(region.startKey)), \(options.show(region.endKey, end: true))): pick a key inside it, or the region that holds it (flotillactl region list)\n".utf8))
                throw ExitCode(1)
            }
            let client = try FlotillaClient(pd: try options.endpoints(), requestTimeout: .milliseconds(options.timeoutMilliseconds))
            let connections = Task { try await client.run() }
            defer { client.close(); connections.cancel() }
            let regions: [Flotilla_V1_Region]
            do { regions = try await client.split(at: keys) } catch {
                FileHandle.standardError.write(Data("flotillactl: split of region \(region.id) failed: \(error)\n".utf8))
                throw ExitCode(1)
            }
            let infos = regions.map { region -> Flotilla_V1_RegionInfo in
                var info = Flotilla_V1_RegionInfo()
                info.region = region
                return info
            }
            if json { return try Region.printJSON(infos.map(options.json)) }
            for info in infos { print(options.line(info)) }
        }
    }

    struct Move: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a region's replica from one store to another (a learner, one joint change, the old replica removed).",
            discussion: "With --wait, shows each step until the move succeeds (exit 0) or ends otherwise (exit 1, with PD's reason).")
        @OptionGroup var options: Options
        @Argument(help: "The region's id.") var id: UInt64
        @Option(name: .customLong("from"), help: "The store giving its replica up.") var from: UInt64
        @Option(name: .customLong("to"), help: "The store taking it.") var to: UInt64
        @Flag(name: .customLong("wait"), help: "Wait for the move to end, showing its steps.") var wait = false

        func run() async throws {
            let (regionID, source, target) = (id, from, to)
            let op = try await options.withPD { try await $0.movePeer(regionID, from: source, to: target) }
            print("operator \(op.id): \(op.description_p)")
            if wait { try await OperatorCommand.follow(op.id, options: options) }
        }
    }

    struct TransferLeader: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "transfer-leader", abstract: "Make the region's voter on a store its leader.")
        @OptionGroup var options: Options
        @Argument(help: "The region's id.") var id: UInt64
        @Option(name: .customLong("to"), help: "The store whose voter should lead.") var to: UInt64
        @Flag(name: .customLong("wait"), help: "Wait until the leader is there.") var wait = false

        func run() async throws {
            let (regionID, target) = (id, to)
            let op = try await options.withPD { try await $0.transferLeader(regionID, to: target) }
            print("operator \(op.id): \(op.description_p)")
            if wait { try await OperatorCommand.follow(op.id, options: options) }
        }
    }
}
