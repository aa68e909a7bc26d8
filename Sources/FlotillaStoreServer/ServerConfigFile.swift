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

    /// The largest config file read, in bytes.
    static let fileBytesMax = 1 << 20

    /// Reads and checks the file at `path`.
    public static func load(path: String) throws(ConfigError) -> ServerConfigFile {
        let (text, base) = try readText(path: path)
        return try parse(text, source: path, relativeTo: base)
    }

    /// A config file's text (bounded, UTF-8) and the directory its relative paths start from.
    static func readText(path: String) throws(ConfigError) -> (text: String, base: URL) {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw ConfigError("cannot read config file \(path)") }
        defer { try? handle.close() }
        let data: Data
        do { data = try handle.read(upToCount: fileBytesMax + 1) ?? Data() } catch {
            throw ConfigError("cannot read config file \(path): \(error.localizedDescription)")
        }
        guard data.count <= fileBytesMax else { throw ConfigError("config file \(path) is larger than \(fileBytesMax) bytes") }
        guard let text = String(data: data, encoding: .utf8) else { throw ConfigError("config file \(path) is not UTF-8") }
        return (text, URL(fileURLWithPath: path).deletingLastPathComponent())
    }

    /// Parses TOML text into its table; `source` names it in errors.
    static func table(_ text: String, source: String) throws(ConfigError) -> TOMLTable {
        if let problem = TOMLLexicalCheck.problem(in: text) {
            throw ConfigError("config file \(source) is not valid TOML: \(problem)")
        }
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch let error as TOMLParseError {
            throw ConfigError("config file \(source) is not valid TOML: \(error.description) at line \(error.source.begin.line), column \(error.source.begin.column)")
        } catch {
            throw ConfigError("config file \(source) is not valid TOML: \(error)")
        }
        return table
    }

    /// Parses TOML text; `source` names it in errors, relative paths resolve against `base`.
    public static func parse(_ text: String, source: String, relativeTo base: URL? = nil) throws(ConfigError) -> ServerConfigFile {
        let table = try table(text, source: source)
        var reader = Reader(source: source)
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

    /// Reads typed values and remembers which keys were read, to reject the others.
    struct Reader {
        let source: String
        var known: [String: Set<String>] = [:]

        private func name(_ key: String, _ section: String?) -> String {
            section.map { "'\(key)' in [\($0)]" } ?? "'\(key)'"
        }

        private mutating func value(_ table: TOMLTable, _ key: String, section: String?) -> TOMLValueConvertible? {
            known[section ?? "", default: []].insert(key)
            return table[key]
        }

        mutating func integer(_ table: TOMLTable, _ key: String, section: String? = nil) throws(ConfigError) -> Int? {
            guard let value = value(table, key, section: section) else { return nil }
            guard let integer = value.int else { throw ConfigError("\(name(key, section)) in \(source) must be an integer") }
            return integer
        }

        mutating func unsigned(_ table: TOMLTable, _ key: String, section: String? = nil) throws(ConfigError) -> UInt64? {
            guard let integer = try integer(table, key, section: section) else { return nil }
            guard integer >= 0 else { throw ConfigError("\(name(key, section)) in \(source) must not be negative") }
            return UInt64(integer)
        }

        mutating func string(_ table: TOMLTable, _ key: String, section: String? = nil) throws(ConfigError) -> String? {
            guard let value = value(table, key, section: section) else { return nil }
            guard let string = value.string else { throw ConfigError("\(name(key, section)) in \(source) must be a string") }
            return string
        }

        mutating func path(_ table: TOMLTable, _ key: String, base: URL?) throws(ConfigError) -> String? {
            guard let path = try string(table, key) else { return nil }
            guard !path.hasPrefix("/"), let base else { return path }
            return base.appendingPathComponent(path).path
        }

        mutating func section(_ table: TOMLTable, _ key: String) throws(ConfigError) -> TOMLTable? {
            guard let value = value(table, key, section: nil) else { return nil }
            guard let section = value.table else { throw ConfigError("'\(key)' in \(source) must be a table ([\(key)])") }
            return section
        }

        func rejectUnknown(_ table: TOMLTable, section: String?) throws(ConfigError) {
            let allowed = known[section ?? "", default: []]
            if let unknown = table.keys.sorted().first(where: { !allowed.contains($0) }) {
                let known = allowed.sorted().joined(separator: ", ")
                throw ConfigError("unknown key \(name(unknown, section)) in \(source) (known: \(known))")
            }
        }
    }
}
