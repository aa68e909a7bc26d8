import FlotillaProto
import Foundation
import SwiftProtobuf

/// PD's replicated state: what every PD member holds after applying the same commands from
/// PD's Raft log. `apply` is deterministic (it reads nothing but the state and the command)
/// and returns the records to write beside the apply; `load` rebuilds the state from them.
///
/// Guarantees: the cluster id is set once; bootstrap happens once; the reserved id bound
/// never decreases; a tombstone store never comes back; two live stores never share an
/// address; a route is never replaced by an older one (epoch), and routes never overlap.
public struct ClusterState: Sendable, Equatable {
    public private(set) var clusterID: UInt64 = 0
    /// The first region's id once bootstrapped, else 0.
    public private(set) var bootstrapRegionID: UInt64 = 0
    /// Every id up to this one is reserved: handed out or lost with a leader that held it.
    public private(set) var reservedIDsThrough: UInt64 = 0
    public private(set) var stores: [UInt64: Flotilla_V1_Store] = [:]
    /// Persisted routes (PD's leader keeps a fresher copy in memory, from heartbeats).
    public private(set) var routes = RegionTree()
    public private(set) var settings: Flotilla_V1_SchedulerSettings = .defaults
    /// PD members that have published their addresses (each does when it leads).
    public private(set) var members: [UInt64: Flotilla_V1_PDMember] = [:]
    /// Ended operators by id, at most `PDLimits.operatorHistoryMax` (the newest ids).
    public private(set) var operatorHistory: [UInt64: Flotilla_V1_OperatorInfo] = [:]

    public init() {}

    public var isBootstrapped: Bool { bootstrapRegionID != 0 }

    public static func == (lhs: ClusterState, rhs: ClusterState) -> Bool {
        lhs.clusterID == rhs.clusterID && lhs.bootstrapRegionID == rhs.bootstrapRegionID
            && lhs.reservedIDsThrough == rhs.reservedIDsThrough && lhs.stores == rhs.stores
            && lhs.routes.all == rhs.routes.all && lhs.settings == rhs.settings && lhs.members == rhs.members
    }

    /// A record write an applied command asks for.
    public enum RecordWrite: Equatable, Sendable {
        case put(key: Data, value: Data)
        case delete(key: Data)

        /// The write applied to records kept by key (as PD's region keeps them).
        public func apply(to records: inout [Data: Data]) {
            switch self {
            case .put(let key, let value): records[key] = value
            case .delete(let key): records[key] = nil
            }
        }
    }

    /// Applies one command. On failure nothing changed and no records are written.
    public mutating func apply(_ command: Flotilla_V1_PDCommand) -> (outcome: Result<Void, PDFailure>, writes: [RecordWrite]) {
        do {
            let writes = try applyOrThrow(command)
            return (.success(()), writes)
        } catch {
            return (.failure(error), [])
        }
    }

