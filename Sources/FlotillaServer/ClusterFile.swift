import Foundation

/// The static description of a cluster that every store is started with (until the placement
/// driver takes over bootstrapping): the stores and their addresses, and the keys at which the
/// key space is split into the initial regions. JSON:
///
///     {"clusterID": 1, "stores": [{"id": 1, "address": "127.0.0.1:20161",
///                                  "raftAddress": "127.0.0.1:20171"}, …], "splitKeys": ["g", "n"]}
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

    public init(clusterID: UInt64, stores: [Store], splitKeys: [String]) {
        self.clusterID = clusterID
        self.stores = stores
        self.splitKeys = splitKeys
    }

    /// Reads and validates a cluster file; every problem is named.
    public static func load(path: String) throws(ConfigError) -> ClusterFile {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ConfigError("cannot read cluster file \(path): \(error.localizedDescription)")
        }
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
        let endpoints = stores.flatMap { [$0.address, $0.raftAddress] }
        if let repeated = endpoints.first(where: { endpoint in endpoints.filter { $0 == endpoint }.count > 1 }) {
            throw ConfigError("address \(repeated) is given twice: every store's address and raftAddress must differ")
        }
        for (first, second) in zip(splitKeys, splitKeys.dropFirst()) where !(Data(first.utf8).lexicographicallyPrecedes(Data(second.utf8))) {
            throw ConfigError("split keys must be strictly increasing: '\(first)' then '\(second)'")
        }
        guard !splitKeys.contains("") else { throw ConfigError("a split key must not be empty") }
    }
}

/// A configuration problem, with a message for the operator.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// host:port, parsed.
public struct HostPort: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65_535).contains(port), colon != text.startIndex else { return nil }
        host = String(text[..<colon])
        self.port = port
    }

    public var description: String { "\(host):\(port)" }
}

import FlotillaProto

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
