import FlotillaProto
import Foundation
import Raft
@testable import RaftStore
import Testing

/// Sleeping regions and store liveness at the store level (`Operation/Sleep.swift`).
@Suite("Store: sleeping regions and store liveness")
struct SleepingRegionTests {
    private func quietCluster() throws -> InProcessCluster {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["m"]) { _, settings in
            settings.regionSleepAfterQuietTicks = 5
            settings.storeDeadAfterTicks = 20
        }
        for _ in 0..<80 where cluster.regions.contains(where: { cluster.leader(of: $0.id) == nil }) { try cluster.round() }
        _ = try cluster.write(InProcessCluster.put("a", "1"), key: "a")
        _ = try cluster.write(InProcessCluster.put("z", "1"), key: "z")
        try cluster.rounds(20)
        return cluster
    }

    private func asleepEverywhere(_ cluster: InProcessCluster) -> Bool {
        cluster.storeIDs.allSatisfy { id in
            guard let store = cluster.stores[id] else { return true }
            return store.sleepingRegionCount == store.regionIDs.count
        }
    }

    @Test func storeLivenessPresumesASilentStoreDeadOnceAndRevivesIt() {
        var liveness = StoreLiveness(deadAfterTicks: 10)
        liveness.watch(2, at: 0)
        liveness.watch(3, at: 0)
        liveness.heard(3, at: 8)
        #expect(liveness.expire(at: 9).isEmpty)
        #expect(liveness.expire(at: 10) == [2], "silent for the whole span: presumed dead")
        #expect(liveness.expire(at: 11).isEmpty, "once")
        #expect(!liveness.isAlive(2) && liveness.isAlive(3))
        liveness.heard(2, at: 12)
        #expect(liveness.isAlive(2), "a sign of life revives it")
        liveness.keepWatching(only: [3])
        #expect(liveness.expire(at: 100) == [3], "a store no longer shared is not watched")
    }

    @Test func aStoreThatSpeaksSeldomGetsLongerToLiveButNotForever() {
        var liveness = StoreLiveness(deadAfterTicks: 20)
        liveness.watch(2, at: 0)
        // Heard every 2 ticks: the short span.
        for tick in stride(from: 2, through: 40, by: 2) { liveness.heard(2, at: UInt64(tick)) }
        #expect(liveness.deadSpanTicks(2) == 20)
        // Its loop slows: heard every 25 ticks (an overloaded store's turns). The first gap
        // passes the short span (presumed dead, then alive again); the later ones do not.
        #expect(liveness.expire(at: 60) == [2])
        liveness.heard(2, at: 65)
        #expect(liveness.isAlive(2))
        for tick in stride(from: 90, through: 190, by: 25) {
            #expect(liveness.expire(at: UInt64(tick) - 1).isEmpty, "a slow store is not presumed dead at tick \(tick - 1)")
            liveness.heard(2, at: UInt64(tick))
        }
        #expect(liveness.deadSpanTicks(2) == 100, "four recent gaps, at most five times the short span")
        #expect(liveness.expire(at: 289).isEmpty)
        #expect(liveness.expire(at: 290) == [2], "silent past the longer span: dead")
        // Back 160 ticks after it last spoke (a restart): four such gaps would be 640; the cap holds it.
        liveness.heard(2, at: 350)
        #expect(liveness.deadSpanTicks(2) == 100, "at most five times the short span")
        // Back to normal: the span shrinks back within a few dozen signs of life.
        for tick in stride(from: 352, through: 452, by: 2) { liveness.heard(2, at: UInt64(tick)) }
        #expect(liveness.deadSpanTicks(2) == 20, "the short span again")
    }

    @Test func idleRegionsSleepOnEveryStoreAndStillServe() throws {
        let cluster = try quietCluster()
        #expect(asleepEverywhere(cluster), "every replica sleeps once idle")
        let sent = cluster.stores.values.map(\.regionSleepsTotal).reduce(0, +)
        #expect(sent >= 6)
        // A write wakes its region and completes; the other region sleeps on.
        let result = try cluster.write(InProcessCluster.put("b", "2"), key: "b")
        #expect((try? result.get()) != nil)
        let other = try #require(cluster.region(for: "z"))
        #expect(cluster.storeIDs.allSatisfy { cluster.stores[$0]?.isAsleep(other.id) == true }, "a write wakes only its region")
        // A linearizable read at a sleeping leader: served after one heartbeat round.
        try cluster.rounds(20)
        #expect(asleepEverywhere(cluster))
        let leader = try #require(cluster.leader(of: other.id))
        let read = try #require(try cluster.stores[leader]?.proposeRead(context: cluster.context(other.id)))
        for _ in 0..<10 where cluster.readyReads[read] == nil { try cluster.round(tick: false) }
        #expect(cluster.readyReads[read] == other.id, "the read was confirmed")
        #expect(try cluster.stores[leader]?.get(Data("z".utf8), regionID: other.id) == Data("1".utf8))
    }

    @Test func aSleepingRegionOfAStoreThatDiesElectsALeaderElsewhere() throws {
        let cluster = try quietCluster()
        #expect(asleepEverywhere(cluster))
        let region = try #require(cluster.region(for: "a"))
        let dead = try #require(cluster.leader(of: region.id))
        cluster.crash(dead)
        var rounds = 0
        while cluster.leader(of: region.id) == nil && rounds < 100 {
            try cluster.round()
            rounds += 1
        }
        let successor = cluster.leader(of: region.id)
        #expect(successor != nil && successor != dead, "a new leader after \(rounds) rounds")
        #expect(rounds >= 20, "not before the store was presumed dead (20 ticks): \(rounds)")
        // The follower that stands first campaigns at once, not an election timeout (10–20
        // ticks) after the store was presumed dead.
        #expect(rounds <= 20 + 5, "within the liveness span and one election: \(rounds)")
        #expect(cluster.storeIDs.filter { $0 != dead }.allSatisfy { cluster.stores[$0]?.storesPresumedDead == [dead] })
        // With the dead store's replica excused, the survivors (a quorum) sleep again instead
        // of ticking every region until PD repairs it.
        try cluster.rounds(40)
        let survivors = cluster.storeIDs.filter { $0 != dead }
        #expect(survivors.allSatisfy { cluster.stores[$0]?.isAsleep(region.id) == true },
                "\(survivors.map { cluster.stores[$0]?.sleepBlocker(region.id) ?? "-" })")
        // The dead store comes back: its replica campaigns, which wakes the group; it catches up.
        try cluster.restart(dead)
        try cluster.rounds(60)
        let digests = cluster.digests(region.id)
        #expect(Set(digests.values.map(\.appliedIndex)).count == 1, "every replica caught up: \(digests.mapValues(\.appliedIndex))")
        #expect(cluster.storeIDs.allSatisfy { cluster.stores[$0]?.isAsleep(region.id) == true }, "and all sleep again")
    }

    /// Sleeping regions send nothing, so the stores' own heartbeats are what keeps live
    /// stores from presuming each other dead.
    @Test func storesHeartbeatEachOtherWhileTheirRegionsSleep() throws {
        let cluster = try quietCluster()
        var seen: [UInt64: Int] = [:]
        cluster.holdBack = { destination, message in
            if message.hasStoreHeartbeat { seen[destination, default: 0] += 1 }
            return false
        }
        try cluster.rounds(10)
        #expect(cluster.storeIDs.allSatisfy { (seen[$0] ?? 0) >= 2 * 5 }, "each store hears a heartbeat from both others every 2 ticks: \(seen)")
        #expect(cluster.storeIDs.allSatisfy { cluster.stores[$0]?.storesPresumedDead.isEmpty == true })
    }
}