    private mutating func applyOrThrow(_ command: Flotilla_V1_PDCommand) throws(PDFailure) -> [RecordWrite] {
        switch command.command {
        case .setClusterID(let id):
            guard id != 0 else { throw .invalidArgument("cluster id: must not be 0") }
            if clusterID == id { return [] }
            guard clusterID == 0 else { throw .clusterMismatch(expected: clusterID, got: id) }
            clusterID = id
            precondition(clusterID != 0, "the cluster id is set once, and not to 0")
            return [.put(key: PDRecordKeys.clusterID, value: PDRecordKeys.encode(id))]
        case .reserveIdsThrough(let bound):
            guard bound > reservedIDsThrough else { return [] }
            let before = reservedIDsThrough
            reservedIDsThrough = bound
            precondition(reservedIDsThrough > before, "the reserved id bound never decreases")
            return [.put(key: PDRecordKeys.reservedIDs, value: PDRecordKeys.encode(bound))]
        case .bootstrap(let request):
            return try bootstrap(request)
        case .putStore(let store):
            return try put(store: store)
        case .putRegion(let region):
            guard isBootstrapped else { throw .notBootstrapped }
            try PDValidation.check(region: region)
            var info = Flotilla_V1_RegionInfo()
            info.region = region
            switch routes.update(info) {
            case .stale(let current): throw .staleRegion(current: current)
            case .sameMeta: return []
            case .changed(let removed):
                precondition(routes.region(id: region.id)?.region == region && !removed.contains(region.id),
                             "a changed route is held, and does not replace itself")
                return removed.map { .delete(key: PDRecordKeys.region($0)) }
                    + [.put(key: PDRecordKeys.region(region.id), value: try PDRecordKeys.encode(region))]
            }
        case .deleteRegion(let id):
            guard routes.remove(id: id) != nil else { return [] }
            precondition(routes.region(id: id) == nil, "a deleted route is gone")
            return [.delete(key: PDRecordKeys.region(id))]
        case .setSettings(let newSettings):
            try PDValidation.check(settings: newSettings)
            settings = newSettings
            return [.put(key: PDRecordKeys.settings, value: try PDRecordKeys.encode(newSettings))]
        case .putMember(let member):
            guard member.memberID != 0, !member.name.isEmpty, member.name.utf8.count <= PDLimits.memberNameBytesMax else {
                throw .invalidArgument("member: a non-zero id and a name of 1 to \(PDLimits.memberNameBytesMax) bytes")
            }
            try PDValidation.check(address: member.clientAddress, field: "member.client_address")
            try PDValidation.check(address: member.peerAddress, field: "member.peer_address")
            if members[member.memberID] == member { return [] }
            members[member.memberID] = member
            return [.put(key: PDRecordKeys.member(member.memberID), value: try PDRecordKeys.encode(member))]
        case .recordOperator(let info):
            guard info.id != 0, info.status != .running else { throw .invalidArgument("record_operator: an ended operator with an id") }
            var writes: [RecordWrite] = [.put(key: PDRecordKeys.operatorRecord(info.id), value: try PDRecordKeys.encode(info))]
            operatorHistory[info.id] = info
            // Bounded: the oldest (lowest ids) beyond the limit go.
            if operatorHistory.count > PDLimits.operatorHistoryMax {
                for id in operatorHistory.keys.sorted().prefix(operatorHistory.count - PDLimits.operatorHistoryMax) {
                    operatorHistory[id] = nil
                    writes.append(.delete(key: PDRecordKeys.operatorRecord(id)))
                }
            }
            precondition(operatorHistory.count <= PDLimits.operatorHistoryMax, "operator history over its bound")
            return writes
        case .setStoreState(let change):
            guard var store = stores[change.storeID] else { throw .unknownStore(change.storeID) }
            guard store.state != .tombstone else { throw .storeTombstone(change.storeID) }
            switch (store.state, change.state) {
            case (.up, .offline), (.offline, .up), (.offline, .tombstone): break
            case (let from, let to) where from == to: return []
            default: throw .invalidArgument("store \(change.storeID): \(store.state) cannot become \(change.state)")
            }
            store.state = change.state
            stores[store.id] = store
            return [.put(key: PDRecordKeys.store(store.id), value: try PDRecordKeys.encode(store))]
        case .none:
            throw .invalidArgument("an empty PD command")
        }
    }

    private mutating func bootstrap(_ request: Flotilla_V1_BootstrapRequest) throws(PDFailure) -> [RecordWrite] {
        guard clusterID != 0, request.header.clusterID == clusterID else {
            throw .clusterMismatch(expected: clusterID, got: request.header.clusterID)
        }
        guard !isBootstrapped else { throw .alreadyBootstrapped }
        let store = request.store, region = request.region
        try PDValidation.check(region: region)
        guard region.startKey.isEmpty, region.endKey.isEmpty else {
            throw .invalidArgument("bootstrap: the first region must span every key")
        }
        guard region.peers.count == 1, region.peers[0].storeID == store.id, region.peers[0].role == .voter else {
            throw .invalidArgument("bootstrap: the first region must have one voter, on the bootstrapping store")
        }
        guard region.id <= reservedIDsThrough, region.peers[0].id <= reservedIDsThrough, region.id != region.peers[0].id else {
            throw .invalidArgument("bootstrap: region and peer ids must be distinct ids allocated by PD")
        }
        precondition(routes.count == 0, "routes exist only after bootstrap")
        var writes = try put(store: store)
        var info = Flotilla_V1_RegionInfo()
        info.region = region
        let update = routes.update(info)
        precondition(update == .changed(removed: []) && routes.count == 1, "the first region is the only route")
        bootstrapRegionID = region.id
        writes.append(.put(key: PDRecordKeys.region(region.id), value: try PDRecordKeys.encode(region)))
        writes.append(.put(key: PDRecordKeys.bootstrapped, value: PDRecordKeys.encode(region.id)))
        return writes
    }

    private mutating func put(store: Flotilla_V1_Store) throws(PDFailure) -> [RecordWrite] {
        guard store.id != 0, store.id <= reservedIDsThrough else {
            throw .invalidArgument("store.id: \(store.id) was not allocated by PD")
        }
        try PDValidation.check(store: store)
        if let held = stores[store.id] {
            guard held.state != .tombstone else { throw .storeTombstone(store.id) }
        } else {
            guard store.state == .up else { throw .invalidArgument("store \(store.id): a new store must be up") }
        }
        for other in stores.values where other.id != store.id && other.state != .tombstone {
            if other.address == store.address || other.raftAddress == store.raftAddress
                || other.address == store.raftAddress || other.raftAddress == store.address {
                throw .addressInUse(address: other.address == store.address || other.raftAddress == store.address ? store.address : store.raftAddress,
                                    storeID: other.id)
            }
        }
        stores[store.id] = store
        precondition(stores.values.filter { $0.state != .tombstone && $0.address == store.address }.count <= 1,
                     "two live stores share address \(store.address)")
        return [.put(key: PDRecordKeys.store(store.id), value: try PDRecordKeys.encode(store))]
    }

