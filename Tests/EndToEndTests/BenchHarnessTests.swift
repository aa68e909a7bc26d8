import FlotillaCluster
import FlotillaStoreServer
import Foundation
import Testing

/// `flotilla-bench` as a user runs it: against an embedded Flotilla cluster and a local etcd.
@Suite("End to end: the bench harness", .serialized)
struct BenchHarnessTests {
    static var benchBinary: String {
        URL(fileURLWithPath: LocalCluster.serverBinary).deletingLastPathComponent().appendingPathComponent("flotilla-bench").path
    }

    /// Runs flotilla-bench; returns its exit status and output.
    func bench(_ arguments: [String]) throws -> (Int32, String) {
        try LocalCluster.runToEnd(Self.benchBinary, arguments)
    }

    /// Every operation type, so each target's five operations are exercised.
    static let everyOperation = ["--read-proportion", "1", "--update-proportion", "1", "--insert-proportion", "1",
                                 "--scan-proportion", "1", "--rmw-proportion", "1"]

    func checkResult(_ path: String, operations: Int, target: String) throws {
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        #expect(json["target"] as? String == target)
        let results = try #require(json["operations"] as? [String: [String: Any]])
        #expect(Set(results.keys) == ["read", "update", "insert", "scan", "read-modify-write"], "\(results.keys)")
        let counts = results.values.compactMap { $0["count"] as? Int }
        let errors = results.values.compactMap { $0["errors"] as? Int }
        #expect(counts.reduce(0, +) + errors.reduce(0, +) == operations, "every operation is counted once")
        #expect(errors.reduce(0, +) == 0, "\(results)")
        #expect(results.values.allSatisfy { ($0["p99Microseconds"] as? Int ?? 0) > 0 })
        let machine = try #require(json["machine"] as? [String: Any])
        #expect((machine["cores"] as? Int ?? 0) > 0)
        let parameters = try #require(json["parameters"] as? [String: Any])
        #expect(parameters["recordCount"] as? Int == 300 && parameters["concurrency"] as? Int == 8)
    }

