import ArgumentParser
import FlotillaClient
import Foundation

/// Splits a running cluster's benchmark key space into `--regions` regions of equal share (the
/// same boundaries the embedded cluster uses), through the regions' leaders, and waits until PD
/// routes them all with leaders.
struct PreSplit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "presplit",
        abstract: "Split the benchmark key space of a running cluster into N regions.")

    @Option(name: .customLong("pd"), help: "PD endpoints (default: FLOTILLA_PD).")
    var pd: String?

    @Option(help: "Regions the key space is cut into (1 to 10000).")
    var regions = 64

    @Option(name: .customLong("key-prefix"), help: "Prefix of every benchmark key.")
    var keyPrefix = "user"

    func validate() throws {
        guard (1...10_000).contains(regions) else { throw ValidationError("--regions must be 1 to 10000") }
    }

    func run() async throws {
        guard let endpoints = (pd ?? ProcessInfo.processInfo.environment["FLOTILLA_PD"])?.split(separator: ",").map(String.init) else {
            throw ValidationError("no PD endpoints: pass --pd or set FLOTILLA_PD")
        }
        let keys = KeySpace(prefix: keyPrefix).splitKeys(regions: regions).map { Data($0.utf8) }
        guard !keys.isEmpty else { return }
        let client = try FlotillaClient(pd: endpoints, requestTimeout: .seconds(30))
        let routes = try PDClient(endpoints: endpoints, requestTimeout: .seconds(30))
        let connections = Task { try await client.run() }
        let pdConnections = Task { try await routes.run() }
        defer {
            client.close()
            routes.close()
            connections.cancel()
            pdConnections.cancel()
        }
        let started = ContinuousClock.now
        _ = try await client.split(at: keys)
        // Served: PD routes every boundary as a region start, each with a leader.
        let wanted = Set(keys)
        while ContinuousClock.now - started < .seconds(60) {
            let known = try await routes.scanRegions(from: keys[0], to: Data()).regions
            if wanted.isSubset(of: Set(known.filter(\.hasLeader).map(\.region.startKey))) {
                print("presplit: \(keys.count + 1) regions over the '\(keyPrefix)' keys in \(ContinuousClock.now - started)")
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw ValidationError("PD does not route all \(keys.count + 1) regions after 60 s")
    }
}
