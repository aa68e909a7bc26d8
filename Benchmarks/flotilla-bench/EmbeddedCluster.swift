import FlotillaCluster
import Foundation

/// A local Flotilla cluster of real `flotilla-server` processes on loopback, started for one
/// benchmark run and stopped (SIGTERM) after it; its data lives in a temporary directory that
/// is removed.
final class EmbeddedCluster: @unchecked Sendable {
    let cluster: ClusterFile
    let root: String
    private var processes: [Process] = []

    init(stores: Int, splitKeys: [String], serverBinary: String?) throws {
        let binary = serverBinary ?? URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
            .deletingLastPathComponent().appendingPathComponent("flotilla-server").path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw EmbeddedClusterError("no flotilla-server at \(binary); build it (swift build -c release --product flotilla-server) or pass --server-binary")
        }
        root = FileManager.default.temporaryDirectory.appendingPathComponent("flotilla-bench-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let ports = try (0..<stores).map { _ in (try freeLoopbackPort(), try freeLoopbackPort()) }
        try ClusterFile.writeNewSecret(to: root + "/cluster.secret")
        cluster = ClusterFile(clusterID: 7, stores: (0..<stores).map {
                                  ClusterFile.Store(id: UInt64($0 + 1), address: "127.0.0.1:\(ports[$0].0)", raftAddress: "127.0.0.1:\(ports[$0].1)")
                              },
                              splitKeys: splitKeys, secretFile: "cluster.secret")
        let clusterPath = root + "/cluster.json"
        try JSONEncoder().encode(cluster).write(to: URL(fileURLWithPath: clusterPath))
        for store in cluster.stores {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["--store-id", "\(store.id)", "--cluster-file", clusterPath, "--data-dir", root + "/store-\(store.id)",
                                 "--log-level", "warning"]
            let log = root + "/store-\(store.id).log"
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            process.standardOutput = handle
            process.standardError = handle
            try process.run()
            processes.append(process)
        }
    }

    /// Waits until a write to every region succeeds (every region elected a leader).
    func waitUntilServing(target: any BenchTarget) async throws {
        let bounds = [""] + cluster.splitKeys
        for bound in bounds {
            try await target.write(Data((bound + "~probe").utf8), Data("1".utf8))
        }
    }

    /// Stops the stores (SIGTERM) and waits for them without blocking a thread.
    func stop() async {
        for process in processes where process.isRunning {
            kill(process.processIdentifier, SIGTERM)
        }
        while processes.contains(where: \.isRunning) { try? await Task.sleep(for: .milliseconds(20)) }
        processes = []
        try? FileManager.default.removeItem(atPath: root)
    }
}

struct EmbeddedClusterError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
