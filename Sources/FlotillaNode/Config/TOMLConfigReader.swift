import FlotillaCluster
import Foundation
import TOMLKit

/// Reading a process's TOML config file (the store's and PD's): bounded, UTF-8, checked
/// lexically before TOMLKit parses it, every error a `ConfigError` naming the file.
package enum TOMLConfigFile {
    /// The largest config file read, in bytes.
    static let fileBytesMax = 1 << 20

    /// A config file's text (bounded, UTF-8) and the directory its relative paths start from.
    package static func readText(path: String) throws(ConfigError) -> (text: String, base: URL) {
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
    package static func table(_ text: String, source: String) throws(ConfigError) -> TOMLTable {
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
}

/// Reads typed values and remembers which keys were read, to reject the others.
package struct TOMLConfigReader {
    package init(source: String) { self.source = source }

    package let source: String
    package var known: [String: Set<String>] = [:]

    private func name(_ key: String, _ section: String?) -> String {
        section.map { "'\(key)' in [\($0)]" } ?? "'\(key)'"
    }

    private mutating func value(_ table: TOMLTable, _ key: String, section: String?) -> TOMLValueConvertible? {
        known[section ?? "", default: []].insert(key)
        return table[key]
    }

    package mutating func integer(_ table: TOMLTable, _ key: String, section: String? = nil) throws(ConfigError) -> Int? {
        guard let value = value(table, key, section: section) else { return nil }
        guard let integer = value.int else { throw ConfigError("\(name(key, section)) in \(source) must be an integer") }
        return integer
    }

    package mutating func unsigned(_ table: TOMLTable, _ key: String, section: String? = nil) throws(ConfigError) -> UInt64? {
        guard let integer = try integer(table, key, section: section) else { return nil }
        guard integer >= 0 else { throw ConfigError("\(name(key, section)) in \(source) must not be negative") }
        return UInt64(integer)
    }

    package mutating func string(_ table: TOMLTable, _ key: String, section: String? = nil) throws(ConfigError) -> String? {
        guard let value = value(table, key, section: section) else { return nil }
        guard let string = value.string else { throw ConfigError("\(name(key, section)) in \(source) must be a string") }
        return string
    }

    package mutating func path(_ table: TOMLTable, _ key: String, base: URL?) throws(ConfigError) -> String? {
        guard let path = try string(table, key) else { return nil }
        guard !path.hasPrefix("/"), let base else { return path }
        return base.appendingPathComponent(path).path
    }

    package mutating func section(_ table: TOMLTable, _ key: String) throws(ConfigError) -> TOMLTable? {
        guard let value = value(table, key, section: nil) else { return nil }
        guard let section = value.table else { throw ConfigError("'\(key)' in \(source) must be a table ([\(key)])") }
        return section
    }

    package func rejectUnknown(_ table: TOMLTable, section: String?) throws(ConfigError) {
        let allowed = known[section ?? "", default: []]
        if let unknown = table.keys.sorted().first(where: { !allowed.contains($0) }) {
            let known = allowed.sorted().joined(separator: ", ")
            throw ConfigError("unknown key \(name(unknown, section)) in \(source) (known: \(known))")
        }
    }
}
