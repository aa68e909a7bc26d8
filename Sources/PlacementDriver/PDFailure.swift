import FlotillaProto

/// Why PD refused a request or a command. Every case leaves PD's state unchanged.
public enum PDFailure: Error, Equatable, Sendable, CustomStringConvertible {
    case notLeader(leaderAddress: String)
    /// PD's first leader has not set the cluster id yet: retry shortly (answered as
    /// not_leader without an address, which callers already retry).
    case starting
    case clusterMismatch(expected: UInt64, got: UInt64)
    case notBootstrapped
    case alreadyBootstrapped
    case unknownStore(UInt64)
    case unknownRegion(UInt64)
    case addressInUse(address: String, storeID: UInt64)
    case staleRegion(current: Flotilla_V1_Region)
    case invalidArgument(String)
    case storeTombstone(UInt64)
    case operatorRunning(regionID: UInt64, operatorID: UInt64)

    public var description: String {
        switch self {
        case .notLeader(let address):
            address.isEmpty ? "not the PD leader, and no leader is known" : "not the PD leader; the leader is \(address)"
        case .starting: "PD is starting (no cluster id yet); retry shortly"
        case .clusterMismatch(let expected, let got):
            "cluster id \(got) is not this PD's cluster (\(expected))"
        case .notBootstrapped: "the cluster is not bootstrapped yet"
        case .alreadyBootstrapped: "the cluster is already bootstrapped"
        case .unknownStore(let id): "store \(id) is not known to PD (the stores: flotillactl store list)"
        case .unknownRegion(let id): "region \(id) is not known to PD (the regions: flotillactl region list, or region find KEY)"
        case .addressInUse(let address, let storeID): "address \(address) is already used by store \(storeID)"
        case .staleRegion(let current):
            "the region is older than PD's (region \(current.id) at version \(current.epoch.version), conf_ver \(current.epoch.confVer))"
        case .invalidArgument(let what): what
        case .storeTombstone(let id): "store \(id) was removed from the cluster (tombstone) and may not rejoin"
        case .operatorRunning(let regionID, let operatorID): "region \(regionID) already has operator \(operatorID) running"
        }
    }

    /// The error as PD's API carries it.
    public var proto: Flotilla_V1_PDError {
        var error = Flotilla_V1_PDError()
        error.message = description
        switch self {
        case .notLeader(let address):
            var detail = Flotilla_V1_PDNotLeader()
            detail.leaderAddress = address
            error.notLeader = detail
        case .starting: error.notLeader = Flotilla_V1_PDNotLeader()
        case .clusterMismatch(let expected, _): error.clusterMismatch = expected
        case .notBootstrapped: error.notBootstrapped = true
        case .alreadyBootstrapped: error.alreadyBootstrapped = true
        case .unknownStore(let id): error.unknownStore = id
        case .unknownRegion(let id): error.unknownRegion = id
        case .addressInUse(_, let storeID): error.addressInUse = storeID
        case .staleRegion(let current): error.staleRegion = current
        case .invalidArgument(let what): error.invalidArgument = what
        case .storeTombstone(let id): error.storeTombstone = id
        case .operatorRunning(_, let operatorID): error.operatorRunning = operatorID
        }
        return error
    }
}
