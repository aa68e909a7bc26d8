import FlotillaCluster
import FlotillaNode
import FlotillaPDServer
import FlotillaStoreServer
import Foundation
import Testing

@Suite("PD member configuration: TOML file and member list")
struct PDConfigTests {
    @Test func aValidFileIsReadAndRelativePathsResolve() throws {
        let text = """
            name = "pd1"
            data-dir = "pd1"
            client-address = "127.0.0.1:2379"
            peer-address = "127.0.0.1:2380"
            initial-members = "pd1=127.0.0.1:2380,pd2=127.0.0.1:2382"
            tick-interval-ms = 50

            [schedule]
            region-heartbeat-interval-ms = 2000
            operator-step-timeout-ms = 30000
            """
        let config = try PDConfigFile.parse(text, source: "pd.toml", relativeTo: URL(fileURLWithPath: "/etc/flotilla"))
        #expect(config.name == "pd1" && config.dataDirectory == "/etc/flotilla/pd1")
        #expect(config.tickIntervalMilliseconds == 50 && config.regionHeartbeatIntervalMilliseconds == 2_000)
        #expect(config.operatorStepTimeoutMilliseconds == 30_000)
    }

    @Test func typosWrongTypesAndNegativeNumbersAreNamed() {
        let cases: [(String, String)] = [
            ("nmae = \"pd1\"", "unknown key 'nmae'"),
            ("name = 1", "'name'"),
            ("[schedule]\nregion-heartbeat-interval = 5", "unknown key 'region-heartbeat-interval' in [schedule]"),
            ("[schedule]\noperator-step-timeout-ms = -1", "must not be negative"),
            ("schedule = 3", "must be a table"),
            ("name = \"pd1", "not valid TOML"),
        ]
        for (text, expected) in cases {
            do {
                _ = try PDConfigFile.parse(text, source: "pd.toml")
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.description.contains(expected), "\(text): \(error.description)")
            }
        }
    }

    @Test func memberListsAreCheckedWhole() throws {
        #expect(try PDSettings.parseMembers("pd1=127.0.0.1:2380,pd2=127.0.0.1:2382").map(\.name) == ["pd1", "pd2"])
        let bad = ["", "pd1", "pd1=", "=127.0.0.1:1", "pd1=host", "pd1=h:1,pd1=h:2", "pd1=h:1,pd2=h:1",
                   (1...8).map { "p\($0)=h:\($0)" }.joined(separator: ","), String(repeating: "n", count: 65) + "=h:1"]
        for text in bad {
            #expect(throws: ConfigError.self, "\(text)") { try PDSettings.parseMembers(text) }
        }
    }
}
