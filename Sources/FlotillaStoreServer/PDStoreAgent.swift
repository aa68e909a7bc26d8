import FlotillaClient
import FlotillaCluster
import FlotillaNode
import FlotillaProto
import Foundation
import Logging
import Raft
import RaftStore
import Synchronization

/// A store's side of PD: store heartbeats, a heartbeat from every region it leads
/// (periodically, and at once when the region or its leader changed), PD's operator steps
/// carried out through the region's log, and addresses of other stores learnt from PD.
final class PDStoreAgent: Sendable {
    /// What the agent needs to talk to PD.
    struct Link: Sendable {
        let client: PDClient
        let store: Flotilla_V1_Store
        var storeHeartbeatInterval: Duration = .seconds(1)
        var regionHeartbeatInterval: Duration = .seconds(10)
        /// A replica here that has heard from no leader for this many ticks is checked with
        /// PD (and destroyed when PD shows it was removed).
        var staleReplicaTicks: UInt64 = 600
    }

    /// Replicas checked with PD in one round, at most (a partition may silence thousands).
    static let staleChecksPerRoundMax = 16
    /// The agent's decisions (heartbeats due, steps, split retries, stale checks), shared
    /// with the cluster simulation; its clock is the time since `startedAt`.
    private let reporting: Mutex<PDReporting>
    private let startedAt = ContinuousClock.now
    private var now: Duration { ContinuousClock.now - startedAt }

    let link: Link
    private let driver: StoreDriver
    private let snapshotSender: SnapshotSender
    private let logger: Logger
    private let dataDirectory: String
    private let splitTriggers: SplitTriggers
    /// What the last size check of each region found (reported in its heartbeats).
    private let regionSizes = Mutex<[UInt64: SplitCheckPlan.Outcome]>([:])
    /// Seconds in a row each region led here has been over the load-split rate.
    private let hotSeconds = Mutex<[UInt64: Double]>([:])

    private let snapshotsReceiving: SnapshotReceiveCount
    /// Each led region's read and write rates over the last round (reported in its heartbeats),
    /// and the store's totals.
    private let regionRates = Mutex<[UInt64: Flotilla_V1_RegionStats]>([:])
    private let storeRates = Mutex(Flotilla_V1_RegionStats())

    init(link: Link, driver: StoreDriver, snapshotSender: SnapshotSender, logger: Logger, dataDirectory: String,
         splitTriggers: SplitTriggers = SplitTriggers(), snapshotsReceiving: SnapshotReceiveCount = SnapshotReceiveCount()) {
        self.splitTriggers = splitTriggers
        self.snapshotsReceiving = snapshotsReceiving
        self.link = link
        self.driver = driver
        self.snapshotSender = snapshotSender
        self.logger = logger
        self.dataDirectory = dataDirectory
        var settings = PDReporting.Settings()
        settings.regionHeartbeatInterval = link.regionHeartbeatInterval
        settings.splitRetryInterval = Self.splitRetryInterval
        settings.staleChecksPerRoundMax = Self.staleChecksPerRoundMax
        reporting = Mutex(PDReporting(settings: settings))
    }

    /// What the store thread reports each round.
    private struct Report: Sendable {
        var leaders: [LeaderReport] = []
        var regionCount = 0
        var pendingRequests = 0
        var unresolved: Set<UInt64> = []
        var peerStores: Set<UInt64> = []
    }

