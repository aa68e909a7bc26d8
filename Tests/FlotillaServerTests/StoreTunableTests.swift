import FlotillaCluster
@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import Foundation
import Testing

/// Store settings are described once (`StoreTunable.all`): the config file, the flags and the
/// checks read the same table, and the README's sample file is one the store accepts.
@Suite("Store tunables")
struct StoreTunableTests {
    @Test func everyTunableIsReadFromItsPlaceInTheFileAndLandsInTheSettings() throws {
        #expect(Set(StoreTunable.all.map(\.flag)).count == StoreTunable.all.count, "flags are unique")
        for tunable in StoreTunable.all {
            #expect(tunable.range.contains(tunable.defaultValue), "\(tunable.flag)")
            // A value other than the default, at the top of its range.
            let value = tunable.range.upperBound
            let text = tunable.section.map { "[\($0)]\n\(tunable.key) = \(value)\n" } ?? "\(tunable.key) = \(value)\n"
            let file = try ServerConfigFile.parse(text, source: "t.toml")
            #expect(file.tunables == [tunable.flag: value], "\(tunable.flag): \(file.tunables)")
            var settings = ServerSettings.defaults
            try tunable.apply(value, to: &settings)
            #expect(tunable.read(settings) == value)
            #expect(StoreTunable.all.filter { $0.flag != tunable.flag }.allSatisfy { $0.read(settings) == $0.defaultValue },
                    "\(tunable.flag) changed another setting")
        }
    }

    @Test func aValueOutOfRangeIsRefusedNamingTheFlagTheKeyAndTheBounds() {
        var settings = ServerSettings.defaults
        do {
            try StoreTunable.logGCSizeThresholdBytes.apply(100, to: &settings)
            Issue.record("accepted")
        } catch {
            #expect(error.description == "--log-gc-size-threshold-bytes ('size-threshold-bytes' in [raft-log-gc] in the config file) must be between 4096 and 1099511627776, got 100")
        }
        #expect(settings.store.logGCSizeThresholdBytes == StoreTunable.logGCSizeThresholdBytes.defaultValue)
        #expect(throws: ConfigError.self) { try ServerConfigFile.parse("[limits]\nmax-pending = 3\n", source: "t.toml") }
    }

    /// The sleep settings are bounded: a store presumed dead sooner than two of its heartbeat
    /// intervals (4 ticks) would wake everything on one lost frame; negative ticks mean nothing.
    @Test func sleepSettingsOutOfRangeAreRefused() {
        var settings = ServerSettings.defaults
        for (tunable, value) in [(StoreTunable.storeDeadAfterTicks, 3), (.storeDeadAfterTicks, 1_000_001),
                                 (.regionSleepAfterQuietTicks, -1), (.regionSleepAfterQuietTicks, 1_000_001)] {
            #expect(throws: ConfigError.self, "\(tunable.flag) \(value)") { try tunable.apply(value, to: &settings) }
        }
        #expect(settings.store.storeDeadAfterTicks == 20 && settings.store.regionSleepAfterQuietTicks == 20, "nothing changed")
    }

    @Test func theReadmeSampleConfigIsAccepted() throws {
        let readme = try String(contentsOfFile: #filePath.replacingOccurrences(of: "Tests/FlotillaServerTests/StoreTunableTests.swift", with: "README.md"), encoding: .utf8)
        let sample = try #require(readme.components(separatedBy: "```toml\n").dropFirst().first?.components(separatedBy: "```").first)
        let file = try ServerConfigFile.parse(sample, source: "README.md")
        #expect(file.tunables.count >= 7, "\(file.tunables)")
        for tunable in StoreTunable.all { if let value = file.tunables[tunable.flag] { #expect(throws: Never.self) { try tunable.check(value) } } }
    }
}
