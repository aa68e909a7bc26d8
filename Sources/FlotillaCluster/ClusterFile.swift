import FlotillaProto
import Foundation

/// The static description of a cluster that every store is started with (until the placement
/// driver takes over bootstrapping): the stores and their addresses, and the keys at which the
/// key space is split into the initial regions. JSON:
///
///     {"clusterID": 1, "stores": [{"id": 1, "address": "127.0.0.1:20161",
///                                  "raftAddress": "127.0.0.1:20171"}, …], "splitKeys": ["g", "n"],
///      "secretFile": "cluster.secret"}
///
/// `secretFile` (relative to the cluster file) holds the cluster secret the stores' Raft ports
/// prove to each other (`ClusterSecret.bytesMin` to `bytesMax` bytes). Unknown or misspelled fields
/// are refused, and no two endpoints may resolve to the same address.
public struct ClusterFile: Codable, Sendable, Equatable {
    public struct Store: Codable, Sendable, Equatable {
        public var id: UInt64
        /// host:port of the store's gRPC services: KV, admin, snapshots.
        public var address: String
        /// host:port of the store's Raft transport (plain TCP frames between stores).
        public var raftAddress: String

        public init(id: UInt64, address: String, raftAddress: String) {
            self.id = id
            self.address = address
            self.raftAddress = raftAddress
        }
    }

    public var clusterID: UInt64
    public var stores: [Store]
    /// UTF-8 split keys, strictly increasing.
    public var splitKeys: [String]
    /// The file holding the cluster secret, relative to the cluster file's folder when not absolute.
    public var secretFile: String?

    public init(clusterID: UInt64, stores: [Store], splitKeys: [String], secretFile: String? = nil) {
        self.clusterID = clusterID
        self.stores = stores
        self.splitKeys = splitKeys
        self.secretFile = secretFile
    }

    /// The largest cluster file read, in bytes: room for a million split keys of ~20 bytes.
    static let fileBytesMax = 32 << 20
    static let fieldNames: Set<String> = ["clusterID", "stores", "splitKeys", "secretFile"]
    static let storeFieldNames: Set<String> = ["id", "address", "raftAddress"]

