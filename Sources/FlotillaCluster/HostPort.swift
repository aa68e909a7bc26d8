/// host:port, parsed once for every program (server, PD, client, flotillactl, bench): a
/// non-empty host, then a decimal port of at most 5 digits, the whole at most `textBytesMax`
/// bytes. The host is kept as written (a name or an address; resolving is the caller's).
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    /// A 253-byte DNS name (or a bracketed IPv6 address), ':' and 5 digits, with room to spare.
    public static let textBytesMax = 320
    public var host: String
    /// 0 only where a listener asks the kernel to pick (`init?(_:)`); dialed ones are 1...65535.
    public var port: Int

    /// Parses `text` with a port in 0...65535 (0: a listener's ephemeral port).
    public init?(_ text: String) {
        guard text.utf8.count <= Self.textBytesMax, let colon = text.lastIndex(of: ":"), colon != text.startIndex else { return nil }
        let digits = text[text.index(after: colon)...]
        guard (1...5).contains(digits.count), digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = Int(digits), (0...65_535).contains(port) else { return nil }
        host = String(text[..<colon])
        self.port = port
    }

    /// Parses an address to connect to: as `init?(_:)`, with a port in 1...65535.
    public init?(dialable text: String) {
        guard let parsed = HostPort(text), parsed.port != 0 else { return nil }
        self = parsed
    }

    public var description: String { "\(host):\(port)" }
}
