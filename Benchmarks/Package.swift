// swift-tools-version: 6.1
// Micro-benchmarks (ordo-one/benchmark), kept in their own package so the test build does not
// compile the benchmark tool chain. Run: cd Benchmarks && swift package benchmark
import Foundation
import PackageDescription

// A local path dependency is identified by its directory's name, which differs between clones
// (CI checks out into a folder of its own): derive it instead of spelling it.
let flotillaIdentity = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "FlotillaBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "RocksDBBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "RocksDB", package: flotillaIdentity),
            ],
            path: "Benchmarks/RocksDBBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "RaftBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Raft", package: flotillaIdentity),
            ],
            path: "Benchmarks/RaftBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
