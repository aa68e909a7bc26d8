import Foundation

/// Why no free loopback port could be had.
public struct LoopbackPortError: Error, CustomStringConvertible {
    public let description: String
}

/// A TCP port the kernel just handed out on 127.0.0.1, released again for a server to bind
/// (local clusters of real processes: tests, `flotilla-bench --embedded`).
public func freeLoopbackPort() throws(LoopbackPortError) -> Int {
    let socketFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard socketFD >= 0 else { throw LoopbackPortError(description: "socket() failed: \(String(cString: strerror(errno)))") }
    defer { close(socketFD) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socketFD, $0, length) }
    }
    guard bound == 0 else { throw LoopbackPortError(description: "bind(127.0.0.1:0) failed: \(String(cString: strerror(errno)))") }
    _ = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socketFD, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}
