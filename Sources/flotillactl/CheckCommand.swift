import ArgumentParser
import FlotillaClient
import FlotillaProto
import Foundation

extension Region {
    /// `flotillactl region check ID | --all`: a consistency check through each region's log.
    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check that every replica of a region holds the same data (a check entry through its log).",
            discussion: """
                Each replica digests its data and client sessions at the check entry's index; the digests \
                are compared here, and each store compares its own with the leader's (a mismatch is logged \
                as CONSISTENCY CHECK FAILED). Exit 1 when a replica differs or could not be compared.
                """)
        @OptionGroup var options: Options
        @Argument(help: "The region's id.") var id: UInt64?
        @Flag(name: .customLong("all"), help: "Check every region.") var all = false
        @Flag(name: .customLong("json"), help: "A JSON array: one object per region.") var json = false

        func validate() throws {
            guard (id != nil) != all else { throw ValidationError("give a region id or --all") }
        }

        struct Outcome {
            let region: Flotilla_V1_Region
            var index: UInt64 = 0
            /// Per store: the digest (keys, checksum) or why there is none.
            var replicas: [UInt64: Result<(keys: UInt64, checksum: UInt64, verdict: String), CheckProblem>] = [:]
            var failure: String?

            var consistent: Bool {
                guard failure == nil, replicas.count == region.peers.count else { return false }
                let digests = replicas.values.compactMap { try? $0.get() }
                guard digests.count == replicas.count, let first = digests.first else { return false }
                return digests.allSatisfy { $0.keys == first.keys && $0.checksum == first.checksum }
            }
        }

        struct CheckProblem: Error, CustomStringConvertible { let description: String }

        func run() async throws {
            let wanted = id
            let regions = try await options.withPD { client -> [Flotilla_V1_Region] in
                if let wanted { return [try await client.region(id: wanted).region.region] }
                return try await client.scanRegions().regions.map(\.region)
            }
            let client = try FlotillaClient(pd: try options.endpoints(), requestTimeout: .milliseconds(options.timeoutMilliseconds))
            let connections = Task { try await client.run() }
            defer { client.close(); connections.cancel() }
            try? await client.discoverStores()
            var outcomes: [Outcome] = []
            for region in regions {
                var outcome = Outcome(region: region)
                do {
                    let started = try await client.checkRegion(region.id, startKey: region.startKey)
                    outcome = Outcome(region: started.region)
                    outcome.index = started.index
                } catch {
                    outcome.failure = "\(error)"
                }
                outcomes.append(outcome)
            }
            // Poll the stores until every replica reported its digest at the check's index.
            let deadline = ContinuousClock.now + .milliseconds(options.timeoutMilliseconds)
            while true {
                let storeIDs = Set(outcomes.filter { $0.failure == nil }.flatMap { $0.region.peers.map(\.storeID) })
                var statuses: [UInt64: Flotilla_V1_StoreStatus] = [:]
                for storeID in storeIDs.sorted() { statuses[storeID] = try? await client.storeStatus(storeID, includeRegions: true) }
                var done = true
                for position in outcomes.indices where outcomes[position].failure == nil {
                    let outcome = outcomes[position]
                    for peer in outcome.region.peers {
                        guard let status = statuses[peer.storeID] else {
                            outcomes[position].replicas[peer.storeID] = .failure(CheckProblem(description: "store unreachable"))
                            done = false
                            continue
                        }
                        guard let replica = status.regionStatus.first(where: { $0.regionID == outcome.region.id }) else {
                            outcomes[position].replicas[peer.storeID] = .failure(CheckProblem(description: "no replica on the store"))
                            continue
                        }
                        let check = replica.lastCheck
                        if check.index == outcome.index && check.computed {
                            outcomes[position].replicas[peer.storeID] = .success((check.keys, check.checksum, check.verdict))
                            if check.verdict == "unverified" { done = false }
                        } else if check.index > outcome.index || (replica.appliedIndex > outcome.index && check.index < outcome.index) {
                            outcomes[position].replicas[peer.storeID] = .failure(CheckProblem(
                                description: "did not digest index \(outcome.index) (caught up by snapshot, or a newer check ran): check again"))
                        } else {
                            outcomes[position].replicas[peer.storeID] = .failure(CheckProblem(description: "digest pending (applied \(replica.appliedIndex))"))
                            done = false
                        }
                    }
                }
                if done || ContinuousClock.now >= deadline { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            if json {
                try Region.printJSON(outcomes.map { outcome -> [String: Any] in
                    ["id": outcome.region.id, "index": outcome.index, "consistent": outcome.consistent, "error": outcome.failure ?? "",
                     "replicas": outcome.region.peers.map { peer -> [String: Any] in
                         switch outcome.replicas[peer.storeID] {
                         case .success(let digest)?:
                             ["storeId": peer.storeID, "keys": digest.keys, "checksum": String(digest.checksum, radix: 16), "verdictVersusLeader": digest.verdict]
                         case .failure(let problem)?: ["storeId": peer.storeID, "error": problem.description]
                         case nil: ["storeId": peer.storeID, "error": "not reached"]
                         }
                     }]
                })
            } else {
                for outcome in outcomes {
                    if let failure = outcome.failure {
                        print("region \(outcome.region.id)  NOT CHECKED  \(failure)")
                        continue
                    }
                    print("region \(outcome.region.id)  index \(outcome.index)  \(outcome.consistent ? "consistent" : "INCONSISTENT")")
                    // The checksum most replicas have: the others are the suspects (the
                    // verdict compares with the leader, which may be the odd one).
                    let checksums = outcome.replicas.values.compactMap { try? $0.get().checksum }
                    let majority = Dictionary(grouping: checksums, by: { $0 }).max { $0.value.count < $1.value.count }.flatMap {
                        $0.value.count * 2 > checksums.count ? $0.key : nil
                    }
                    for peer in outcome.region.peers {
                        switch outcome.replicas[peer.storeID] {
                        case .success(let digest)?:
                            let odd = majority.map { $0 != digest.checksum } == true ? "  <- differs from the other replicas" : ""
                            print("  store \(peer.storeID)  keys \(digest.keys)  checksum \(String(digest.checksum, radix: 16))  \(digest.verdict) (vs leader)\(odd)")
                        case .failure(let problem)?: print("  store \(peer.storeID)  \(problem)")
                        case nil: print("  store \(peer.storeID)  not reached")
                        }
                    }
                }
            }
            let bad = outcomes.filter { !$0.consistent }
            if !bad.isEmpty {
                fflush(nil)  // the table first
                FileHandle.standardError.write(Data("flotillactl: \(bad.count) of \(outcomes.count) region(s) not proven consistent: \(bad.map { "\($0.region.id)" }.joined(separator: ","))\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}
