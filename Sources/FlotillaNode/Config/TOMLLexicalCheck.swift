/// What the TOML parser (toml++ inside TOMLKit) must not see: it asserts — aborting the process
/// in a debug build — on some malformed input, such as a non-ASCII character or a `{` in a table
/// header (found by `InputFuzzTests`). A store's config needs only a small part of TOML, so
/// config text is checked against that part first, line by line: blank lines and comments,
/// `[table]` headers and `key = value` lines with bare (ASCII letter, digit, `_`, `-`, `.`)
/// names, one-line values; no control characters but tab and CR anywhere, non-ASCII only inside
/// strings and comments. toml++ then parses the values.
enum TOMLLexicalCheck {
    /// The first problem, with its line, or nil.
    package static func problem(in text: String) -> String? {
        for (offset, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if let problem = problem(inLine: Array(line.utf8)) { return "\(problem) on line \(offset + 1)" }
        }
        return nil
    }

    private static func isBareKeyByte(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
            || byte == UInt8(ascii: ".")
    }

    private static func problem(inLine line: [UInt8]) -> String? {
        let quote = UInt8(ascii: "\""), apostrophe = UInt8(ascii: "'"), backslash = UInt8(ascii: "\\")
        // The line without its comment, checking characters on the way.
        var code: [UInt8] = []
        var inString: UInt8? = nil
        var index = 0
        while index < line.count {
            let byte = line[index]
            if (byte < 0x20 && byte != 0x09 && byte != 0x0D) || byte == 0x7F { return "control character 0x\(String(byte, radix: 16))" }
            if let delimiter = inString {
                if delimiter == quote && byte == backslash {
                    code.append(byte)
                    index += 1
                    if index < line.count { code.append(line[index]) }
                    index += 1
                    continue
                }
                if byte == delimiter { inString = nil }
            } else {
                if byte == UInt8(ascii: "#") { break }
                if byte >= 0x80 { return "a non-ASCII character outside a string or comment" }
                if byte == quote || byte == apostrophe {
                    if index + 2 < line.count && line[index + 1] == byte && line[index + 2] == byte {
                        return "multi-line strings are not used in config files"
                    }
                    inString = byte
                }
            }
            code.append(byte)
            index += 1
        }
        if inString != nil { return "an unterminated string" }
        let trimmed = code.drop { $0 == 0x20 || $0 == 0x09 }.reversed().drop { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }.reversed()
        guard let first = trimmed.first else { return nil }
        if first == UInt8(ascii: "[") {
            guard trimmed.last == UInt8(ascii: "]"), trimmed.count > 2 else { return "a malformed table header" }
            let name = trimmed.dropFirst().dropLast().filter { $0 != 0x20 && $0 != 0x09 }
            guard !name.isEmpty, name.allSatisfy(isBareKeyByte) else { return "a table name other than letters, digits, _, - and ." }
            return nil
        }
        guard let equals = trimmed.firstIndex(of: UInt8(ascii: "=")) else { return "a line that is neither a table nor key = value" }
        let key = trimmed[..<equals].filter { $0 != 0x20 && $0 != 0x09 }
        guard !key.isEmpty, key.allSatisfy(isBareKeyByte) else { return "a key other than letters, digits, _, - and ." }
        guard trimmed[trimmed.index(after: equals)...].contains(where: { $0 != 0x20 && $0 != 0x09 }) else { return "a key without a value" }
        return nil
    }
}
