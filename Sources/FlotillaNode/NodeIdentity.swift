import FlotillaCluster
import FlotillaProto
import RaftStore
import RocksDB

/// Which cluster and node a data dir belongs to, written once in the meta column family at
/// its first start; every later start checks it before anything else reads the data dir.
package enum NodeIdentity {
    /// Records (cluster id, store id) in a new data dir, and refuses one that another cluster
    /// or store wrote (`what` names a PD member in the message).
    package static func check(db: Database, clusterID: UInt64, storeID: UInt64, path: String, what: String? = nil) throws {
        let meta = try db.columnFamily(StoreKeys.metaColumnFamily)
        if let stored = try db.get(StoreKeys.storeIdent, in: meta) {
            let ident = try Flotilla_V1_StoreIdent(serializedBytes: stored)
            guard ident.clusterID == clusterID, ident.storeID == storeID else {
                if let what {
                    throw ConfigError("data dir \(path) was written by another PD group or member than \(what)")
                }
                throw ConfigError("data dir \(path) belongs to cluster \(ident.clusterID) store \(ident.storeID), not cluster \(clusterID) store \(storeID)")
            }
            return
        }
        var ident = Flotilla_V1_StoreIdent()
        ident.clusterID = clusterID
        ident.storeID = storeID
        try db.put(StoreKeys.storeIdent, try ident.serializedBytes(), in: meta, sync: true)
    }
}