    /// What `load` found wrong with the records.
    public struct CorruptRecord: Error, CustomStringConvertible {
        public let description: String
    }

    /// Rebuilds the state from the records `apply` wrote (in any order).
    public static func load(_ records: [(key: Data, value: Data)]) throws(CorruptRecord) -> ClusterState {
        var state = ClusterState()
        for (key, value) in records {
            guard let kind = key.first else { throw CorruptRecord(description: "an empty PD record key") }
            do {
                switch (kind, key.count) {
                case (PDRecordKeys.clusterID[0], 1): state.clusterID = try PDRecordKeys.decodeID(value)
                case (PDRecordKeys.reservedIDs[0], 1): state.reservedIDsThrough = try PDRecordKeys.decodeID(value)
                case (PDRecordKeys.bootstrapped[0], 1): state.bootstrapRegionID = try PDRecordKeys.decodeID(value)
                case (PDRecordKeys.settings[0], 1):
                    state.settings = try Flotilla_V1_SchedulerSettings(serializedBytes: value)
                case (PDRecordKeys.storePrefix, 9):
                    let store = try Flotilla_V1_Store(serializedBytes: value)
                    guard PDRecordKeys.store(store.id) == key else { throw CorruptRecord(description: "store record under another id") }
                    state.stores[store.id] = store
                case (PDRecordKeys.regionPrefix, 9):
                    var info = Flotilla_V1_RegionInfo()
                    info.region = try Flotilla_V1_Region(serializedBytes: value)
                    guard PDRecordKeys.region(info.region.id) == key else { throw CorruptRecord(description: "region record under another id") }
                    do { try PDValidation.check(region: info.region) } catch {
                        throw CorruptRecord(description: "region record \(info.region.id) is not a valid region: \(error)")
                    }
                    guard case .changed(removed: []) = state.routes.update(info) else {
                        throw CorruptRecord(description: "region \(info.region.id) overlaps another persisted route")
                    }
                case (PDRecordKeys.operatorPrefix, 9):
                    let info = try Flotilla_V1_OperatorInfo(serializedBytes: value)
                    guard PDRecordKeys.operatorRecord(info.id) == key else { throw CorruptRecord(description: "operator record under another id") }
                    state.operatorHistory[info.id] = info
                case (PDRecordKeys.memberPrefix, 9):
                    let member = try Flotilla_V1_PDMember(serializedBytes: value)
                    guard PDRecordKeys.member(member.memberID) == key else { throw CorruptRecord(description: "member record under another id") }
                    state.members[member.memberID] = member
                default:
                    throw CorruptRecord(description: "an unknown PD record key \(key.map { String(format: "%02x", $0) }.joined())")
                }
            } catch let error as CorruptRecord {
                throw error
            } catch {
                throw CorruptRecord(description: "PD record \(key.map { String(format: "%02x", $0) }.joined()) does not decode: \(error)")
            }
        }
        guard state.isBootstrapped || state.routes.count == 0 else {
            throw CorruptRecord(description: "\(state.routes.count) routes persisted but no bootstrap record")
        }
        return state
    }
}

/// Where PD's records live in its RocksDB (the default column family of its one region).
public enum PDRecordKeys {
    public static let clusterID = Data([0x01])
    public static let reservedIDs = Data([0x02])
    public static let bootstrapped = Data([0x03])
    public static let settings = Data([0x04])
    public static let storePrefix: UInt8 = 0x10
    public static let regionPrefix: UInt8 = 0x11

    public static func store(_ id: UInt64) -> Data { Data([storePrefix]) + encode(id) }
    public static func region(_ id: UInt64) -> Data { Data([regionPrefix]) + encode(id) }
    public static let memberPrefix: UInt8 = 0x12
    public static func member(_ id: UInt64) -> Data { Data([memberPrefix]) + encode(id) }
    public static let operatorPrefix: UInt8 = 0x13
    public static func operatorRecord(_ id: UInt64) -> Data { Data([operatorPrefix]) + encode(id) }

    /// 8 bytes, big-endian.
    public static func encode(_ id: UInt64) -> Data { withUnsafeBytes(of: id.bigEndian) { Data($0) } }

    static func encode(_ message: some SwiftProtobuf.Message) throws(PDFailure) -> Data {
        do { return try message.serializedData() } catch { throw .invalidArgument("a record does not encode: \(error)") }
    }

    static func decodeID(_ value: Data) throws(ClusterState.CorruptRecord) -> UInt64 {
        guard value.count == 8 else { throw ClusterState.CorruptRecord(description: "an id record of \(value.count) bytes, not 8") }
        return value.reduce(0) { $0 << 8 | UInt64($1) }
    }
}