/// PD hears of sleeping regions on change and on a slow period only.
@Suite("PD reporting of sleeping regions")
struct SleepingRegionReportingTests {
    @Test func aSleepingRegionReportsOnChangeAndEverySlowPeriodOnly() {
        var settings = PDReporting.Settings()
        settings.sleepingRegionHeartbeatInterval = .seconds(60)
        var reporting = PDReporting(settings: settings)
        var region = Flotilla_V1_Region()
        region.id = 7
        region.peers = [peer(701, store: 1, .voter), peer(702, store: 2, .voter)]
        let leader = region.peers[0]
        func report(asleep: Bool) -> LeaderReport { (region, leader, [], [], false, asleep) }
        #expect(reporting.heartbeatsDue([report(asleep: true)], now: .seconds(0)).count == 1, "first: always")
        #expect(reporting.heartbeatsDue([report(asleep: true)], now: .seconds(30)).isEmpty, "asleep: not every 10 s")
        #expect(reporting.heartbeatsDue([report(asleep: false)], now: .seconds(30)).count == 1, "awake: every 10 s")
        #expect(reporting.heartbeatsDue([report(asleep: true)], now: .seconds(60)).isEmpty)
        #expect(reporting.heartbeatsDue([report(asleep: true)], now: .seconds(90)).count == 1, "asleep: every 60 s")
        region.epoch.version = 2
        #expect(reporting.heartbeatsDue([report(asleep: true)], now: .seconds(91)).count == 1, "a change: at once")
        #expect(reporting.heartbeatsDue([report(asleep: true)], now: .seconds(92)).isEmpty)
        #expect(reporting.heartbeatsDue([report(asleep: true)], now: .seconds(92), asked: [7]).count == 1, "PD asked for it")
        #expect(reporting.heartbeatsDue([report(asleep: true)], now: .seconds(93), asked: [8]).isEmpty, "PD asked for another")
        #expect(reporting.heartbeatsDue([report(asleep: true)], now: .seconds(93), askedAll: true).count == 1, "PD asked for all")
    }

    @Test func sleepingRegionsReportEveryMinuteByDefault() {
        #expect(PDReporting.Settings().sleepingRegionHeartbeatInterval == .seconds(60))
        #expect(PDReporting.Settings().regionHeartbeatInterval == .seconds(10))
    }
}

