/// The placement driver's input limits (also listed in proto/flotilla/v1/pd.proto). Anything
/// beyond them is refused with `PDError.invalidArgument` naming the limit, before it reaches
/// state.
public enum PDLimits {
    /// A store's KV or Raft address, host:port.
    public static let addressBytesMax = 255
    public static let labelsPerStoreMax = 16
    public static let labelKeyBytesMax = 64
    public static let labelValueBytesMax = 64
    /// Ids one AllocateIDs call may take.
    public static let idsPerAllocationMax: UInt32 = 10_000
    /// Regions one ScanRegions answer holds (a limit of 0 means this).
    public static let regionsPerScanMax = 10_000
    /// Peers one region may list.
    public static let peersPerRegionMax = 16
    /// Voters a region may be asked to keep (`max-replicas`).
    public static let maxReplicasMax: UInt32 = 7
    /// Bound of `max-store-down-time`, seconds (a week).
    public static let maxStoreDownTimeSecondsMax: UInt64 = 7 * 24 * 3600
    /// A PD member's name.
    public static let memberNameBytesMax = 64
    /// One request to PD's API, encoded (larger: gRPC RESOURCE_EXHAUSTED).
    public static let requestMessageBytesMax = 1 << 20
    /// Bound of `store_limit`: operators adding or removing a replica on one store at once.
    public static let storeLimitMax: UInt32 = 64
    /// Regions one store heartbeat's answer asks to report now (`report_regions`).
    public static let regionsToReportPerAnswerMax = 1_024
    /// Ended operators PD remembers.
    public static let operatorHistoryMax = 1_000
}