    /// Runs until cancelled, with the PD client's connections.
    func run() async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                do {
                    try await self.link.client.run()
                    self.logger.notice("PD client connections ended")
                } catch {
                    self.logger.error("PD client connections failed: \(error)")
                }
            }
            group.addTask {
                await self.loop()
                self.logger.notice("PD agent stopped")
                self.link.client.close()
            }
        }
    }

    private func loop() async {
        var known: Set<UInt64> = [link.store.id]
        let clock = ContinuousClock()
        var lastRound: ContinuousClock.Instant?
        while !Task.isCancelled {
            // A round every store heartbeat interval, or at once when the store thread signals
            // a split applied here (the new regions' routes reach PD without waiting).
            let roundDue = clock.now + link.storeHeartbeatInterval
            if await driver.splitsApplied.wait(upTo: roundDue - clock.now) { await awaitSplitLeaders() }
            if Task.isCancelled { return }
            let roundStarted = clock.now
            await checkSizes()
            await checkSilentReplicas()
            await checkLoads(interval: roundStarted - (lastRound ?? roundStarted - link.storeHeartbeatInterval))
            lastRound = roundStarted
            guard let report = await driver.perform({ core, network -> Report in
                var report = Report()
                report.leaders = core.leaderReports()
                report.regionCount = core.regionIDs.count
                report.pendingRequests = core.pendingRequestCount
                report.unresolved = network.unresolvedStores
                report.peerStores = Set(core.regionIDs.compactMap { core.region($0) }.flatMap { $0.peers.map(\.storeID) })
                return report
            }) else { return }
            // Addresses of stores this one talks to, from PD.
            for storeID in report.unresolved.union(report.peerStores).subtracting(known).sorted() {
                if await resolve(storeID) { known.insert(storeID) }
            }
            let asked = await storeHeartbeat(report)
            let now = self.now
            let leaders = report.leaders
            var due = reporting.withLock {
                $0.heartbeatsDue(leaders, now: now, asked: Set(asked.reportRegions), askedAll: asked.reportAllRegions)
            }
            for index in due.indices {
                let regionID = due[index].region.id
                if let rates = regionRates.withLock({ $0[regionID] }) { due[index].stats = rates }
                if let size = regionSizes.withLock({ $0[regionID] }) {
                    due[index].stats.approximateSizeBytes = size.sizeBytes
                    due[index].stats.approximateKeys = size.keys
                }
            }
            if !due.isEmpty { await regionHeartbeats(due) }
        }
    }

    /// Learns where store `storeID` listens (KV and Raft) and tells the transport and the
    /// snapshot sender. False when PD does not know it (yet).
    @discardableResult
    func resolve(_ storeID: UInt64) async -> Bool {
        let info: Flotilla_V1_StoreInfo
        do {
            info = try await link.client.call { client, header in
                var request = Flotilla_V1_GetStoreRequest()
                request.header = header
                request.storeID = storeID
                let response = try await client.getStore(request)
                return (response.store, response.header)
            }
        } catch {
            logger.debug("cannot resolve store \(storeID) through PD: \(error)")
            return false
        }
        guard let address = HostPort(info.store.address), let raftAddress = HostPort(info.store.raftAddress) else { return false }
        snapshotSender.setAddress(address, for: storeID)
        let logger = self.logger
        _ = await driver.perform { _, network in
            do { try network.setPeer(storeID, address: raftAddress) } catch {
                logger.warning("store \(storeID)'s Raft address \(raftAddress) is unusable: \(error)")
            }
        }
        return true
    }

    /// The store heartbeat; PD's answer names the regions it wants reported now (none when
    /// the call failed).
    private func storeHeartbeat(_ report: Report) async -> Flotilla_V1_StoreHeartbeatResponse {
        var stats = Flotilla_V1_StoreStats()
        stats.regionCount = UInt64(report.regionCount)
        stats.leaderCount = UInt64(report.leaders.count)
        var fs = statvfs()
        if statvfs(dataDirectory, &fs) == 0 {
            stats.capacityBytes = UInt64(fs.f_blocks) * UInt64(fs.f_frsize)
            stats.availableBytes = UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
            stats.usedBytes = stats.capacityBytes - min(stats.capacityBytes, UInt64(fs.f_bfree) * UInt64(fs.f_frsize))
        }
        stats.busy = report.pendingRequests > 8_192
        let rates = storeRates.withLock { $0 }
        stats.readBytesPerSecond = rates.readBytesPerSecond
        stats.readKeysPerSecond = rates.readKeysPerSecond
        stats.writtenBytesPerSecond = rates.writtenBytesPerSecond
        stats.writtenKeysPerSecond = rates.writtenKeysPerSecond
        stats.snapshotsSending = UInt32(clamping: snapshotSender.sendingCount)
        stats.snapshotsReceiving = UInt32(clamping: snapshotsReceiving.current)
        let storeID = link.store.id
        let sentStats = stats
        do {
            return try await link.client.call { client, header in
                var request = Flotilla_V1_StoreHeartbeatRequest()
                request.header = header
                request.storeID = storeID
                request.stats = sentStats
                let response = try await client.storeHeartbeat(request)
                return (response, response.header)
            }
        } catch {
            logger.warning("store heartbeat to PD failed: \(error)")
            return Flotilla_V1_StoreHeartbeatResponse()
        }
    }

    /// The round's region heartbeats on one stream; each answer's step is carried out.
    private func regionHeartbeats(_ regions: [Flotilla_V1_RegionInfo]) async {
        let storeID = link.store.id
        let answers: [Flotilla_V1_RegionHeartbeatResponse]
        do {
            answers = try await link.client.call { client, header in
                let requests = regions.map { info in
                    var request = Flotilla_V1_RegionHeartbeatRequest()
                    request.storeID = storeID
                    request.region = info
                    return request
                }
                // The round in batches of at most 1,024 on one stream (PD's per-message costs
                // paid per batch); one answer message per batch, in order.
                let batches = stride(from: 0, to: requests.count, by: Self.heartbeatsPerBatchMax).map { start in
                    var batch = Flotilla_V1_RegionHeartbeatBatch()
                    batch.header = header
                    batch.heartbeats = Array(requests[start..<min(start + Self.heartbeatsPerBatchMax, requests.count)])
                    return batch
                }
                let responses = try await client.regionHeartbeatBatches(requestProducer: { writer in
                    for batch in batches { try await writer.write(batch) }
                }, onResponse: { response in
                    var responses: [Flotilla_V1_RegionHeartbeatBatchResponse] = []
                    for try await message in response.messages { responses.append(message) }
                    return responses
                })
                // A refusal of the whole round (not the leader, another cluster) is a batch's header.
                var header = responses.first { $0.header.hasError }?.header ?? Flotilla_V1_PDResponseHeader()
                if !header.hasError, let first = responses.first { header.clusterID = first.header.clusterID }
                return (responses.flatMap(\.answers), header)
            }
        } catch {
            logger.warning("region heartbeats to PD failed", metadata: ["regions": "\(regions.count)", "error": "\(error)"])
            return
        }
        let byID = Dictionary(regions.map { ($0.region.id, $0.region) }, uniquingKeysWith: { first, _ in first })
        for answer in answers {
            guard let region = byID[answer.regionID] else { continue }
            if answer.header.hasError {
                logger.warning("PD refused a region heartbeat", metadata: ["region_id": "\(region.id)", "error": "\(answer.header.error.message)"])
                continue
            }
            guard let action = PDReporting.action(for: answer, region: region) else { continue }
            await carryOut(action, region: region)
        }
    }

    /// Asks PD about replicas here that have heard from no leader for `staleReplicaTicks`
    /// (each at most once per that interval, `staleChecksPerRoundMax` per round): one PD
    /// lists at a newer conf_ver without it was removed while it could not hear of it, and is
    /// destroyed (TiKV's stale peer check).
    private func checkSilentReplicas() async {
        let minTicks = link.staleReplicaTicks
        guard let silent = await driver.perform({ core, _ in core.silentReplicas(minTicks: minTicks) }) else { return }
        let now = self.now
        for replica in reporting.withLock({ $0.staleChecksDue(silent, now: now) }) {
            guard let current = try? await link.client.region(id: replica.regionID), current.hasRegion else { continue }
            let region = current.region.region
            let (regionID, peerID) = (replica.regionID, replica.peerID)
            // Destroyed (and logged as a task carried out) when PD's region shows it removed.
            _ = driver.submit(.destroyIfRemoved(regionID: regionID, peerID: peerID, region: region))
        }
    }

    /// Makes one operator step through the region's log (or a leadership transfer).
    private func carryOut(_ action: PDStepAction, region: Flotilla_V1_Region) async {
        switch action {
        case .split(let keys):
            await proposeSplit(region: region, keys: keys)
        case .task(let task, let resolveStores):
            // A new replica's store must be reachable before it is asked to catch up.
            for storeID in resolveStores {
                guard await resolve(storeID) else { return }
            }
            if !driver.submit(task) {
                logger.warning("PD step not handed to the store (inbox full or stopping)", metadata: ["task": "\(task.summary)"])
            }
        }
    }

    /// Asks PD for the new regions' ids and proposes the split through the region's log
    /// (once per epoch version: PD repeats the step until a heartbeat shows it done; a
    /// proposal lost with a leader change is made again after `splitRetryInterval`).
    func proposeSplit(region: Flotilla_V1_Region, keys: [Data]) async {
        let regionID = region.id
        let now = self.now
        guard reporting.withLock({ $0.beginSplit(of: region, now: now) }) else { return }
        let newRegions: [Flotilla_V1_SplitRegionIDs]
        do {
            newRegions = try await link.client.askSplit(region: region, splitCount: UInt32(keys.count))
        } catch {
            logger.warning("PD gave no ids for a split", metadata: ["region_id": "\(regionID)", "error": "\(error)"])
            reporting.withLock { $0.splitAbandoned(regionID: regionID) }
            return
        }
        let logger = self.logger
        let proposal = SplitProposal(regionID: regionID, epoch: region.epoch, keys: keys, newRegions: newRegions)
        logger.info("split proposed", metadata: ["region_id": "\(regionID)", "keys": "\(keys.count)",
                                                 "new_regions": "\(newRegions.map(\.regionID))"])
        driver.proposeSplit(proposal, timeout: Self.splitRetryInterval) { result in
            switch result {
            case .success(let written) where written.refused.isEmpty: break
            case .success(let written): logger.warning("split refused", metadata: ["region_id": "\(regionID)", "error": "\(written.refused)"])
            case .failure(let error): logger.warning("split not applied here", metadata: ["region_id": "\(regionID)", "error": "\(error)"])
            }
        }
    }

    private static let splitRetryInterval: Duration = .seconds(10)
    /// Heartbeats in one `RegionHeartbeatBatch` (PD's limit).
    static let heartbeatsPerBatchMax = 1_024

    /// A split asked of this store directly (`StoreAdmin.SplitRegion`): checked against the
    /// region led here, ids from PD, proposed, and answered once applied here with the region
    /// and the regions it made.
    func split(context: Flotilla_V1_RequestContext, keys: [Data]) async -> Result<[Flotilla_V1_Region], StoreRequestError> {
        let regionID = context.regionID
        guard let checked = await driver.perform({ core, _ in
            Result { () throws(StoreRequestError) -> Flotilla_V1_Region in
                try core.checkSplitRequest(context: context, keys: keys)
            }
        }) else { return .failure(.serverIsBusy(reason: "the store is stopping")) }
        let region: Flotilla_V1_Region
        switch checked {
        case .success(let value): region = value
        case .failure(let error): return .failure(error)
        }
        let newRegions: [Flotilla_V1_SplitRegionIDs]
        do {
            newRegions = try await link.client.askSplit(region: region, splitCount: UInt32(keys.count))
        } catch {
            return .failure(.serverIsBusy(reason: "PD gave no ids for the split: \(error)"))
        }
        let timeout: Duration = context.timeoutMs > 0 ? .milliseconds(Int(min(context.timeoutMs, KVLimits.requestTimeoutMillisecondsMax))) : .seconds(10)
        switch await driver.split(SplitProposal(regionID: regionID, epoch: region.epoch, keys: keys, newRegions: newRegions), timeout: timeout) {
        case .failure(let error): return .failure(error)
        case .success(let result) where !result.refused.isEmpty:
            return .failure(.invalidArgument(field: "split_keys", reason: result.refused))
        case .success:
            let ids = [regionID] + newRegions.map(\.regionID)
            let regions = await driver.perform { core, _ in ids.compactMap { core.region($0) } } ?? []
            logger.info("split done", metadata: ["region_id": "\(regionID)", "new_regions": "\(newRegions.map(\.regionID))"])
            return .success(regions)
        }
    }

    /// Waits (at most `splitLeaderWait`) until the new regions whose replicas here campaigned
    /// at their split lead, so their first heartbeats go with their parent's.
    private func awaitSplitLeaders() async {
        let deadline = ContinuousClock.now + Self.splitLeaderWait
        while ContinuousClock.now < deadline {
            let waiting = driver.splitRegionsCampaigning.withLock { $0 }
            guard !waiting.isEmpty else { return }
            let settled = await driver.perform { core, _ in
                // Led here now, or no longer campaigning here (another store won, or it is gone).
                waiting.filter { core.raftStatus($0).map { $0.role == .leader || $0.role == .follower } ?? true }
            } ?? waiting
            driver.splitRegionsCampaigning.withLock { $0.subtract(settled) }
            if settled.count == waiting.count { return }
            do { try await Task.sleep(for: .milliseconds(5)) } catch { return }
        }
        driver.splitRegionsCampaigning.withLock { $0.removeAll() }
    }

    private static let splitLeaderWait: Duration = .milliseconds(500)

    /// Size checks of the regions led here that were written enough since their last one:
    /// each read from a RocksDB snapshot off the store thread; a region past its max size is
    /// split at the keys found.
    private func checkSizes() async {
        let diffBytes = splitTriggers.splitCheckDiffBytes
        guard let plans = await driver.perform({ core, _ in core.splitCheckPlans(diffBytes: diffBytes) }), !plans.isEmpty else { return }
        for plan in plans {
            let outcome: SplitCheckPlan.Outcome
            do { outcome = try plan.run(splitTriggers) } catch {
                logger.warning("size check failed", metadata: ["region_id": "\(plan.region.id)", "error": "\(error)"])
                continue
            }
            regionSizes.withLock { $0[plan.region.id] = outcome }
            guard !outcome.splitKeys.isEmpty else { continue }
            logger.info("region past its max size", metadata: ["region_id": "\(plan.region.id)", "size_bytes": "\(outcome.sizeBytes)",
                                                              "keys": "\(outcome.keys)", "split_keys": "\(outcome.splitKeys.count)"])
            await proposeSplit(region: plan.region, keys: outcome.splitKeys)
        }
        // Forget regions that are gone or no longer led here.
        if let led = await driver.perform({ core, _ in Set(core.leaderReports().map(\.region.id)) }) {
            regionSizes.withLock { sizes in sizes = sizes.filter { led.contains($0.key) } }
        }
    }

    /// Load split: a region led here above `loadSplitRequestsPerSecond` for
    /// `loadSplitSeconds` rounds in a row splits at the sampled key that balances its load.
    private func checkLoads(interval: Duration) async {
        let threshold = splitTriggers.loadSplitRequestsPerSecond
        guard let loads = await driver.perform({ core, _ in core.takeRegionLoads() }) else { return }
        let seconds = max(Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18, 0.001)
        // Read and write rates over the round, per region and for the store.
        func perSecond(_ count: Int) -> UInt64 { UInt64(Double(count) / seconds) }
        var rates: [UInt64: Flotilla_V1_RegionStats] = [:]
        var total = Flotilla_V1_RegionStats()
        for load in loads {
            var stats = Flotilla_V1_RegionStats()
            stats.readKeysPerSecond = perSecond(load.readKeys)
            stats.readBytesPerSecond = perSecond(load.readBytes)
            stats.writtenKeysPerSecond = perSecond(load.writtenKeys)
            stats.writtenBytesPerSecond = perSecond(load.writtenBytes)
            rates[load.region.id] = stats
            total.readKeysPerSecond += stats.readKeysPerSecond
            total.readBytesPerSecond += stats.readBytesPerSecond
            total.writtenKeysPerSecond += stats.writtenKeysPerSecond
            total.writtenBytesPerSecond += stats.writtenBytesPerSecond
        }
        let roundRates = rates
        regionRates.withLock { $0 = roundRates }
        storeRates.withLock { $0 = total }
        guard threshold > 0 else { return }
        var due: [RegionLoad] = []
        hotSeconds.withLock { hot in
            var next: [UInt64: Double] = [:]
            for load in loads where Double(load.requests) / seconds >= Double(threshold) {
                let hotFor = (hot[load.region.id] ?? 0) + seconds
                if hotFor >= Double(splitTriggers.loadSplitSeconds) { due.append(load) } else { next[load.region.id] = hotFor }
            }
            hot = next
        }
        for load in due {
            guard let key = load.balancedSplitKey else {
                logger.info("hot region has no key that divides its load (one hot key?)", metadata: ["region_id": "\(load.region.id)"])
                continue
            }
            logger.info("hot region splits", metadata: ["region_id": "\(load.region.id)", "requests": "\(load.requests)",
                                                        "split_key": "\(KeyOrder.printable(key))"])
            await proposeSplit(region: load.region, keys: [key])
        }
    }
}
