// swift-tools-version: 6.1
// Flotilla: a sharded multi-Raft key-value storage engine.
// Module dependencies point one way, downwards (see docs/architecture.md).
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

let package = Package(
    name: "Flotilla",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RocksDB", targets: ["RocksDB"]),
        .library(name: "Raft", targets: ["Raft"]),
        .library(name: "RaftStore", targets: ["RaftStore"]),
        .executable(name: "flotillactl", targets: ["flotillactl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
    ],
    targets: [
        // System library over Debian's librocksdb-dev (rocksdb/c.h).
        .systemLibrary(
            name: "CRocksDB",
            pkgConfig: "rocksdb",
            providers: [.apt(["librocksdb-dev"])]
        ),
        // Safe Swift engine API over the C API.
        .target(
            name: "RocksDB",
            dependencies: ["CRocksDB"],
            swiftSettings: strictSettings
        ),
        // The consensus algorithm as a pure, deterministic state machine. Imports nothing.
        .target(
            name: "Raft",
            swiftSettings: strictSettings
        ),
        // One node's multi-Raft engine: regions' Raft state in the shared RocksDB, group commit.
        .target(
            name: "RaftStore",
            dependencies: ["Raft", "RocksDB"],
            swiftSettings: strictSettings
        ),
        // Admin CLI. Today: the storage engine self-check.
        .executableTarget(
            name: "flotillactl",
            dependencies: [
                "RocksDB",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        // Child process for the storage crash test: writes synced batches and reports each
        // acknowledged one on stdout until it is killed.
        .target(
            name: "CrashWorkload",
            dependencies: ["RocksDB"],
            path: "Tests/CrashWorkload",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "RocksDBCrashWriter",
            dependencies: ["RocksDB", "CrashWorkload"],
            path: "Tests/RocksDBCrashWriter",
            swiftSettings: strictSettings
        ),
        // Deterministic simulator of a whole Raft group (test support).
        .target(
            name: "RaftSimulation",
            dependencies: ["Raft"],
            path: "Tests/RaftSimulation",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "RaftTests",
            dependencies: ["Raft", "RaftSimulation"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "RaftStoreTests",
            dependencies: ["RaftStore", "Raft", "RocksDB"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "RocksDBTests",
            dependencies: ["RocksDB", "CrashWorkload", "RocksDBCrashWriter", "flotillactl"],
            swiftSettings: strictSettings
        ),
    ]
)