    @Test func runsEveryOperationAgainstAnEmbeddedClusterAndWritesTheResult() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-bench-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        // This test process stands in for a server whose CPU is watched.
        let watched = ProcessInfo.processInfo.processIdentifier
        let (status, output) = try bench(["run", "--embedded", "--embedded-regions", "8", "--records", "300", "--operations", "400",
                                          "--warmup", "0", "--concurrency", "8", "--quiet", "--json", root + "/result.json",
                                          "--watch-pids", "\(watched)"] + Self.everyOperation)
        #expect(status == 0, "\(output)")
        #expect(output.contains("regions per log batch"), "store activity is reported: \(output)")
        #expect(output.contains("CPU per operation: client"), "\(output)")
        try checkResult(root + "/result.json", operations: 400, target: "flotilla")
        let result = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/result.json"))) as? [String: Any])
        let cpu = try #require(result["cpu"] as? [String: Any], "CPU per operation is recorded")
        #expect((cpu["clientMicrosecondsPerOperation"] as? Double ?? 0) > 0, "\(cpu)")
        let processes = cpu["processes"] as? [[String: Any]] ?? []
        #expect(processes.count == 1 && processes.first?["pid"] as? Int == Int(watched), "\(cpu)")
        // etcd's Go client as a third column: every ratio is against the better etcd figure.
        let throughput = try #require(result["throughputOpsPerSecond"] as? Double)
        let goClient: [String: Any] = ["tool": "etcd-load", "workload": "custom", "op": "put", "clients": 8, "measuredSeconds": 1.0,
                                       "throughputOpsPerSecond": throughput * 2, "p50Microseconds": 100.0, "p99Microseconds": 200.0,
                                       "errors": 0, "clientMicrosecondsPerOperation": 10.0, "processes": [] as [Any]]
        try JSONSerialization.data(withJSONObject: goClient).write(to: URL(fileURLWithPath: root + "/go.json"))
        let (goStatus, goTable) = try bench(["compare", root + "/result.json", root + "/result.json", "--go-client", root + "/go.json"])
        #expect(goStatus == 0 && goTable.contains("(Go client)") && goTable.contains("| custom | all | ops/s |"), "\(goTable)")
        let opsRow = goTable.split(separator: "\n").first { $0.hasPrefix("| custom | all | ops/s |") }.map(String.init) ?? ""
        #expect(opsRow.hasSuffix("0.50× |"), "the Go client's figure is twice as good, so the ratio is against it: \(opsRow)")
        let (badGoStatus, badGo) = try bench(["compare", root + "/result.json", root + "/result.json", "--go-client", "/nonexistent/go.json"])
        #expect(badGoStatus != 0 && badGo.contains("cannot read /nonexistent/go.json"), "\(badGo)")
        let (compareStatus, table) = try bench(["compare", root + "/result.json", root + "/result.json"])
        #expect(compareStatus == 0 && table.contains("1.00×"), "\(table)")
        // Three rounds of the same workload: medians, and every round's ratio listed.
        let rounds = Array(repeating: root + "/result.json", count: 6)
        let (roundsStatus, roundsTable) = try bench(["compare"] + rounds)
        #expect(roundsStatus == 0 && roundsTable.contains("ops/s by round") && roundsTable.contains("1.00× / 1.00× / 1.00×"), "\(roundsTable)")
    }

    @Test func runsTheSameWorkloadAgainstEtcd() throws {
        let etcd = "/usr/bin/etcd"
        try #require(FileManager.default.isExecutableFile(atPath: etcd), "etcd-server is installed by ops/setup (ops/test)")
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-bench-etcd-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (clientPort, peerPort) = (try LocalCluster.freePort(), try LocalCluster.freePort())
        let server = Process()
        server.executableURL = URL(fileURLWithPath: etcd)
        server.arguments = ["--name", "bench", "--data-dir", root + "/data",
                            "--listen-client-urls", "http://127.0.0.1:\(clientPort)", "--advertise-client-urls", "http://127.0.0.1:\(clientPort)",
                            "--listen-peer-urls", "http://127.0.0.1:\(peerPort)", "--initial-advertise-peer-urls", "http://127.0.0.1:\(peerPort)",
                            "--initial-cluster", "bench=http://127.0.0.1:\(peerPort)", "--log-level", "error", "--logger", "zap"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer {
            server.terminate()
            server.waitUntilExit()
        }
        let target = ["--etcd", "127.0.0.1:\(clientPort)", "--records", "300", "--concurrency", "8"]
        var loaded = (Int32(-1), "")
        for _ in 0..<50 {  // etcd takes a moment to elect itself
            loaded = try bench(["load"] + target)
            if loaded.0 == 0 { break }
            Thread.sleep(forTimeInterval: 0.2)
        }
        #expect(loaded.0 == 0 && loaded.1.contains("loaded 300 records"), "\(loaded.1)")
        let (status, output) = try bench(["run", "--operations", "400", "--warmup", "0", "--quiet", "--json", root + "/etcd.json"]
                                         + target + Self.everyOperation)
        #expect(status == 0, "\(output)")
        try checkResult(root + "/etcd.json", operations: 400, target: "etcd")
        // One HTTP/2 connection, kept for the whole run: etcd's pings do not close it.
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/etcd.json"))) as? [String: Any])
        #expect(json["connectionsOpened"] as? Int == 1 && json["totalRetries"] as? Int == 0, "\(json["connectionsOpened"] ?? "none") connections, \(json["totalRetries"] ?? "none") retries")
        #expect(output.contains("connections opened: 1 (1 kept), retries: 0"), "\(output)")
        // The old driver still runs, for comparisons in one run.
        let (oldStatus, oldOutput) = try bench(["run", "--operations", "200", "--warmup", "0", "--quiet", "--etcd-driver", "grpc-swift"] + target)
        #expect(oldStatus == 0, "\(oldOutput)")
    }

    /// The store write path in one process reports what a write costs.
    @Test func writePathReportsCostPerWrite() throws {
        let (status, output) = try bench(["write-path", "--regions", "4", "--rounds", "60"])
        #expect(status == 0, "\(output)")
        #expect(output.contains("per write: CPU") && output.contains("RocksDB records") && output.contains("messages"), "\(output)")
        #expect(!output.contains("writes failed"), "\(output)")
    }

    @Test func badArgumentsAreRejectedClearly() throws {
        let (workloadStatus, workload) = try bench(["run", "--embedded", "--workload", "z"])
        #expect(workloadStatus != 0 && workload.contains("--workload 'z' is not one of"), "\(workload)")
        let (targetStatus, target) = try bench(["run", "--workload", "a"])
        #expect(targetStatus != 0 && target.contains("choose exactly one target"), "\(target)")
        let (endpointStatus, endpoint) = try bench(["run", "--etcd", "nowhere"])
        #expect(endpointStatus != 0 && endpoint.contains("is not host:port"), "\(endpoint)")
        let (driverStatus, driver) = try bench(["run", "--etcd", "127.0.0.1:1", "--etcd-driver", "fast"])
        #expect(driverStatus != 0 && driver.contains("--etcd-driver must be one of direct, grpc-swift"), "\(driver)")
        let (connectionsStatus, connections) = try bench(["run", "--etcd", "127.0.0.1:1", "--etcd-connections", "0"])
        #expect(connectionsStatus != 0 && connections.contains("--etcd-connections must be 1 to 64"), "\(connections)")
        let (pidStatus, pid) = try bench(["run", "--embedded", "--watch-pids", "0"])
        #expect(pidStatus != 0 && pid.contains("--watch-pids: '0' is not a positive process id"), "\(pid)")
        let (pidsStatus, pids) = try bench(["run", "--embedded", "--watch-pids", Array(repeating: "1", count: 65).joined(separator: ",")])
        #expect(pidsStatus != 0 && pids.contains("at most 64"), "\(pids)")
        let (regionsStatus, regions) = try bench(["write-path", "--regions", "0"])
        #expect(regionsStatus != 0 && regions.contains("--regions must be 1 to 4096"), "\(regions)")
        let (pdStoresStatus, pdStores) = try bench(["pd-heartbeats", "--pd", "127.0.0.1:1", "--stores", "0"])
        #expect(pdStoresStatus != 0 && pdStores.contains("--stores must be 1 to 7"), "\(pdStores)")
        let (pdRateStatus, pdRate) = try bench(["pd-heartbeats", "--pd", "127.0.0.1:1", "--rate", "20000000"])
        #expect(pdRateStatus != 0 && pdRate.contains("--rate must be 0 to 10000000"), "\(pdRate)")
        let (pacedStatus, paced) = try bench(["pd-heartbeats", "--pd", "127.0.0.1:1", "--rate", "10", "--batch", "0"])
        #expect(pacedStatus != 0 && paced.contains("--rate needs --batch > 0"), "\(paced)")
        let (pdPIDStatus, pdPID) = try bench(["pd-heartbeats", "--pd", "127.0.0.1:1", "--watch-pids", "x"])
        #expect(pdPIDStatus != 0 && pdPID.contains("'x' is not a positive process id"), "\(pdPID)")
        let (pairStatus, pair) = try bench(["compare", "one.json"])
        #expect(pairStatus != 0 && pair.contains("in pairs"), "\(pair)")
        let (missingStatus, missing) = try bench(["compare", "/nonexistent/a.json", "/nonexistent/b.json"])
        #expect(missingStatus != 0 && missing.contains("cannot read /nonexistent/a.json"), "\(missing)")
        // Numbers that once trapped a conversion: a huge duration, an infinite rate.
        let (durationStatus, duration) = try bench(["run", "--embedded", "--duration", "1e300"])
        #expect(durationStatus != 0 && duration.contains("--duration must be above 0 and at most 86400"), "\(duration)")
        let (rateStatus, rate) = try bench(["run", "--embedded", "--rate", "inf"])
        #expect(rateStatus != 0 && rate.contains("--rate"), "\(rate)")
        let (timeoutStatus, timeout) = try bench(["run", "--embedded", "--timeout-ms", "99999999999"])
        #expect(timeoutStatus != 0 && timeout.contains("--timeout-ms"), "\(timeout)")
        let (storesStatus, stores) = try bench(["cluster-file", "--stores", "0", "--base-port", "20000"])
        #expect(storesStatus != 0 && stores.contains("--stores must be 1 to 64"), "\(stores)")
        let (clusterStatus, cluster) = try bench(["cluster-file", "--stores", "3", "--regions", "4", "--base-port", "20000",
                                                  "--secret-file", "cluster.secret"])
        let file = try JSONDecoder().decode(ClusterFile.self, from: Data(cluster.utf8))
        #expect(file.secretFile == "cluster.secret", "the cluster file names the secret file")
        #expect(clusterStatus == 0 && file.stores.count == 3 && file.splitKeys.count == 3, "\(cluster)")
        try file.validate()
        // Past 65,536 regions the split keys take 8 hex digits; they still ascend.
        let (largeStatus, large) = try bench(["cluster-file", "--stores", "3", "--regions", "100000", "--base-port", "20000"])
        let largeFile = try JSONDecoder().decode(ClusterFile.self, from: Data(large.utf8))
        #expect(largeStatus == 0 && largeFile.splitKeys.count == 99_999 && largeFile.splitKeys.first == "user0000a7c5")
        #expect(zip(largeFile.splitKeys, largeFile.splitKeys.dropFirst()).allSatisfy { $0 < $1 }, "split keys ascend")
        try largeFile.validate()
        let (tooManyStatus, tooMany) = try bench(["cluster-file", "--regions", "1000001", "--base-port", "20000"])
        #expect(tooManyStatus != 0 && tooMany.contains("--regions must be 1 to 1000000"), "\(tooMany)")
        // ops/load-test refuses bad arguments before it installs, builds or starts anything.
        let loadTest = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("ops/load-test").path
        let (roundsStatus, rounds) = try LocalCluster.runToEnd("/bin/bash", [loadTest, "--rounds", "0"])
        #expect(roundsStatus == 2 && rounds.contains("--rounds must be a positive integer, got '0'"), "\(rounds)")
        let idleRegions = URL(fileURLWithPath: loadTest).deletingLastPathComponent().appendingPathComponent("idle-regions").path
        let (hogStatus, hog) = try LocalCluster.runToEnd("/bin/bash", [idleRegions, "--cpu-hog", "99"])
        #expect(hogStatus == 2 && hog.contains("--cpu-hog must be 0..16"), "\(hog)")
        let (unknownStatus, unknown) = try LocalCluster.runToEnd("/bin/bash", [loadTest, "--fast"])
        #expect(unknownStatus == 2 && unknown.contains("unknown argument '--fast'"), "\(unknown)")
        // ops/fsync-probe (run before every load-test round) bounds its writers and time.
        let probe = URL(fileURLWithPath: loadTest).deletingLastPathComponent().appendingPathComponent("fsync-probe").path
        for arguments in [["--writers", "0"], ["--writers", "65"], ["--seconds", "nan"], ["--seconds", "1e9"]] {
            let (probeStatus, probeOutput) = try LocalCluster.runToEnd("/usr/bin/python3", [probe] + arguments)
            #expect(probeStatus == 2 && probeOutput.contains("--writers must be 1 to 64 and --seconds 0.1 to 600"), "\(arguments): \(probeOutput)")
        }
        let (probeStatus, probeOutput) = try LocalCluster.runToEnd("/usr/bin/python3", [probe, "--seconds", "0.2", "--writers", "1"])
        #expect(probeStatus == 0 && probeOutput.contains("fdatasync p50"), "\(probeOutput)")
    }
}