/// A store whose loop runs late (a starved CPU, a slow disk, a paused process) degrades in
/// latency, not availability: its owed ticks move its clocks but run as one tick of work.
@Suite("Store: a late loop")
struct LateLoopTests {
    @Test func aLateStoresFollowersDoNotCampaignAndOtherLeadersStay() throws {
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["d", "h", "l", "p", "t"]) { _, settings in
            settings.regionSleepAfterQuietTicks = 0  // awake, as under load
        }
        for _ in 0..<100 where cluster.regions.contains(where: { cluster.leader(of: $0.id) == nil }) { try cluster.round() }
        try cluster.rounds(5)
        // The late store is the one leading fewest regions: those it leads may rightly move (a
        // leader silent past an election timeout looks dead to punctual followers); every
        // other region must keep its leader and term, and the late store's followers must not
        // campaign for their own lateness.
        let late = try #require(cluster.storeIDs.min { a, b in
            (cluster.regions.filter { cluster.leader(of: $0.id) == a }.count, a) < (cluster.regions.filter { cluster.leader(of: $0.id) == b }.count, b)
        })
        let others = cluster.regions.filter { cluster.leader(of: $0.id) != late }.map(\.id)
        #expect(others.count >= 3, "the late store follows in most regions")
        func leaders() -> [(UInt64?, UInt64?)] {
            others.map { id in (cluster.leader(of: id), cluster.stores[cluster.leader(of: id) ?? 0]?.raftStatus(id)?.term) }
        }
        let before = leaders()
        var campaigns = 0
        // Once every 15 ticks: more than an election timeout, so ticks run one by one would
        // make its followers campaign.
        try Self.runLate(cluster, store: late, lateness: 15, cycles: 10) { message in
            if message.message.kind == UInt32(MessageKind.requestPreVote.rawValue) { campaigns += 1 }
        }
        let after = leaders()
        #expect(after.map(\.0) == before.map(\.0) && after.map(\.1) == before.map(\.1), "leaders stay put: \(before) → \(after)")
        #expect(campaigns == 0, "the late store's followers never campaign for its lateness")
    }

    @Test func quietRegionsFallAsleepWhenEveryLoopIsLate() throws {
        // Every store's every turn late by more than an election timeout (as 100,000 awake
        // regions made them): quiet regions must still fall asleep, or the stores never get
        // out of their overload. Quiet time counts every tick that passed, and a follower that
        // answered in this check-quorum round counts as heard though the clock jumped.
        let cluster = try InProcessCluster(storeCount: 3, splitKeys: ["d", "h", "l", "p", "t"])
        for _ in 0..<100 where cluster.regions.contains(where: { cluster.leader(of: $0.id) == nil }) { try cluster.round() }
        // A write to every region wakes it and starts its quiet time from nothing.
        for key in ["a", "e", "i", "m", "q", "u"] { _ = try cluster.write(InProcessCluster.put(key, "v"), key: key) }
        let leaders = cluster.regions.map { cluster.leader(of: $0.id) }
        #expect(cluster.regions.allSatisfy { region in cluster.storeIDs.allSatisfy { cluster.stores[$0]?.isAsleep(region.id) == false } })
        var waiting: [UInt64: [Flotilla_V1_RaftMessage]] = [:]
        for _ in 0..<6 {
            for storeID in cluster.storeIDs {
                let store = try #require(cluster.stores[storeID])
                store.tick(passing: 15)
                for message in waiting.removeValue(forKey: storeID) ?? [] { store.step(message) }
                for (destination, messages) in try store.runTurn().messagesByStore { waiting[destination, default: []] += messages }
            }
        }
        #expect(cluster.regions.map { cluster.leader(of: $0.id) } == leaders, "no leader changed")
        let awake = cluster.regions.flatMap { region in
            cluster.storeIDs.filter { cluster.stores[$0]?.isAsleep(region.id) == false }.map { "region \(region.id) on store \($0): \(cluster.stores[$0]?.sleepBlocker(region.id) ?? "-")" }
        }
        #expect(awake.isEmpty, "every replica asleep after 6 late turns each: \(awake)")
    }

    /// Runs `cycles` cycles in which every store but `late` runs `lateness` rounds and then
    /// `late` runs one turn owing `lateness` ticks, with what was sent to it meanwhile (held
    /// back, as in its socket); `sent` sees each message it sends.
    static func runLate(_ cluster: InProcessCluster, store late: UInt64, lateness: Int, cycles: Int,
                        sent: (Flotilla_V1_RaftMessage) -> Void) throws {
        var waiting: [Flotilla_V1_RaftMessage] = []
        cluster.holdBack = { destination, message in
            if destination == late { waiting.append(message); return true }
            return false
        }
        defer { cluster.holdBack = nil }
        for _ in 0..<cycles {
            for _ in 0..<lateness {
                // Out of the rounds, not down: what is sent to it is held back, not dropped.
                let lateStore = cluster.stores.removeValue(forKey: late)
                try cluster.round()
                cluster.stores[late] = lateStore
            }
            let store = try #require(cluster.stores[late])
            store.tick(passing: lateness)
            for message in waiting { store.step(message) }
            waiting = []
            cluster.held = []
            let output = try store.runTurn()
            for (destination, messages) in output.messagesByStore {
                for message in messages {
                    sent(message)
                    cluster.stores[destination]?.step(message)
                }
            }
        }
    }
}