    /// Refuses fields this version does not know (a misspelled one would otherwise be ignored).
    static func checkFieldNames(_ data: Data, path: String) throws(ConfigError) {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ConfigError("cluster file \(path) is not a JSON object")
        }
        if let unknown = object.keys.sorted().first(where: { !fieldNames.contains($0) }) {
            throw ConfigError("cluster file \(path): unknown field '\(unknown)' (known: \(fieldNames.sorted().joined(separator: ", ")))")
        }
        for store in object["stores"] as? [[String: Any]] ?? [] {
            if let unknown = store.keys.sorted().first(where: { !storeFieldNames.contains($0) }) {
                throw ConfigError("cluster file \(path): unknown store field '\(unknown)' (known: \(storeFieldNames.sorted().joined(separator: ", ")))")
            }
        }
    }

    /// Writes a new random cluster secret (64 hex digits) to `path`, readable by its owner only.
    public static func writeNewSecret(to path: String) throws {
        var generator = SystemRandomNumberGenerator()
        let secret = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
        guard FileManager.default.createFile(atPath: path, contents: Data((secret + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw ConfigError("cannot write the cluster secret file \(path)")
        }
    }

    /// Reads the cluster secret named by `secretFile` (relative to `clusterFilePath`'s folder).
    /// Nil when the file names none.
    public func loadSecret(clusterFilePath: String) throws(ConfigError) -> [UInt8]? {
        guard let secretFile else { return nil }
        let path = secretFile.hasPrefix("/") ? secretFile
            : URL(fileURLWithPath: clusterFilePath).deletingLastPathComponent().appendingPathComponent(secretFile).path
        return try Self.readSecret(path: path)
    }

    /// Reads a cluster secret file (`--secret-file`, a cluster file's `secretFile`): 16 to 4,096
    /// bytes once trailing newlines and spaces are dropped.
    public static func readSecret(path: String) throws(ConfigError) -> [UInt8] {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw ConfigError("cannot read the cluster secret file \(path)") }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: ClusterSecret.bytesMax + 1)) ?? Data()
        var secret = [UInt8](data)
        while let last = secret.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: "\r") || last == UInt8(ascii: " ") { secret.removeLast() }
        guard (ClusterSecret.bytesMin...ClusterSecret.bytesMax).contains(secret.count) else {
            throw ConfigError("the cluster secret in \(path) has \(secret.count) bytes; it needs \(ClusterSecret.bytesMin) to \(ClusterSecret.bytesMax)")
        }
        return secret
    }

    /// Reads and validates a cluster file; every problem is named.
    public static func load(path: String) throws(ConfigError) -> ClusterFile {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw ConfigError("cannot read cluster file \(path)") }
        defer { try? handle.close() }
        let data: Data
        do { data = try handle.read(upToCount: fileBytesMax + 1) ?? Data() } catch {
            throw ConfigError("cannot read cluster file \(path): \(error.localizedDescription)")
        }
        guard data.count <= fileBytesMax else { throw ConfigError("cluster file \(path) is larger than \(fileBytesMax) bytes") }
        try checkFieldNames(data, path: path)
        let file: ClusterFile
        do { file = try JSONDecoder().decode(ClusterFile.self, from: data) } catch {
            throw ConfigError("cluster file \(path) is not valid: \(error)")
        }
        try file.validate()
        return file
    }

    public func validate() throws(ConfigError) {
        guard clusterID != 0 else { throw ConfigError("clusterID must not be 0") }
        guard !stores.isEmpty else { throw ConfigError("the cluster file names no stores") }
        guard Set(stores.map(\.id)).count == stores.count else { throw ConfigError("store ids repeat") }
        guard !stores.contains(where: { $0.id == 0 }) else { throw ConfigError("store id 0 is reserved") }
        for store in stores {
            guard HostPort(store.address) != nil else {
                throw ConfigError("store \(store.id) has address '\(store.address)', expected host:port")
            }
            guard HostPort(store.raftAddress) != nil else {
                throw ConfigError("store \(store.id) has raftAddress '\(store.raftAddress)', expected host:port")
            }
        }
        // Compared as resolved addresses: localhost:1 and 127.0.0.1:1 are one endpoint.
        let endpoints = stores.flatMap { [$0.address, $0.raftAddress] }
        var seen: [String: String] = [:]
        for endpoint in endpoints {
            guard let hostPort = HostPort(endpoint) else { continue }
            let resolved = (try? hostPort.resolveIPv4()).map { address -> String in
                var copy = address
                var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                inet_ntop(AF_INET, &copy.sin_addr, &text, socklen_t(INET_ADDRSTRLEN))
                let host = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                return "\(host):\(hostPort.port)"
            } ?? endpoint
            if let earlier = seen[resolved] {
                throw ConfigError("addresses \(earlier) and \(endpoint) are the same endpoint (\(resolved)): every store's address and raftAddress must differ")
            }
            seen[resolved] = endpoint
        }
        for (first, second) in zip(splitKeys, splitKeys.dropFirst()) where !(Data(first.utf8).lexicographicallyPrecedes(Data(second.utf8))) {
            throw ConfigError("split keys must be strictly increasing: '\(first)' then '\(second)'")
        }
        guard !splitKeys.contains("") else { throw ConfigError("a split key must not be empty") }
    }
}

extension ClusterFile {
    /// The regions every store creates at bootstrap: the key space cut at the split keys, each
    /// region with a voter on every store. Peer ids are `region_id << 16 | store_id`, the same
    /// on every store.
    public func initialRegions() -> [Flotilla_V1_Region] {
        let bounds = [Data()] + splitKeys.map { Data($0.utf8) } + [Data()]
        return (0..<(bounds.count - 1)).map { position in
            var region = Flotilla_V1_Region()
            region.id = UInt64(position + 1)
            region.startKey = bounds[position]
            region.endKey = bounds[position + 1]
            region.epoch.confVer = 1
            region.epoch.version = 1
            region.peers = stores.map { store in
                var peer = Flotilla_V1_Peer()
                peer.id = region.id << 16 | store.id
                peer.storeID = store.id
                peer.role = .voter
                return peer
            }
            return region
        }
    }
}
