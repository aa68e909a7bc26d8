import ArgumentParser
import FlotillaClient
import FlotillaCluster
import FlotillaCommandLine
import FlotillaProto
import Foundation

/// `flotilla-bench`: YCSB-style load tests against Flotilla and, with the same workloads, etcd.
@main
struct BenchCommand: AsyncParsableCommand {
    /// Runs Swift Concurrency's tasks on NIO's event loops, where the gRPC clients do their
    /// I/O, instead of a separate pool (fewer thread hops per operation, for every target).
    static func main() async { await mainOnEventLoops() }

    static let configuration = CommandConfiguration(
        commandName: "flotilla-bench",
        abstract: "Load-test Flotilla (or etcd) with YCSB-style workloads.",
        discussion: """
            Load the records first (`load`), then run a workload (`run`) as often as you like.
            With --embedded, `run` starts a local cluster of real flotilla-server processes, loads
            it, runs and stops it. `compare` prints two results side by side.
            """,
        subcommands: [Load.self, Run.self, Compare.self, MakeClusterFile.self, WritePath.self, PDHeartbeats.self, SplitBench.self, PreSplit.self, MoveBench.self, BalanceWait.self]
    )
}

/// Where the load goes.
struct TargetOptions: ParsableArguments {
    @Option(name: .customLong("pd"), help: "A running Flotilla cluster: its PD endpoints host:port,... (or FLOTILLA_PD when no other target is given).")
    var pd: String?

    @Option(name: .customLong("cluster-file"), help: "A running static Flotilla cluster (tests): its JSON cluster file.")
    var clusterFile: String?

    @Flag(help: "Start a local Flotilla cluster of real processes for this run, and stop it after.")
    var embedded = false

    @Option(name: .customLong("embedded-stores"), help: "Stores of the embedded cluster.")
    var embeddedStores = 3

    @Option(name: .customLong("embedded-regions"), help: "Regions of the embedded cluster (split evenly over the key space).")
    var embeddedRegions = 64

    @Option(name: .customLong("server-binary"), help: "flotilla-server to start with --embedded (default: next to flotilla-bench).")
    var serverBinary: String?

    @Option(name: .customLong("etcd"), help: "etcd endpoints, host:port[,host:port…] (v3 gRPC API).")
    var etcdEndpoints: String?

    @Option(name: .customLong("etcd-connections"), help: "HTTP/2 connections per etcd endpoint.")
    var etcdConnectionsPerEndpoint = 1

    @Option(name: .customLong("etcd-driver"), help: "How calls reach etcd: direct (HTTP/2 configured for etcd's pings) or grpc-swift (the old driver, for comparison).")
    var etcdDriver = "direct"

    @Option(name: .customLong("timeout-ms"), help: "Per-request timeout of the Flotilla client, retries included.")
    var timeoutMilliseconds = 10_000

