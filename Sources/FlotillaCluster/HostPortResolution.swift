import Foundation

extension HostPort {
    /// An IPv4 address for this host:port (a literal, or a name resolved once, at start-up).
    public func resolveIPv4() throws(ConfigError) -> sockaddr_in {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var results: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &results)
        defer { if let results { freeaddrinfo(results) } }
        guard status == 0, let first = results, let socketAddress = first.pointee.ai_addr else {
            throw ConfigError("cannot resolve \(self): \(String(cString: gai_strerror(status)))")
        }
        return socketAddress.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
    }
}
