import FlotillaProto
import Foundation

/// The key ranges of a store's initialized replicas, ordered by start key: which regions a
/// range overlaps, answered by binary search. A store never lets two of its replicas hold
/// overlapping ranges; this map is how it checks before it creates or initializes one.
struct RegionMap {
    /// (start key, region id), ordered by start key.
    private var starts: [(start: Data, regionID: UInt64)] = []
    /// Each region's range.
    private var ranges: [UInt64: (start: Data, end: Data)] = [:]

    var count: Int { ranges.count }

    /// Records (or moves) a region's range.
    /// The range must overlap no other region's: a store never holds two overlapping replicas.
    mutating func set(_ region: Flotilla_V1_Region) {
        precondition(region.endKey.isEmpty || region.startKey.lexicographicallyPrecedes(region.endKey),
                     "region \(region.id): an empty or inverted range")
        remove(region.id)
        let overlapping = overlapping(start: region.startKey, end: region.endKey)
        precondition(overlapping.isEmpty, "region \(region.id) would overlap regions \(overlapping) on this store")
        ranges[region.id] = (region.startKey, region.endKey)
        starts.insert((region.startKey, region.id), at: firstIndex(startingAtOrAfter: region.startKey))
        precondition(starts.count == ranges.count, "region map index out of step with its ranges")
    }

    /// The range recorded for `regionID`, if any.
    func range(of regionID: UInt64) -> (start: Data, end: Data)? { ranges[regionID] }

    mutating func remove(_ regionID: UInt64) {
        guard let range = ranges.removeValue(forKey: regionID) else { return }
        var index = firstIndex(startingAtOrAfter: range.start)
        while index < starts.count, starts[index].start == range.start {
            if starts[index].regionID == regionID {
                starts.remove(at: index)
                precondition(starts.count == ranges.count, "region map index out of step with its ranges")
                return
            }
            index += 1
        }
    }

    /// Regions whose range overlaps [start, end) (an empty end: to the end of the key space).
    func overlapping(start: Data, end: Data) -> [UInt64] {
        // Every region starting before `end` may overlap; walking back from the last of them,
        // ranges are disjoint and ordered, so the first one ending at or before `start` ends
        // the search.
        var index = end.isEmpty ? starts.count : firstIndex(startingAtOrAfter: end)
        var found: [UInt64] = []
        while index > 0 {
            index -= 1
            let candidate = starts[index]
            guard let range = ranges[candidate.regionID] else { continue }
            if !range.end.isEmpty && !start.lexicographicallyPrecedes(range.end) { break }
            found.append(candidate.regionID)
        }
        return found.reversed()
    }

    /// Pairs of regions whose ranges overlap (none, unless a rule was broken).
    func overlaps() -> [(UInt64, UInt64)] {
        var result: [(UInt64, UInt64)] = []
        for (position, current) in starts.enumerated().dropFirst() {
            let previous = starts[position - 1]
            guard let range = ranges[previous.regionID] else { continue }
            if range.end.isEmpty || current.start.lexicographicallyPrecedes(range.end) {
                result.append((previous.regionID, current.regionID))
            }
        }
        return result
    }

    private func firstIndex(startingAtOrAfter key: Data) -> Int {
        var low = 0
        var high = starts.count
        while low < high {
            let middle = (low + high) / 2
            if starts[middle].start.lexicographicallyPrecedes(key) { low = middle + 1 } else { high = middle }
        }
        return low
    }
}
