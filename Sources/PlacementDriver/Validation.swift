import FlotillaCluster
import FlotillaProto
import Foundation

/// Checks of what callers send PD, before anything reaches state. Each failure names the
/// field and the rule.
public enum PDValidation {
    /// A store as a store describes itself: addresses host:port within bounds, labels bounded
    /// with distinct non-empty keys.
    public static func check(store: Flotilla_V1_Store) throws(PDFailure) {
        try check(address: store.address, field: "store.address")
        try check(address: store.raftAddress, field: "store.raft_address")
        guard store.labels.count <= PDLimits.labelsPerStoreMax else {
            throw .invalidArgument("store.labels: \(store.labels.count) labels, at most \(PDLimits.labelsPerStoreMax)")
        }
        var keys: Set<String> = []
        for label in store.labels {
            guard !label.key.isEmpty, label.key.utf8.count <= PDLimits.labelKeyBytesMax,
                  label.value.utf8.count <= PDLimits.labelValueBytesMax else {
                throw .invalidArgument("store.labels: a key must be 1 to \(PDLimits.labelKeyBytesMax) bytes and a value at most \(PDLimits.labelValueBytesMax)")
            }
            guard keys.insert(label.key).inserted else { throw .invalidArgument("store.labels: key \(label.key) given twice") }
        }
    }

    /// host:port with a port in 1...65535 and a non-empty host, at most `addressBytesMax` bytes.
    public static func check(address: String, field: String) throws(PDFailure) {
        guard !address.isEmpty, address.utf8.count <= PDLimits.addressBytesMax else {
            throw .invalidArgument("\(field): must be host:port, 1 to \(PDLimits.addressBytesMax) bytes")
        }
        guard HostPort(dialable: address) != nil else {
            throw .invalidArgument("\(field): \(address.prefix(64)) is not host:port with a port from 1 to 65535")
        }
    }

    /// A region as a store reports it: a non-zero id, a non-empty range, 1 to 16 peers with
    /// distinct non-zero ids on distinct non-zero stores, at least one voter.
    public static func check(region: Flotilla_V1_Region) throws(PDFailure) {
        guard region.id != 0 else { throw .invalidArgument("region.id: must not be 0") }
        guard region.endKey.isEmpty || KeyOrder.compare(region.startKey, region.endKey) < 0 else {
            throw .invalidArgument("region \(region.id): start_key must sort before end_key")
        }
        guard (1...PDLimits.peersPerRegionMax).contains(region.peers.count) else {
            throw .invalidArgument("region \(region.id): 1 to \(PDLimits.peersPerRegionMax) peers, not \(region.peers.count)")
        }
        var peerIDs: Set<UInt64> = [], storeIDs: Set<UInt64> = []
        for peer in region.peers {
            guard peer.id != 0, peer.storeID != 0 else { throw .invalidArgument("region \(region.id): a peer with id or store id 0") }
            guard peerIDs.insert(peer.id).inserted, storeIDs.insert(peer.storeID).inserted else {
                throw .invalidArgument("region \(region.id): peer ids and their stores must be distinct")
            }
            guard peer.role == .voter || peer.role == .learner else {
                throw .invalidArgument("region \(region.id): peer \(peer.id) has an unknown role")
            }
        }
        guard region.peers.contains(where: { $0.role == .voter }) else {
            throw .invalidArgument("region \(region.id): no voter")
        }
    }

    /// Split keys for `region`: 1 to `splitKeysMax`, each 1 to `keyBytesMax` bytes, strictly
    /// increasing, each strictly inside the region (not on its start key).
    public static func check(splitKeys keys: [Data], in region: Flotilla_V1_Region) throws(PDFailure) {
        guard (1...KVLimits.splitKeysMax).contains(keys.count) else {
            throw .invalidArgument("split_keys: 1 to \(KVLimits.splitKeysMax) keys, not \(keys.count)")
        }
        for (position, key) in keys.enumerated() {
            guard (1...KVLimits.keyBytesMax).contains(key.count) else {
                throw .invalidArgument("split_keys: key \(position) is \(key.count) bytes (1 to \(KVLimits.keyBytesMax))")
            }
            guard KeyOrder.compare(region.startKey, key) < 0, region.contains(key) else {
                throw .invalidArgument("split_keys: key \(KeyOrder.printable(key)) is not strictly inside region \(region.id) [\(KeyOrder.printable(region.startKey)), \(KeyOrder.printable(region.endKey)))")
            }
            if position > 0, KeyOrder.compare(keys[position - 1], key) >= 0 {
                throw .invalidArgument("split_keys: keys must be strictly increasing (key \(position) is not after key \(position - 1))")
            }
        }
    }

    /// Scheduler settings within their bounds.
    public static func check(settings: Flotilla_V1_SchedulerSettings) throws(PDFailure) {
        guard (1...PDLimits.maxReplicasMax).contains(settings.maxReplicas) else {
            throw .invalidArgument("max_replicas: must be 1 to \(PDLimits.maxReplicasMax)")
        }
        guard settings.balanceTolerancePercent <= 100 else {
            throw .invalidArgument("balance_tolerance_percent: 1 to 100 (0: the default, 10), not \(settings.balanceTolerancePercent)")
        }
        guard settings.storeLimit <= PDLimits.storeLimitMax else {
            throw .invalidArgument("store_limit: 1 to \(PDLimits.storeLimitMax) (0: the default, 4), not \(settings.storeLimit)")
        }
        guard settings.isolationLabel.utf8.count <= PDLimits.labelKeyBytesMax else {
            throw .invalidArgument("isolation_label: at most \(PDLimits.labelKeyBytesMax) bytes")
        }
        guard (1...PDLimits.maxStoreDownTimeSecondsMax).contains(settings.maxStoreDownTimeSeconds) else {
            throw .invalidArgument("max_store_down_time_seconds: must be 1 to \(PDLimits.maxStoreDownTimeSecondsMax)")
        }
    }
}

extension Flotilla_V1_SchedulerSettings {
    /// `max-replicas` 3, `max-store-down-time` 30 minutes, replica checker on.
    public static var defaults: Flotilla_V1_SchedulerSettings {
        var settings = Flotilla_V1_SchedulerSettings()
        settings.maxReplicas = 3
        settings.maxStoreDownTimeSeconds = 30 * 60
        settings.replicaCheckerEnabled = true
        settings.balanceRegionEnabled = true
        settings.balanceLeaderEnabled = true
        settings.hotRegionEnabled = true
        return settings
    }
}
