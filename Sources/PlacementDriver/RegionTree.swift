import FlotillaProto
import Foundation

/// PD's routing table: regions by id and by key range. Ranges in the tree never overlap.
///
/// A region described with an epoch older than the one held for its id is refused; a region
/// overlapping others replaces them when its epoch `version` is not older than any of theirs
/// (they were split or merged away) and is refused otherwise. Lookups by key are binary
/// searches over the regions sorted by start key.
public struct RegionTree: Sendable {
    private var byID: [UInt64: Flotilla_V1_RegionInfo] = [:]
    /// (start key, region id), sorted by start key; ranges are disjoint, so also by end key.
    private var starts: [(start: Data, id: UInt64)] = []

    public init() {}

    public var count: Int { byID.count }

    public func region(id: UInt64) -> Flotilla_V1_RegionInfo? { byID[id] }

    /// The region whose range holds `key`, if PD knows one.
    public func region(containing key: Data) -> Flotilla_V1_RegionInfo? {
        guard let index = lastStart(notAfter: key) else { return nil }
        let info = byID[starts[index].id]
        return info.flatMap { $0.region.contains(key) ? $0 : nil }
    }

    /// Regions overlapping [start, end) in key order (an empty end: to the end), at most `limit`.
    public func regions(from start: Data, to end: Data, limit: Int) -> [Flotilla_V1_RegionInfo] {
        var result: [Flotilla_V1_RegionInfo] = []
        var index = lastStart(notAfter: start) ?? 0
        while index < starts.count, result.count < limit {
            let entry = starts[index]
            index += 1
            if !end.isEmpty && KeyOrder.compare(entry.start, end) >= 0 { break }
            guard let info = byID[entry.id], info.region.overlaps(start: start, end: end) else { continue }
            result.append(info)
        }
        return result
    }

    /// Every region in key order.
    public var all: [Flotilla_V1_RegionInfo] { starts.compactMap { byID[$0.id] } }

    /// What `update` did.
    public enum Update: Equatable, Sendable {
        /// Refused: the region held for this id, or one overlapping it, is newer.
        case stale(current: Flotilla_V1_Region)
        /// The region's range, epoch and peers are what the tree held; leader and statistics
        /// were refreshed.
        case sameMeta
        /// The region is new or changed; `removed` are the regions it replaced (by epoch).
        case changed(removed: [UInt64])
    }

    /// Records `info`, subject to the epoch rules above. Nothing changes when it is stale.
    @discardableResult
    public mutating func update(_ info: Flotilla_V1_RegionInfo) -> Update {
        let region = info.region
        if let held = byID[region.id] {
            if region.epoch.isStale(comparedTo: held.region.epoch) { return .stale(current: held.region) }
            if held.region == region {
                byID[region.id] = info
                return .sameMeta
            }
        }
        let overlapping = overlaps(region.startKey, region.endKey).filter { $0 != region.id }
        for id in overlapping {
            if let other = byID[id], other.region.epoch.version > region.epoch.version {
                return .stale(current: other.region)
            }
        }
        for id in overlapping { remove(id: id) }
        remove(id: region.id)
        byID[region.id] = info
        let position = firstStart(notBefore: region.startKey)
        starts.insert((region.startKey, region.id), at: position)
        precondition(starts.count == byID.count, "route index out of step with the regions")
        // Ranges stay disjoint: the neighbours end before this region starts and start after it ends.
        if position > 0, let previous = byID[starts[position - 1].id] {
            precondition(!previous.region.endKey.isEmpty && KeyOrder.compare(previous.region.endKey, region.startKey) <= 0,
                         "region \(region.id) overlaps region \(previous.region.id) in the routes")
        }
        if position + 1 < starts.count {
            precondition(!region.endKey.isEmpty && KeyOrder.compare(region.endKey, starts[position + 1].start) <= 0,
                         "region \(region.id) overlaps region \(starts[position + 1].id) in the routes")
        }
        return .changed(removed: overlapping)
    }

    /// Forgets a region (a route found replaced, or a region merged away).
    @discardableResult
    public mutating func remove(id: UInt64) -> Flotilla_V1_RegionInfo? {
        guard let info = byID.removeValue(forKey: id) else { return nil }
        if let index = lastStart(notAfter: info.region.startKey), starts[index].id == id {
            starts.remove(at: index)
        } else if let index = starts.firstIndex(where: { $0.id == id }) {
            starts.remove(at: index)
        }
        precondition(starts.count == byID.count, "route index out of step with the regions")
        assert(!starts.contains { $0.id == id }, "region \(id) left in the route index")  // a scan: debug builds only
        return info
    }

    /// Ids of the held regions overlapping [start, end).
    private func overlaps(_ start: Data, _ end: Data) -> [UInt64] {
        regions(from: start, to: end, limit: Int.max).map(\.region.id)
    }

    /// Index of the last entry whose start key is ≤ `key`.
    private func lastStart(notAfter key: Data) -> Int? {
        let position = firstStart(after: key)
        return position == 0 ? nil : position - 1
    }

    /// Index of the first entry whose start key is > `key`.
    private func firstStart(after key: Data) -> Int {
        var low = 0, high = starts.count
        while low < high {
            let mid = (low + high) / 2
            if KeyOrder.compare(starts[mid].start, key) <= 0 { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// Index of the first entry whose start key is ≥ `key`.
    private func firstStart(notBefore key: Data) -> Int {
        var low = 0, high = starts.count
        while low < high {
            let mid = (low + high) / 2
            if KeyOrder.compare(starts[mid].start, key) < 0 { low = mid + 1 } else { high = mid }
        }
        return low
    }
}