    func validate() throws {
        let chosen = [pdEndpoints != nil, clusterFile != nil, embedded, etcdEndpoints != nil].filter { $0 }.count
        guard chosen == 1 else { throw ValidationError("choose exactly one target: --pd, --cluster-file, --embedded or --etcd") }
        if let pdEndpoints {
            for endpoint in pdEndpoints.split(separator: ",") where HostPort(String(endpoint)) == nil {
                throw ValidationError("--pd: '\(endpoint)' is not host:port")
            }
        }
        if let etcdEndpoints {
            for endpoint in etcdEndpoints.split(separator: ",") where HostPort(String(endpoint)) == nil {
                throw ValidationError("--etcd: '\(endpoint)' is not host:port")
            }
        }
        guard (1...64).contains(embeddedStores) else { throw ValidationError("--embedded-stores must be 1 to 64") }
        guard (1...65_536).contains(embeddedRegions) else { throw ValidationError("--embedded-regions must be 1 to 65536") }
        guard (1...3_600_000).contains(timeoutMilliseconds) else { throw ValidationError("--timeout-ms must be 1 to 3600000") }
        guard (1...64).contains(etcdConnectionsPerEndpoint) else { throw ValidationError("--etcd-connections must be 1 to 64") }
        guard EtcdTarget.Driver(rawValue: etcdDriver) != nil else {
            throw ValidationError("--etcd-driver must be one of \(EtcdTarget.Driver.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    /// `--pd`, else FLOTILLA_PD when no other target was chosen.
    var pdEndpoints: String? {
        if let pd { return pd }
        guard clusterFile == nil, !embedded, etcdEndpoints == nil else { return nil }
        return ProcessInfo.processInfo.environment["FLOTILLA_PD"]
    }

    /// Connects to (or starts) the target and runs `body` with it; stops what it started.
    func withTarget<T: Sendable>(keySpace: KeySpace, _ body: @Sendable (any BenchTarget, FlotillaClient?) async throws -> T) async throws -> T {
        var embeddedCluster: EmbeddedCluster?
        let target: any BenchTarget
        var flotilla: FlotillaClient?
        if let etcdEndpoints {
            target = try EtcdTarget(endpoints: etcdEndpoints.split(separator: ",").compactMap { HostPort(String($0)) },
                                    connectionsPerEndpoint: etcdConnectionsPerEndpoint, driver: EtcdTarget.Driver(rawValue: etcdDriver) ?? .direct)
        } else if let pdEndpoints {
            let client = try FlotillaClient(pd: pdEndpoints.split(separator: ",").map(String.init), requestTimeout: .milliseconds(timeoutMilliseconds))
            flotilla = client
            target = FlotillaTarget(client: client)
        } else {
            let cluster: ClusterFile
            if embedded {
                let started = try EmbeddedCluster(stores: embeddedStores, splitKeys: keySpace.splitKeys(regions: embeddedRegions),
                                                  serverBinary: serverBinary)
                embeddedCluster = started
                cluster = started.cluster
            } else {
                do { cluster = try ClusterFile.load(path: clusterFile ?? "") } catch { throw ValidationError(error.description) }
            }
            let stores = cluster.stores.compactMap { store in
                HostPort(store.address).map { FlotillaClient.Store(id: store.id, host: $0.host, port: $0.port) }
            }
            let client = try FlotillaClient(stores: stores, regions: cluster.initialRegions(), requestTimeout: .milliseconds(timeoutMilliseconds))
            flotilla = client
            target = FlotillaTarget(client: client)
        }
        let connections = Task { try await target.run() }
        let outcome: Result<T, Error>
        do {
            if let embeddedCluster { try await embeddedCluster.waitUntilServing(target: target) }
            outcome = .success(try await body(target, flotilla))
        } catch {
            outcome = .failure(error)
        }
        target.close()
        connections.cancel()
        await embeddedCluster?.stop()
        return try outcome.get()
    }
}

/// What to run and how hard.
struct WorkloadOptions: ParsableArguments {
    @Option(help: "YCSB core workload a, b, c, d, e, f, or write-only.")
    var workload = "a"

    @Option(name: .customLong("read-proportion"), help: "Custom mix: share of reads (replaces the workload's mix with the proportions given).")
    var readProportion: Double?
    @Option(name: .customLong("update-proportion"), help: "Custom mix: share of updates.")
    var updateProportion: Double?
    @Option(name: .customLong("insert-proportion"), help: "Custom mix: share of inserts.")
    var insertProportion: Double?
    @Option(name: .customLong("scan-proportion"), help: "Custom mix: share of scans.")
    var scanProportion: Double?
    @Option(name: .customLong("rmw-proportion"), help: "Custom mix: share of read-modify-writes (compare-and-swap).")
    var readModifyWriteProportion: Double?

    @Option(help: "Key distribution: uniform, zipfian (θ 0.99) or latest (default: the workload's).")
    var distribution: KeyDistribution?

    @Option(help: "Records loaded (and chosen from).")
    var records: UInt64 = 100_000

    @Option(name: .customLong("value-size"), help: "Bytes per value.")
    var valueSize = 100

    @Option(name: .customLong("key-prefix"), help: "Prefix of every key.")
    var keyPrefix = "user"

    @Option(help: "Concurrent clients (in flight at once).")
    var concurrency = 64

    @Option(help: "Seconds to measure (after the warm-up); default 30 unless --operations is given.")
    var duration: Double?

    @Option(help: "Stop after this many operations (warm-up included).")
    var operations: Int?

    @Option(help: "Warm-up seconds, not measured.")
    var warmup: Double = 5

    @Option(help: "Open loop: issue this many operations per second; latencies count from when each was due.")
    var rate: Double?

    @Option(help: "Seed of the key and operation choices.")
    var seed: UInt64 = 1

    @Option(name: .customLong("max-scan-length"), help: "Scans read 1 to this many records.")
    var maxScanLength = 100

    @Option(help: "Write the whole result (parameters, machine, figures) to this JSON file.")
    var json: String?

    @Option(name: .customLong("watch-pids"), help: "Server process ids (comma-separated, Linux) whose CPU per operation is reported with the client's.")
    var watchPIDs: String?

    @Option(help: "A label for this run in tables and JSON.")
    var label: String?

    @Flag(help: "No live line every second.")
    var quiet = false

    func validate() throws {
        guard WorkloadMix.named(workload) != nil else {
            throw ValidationError("--workload '\(workload)' is not one of \(WorkloadMix.namedWorkloads.joined(separator: ", "))")
        }
        let custom = [readProportion, updateProportion, insertProportion, scanProportion, readModifyWriteProportion].compactMap { $0 }
        guard custom.allSatisfy({ $0 >= 0 }) else { throw ValidationError("proportions must not be negative") }
        guard custom.isEmpty || custom.reduce(0, +) > 0 else { throw ValidationError("the custom proportions add up to 0") }
        guard records > 0 else { throw ValidationError("--records must be positive") }
        guard (0...KVLimits.valueBytesMax).contains(valueSize) else { throw ValidationError("--value-size must be 0 to \(KVLimits.valueBytesMax) bytes") }
        guard (1...100_000).contains(concurrency) else { throw ValidationError("--concurrency must be 1 to 100000") }
        // Bounded so every conversion to milliseconds stays exact (no trap on 1e300 or inf).
        if let duration { guard duration > 0 && duration <= 86_400 else { throw ValidationError("--duration must be above 0 and at most 86400 seconds") } }
        if let operations { guard operations > 0 else { throw ValidationError("--operations must be positive") } }
        guard warmup >= 0 && warmup <= 86_400 else { throw ValidationError("--warmup must be 0 to 86400 seconds") }
        if let rate { guard rate > 0 && rate <= 10_000_000 else { throw ValidationError("--rate must be above 0 and at most 10000000 per second") } }
        guard maxScanLength > 0 else { throw ValidationError("--max-scan-length must be positive") }
        if let watchPIDs {
            do { _ = try ProcessCPU.parsePIDs(watchPIDs) } catch { throw ValidationError(error.description) }
        }
    }

    var mix: WorkloadMix {
        var mix = WorkloadMix.named(workload) ?? WorkloadMix(proportions: [.read: 1], distribution: .uniform)
        let custom: [(OperationKind, Double?)] = [(.read, readProportion), (.update, updateProportion), (.insert, insertProportion),
                                                  (.scan, scanProportion), (.readModifyWrite, readModifyWriteProportion)]
        if custom.contains(where: { $0.1 != nil }) {
            mix.proportions = [:]
            for (kind, share) in custom { if let share, share > 0 { mix.proportions[kind] = share } }
        }
        if let distribution { mix.distribution = distribution }
        mix.maxScanLength = maxScanLength
        return mix
    }

    var workloadName: String {
        [readProportion, updateProportion, insertProportion, scanProportion, readModifyWriteProportion].contains { $0 != nil } ? "custom" : workload
    }

    var keySpace: KeySpace { KeySpace(prefix: keyPrefix) }

    func plan(liveLine: Bool) -> RunPlan {
        RunPlan(mix: mix, keySpace: keySpace, recordCount: records, valueSizeBytes: valueSize, concurrency: concurrency,
                duration: operations != nil && duration == nil ? nil : .milliseconds(Int((duration ?? 30) * 1_000)),
                operationCount: operations, warmup: .milliseconds(Int(warmup * 1_000)), rateOpsPerSecond: rate, seed: seed,
                liveLine: liveLine, watchPIDs: watchPIDs.flatMap { try? ProcessCPU.parsePIDs($0) } ?? [])
    }

    var parameters: RunParameters {
        let mix = self.mix
        return RunParameters(workload: workloadName, proportions: Dictionary(uniqueKeysWithValues: mix.proportions.map { ($0.key.rawValue, $0.value) }),
                             distribution: mix.distribution, recordCount: records, valueSizeBytes: valueSize, keyPrefix: keyPrefix,
                             concurrency: concurrency, durationSeconds: operations != nil && duration == nil ? nil : (duration ?? 30),
                             operationCount: operations, warmupSeconds: warmup, rateOpsPerSecond: rate, seed: seed,
                             maxScanLength: maxScanLength)
    }
}

struct Load: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write the records a workload reads.")
    @OptionGroup var target: TargetOptions
    @OptionGroup var workload: WorkloadOptions

    func run() async throws {
        let plan = workload.plan(liveLine: false)
        let elapsed = try await target.withTarget(keySpace: workload.keySpace) { target, _ in
            try await WorkloadRunner(target: target, plan: plan).load()
        }
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print("loaded \(workload.records) records of \(workload.valueSize) bytes in \(String(format: "%.1f", seconds)) s "
              + "(\(Format.rate(Double(workload.records) / max(seconds, 1e-9))) records/s)")
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a workload and report throughput and latency.")
    @OptionGroup var target: TargetOptions
    @OptionGroup var workload: WorkloadOptions

    func run() async throws {
        let plan = workload.plan(liveLine: !workload.quiet)
        let parameters = workload.parameters
        let embedded = target.embedded
        let label = workload.label
        let result = try await target.withTarget(keySpace: workload.keySpace) { target, flotilla in
            let runner = WorkloadRunner(target: target, plan: plan)
            if embedded { _ = try await runner.load() }
            let before = try await Self.storeStatuses(flotilla)
            let startedAt = Date()
            let recorder = Recorder()
            let measurement = await runner.run(recorder: recorder)
            let measured = measurement.duration
            let after = try await Self.storeStatuses(flotilla)
            let seconds = Double(measured.components.seconds) + Double(measured.components.attoseconds) / 1e18
            // Store counters cover the warm-up too: their rates are over the whole run.
            let storeSeconds = Date().timeIntervalSince(startedAt)
            var operations: [String: OperationResult] = [:]
            for (kind, stats) in recorder.snapshot { operations[kind.rawValue] = OperationResult(stats, seconds: seconds) }
            let stores = Self.activity(before: before, after: after, seconds: storeSeconds)
            let operationsDone = operations.values.reduce(0) { $0 + Int($1.count) + $1.errors }
            return BenchResult(target: target.name, label: label, commandLine: CommandLine.arguments, parameters: parameters,
                               machine: .current, startedAt: startedAt, measuredSeconds: seconds,
                               throughputOpsPerSecond: Double(operations.values.reduce(0) { $0 + $1.count }) / max(seconds, 1e-9),
                               operations: operations, totalErrors: operations.values.reduce(0) { $0 + $1.errors },
                               totalRetries: operations.values.reduce(0) { $0 + $1.retries }, stores: stores,
                               connectionsOpened: target.connectionsOpened, connectionSlots: target.connectionSlots,
                               cpu: CPUFigures(from: measurement.cpuAtStart, to: measurement.cpuAtEnd, pids: plan.watchPIDs, operations: operationsDone))
        }
        print(Format.table(result))
        if let path = workload.json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.dateEncodingStrategy = .iso8601
            try encoder.encode(result).write(to: URL(fileURLWithPath: path))
            print("wrote \(path)")
        }
        if result.totalErrors > 0 && result.operations.values.allSatisfy({ $0.count == 0 }) {
            throw ExitCode(1)  // nothing succeeded
        }
    }

    static func storeStatuses(_ client: FlotillaClient?) async throws -> [UInt64: Flotilla_V1_StoreStatus] {
        guard let client else { return [:] }
        var statuses: [UInt64: Flotilla_V1_StoreStatus] = [:]
        for storeID in client.storeIDs {
            statuses[storeID] = try? await client.storeStatus(storeID)
        }
        return statuses
    }

    static func activity(before: [UInt64: Flotilla_V1_StoreStatus], after: [UInt64: Flotilla_V1_StoreStatus], seconds: Double) -> [StoreActivity]? {
        guard !after.isEmpty else { return nil }
        return after.keys.sorted().compactMap { storeID in
            guard let end = after[storeID], let start = before[storeID], end.turns >= start.turns else { return nil }
            let syncs = Double(end.logSyncs - start.logSyncs)
            return StoreActivity(storeID: storeID, logSyncsPerSecond: syncs / max(seconds, 1e-9),
                                 regionsPerLogBatch: syncs > 0 ? Double(end.regionsInLogBatches - start.regionsInLogBatches) / syncs : 0,
                                 entriesAppliedPerSecond: Double(end.entriesApplied - start.entriesApplied) / max(seconds, 1e-9),
                                 leaders: end.leaders)
        }
    }
}

/// Prints results side by side with the ratio of the first to the second for every figure.
struct Compare: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print results side by side with their ratios.",
        discussion: """
            Consecutive pairs of the same workload are rounds of one comparison (ops/load-test
            --rounds): each figure is the median over the rounds, and the ratio of every round
            is listed. With --go-client, the figures of etcd's own Go client (ops/etcd-load
            -json) for the same workloads get a column too, and every ratio is taken against
            the better of the two etcd figures.
            """)
    @Argument(help: "Result JSON files written by `run --json`, in pairs: first, second, first, second, …")
    var results: [String]

