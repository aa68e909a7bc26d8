import FlotillaCluster
import FlotillaNode
import Foundation
import TOMLKit

/// A store's TOML configuration file. Every setting may also be given as a flag, which wins.
/// Unknown keys and wrongly typed values are errors (a typo must not be silently ignored).
///
///     pd = "127.0.0.1:2379,127.0.0.1:2381"  # join through PD (or store-id + cluster-file)
///     address = "127.0.0.1:20160"
///     raft-address = "127.0.0.1:20161"
///     store-id = 1                       # a static cluster: this store's id
///     cluster-file = "cluster.json"      # relative to this file
///     data-dir = "/var/lib/flotilla/1"   # relative to this file
///     tick-interval-ms = 100
///     election-timeout-ticks = 10
///     log-level = "info"
///
///     [raft-log-gc]
///     count-threshold = 10000
///     size-threshold-bytes = 33554432
///
///     [limits]
///     max-pending-requests = 16384
///     snapshot-sends-max = 4
///     disk-reserve-mb = 128
///
/// The numeric keys are `StoreTunable.all` (with `stale-replica-seconds` and
/// `region-heartbeat-interval-ms` at the top level, read when joining through PD).
public struct ServerConfigFile: Sendable, Equatable {
    public var storeID: UInt64?
    public var clusterFile: String?
    /// PD endpoints, comma-separated; with `address` and `raft-address` the store joins through PD.
    public var pdEndpoints: String?
    public var address: String?
    public var raftAddress: String?
    public var dataDirectory: String?
    public var logLevel: String?
    /// The numeric settings the file gives, by `StoreTunable.flag` (read from each tunable's
    /// section and key; range-checked when applied).
    public var tunables: [String: Int] = [:]

    public init() {}

    /// Reads and checks the file at `path`.
    public static func load(path: String) throws(ConfigError) -> ServerConfigFile {
        let (text, base) = try TOMLConfigFile.readText(path: path)
        return try parse(text, source: path, relativeTo: base)
    }

    /// Parses TOML text; `source` names it in errors, relative paths resolve against `base`.
    public static func parse(_ text: String, source: String, relativeTo base: URL? = nil) throws(ConfigError) -> ServerConfigFile {
        let table = try TOMLConfigFile.table(text, source: source)
        var reader = TOMLConfigReader(source: source)
        var config = ServerConfigFile()
        config.storeID = try reader.unsigned(table, "store-id")
        config.clusterFile = try reader.path(table, "cluster-file", base: base)
        config.pdEndpoints = try reader.string(table, "pd")
        config.address = try reader.string(table, "address")
        config.raftAddress = try reader.string(table, "raft-address")
        config.dataDirectory = try reader.path(table, "data-dir", base: base)
        config.logLevel = try reader.string(table, "log-level")
        let sections = Set(StoreTunable.all.compactMap(\.section)).sorted()
        var tables: [String?: TOMLTable] = [nil: table]
        for section in sections { tables[section] = try reader.section(table, section) }
        for tunable in StoreTunable.all {
            guard let holder = tables[tunable.section] ?? nil else { continue }
            if let value = try reader.integer(holder, tunable.key, section: tunable.section) { config.tunables[tunable.flag] = value }
        }
        for section in sections { if let holder = tables[section] ?? nil { try reader.rejectUnknown(holder, section: section) } }
        try reader.rejectUnknown(table, section: nil)
        return config
    }
}
