/// The limits a client request meets, as one chain end to end: a request the KV service accepts
/// fits one gRPC message, its write fits one Raft entry, that entry fits one append and the
/// append one Raft frame between stores — so nothing accepted can be unreplicable. Larger
/// requests get a typed error naming the limit. Documented in `proto/flotilla/v1/kv.proto`
/// and `docs/architecture.md`; each has a test at the limit and one past it.
public enum KVLimits {
    /// Bytes of a key.
    public static let keyBytesMax = 8 << 10
    /// Bytes of a value.
    public static let valueBytesMax = 4 << 20
    /// Keys or pairs in one batch request.
    public static let batchItemsMax = 10_000
    /// Bytes of one write as proposed (the encoded `WriteCommand`): one Raft entry on its own
    /// at most. etcd's default request limit is 1.5 MiB, TiKV's Raft entry limit 8 MiB.
    public static let commandBytesMax = 8 << 20
    /// Bytes of one gRPC request message: a write of `commandBytesMax` plus its envelope (the
    /// request context and field tags). The server's transport refuses larger messages.
    public static let requestMessageBytesMax = commandBytesMax + (64 << 10)
    /// Bytes of the largest Raft entry a store proposes: one command alone, with the batch
    /// framing (tag and length).
    public static let entryBytesMax = commandBytesMax + 16
    /// Bytes of one frame between stores' Raft transports: the largest entry in one append,
    /// with room for the message envelope. Frames are cut well below it when batching.
    public static let raftFrameBytesMax = 64 << 20
    /// Pairs in one scan answer; a larger `limit` gets at most this many and where to resume.
    public static let scanPairsMax = 10_000
    /// Bytes of keys and values in one scan answer (at least one pair is always returned).
    /// Together with one pair at most, an answer stays within `scanResponseMessageBytesMax`.
    public static let scanResponseBytesMax = 4 << 20
    /// What a client must be ready to receive in one response message: a full scan answer
    /// plus one maximal pair that crossed the byte bound.
    public static let responseMessageBytesMax = scanResponseBytesMax + keyBytesMax + valueBytesMax + (64 << 10)
    /// Keys one split may cut a region at (each a key, so at most `keyBytesMax` bytes): one
    /// split command of 64 maximal keys stays far below one Raft entry.
    public static let splitKeysMax = 64
    /// Milliseconds a request may ask as its deadline (`RequestContext.timeout_ms`).
    public static let requestTimeoutMillisecondsMax: UInt32 = 600_000
}