    @Option(name: .customLong("go-client"), parsing: .upToNextOption, help: "Results of ops/etcd-load -json, for the second system's figures through its own client.")
    var goClient: [String] = []

    @Option(help: "Write the table (Markdown) to this file too.")
    var markdown: String?

    func validate() throws {
        guard !results.isEmpty, results.count % 2 == 0 else { throw ValidationError("give result files in pairs (first, second)") }
    }

    /// What ops/etcd-load -json writes.
    struct GoClientResult: Decodable {
        var workload: String
        var throughputOpsPerSecond: Double
        var p50Microseconds: Double
        var p99Microseconds: Double
        var errors: Int
        var clientMicrosecondsPerOperation: Double
        var processes: [CPUFigures.Process]
        var serversMicrosecondsPerOperation: Double? { CPUFigures.total(processes) }
    }

    func run() async throws {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        // Pairs, grouped into rounds of the same workload when consecutive.
        var groups: [[(BenchResult, BenchResult)]] = []
        for pair in stride(from: 0, to: results.count, by: 2) {
            let first: BenchResult
            let second: BenchResult
            do {
                first = try decoder.decode(BenchResult.self, from: Data(contentsOf: URL(fileURLWithPath: results[pair])))
                second = try decoder.decode(BenchResult.self, from: Data(contentsOf: URL(fileURLWithPath: results[pair + 1])))
            } catch {
                throw ValidationError("cannot read \(results[pair]) / \(results[pair + 1]): \(error)")
            }
            if let last = groups.last?.last, last.0.parameters.workload == first.parameters.workload {
                groups[groups.count - 1].append((first, second))
            } else {
                groups.append([(first, second)])
            }
        }
        var goByWorkload: [String: [GoClientResult]] = [:]
        for path in goClient {
            do {
                let result = try decoder.decode(GoClientResult.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
                goByWorkload[result.workload, default: []].append(result)
            } catch {
                throw ValidationError("cannot read \(path): \(error)")
            }
        }
        let withGo = !goByWorkload.isEmpty
        var rows: [String] = []
        var names: (String, String) = ("A", "B")
        for rounds in groups {
            let (first, second) = rounds[0]
            names = (first.label ?? first.target, second.label ?? second.target)
            let workload = first.parameters.workload
            let go = goByWorkload[workload] ?? []
            func row(_ operation: String, _ figure: String, _ a: [Double], _ b: [Double], _ c: [Double],
                     lowerIsBetter: Bool, format: (Double) -> String) {
                let x = Self.median(a)
                let y = Self.median(b)
                let z = c.isEmpty ? nil : Self.median(c)
                let better = z.map { lowerIsBetter ? min(y, $0) : max(y, $0) } ?? y
                let goColumn = withGo ? " \(z.map(format) ?? "—") |" : ""
                rows.append("| \(workload) | \(operation) | \(figure) | \(format(x)) | \(format(y)) |\(goColumn) \(ratio(x, better)) |")
            }
            let a = rounds.map(\.0.throughputOpsPerSecond)
            let b = rounds.map(\.1.throughputOpsPerSecond)
            let c = go.map(\.throughputOpsPerSecond)
            row("all", "ops/s", a, b, c, lowerIsBetter: false, format: Format.rate)
            if rounds.count > 1 || c.count > 1 {
                let goColumn = withGo ? " \(c.isEmpty ? "—" : c.map(Format.rate).joined(separator: " / ")) |" : ""
                let ratios = rounds.indices.map { round in ratio(a[round], round < c.count ? max(b[round], c[round]) : b[round]) }
                rows.append("| \(workload) | all | ops/s by round | \(a.map(Format.rate).joined(separator: " / ")) | \(b.map(Format.rate).joined(separator: " / ")) |"
                            + "\(goColumn) \(ratios.joined(separator: " / ")) |")
            }
            let micros = { (value: Double) in String(format: "%.0f µs", value) }
            let cpuA = rounds.compactMap(\.0.cpu)
            let cpuB = rounds.compactMap(\.1.cpu)
            if !cpuA.isEmpty && !cpuB.isEmpty {
                row("all", "client CPU per op", cpuA.compactMap(\.clientMicrosecondsPerOperation), cpuB.compactMap(\.clientMicrosecondsPerOperation),
                    go.map(\.clientMicrosecondsPerOperation), lowerIsBetter: true, format: micros)
                let serversA = cpuA.compactMap(\.serversMicrosecondsPerOperation)
                let serversB = cpuB.compactMap(\.serversMicrosecondsPerOperation)
                if !serversA.isEmpty && !serversB.isEmpty {
                    row("all", "servers CPU per op", serversA, serversB, go.compactMap(\.serversMicrosecondsPerOperation),
                        lowerIsBetter: true, format: micros)
                }
            }
            // A client that met failures says so beside the figures (its throughput paid for them).
            let churn = rounds.enumerated().compactMap { round, pair -> String? in
                let notes = [pair.0.churn.map { "\(names.0): \($0)" }, pair.1.churn.map { "\(names.1): \($0)" }].compactMap { $0 }
                return notes.isEmpty ? nil : "round \(round + 1): " + notes.joined(separator: "; ")
            }
            let goErrors = go.enumerated().filter { $0.element.errors > 0 }.map { "round \($0.offset + 1): Go client: \($0.element.errors) errors" }
            if !churn.isEmpty || !goErrors.isEmpty {
                rows.append("| \(workload) | all | client failures | \((churn + goErrors).joined(separator: "; ")) | |\(withGo ? " |" : "") |")
            }
            for kind in OperationKind.allCases {
                let pairs = rounds.compactMap { round -> (OperationResult, OperationResult)? in
                    guard let x = round.0.operations[kind.rawValue], let y = round.1.operations[kind.rawValue] else { return nil }
                    return (x, y)
                }
                guard !pairs.isEmpty else { continue }
                // The Go client runs one operation per workload (put for write-only, get for c).
                let goHere = first.operations.count == 1 ? go : []
                row(kind.rawValue, "ops/s", pairs.map(\.0.throughputOpsPerSecond), pairs.map(\.1.throughputOpsPerSecond),
                    goHere.map(\.throughputOpsPerSecond), lowerIsBetter: false, format: Format.rate)
                let latency = { (value: Double) in Format.latency(UInt64(value)) }
                row(kind.rawValue, "p50", pairs.map { Double($0.0.p50Microseconds) }, pairs.map { Double($0.1.p50Microseconds) },
                    goHere.map(\.p50Microseconds), lowerIsBetter: true, format: latency)
                row(kind.rawValue, "p99", pairs.map { Double($0.0.p99Microseconds) }, pairs.map { Double($0.1.p99Microseconds) },
                    goHere.map(\.p99Microseconds), lowerIsBetter: true, format: latency)
                row(kind.rawValue, "p99.9", pairs.map { Double($0.0.p999Microseconds) }, pairs.map { Double($0.1.p999Microseconds) },
                    [], lowerIsBetter: true, format: latency)
                let errorsA = pairs.map(\.0.errors).reduce(0, +)
                let errorsB = pairs.map(\.1.errors).reduce(0, +)
                if errorsA + errorsB > 0 {
                    rows.append("| \(workload) | \(kind.rawValue) | errors | \(errorsA) | \(errorsB) |\(withGo ? " |" : "") |")
                }
            }
        }
        let goHeader = withGo ? " \(names.1) (Go client) |" : ""
        let ratioHeader = withGo ? "\(names.0)/better \(names.1)" : "\(names.0)/\(names.1)"
        let header = ["| workload | operation | figure | \(names.0) | \(names.1) |\(goHeader) \(ratioHeader) |",
                      "|---|---|---|---:|---:|\(withGo ? "---:|" : "")---:|"]
        let table = (header + rows).joined(separator: "\n")
        print(table)
        if let markdown { try (table + "\n").write(toFile: markdown, atomically: true, encoding: .utf8) }
    }

    func ratio(_ a: Double, _ b: Double) -> String { b > 0 ? String(format: "%.2f×", a / b) : "—" }

    /// The middle value (the mean of the two middle ones for an even count).
    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return 0 }
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}

