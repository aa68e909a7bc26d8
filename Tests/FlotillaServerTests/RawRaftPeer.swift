import FlotillaCluster
@testable import FlotillaNode
@testable import FlotillaPDServer
@testable import FlotillaStoreServer
import FlotillaProto
import Foundation

/// A raw TCP client of a store's Raft port, for tests that speak the handshake and frames by
/// hand (or refuse to). Blocking socket with short timeouts; the test pumps the transport.
final class RawRaftPeer {
    let fd: Int32

    init(port: Int) throws {
        fd = try connectLoopback(port: port, receiveTimeoutMicroseconds: 5_000)
    }

    init(fd: Int32) {
        self.fd = fd
        var timeout = timeval(tv_sec: 0, tv_usec: 5_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func write(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Reads exactly `count` bytes (fewer if the peer closes or 3 s pass), pumping meanwhile.
    func read(_ count: Int, pump: () -> Void) -> [UInt8] {
        var result: [UInt8] = []
        let deadline = Date().addingTimeInterval(3)
        var scratch = [UInt8](repeating: 0, count: count)
        while result.count < count && Date() < deadline {
            pump()
            let got = scratch.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, count - result.count) }
            if got == 0 { break }
            if got > 0 { result += scratch[0..<got] }
        }
        return result
    }

    /// Whether the other end closes within `seconds`.
    func waitUntilClosed(seconds: Double = 3, pump: () -> Void) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        var scratch = [UInt8](repeating: 0, count: 256)
        repeat {
            pump()
            let got = scratch.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) { return true }
        } while Date() < deadline
        return false
    }

    /// A hello for the challenge `challenge`, MAC'd with `secret`.
    static func hello(clusterID: UInt64, from: UInt64, to: UInt64, secret: [UInt8]) -> ([UInt8]) -> [UInt8] {
        { challenge in
            let acceptorNonce = RaftHandshake.parseChallenge(challenge[...]) ?? []
            return RaftHandshake(secret: secret).hello(acceptorNonce: acceptorNonce, clusterID: clusterID, from: from, to: to,
                                                        nonce: RaftHandshake.nonce())
        }
    }

    /// Completes the handshake as store `from` (checking the acceptor's proof).
    func handshake(clusterID: UInt64, from: UInt64, to: UInt64, secret: [UInt8], pump: () -> Void) throws {
        let challenge = read(RaftHandshake.challengeBytes, pump: pump)
        guard let acceptorNonce = RaftHandshake.parseChallenge(challenge[...]) else { throw ConfigError("no challenge") }
        let keys = RaftHandshake(secret: secret)
        let nonce = RaftHandshake.nonce()
        write(keys.hello(acceptorNonce: acceptorNonce, clusterID: clusterID, from: from, to: to, nonce: nonce))
        let proof = read(RaftHandshake.proofBytes, pump: pump)
        guard keys.verify(proof, role: "acceptor", acceptorNonce: acceptorNonce, connectorNonce: nonce, clusterID: clusterID, from: from, to: to) else {
            throw ConfigError("bad proof")
        }
    }
}

/// A raw listener standing in for a store's Raft port.
final class RawRaftListener {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        var reuse: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, socklen_t(MemoryLayout<Int32>.size))
        var address = try HostPort("127.0.0.1:\(port)")!.resolveIPv4()
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 8) == 0 else { close(fd); throw ConfigError("cannot listen") }
    }

    deinit { close(fd) }

    /// The next connection (within 3 s), pumping meanwhile.
    func accept(pump: () -> Void) -> RawRaftPeer? {
        let deadline = Date().addingTimeInterval(3)
        while Date() < deadline {
            pump()
            let client = Glibc.accept(fd, nil, nil)
            if client >= 0 {
                _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) & ~O_NONBLOCK)
                return RawRaftPeer(fd: client)
            }
            usleep(1_000)
        }
        return nil
    }
}

/// A blocking TCP socket connected to 127.0.0.1:`port`, whose reads time out after the given time.
func connectLoopback(port: Int, receiveTimeoutMicroseconds: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = try HostPort("127.0.0.1:\(port)")!.resolveIPv4()
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { close(fd); throw ConfigError("connect to 127.0.0.1:\(port) failed") }
    var timeout = timeval(tv_sec: 0, tv_usec: receiveTimeoutMicroseconds)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return fd
}
