/// Limits of the store's admin API that its callers (`flotillactl`, ops scripts) check too,
/// so a bad flag is refused before any request is sent.
public enum StoreAdminLimits {
    /// The longest a write fence holds without renewal (`StoreAdmin.FenceWrites`).
    public static let writeFenceHoldMillisecondsMax: UInt32 = 60_000
}

/// The shared secret a cluster's Raft ports prove to each other (a cluster file's
/// `secretFile`, `--secret-file`), its bounds checked wherever it is read.
public enum ClusterSecret {
    public static let bytesMin = 16
    public static let bytesMax = 4_096
}
