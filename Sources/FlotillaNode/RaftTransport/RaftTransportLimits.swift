import FlotillaProto

/// Bounds of the Raft transport.
package struct RaftTransportLimits: Sendable {
    /// Largest frame accepted from a peer; a longer one closes the connection. Holds an append
    /// with the largest entry a store accepts (`KVLimits`).
    package var receivedFrameBytesMax = KVLimits.raftFrameBytesMax
    /// Outgoing messages are cut into frames of about this many bytes (one message always
    /// goes, whatever its size, up to `receivedFrameBytesMax`).
    package var sentFrameBytesTarget = 16 << 20
    /// Bytes queued for one peer that the kernel has not taken yet; messages beyond are
    /// dropped (Raft retransmits).
    var queuedBytesMax = 64 << 20
    /// Bytes read from one connection per poll, so one busy peer cannot hold the store thread.
    var readBytesPerPollMax = 8 << 20
    /// Reconnect backoff after a failed or lost outgoing connection, doubled up to the max.
    var reconnectBackoffMilliseconds = 50
    var reconnectBackoffMillisecondsMax = 1_000
    /// A peer must finish the handshake within this, or its connection is closed.
    package var handshakeTimeoutMilliseconds = 5_000
    /// An authenticated inbound connection that sends nothing for this long is closed (peers
    /// heartbeat every few hundred milliseconds), as is one whose frame in progress makes no
    /// progress for this long (a slow or stuck sender holding a partial frame in memory).
    package var idleTimeoutMilliseconds = 30_000
    /// Inbound connections at once, handshaking or not; beyond, new ones are closed at once.
    /// Authenticated ones are one per peer store (a newer one replaces the older).
    package var inboundConnectionsMax = 64
    /// Bytes of partial frames held over all inbound connections; a connection that would
    /// take the total past it is closed (its peer reconnects; Raft retransmits).
    package var inboundBufferedBytesMax = 256 << 20
}
