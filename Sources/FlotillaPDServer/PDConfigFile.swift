import FlotillaCluster
import FlotillaNode
import Foundation

/// A PD member's TOML configuration file. Every setting may also be given as a flag, which
/// wins. Unknown keys and wrongly typed values are errors.
///
///     name = "pd1"
///     data-dir = "pd1"                              # relative to this file
///     client-address = "127.0.0.1:2379"
///     peer-address = "127.0.0.1:2380"
///     initial-members = "pd1=127.0.0.1:2380,pd2=127.0.0.1:2382,pd3=127.0.0.1:2384"
///     tick-interval-ms = 100
///     election-timeout-ticks = 10
///     log-level = "info"
///
///     [schedule]
///     region-heartbeat-interval-ms = 10000
///     operator-step-timeout-ms = 60000
public struct PDConfigFile: Sendable, Equatable {
    public var name: String?
    public var dataDirectory: String?
    public var clientAddress: String?
    public var peerAddress: String?
    public var initialMembers: String?
    public var tickIntervalMilliseconds: Int?
    public var electionTimeoutTicks: Int?
    public var logLevel: String?
    public var regionHeartbeatIntervalMilliseconds: UInt64?
    public var operatorStepTimeoutMilliseconds: UInt64?

    public init() {}

    public static func load(path: String) throws(ConfigError) -> PDConfigFile {
        let (text, base) = try TOMLConfigFile.readText(path: path)
        return try parse(text, source: path, relativeTo: base)
    }

    public static func parse(_ text: String, source: String, relativeTo base: URL? = nil) throws(ConfigError) -> PDConfigFile {
        let table = try TOMLConfigFile.table(text, source: source)
        var reader = TOMLConfigReader(source: source)
        var config = PDConfigFile()
        config.name = try reader.string(table, "name")
        config.dataDirectory = try reader.path(table, "data-dir", base: base)
        config.clientAddress = try reader.string(table, "client-address")
        config.peerAddress = try reader.string(table, "peer-address")
        config.initialMembers = try reader.string(table, "initial-members")
        config.tickIntervalMilliseconds = try reader.integer(table, "tick-interval-ms")
        config.electionTimeoutTicks = try reader.integer(table, "election-timeout-ticks")
        config.logLevel = try reader.string(table, "log-level")
        if let schedule = try reader.section(table, "schedule") {
            config.regionHeartbeatIntervalMilliseconds = try reader.unsigned(schedule, "region-heartbeat-interval-ms", section: "schedule")
            config.operatorStepTimeoutMilliseconds = try reader.unsigned(schedule, "operator-step-timeout-ms", section: "schedule")
            try reader.rejectUnknown(schedule, section: "schedule")
        }
        try reader.rejectUnknown(table, section: nil)
        return config
    }
}