/// Writes a cluster file whose regions split the benchmark's key space evenly, for starting
/// flotilla-server processes by hand or from scripts (ops/load-test).
struct MakeClusterFile: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cluster-file",
                                                    abstract: "Print a cluster file with regions split over the benchmark keys.")
    @Option(help: "Number of stores (ids 1…N, ports base-port+1…, Raft ports base-port+101…).")
    var stores = 3
    @Option(help: "Number of regions.")
    var regions = 64
    @Option(name: .customLong("base-port"), help: "Store i serves on 127.0.0.1:(base-port + i), Raft on 127.0.0.1:(base-port + 100 + i).")
    var basePort: Int
    @Option(name: .customLong("key-prefix"), help: "Prefix of the benchmark keys.")
    var keyPrefix = "user"
    @Option(name: .customLong("cluster-id"))
    var clusterID: UInt64 = 1
    @Option(name: .customLong("secret-file"), help: "The cluster secret file the stores' Raft ports prove (relative to the cluster file).")
    var secretFile: String?

    func validate() throws {
        guard (1...64).contains(stores) else { throw ValidationError("--stores must be 1 to 64") }
        guard (1...KeySpace.splitRegionsMax).contains(regions) else { throw ValidationError("--regions must be 1 to \(KeySpace.splitRegionsMax)") }
        guard (1...(65_435 - stores)).contains(basePort) else { throw ValidationError("--base-port must be 1 to \(65_435 - stores)") }
    }

    func run() throws {
        let file = ClusterFile(clusterID: clusterID,
                               stores: (1...stores).map { ClusterFile.Store(id: UInt64($0), address: "127.0.0.1:\(basePort + $0)",
                                                                                      raftAddress: "127.0.0.1:\(basePort + 100 + $0)") },
                               splitKeys: KeySpace(prefix: keyPrefix).splitKeys(regions: regions), secretFile: secretFile)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try encoder.encode(file), as: UTF8.self))
    }
}
