import CLinuxEvents
import Crypto
import FlotillaCluster
import FlotillaProto
import Foundation
import Logging
import RaftStore

/// Store-to-store Raft traffic over plain TCP, run by the store thread itself: no event loop
/// and no HTTP/2 between a region's messages and the socket, so a message costs no thread
/// hand-off on either side. Each store connects once to every other store's raft address and
/// writes frames (4-byte big-endian length, then a `RaftMessageBatch` of many regions'
/// messages); it reads frames from the connections other stores opened to it. The store
/// thread sleeps in `wait`, on the sockets and on a `StoreThreadWakeup` for its inbox.
///
/// Guarantees: a frame from another cluster, for another store, from an unknown store,
/// undecodable or over the size limit closes its connection with a logged reason and is never
/// delivered; messages to a peer that is down, or beyond the queue bound, are dropped and
/// counted (Raft retransmits them); nothing blocks — connects, reads and writes are
/// non-blocking. Not thread-safe: only the store thread calls it (the wake-up is separate).
package final class RaftSocketTransport {
    /// Where a connection stands in its life: TCP connect, the handshake, then frames.
    private enum Phase {
        /// Outbound: the TCP connect is in progress.
        case connecting
        /// Outbound: waiting for the acceptor's challenge.
        case awaitingChallenge
        /// Outbound: hello sent; waiting for the acceptor's proof (nonces kept to check it).
        case awaitingProof(acceptorNonce: [UInt8], connectorNonce: [UInt8])
        /// Inbound: challenge sent; waiting for the connector's hello.
        case awaitingHello(acceptorNonce: [UInt8])
        /// Authenticated: outbound connections write frames, inbound ones read them.
        case ready
    }

    private final class Connection {
        let fd: Int32
        /// The store this store connected to; nil for a connection a peer opened.
        let outboundStoreID: UInt64?
        var phase: Phase
        /// The peer store an inbound connection authenticated as.
        var peerStoreID: UInt64?
        let openedAt: ContinuousClock.Instant
        /// Last time bytes arrived (or the connection opened).
        var lastReadAt: ContinuousClock.Instant
        /// Last time a frame was completed (or the connection authenticated).
        var lastFrameAt: ContinuousClock.Instant
        var input: [UInt8] = []
        var inputStart = 0
        var output: [UInt8] = []
        var outputStart = 0
        /// Messages in `output` (counted as dropped if the connection closes before it drains).
        var outputMessages = 0
        var writeInterest = false

        init(fd: Int32, outboundStoreID: UInt64?, phase: Phase, now: ContinuousClock.Instant) {
            self.fd = fd
            self.outboundStoreID = outboundStoreID
            self.phase = phase
            openedAt = now
            lastReadAt = now
            lastFrameAt = now
        }

        var queuedBytes: Int { output.count - outputStart }
        var connecting: Bool { if case .connecting = phase { true } else { false } }
        var isReady: Bool { if case .ready = phase { true } else { false } }
        /// Bytes the current handshake step still expects (0 once ready).
        var handshakeBytesExpected: Int {
            switch phase {
            case .connecting, .ready: 0
            case .awaitingChallenge: RaftHandshake.challengeBytes
            case .awaitingProof: RaftHandshake.proofBytes
            case .awaitingHello: RaftHandshake.helloBytes
            }
        }
    }

    private struct PeerLink {
        let address: sockaddr_in
        let description: String
        var connectionFD: Int32?
        var nextConnectAt: ContinuousClock.Instant
        var backoffMilliseconds: Int
        /// The link was up since the last failure (the next failure is logged).
        var wasUp = true
    }

    let wakeup: StoreThreadWakeup
    /// The port the transport listens on (the configured one, or the kernel's pick for 0).
    package let listeningPort: Int
    private let clusterID: UInt64
    private let storeID: UInt64
    private let handshake: RaftHandshake
    private let codec: RaftFrameCodec
    /// Connections refused: handshake failures, timeouts, over the inbound bound.
    private(set) var connectionsRefused = 0
    /// Stores whose connections are accepted; nil: any store (stores joining through PD,
    /// proven by the cluster secret when there is one).
    private let knownStores: Set<UInt64>?
    /// Destinations messages were sent to without a known address (PD resolves them).
    package private(set) var unresolvedStores: Set<UInt64> = []
    static let unresolvedStoresMax = 1_024
    private let limits: RaftTransportLimits
    private let logger: Logger
    private let epollFD: Int32
    private let listenFD: Int32
    private var connections: [Int32: Connection] = [:]
    private var links: [UInt64: PeerLink] = [:]
    private let clock = ContinuousClock()
    private var readScratch = [UInt8](repeating: 0, count: 256 << 10)
    private var events = [epoll_event](repeating: epoll_event(), count: 64)
    private var closed = false
    private var nextExpiryCheck: ContinuousClock.Instant
    private var nextRefusalLogAt: ContinuousClock.Instant

    /// Messages dropped since the start: peer down or queue full.
    private(set) var droppedMessages = 0
    private(set) var framesSent = 0
    private(set) var framesReceived = 0

    /// Binds `listen` and prepares links to `peers` (addresses resolved now, once).
    /// - Throws: `ConfigError` naming the address that cannot be resolved or bound.
    package init(listen: HostPort, clusterID: UInt64, storeID: UInt64, peers: [UInt64: HostPort], secret: [UInt8],
         acceptAnyStore: Bool = false, limits: RaftTransportLimits = RaftTransportLimits(), logger: Logger) throws(ConfigError) {
        handshake = RaftHandshake(secret: secret)
        codec = RaftFrameCodec(clusterID: clusterID, storeID: storeID, limits: limits)
        self.clusterID = clusterID
        self.storeID = storeID
        self.knownStores = acceptAnyStore ? nil : Set(peers.keys)
        self.limits = limits
        self.logger = logger
        let now = clock.now
        nextExpiryCheck = now
        nextRefusalLogAt = now
        for (peerStoreID, address) in peers {
            links[peerStoreID] = PeerLink(address: try address.resolveIPv4(), description: address.description,
                                          connectionFD: nil, nextConnectAt: now, backoffMilliseconds: limits.reconnectBackoffMilliseconds)
        }
        wakeup = try StoreThreadWakeup()
        let bindAddress = try listen.resolveIPv4()
        let socketFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socketFD >= 0 else { throw ConfigError("cannot open the Raft listening socket: \(String(cString: strerror(errno)))") }
        var reuse: Int32 = 1
        setsockopt(socketFD, SOL_SOCKET, SO_REUSEADDR, &reuse, socklen_t(MemoryLayout<Int32>.size))
        var address = bindAddress
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socketFD, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Glibc.listen(socketFD, 128) == 0 else {
            let reason = String(cString: strerror(errno))
            close(socketFD)
            throw ConfigError("cannot listen for Raft traffic on \(listen): \(reason)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socketFD, $0, &length) }
        }
        listeningPort = Int(UInt16(bigEndian: address.sin_port))
        listenFD = socketFD
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epollFD >= 0 else {
            close(socketFD)
            throw ConfigError("epoll_create1() failed: \(String(cString: strerror(errno)))")
        }
        register(listenFD, events: EPOLLIN.rawValue, operation: EPOLL_CTL_ADD)
        register(wakeup.fd, events: EPOLLIN.rawValue, operation: EPOLL_CTL_ADD)
    }

    deinit { closeAll() }

    /// Closes every socket; the transport is unusable afterwards.
    func closeAll() {
        guard !closed else { return }
        closed = true
        for connection in connections.values { close(connection.fd) }
        connections = [:]
        close(listenFD)
        close(epollFD)
    }

    // MARK: Sending

    /// Queues each store's messages as frames and writes what the kernel takes now; the rest
    /// goes out as the socket drains (during `wait`).
    /// Sets (or changes) where store `storeID`'s Raft transport listens.
    package func setPeer(_ storeID: UInt64, address: HostPort) throws(ConfigError) {
        guard storeID != self.storeID else { return }
        unresolvedStores.remove(storeID)
        let resolved = try address.resolveIPv4()
        if let link = links[storeID], link.description == address.description { return }
        if let fd = links[storeID]?.connectionFD, let connection = connections[fd] { drop(connection, reason: "the store moved to \(address)") }
        links[storeID] = PeerLink(address: resolved, description: address.description, connectionFD: nil,
                                  nextConnectAt: clock.now, backoffMilliseconds: limits.reconnectBackoffMilliseconds)
    }

    /// Stores whose links are cut by fault injection (`StoreAdmin.InjectFault`): frames to them
    /// are not sent and frames from them are dropped. Empty unless a nemesis test cut some.
    package var cutStores: Set<UInt64> = []

    package func send(_ messagesByStore: [UInt64: [Flotilla_V1_RaftMessage]]) {
        for (destination, messages) in messagesByStore where !messages.isEmpty {
            if cutStores.contains(destination) {
                droppedMessages += messages.count
                continue
            }
            guard links[destination] != nil else {
                droppedMessages += messages.count
                if unresolvedStores.count < Self.unresolvedStoresMax { unresolvedStores.insert(destination) }
                continue
            }
            connectIfDue(destination)
            guard let fd = links[destination]?.connectionFD, let connection = connections[fd] else {
                droppedMessages += messages.count
                continue
            }
            let room = max(0, limits.queuedBytesMax - connection.queuedBytes)
            let encoded = codec.encode(messages, to: destination, roomBytes: room, into: &connection.output)
            for problem in encoded.problems { logger.error("dropped a Raft frame", metadata: ["reason": "\(problem)"]) }
            droppedMessages += encoded.droppedMessages
            connection.outputMessages += encoded.messages
            framesSent += encoded.frames
            if connection.isReady { flush(connection) }
        }
    }

    /// Writes queued bytes until the kernel's buffer is full; watches for writability then.
    private func flush(_ connection: Connection) {
        while connection.outputStart < connection.output.count {
            let written = connection.output.withUnsafeBytes { buffer -> Int in
                guard let base = buffer.baseAddress else { return 0 }
                return Glibc.send(connection.fd, base + connection.outputStart, buffer.count - connection.outputStart, Int32(MSG_NOSIGNAL))
            }
            if written > 0 {
                connection.outputStart += written
                continue
            }
            if written < 0 && errno == EINTR { continue }
            if written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                setWriteInterest(connection, true)
                return
            }
            drop(connection, reason: written < 0 ? String(cString: strerror(errno)) : "send returned 0")
            return
        }
        connection.output.removeAll(keepingCapacity: connection.output.capacity <= 1 << 20)
        connection.outputStart = 0
        connection.outputMessages = 0
        setWriteInterest(connection, false)
    }

    // MARK: Connections

    private func connectIfDue(_ destination: UInt64) {
        guard var link = links[destination], link.connectionFD == nil, clock.now >= link.nextConnectAt else { return }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            connectFailed(destination, reason: "socket(): \(String(cString: strerror(errno)))")
            return
        }
        var noDelay: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &noDelay, socklen_t(MemoryLayout<Int32>.size))
        var address = link.address
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 || errno == EINPROGRESS else {
            let reason = String(cString: strerror(errno))
            close(fd)
            connectFailed(destination, reason: "connect(): \(reason)")
            return
        }
        let connection = Connection(fd: fd, outboundStoreID: destination, phase: result != 0 ? .connecting : .awaitingChallenge, now: clock.now)
        connections[fd] = connection
        link.connectionFD = fd
        links[destination] = link
        connection.writeInterest = connection.connecting
        register(fd, events: EPOLLIN.rawValue | EPOLLRDHUP.rawValue | (connection.connecting ? EPOLLOUT.rawValue : 0), operation: EPOLL_CTL_ADD)
        if !connection.connecting { connected(connection) }
    }

    /// The TCP connect finished: wait for the acceptor's challenge.
    private func connected(_ connection: Connection) {
        connection.phase = .awaitingChallenge
        setWriteInterest(connection, false)
    }

    /// The acceptor proved it knows the secret: frames may flow.
    private func authenticated(_ connection: Connection) {
        guard let destination = connection.outboundStoreID, var link = links[destination] else { return }
        connection.phase = .ready
        connection.lastFrameAt = clock.now
        link.backoffMilliseconds = limits.reconnectBackoffMilliseconds
        if !link.wasUp { logger.info("Raft link up", metadata: ["to_store": "\(destination)", "address": "\(link.description)"]) }
        link.wasUp = true
        links[destination] = link
        flush(connection)
    }

    /// Writes a handshake step whole (a few dozen bytes on a fresh socket), or closes.
    private func writeHandshake(_ connection: Connection, _ bytes: [UInt8]) -> Bool {
        let written = bytes.withUnsafeBytes { Glibc.send(connection.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard written == bytes.count else {
            drop(connection, reason: "could not write the handshake (\(written < 0 ? String(cString: strerror(errno)) : "partial write"))")
            return false
        }
        return true
    }

    /// Handles the bytes of the current handshake step once they are all in. Returns false
    /// when the connection was closed.
    private func advanceHandshake(_ connection: Connection) -> Bool {
        let expected = connection.handshakeBytesExpected
        guard expected > 0, connection.input.count - connection.inputStart >= expected else { return true }
        let step = connection.input[connection.inputStart..<(connection.inputStart + expected)]
        connection.inputStart += expected
        switch connection.phase {
        case .awaitingChallenge:
            guard let destination = connection.outboundStoreID, let acceptorNonce = RaftHandshake.parseChallenge(step) else {
                refuse(connection, reason: "the peer's handshake challenge is malformed (not a Flotilla Raft port?)")
                return false
            }
            let nonce = RaftHandshake.nonce()
            let hello = handshake.hello(acceptorNonce: acceptorNonce, clusterID: clusterID, from: storeID, to: destination, nonce: nonce)
            guard writeHandshake(connection, hello) else { return false }
            connection.phase = .awaitingProof(acceptorNonce: acceptorNonce, connectorNonce: nonce)
        case .awaitingProof(let acceptorNonce, let connectorNonce):
            guard let destination = connection.outboundStoreID,
                  handshake.verify(Array(step), role: "acceptor", acceptorNonce: acceptorNonce, connectorNonce: connectorNonce,
                                   clusterID: clusterID, from: storeID, to: destination) else {
                refuse(connection, reason: "store \(connection.outboundStoreID ?? 0) did not prove it knows the cluster secret")
                return false
            }
            authenticated(connection)
        case .awaitingHello(let acceptorNonce):
            guard let hello = RaftHandshake.parseHello(step) else {
                refuse(connection, reason: "a malformed handshake hello")
                return false
            }
            guard hello.clusterID == clusterID, hello.toStoreID == storeID, knownStores?.contains(hello.fromStoreID) ?? (hello.fromStoreID != storeID) else {
                refuse(connection, reason: "a hello from store \(hello.fromStoreID) of cluster \(hello.clusterID) to store \(hello.toStoreID) "
                                           + "does not belong here (cluster \(clusterID), store \(storeID))")
                return false
            }
            guard handshake.verify(hello.mac, role: "connector", acceptorNonce: acceptorNonce, connectorNonce: hello.nonce,
                                   clusterID: clusterID, from: hello.fromStoreID, to: storeID) else {
                refuse(connection, reason: "a peer claiming to be store \(hello.fromStoreID) does not know the cluster secret")
                return false
            }
            let proof = handshake.mac(role: "acceptor", acceptorNonce: acceptorNonce, connectorNonce: hello.nonce,
                                      clusterID: clusterID, from: hello.fromStoreID, to: storeID)
            guard writeHandshake(connection, proof) else { return false }
            // One authenticated connection per peer store: a newer one replaces the older.
            for other in connections.values where other !== connection && other.peerStoreID == hello.fromStoreID {
                drop(other, reason: "replaced by a newer connection from store \(hello.fromStoreID)")
            }
            connection.peerStoreID = hello.fromStoreID
            connection.phase = .ready
            connection.lastFrameAt = clock.now
        case .connecting, .ready:
            break
        }
        return true
    }

    private func connectFailed(_ destination: UInt64, reason: String) {
        guard var link = links[destination] else { return }
        if link.wasUp {
            logger.info("Raft link down, reconnecting", metadata: ["to_store": "\(destination)", "address": "\(link.description)",
                                                                   "error": "\(reason)", "dropped_messages_total": "\(droppedMessages)"])
        }
        link.wasUp = false
        link.connectionFD = nil
        let jitter = Int.random(in: 0...link.backoffMilliseconds / 2)
        link.nextConnectAt = clock.now + .milliseconds(link.backoffMilliseconds + jitter)
        link.backoffMilliseconds = min(link.backoffMilliseconds * 2, limits.reconnectBackoffMillisecondsMax)
        links[destination] = link
    }

    /// Closes a connection; what it had queued is lost (Raft retransmits).
    /// Closes connections whose handshake, idle or frame time ran out.
    private func closeExpired() {
        let now = clock.now
        for connection in Array(connections.values) {
            switch connection.phase {
            case .connecting, .awaitingChallenge, .awaitingProof, .awaitingHello:
                if now - connection.openedAt >= .milliseconds(limits.handshakeTimeoutMilliseconds) {
                    refuse(connection, reason: "the handshake did not finish within \(limits.handshakeTimeoutMilliseconds) ms")
                }
            case .ready:
                guard connection.outboundStoreID == nil else { continue }
                let idle = now - connection.lastReadAt >= .milliseconds(limits.idleTimeoutMilliseconds)
                let stuck = connection.input.count > connection.inputStart
                    && now - connection.lastFrameAt >= .milliseconds(limits.idleTimeoutMilliseconds)
                if idle || stuck {
                    drop(connection, reason: stuck ? "a frame made no progress for \(limits.idleTimeoutMilliseconds) ms" : "idle")
                }
            }
        }
    }

    private func drop(_ connection: Connection, reason: String) {
        guard connections.removeValue(forKey: connection.fd) != nil else { return }
        epoll_ctl(epollFD, EPOLL_CTL_DEL, connection.fd, nil)
        close(connection.fd)
        droppedMessages += connection.outputMessages
        if let destination = connection.outboundStoreID {
            connectFailed(destination, reason: reason)
        } else {
            logger.debug("Raft connection from a peer closed", metadata: ["reason": "\(reason)"])
        }
    }

    private func acceptAll() {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            }
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK {
                    logger.warning("accepting a Raft connection failed", metadata: ["error": "\(String(cString: strerror(errno)))"])
                }
                return
            }
            let inbound = connections.values.filter { $0.outboundStoreID == nil }.count
            guard inbound < limits.inboundConnectionsMax else {
                close(fd)
                connectionsRefused += 1
                if connectionsRefused.nonzeroBitCount == 1 {
                    logger.warning("refused a Raft connection: too many inbound connections",
                                   metadata: ["limit": "\(limits.inboundConnectionsMax)", "refused_total": "\(connectionsRefused)"])
                }
                continue
            }
            var noDelay: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &noDelay, socklen_t(MemoryLayout<Int32>.size))
            let nonce = RaftHandshake.nonce()
            let connection = Connection(fd: fd, outboundStoreID: nil, phase: .awaitingHello(acceptorNonce: nonce), now: clock.now)
            connections[fd] = connection
            register(fd, events: EPOLLIN.rawValue | EPOLLRDHUP.rawValue, operation: EPOLL_CTL_ADD)
            _ = writeHandshake(connection, RaftHandshake.challenge(nonce: nonce))
        }
    }

    // MARK: Waiting and receiving

    /// Waits up to `timeoutMilliseconds` (0: only what is ready now) for the wake-up, new
    /// frames or writable sockets; hands every valid batch received to `deliver`.
    package func wait(timeoutMilliseconds: Int32, deliver: (Flotilla_V1_RaftMessageBatch) -> Void) {
        for destination in links.keys { connectIfDue(destination) }
        if clock.now >= nextExpiryCheck {
            closeExpired()
            nextExpiryCheck = clock.now + .milliseconds(100)
        }
        let count = events.withUnsafeMutableBufferPointer { buffer in
            epoll_wait(epollFD, buffer.baseAddress, Int32(buffer.count), timeoutMilliseconds)
        }
        guard count > 0 else { return }
        for position in 0..<Int(count) {
            let fd = events[position].data.fd
            let flags = events[position].events
            if fd == wakeup.fd {
                wakeup.reset()
                continue
            }
            if fd == listenFD {
                acceptAll()
                continue
            }
            guard let connection = connections[fd] else { continue }
            if connection.connecting {
                guard flags & (EPOLLOUT.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 else { continue }
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                if error != 0 {
                    drop(connection, reason: String(cString: strerror(error)))
                    continue
                }
                connected(connection)
                continue
            }
            if flags & EPOLLOUT.rawValue != 0 { flush(connection) }
            if flags & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0, connections[fd] === connection {
                receive(connection, deliver: deliver)
            }
        }
    }

    private func receive(_ connection: Connection, deliver: (Flotilla_V1_RaftMessageBatch) -> Void) {
        var readBytes = 0
        while readBytes < limits.readBytesPerPollMax {
            // During the handshake, read exactly what the step needs: nothing more is buffered.
            let expected = connection.handshakeBytesExpected
            let readMax = expected > 0 ? expected - (connection.input.count - connection.inputStart) : readScratch.count
            let received = readScratch.withUnsafeMutableBytes { read(connection.fd, $0.baseAddress, min($0.count, readMax)) }
            if received > 0 {
                guard connection.outboundStoreID == nil || expected > 0 else {
                    drop(connection, reason: "the peer sent data on a connection that only carries frames to it")
                    return
                }
                connection.input.append(contentsOf: readScratch[0..<received])
                connection.lastReadAt = clock.now
                readBytes += received
                if expected == 0 && inboundBufferedBytes > limits.inboundBufferedBytesMax {
                    refuse(connection, reason: "inbound frames in progress hold more than \(limits.inboundBufferedBytesMax) bytes")
                    return
                }
                if expected > 0 {
                    guard advanceHandshake(connection) else { return }
                    compactInput(connection)
                }
                continue
            }
            if received == 0 {
                drop(connection, reason: "closed by the peer")
                return
            }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { break }
            drop(connection, reason: String(cString: strerror(errno)))
            return
        }
        deliverFrames(connection, deliver: deliver)
    }

    private func deliverFrames(_ connection: Connection, deliver: (Flotilla_V1_RaftMessageBatch) -> Void) {
        guard connection.isReady, connection.outboundStoreID == nil else { return }
        while true {
            switch codec.decode(connection.input, start: &connection.inputStart, fromPeer: connection.peerStoreID) {
            case .needMore:
                compactInput(connection)
                return
            case .refused(let reason):
                return refuse(connection, reason: reason)
            case .frame(let batch):
                framesReceived += 1
                connection.lastFrameAt = clock.now
                if cutStores.contains(batch.fromStoreID) { continue }
                deliver(batch)
            }
        }
    }

    /// Bytes of partial frames buffered over every inbound connection.
    private var inboundBufferedBytes: Int {
        connections.values.reduce(0) { $0 + ($1.outboundStoreID == nil ? $1.input.count - $1.inputStart : 0) }
    }

    private func compactInput(_ connection: Connection) {
        if connection.inputStart == connection.input.count {
            connection.input.removeAll(keepingCapacity: connection.input.capacity <= 1 << 20)
            connection.inputStart = 0
        } else if connection.inputStart >= 1 << 20 {
            connection.input.removeFirst(connection.inputStart)
            connection.inputStart = 0
        }
    }

    private func refuse(_ connection: Connection, reason: String) {
        connectionsRefused += 1
        // At most one line a second: a flood of hostile connections must not flood the log.
        if clock.now >= nextRefusalLogAt {
            nextRefusalLogAt = clock.now + .seconds(1)
            logger.warning("refused a Raft connection", metadata: ["reason": "\(reason)", "refused_total": "\(connectionsRefused)"])
        }
        drop(connection, reason: reason)
    }

    // MARK: Helpers

    private func setWriteInterest(_ connection: Connection, _ interested: Bool) {
        guard connection.writeInterest != interested else { return }
        connection.writeInterest = interested
        register(connection.fd, events: EPOLLIN.rawValue | EPOLLRDHUP.rawValue | (interested ? EPOLLOUT.rawValue : 0), operation: EPOLL_CTL_MOD)
    }

    private func register(_ fd: Int32, events: UInt32, operation: Int32) {
        var event = epoll_event()
        event.events = events
        event.data.fd = fd
        if epoll_ctl(epollFD, operation, fd, &event) != 0 {
            logger.error("epoll_ctl failed", metadata: ["fd": "\(fd)", "error": "\(String(cString: strerror(errno)))"])
        }
    }
}
