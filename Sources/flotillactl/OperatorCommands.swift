import ArgumentParser
import FlotillaClient
import FlotillaProto
import Foundation

/// `flotillactl operator list|show|cancel`: PD's operators, running and ended.
struct OperatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operator",
        abstract: "List, show and cancel PD's operators.",
        subcommands: [List.self, Show.self, Cancel.self]
    )

    static func status(_ status: Flotilla_V1_OperatorStatus) -> String {
        switch status {
        case .running: "running"
        case .succeeded: "succeeded"
        case .timedOut: "timed out"
        case .cancelled: "cancelled"
        case .failed: "failed"
        case .UNRECOGNIZED(let value): "status \(value)"
        }
    }

    static func json(_ op: Flotilla_V1_OperatorInfo) -> [String: Any] {
        ["id": String(op.id), "regionId": op.regionID, "origin": op.origin, "description": op.description_p,
         "step": op.currentStep, "steps": op.steps.count, "status": status(op.status), "reason": op.reason, "ageMs": op.ageMs]
    }

    static func line(_ op: Flotilla_V1_OperatorInfo) -> String {
        let step = op.status == .running ? "  step \(min(Int(op.currentStep) + 1, op.steps.count)) of \(op.steps.count)" : ""
        let reason = op.reason.isEmpty ? "" : "  (\(op.reason))"
        return "operator \(op.id)  region \(op.regionID)  \(op.origin)  \(status(op.status))\(step)  \(op.ageMs) ms  \(op.description_p)\(reason)"
    }

    /// Polls operator `id` until it ends, printing each step as it starts; exit 1 unless it
    /// succeeded.
    static func follow(_ id: UInt64, options: Region.Options) async throws {
        var shownStep = -1
        // For a step adding a learner: the store receiving its snapshot, asked for progress.
        let stores = try FlotillaClient(pd: try options.endpoints(), requestTimeout: .seconds(2))
        let connections = Task { try await stores.run() }
        defer { stores.close(); connections.cancel() }
        var lastSnapshotLine = ContinuousClock.now - .seconds(10)
        while true {
            let found = try await options.withPD { client in try await client.operators(includeHistory: true).first { $0.id == id } }
            guard let op = found else {
                FileHandle.standardError.write(Data("flotillactl: operator \(id) is no longer known to PD (a PD leader change cancels running operators)\n".utf8))
                throw ExitCode(1)
            }
            if op.status == .running, Int(op.currentStep) != shownStep, Int(op.currentStep) < op.steps.count {
                shownStep = Int(op.currentStep)
                print("step \(shownStep + 1) of \(op.steps.count): \(Self.describe(op.steps[shownStep]))")
            }
            if op.status == .running, Int(op.currentStep) < op.steps.count, let target = Self.learnerStore(op.steps[Int(op.currentStep)]),
               ContinuousClock.now - lastSnapshotLine >= .seconds(1) {
                try? await stores.discoverStores()
                if let progress = (try? await stores.storeStatus(target))?.snapshotsReceiving.first(where: { $0.regionID == op.regionID }) {
                    let megabytes = Double(progress.bytes) / 1e6
                    let rate = progress.elapsedMs > 0 ? megabytes / (Double(progress.elapsedMs) / 1000) : 0
                    print(String(format: "  snapshot to store %llu: %.1f MB received (%.1f MB/s)", target, megabytes, rate))
                    lastSnapshotLine = ContinuousClock.now
                }
            }
            if op.status != .running {
                print(line(op))
                if op.status != .succeeded { throw ExitCode(1) }
                return
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// The store a step adds a learner on (which then receives a snapshot), if any.
    static func learnerStore(_ step: Flotilla_V1_OperatorStep) -> UInt64? {
        switch step.step {
        case .changePeer(let change) where change.kind == .addLearner: change.peer.storeID
        case .changePeers(let changes): changes.changes.first { $0.kind == .addLearner }?.peer.storeID
        default: nil
        }
    }

    static func describe(_ step: Flotilla_V1_OperatorStep) -> String {
        switch step.step {
        case .changePeer(let change): "\(change.kind) peer \(change.peer.id) on store \(change.peer.storeID)"
        case .changePeers(let changes): changes.changes.map { "\($0.kind) peer \($0.peer.id) on store \($0.peer.storeID)" }.joined(separator: " + ") + " (joint)"
        case .transferLeader(let transfer): "transfer leader to store \(transfer.peer.storeID)"
        case .splitRegion(let split): "split at \(split.splitKeys.count) key(s)"
        case nil: "empty step"
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Running operators (with --all, also the ended ones PD remembers).")
        @OptionGroup var options: Region.Options
        @Flag(name: .customLong("all"), help: "Also ended operators.") var all = false
        @Flag(name: .customLong("json"), help: "A JSON array.") var json = false

        func run() async throws {
            let includeHistory = all
            let ops = try await options.withPD { try await $0.operators(includeHistory: includeHistory) }
            if json { return try Region.printJSON(ops.map(OperatorCommand.json)) }
            for op in ops { print(OperatorCommand.line(op)) }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One operator by id, with its steps.")
        @OptionGroup var options: Region.Options
        @Argument(help: "The operator's id.") var id: UInt64
        @Flag(name: .customLong("json"), help: "A JSON object.") var json = false

        func run() async throws {
            let operatorID = id
            guard let op = try await options.withPD({ try await $0.operators(includeHistory: true).first { $0.id == operatorID } }) else {
                FileHandle.standardError.write(Data("flotillactl: PD knows no operator \(operatorID) (flotillactl operator list --all)\n".utf8))
                throw ExitCode(1)
            }
            if json { return try Region.printJSON(OperatorCommand.json(op)) }
            print(OperatorCommand.line(op))
            for (index, step) in op.steps.enumerated() { print("  \(index + 1). \(OperatorCommand.describe(step))") }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel the running operator of a region (its half-done work is undone by the replica checker).")
        @OptionGroup var options: Region.Options
        @Argument(help: "The region's id.") var region: UInt64

        func run() async throws {
            let regionID = region
            try await options.withPD { try await $0.cancelOperator(regionID: regionID) }
            print("cancelled the operator of region \(regionID)")
        }
    }
}

/// `flotillactl scheduler list|pause|resume|config`: PD's schedulers, switched at run time.
struct SchedulerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "List, pause, resume and configure PD's schedulers.",
        subcommands: [List.self, Pause.self, Resume.self, Config.self]
    )

    static let names = ["replica-checker", "balance-region", "balance-leader", "hot-region"]

    static func set(_ name: String, enabled: Bool, options: Region.Options) async throws {
        guard names.contains(name) else { throw ValidationError("unknown scheduler '\(name)': one of \(names.joined(separator: ", "))") }
        try await options.withPD { client in
            try await client.updateSchedulerSettings { settings in
                switch name {
                case "replica-checker": settings.replicaCheckerEnabled = enabled
                case "balance-region": settings.balanceRegionEnabled = enabled
                case "balance-leader": settings.balanceLeaderEnabled = enabled
                default: settings.hotRegionEnabled = enabled
                }
            }
        }
        print("\(name) \(enabled ? "resumed" : "paused")")
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every scheduler, whether it runs, and the operators it made under this PD leader.")
        @OptionGroup var options: Region.Options
        @Flag(name: .customLong("json"), help: "A JSON array.") var json = false

        func run() async throws {
            let schedulers = try await options.withPD { try await $0.schedulers() }
            if json {
                return try Region.printJSON(schedulers.map { ["name": $0.name, "enabled": $0.enabled, "description": $0.description_p, "operatorsMade": $0.operatorsMade] })
            }
            for scheduler in schedulers {
                print("\(scheduler.name)  \(scheduler.enabled ? "running" : "paused")  \(scheduler.operatorsMade) operators  \(scheduler.description_p)")
            }
        }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop a scheduler making new operators (running ones finish).")
        @OptionGroup var options: Region.Options
        @Argument(help: "replica-checker, balance-region, balance-leader or hot-region") var name: String
        func run() async throws { try await SchedulerCommand.set(name, enabled: false, options: options) }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a paused scheduler run again.")
        @OptionGroup var options: Region.Options
        @Argument(help: "replica-checker, balance-region, balance-leader or hot-region") var name: String
        func run() async throws { try await SchedulerCommand.set(name, enabled: true, options: options) }
    }

    struct Config: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show PD's scheduling settings, or change some of them.",
            discussion: "Without options, prints them. Each option changes one setting; PD refuses a value out of bounds.")
        @OptionGroup var options: Region.Options
        @Option(name: .customLong("max-replicas")) var maxReplicas: UInt32?
        @Option(name: .customLong("max-store-down-time-seconds")) var maxStoreDownTimeSeconds: UInt64?
        @Option(name: .customLong("balance-tolerance-percent")) var balanceTolerancePercent: UInt32?
        @Option(name: .customLong("store-limit")) var storeLimit: UInt32?
        @Option(name: .customLong("isolation-label"), help: "A store label replicas keep distinct values of (\"\" for none).") var isolationLabel: String?
        @Flag(name: .customLong("json"), help: "A JSON object.") var json = false

        func run() async throws {
            let (replicas, downTime, tolerance, limit, label) = (maxReplicas, maxStoreDownTimeSeconds, balanceTolerancePercent, storeLimit, isolationLabel)
            if replicas != nil || downTime != nil || tolerance != nil || limit != nil || label != nil {
                try await options.withPD { client in
                    try await client.updateSchedulerSettings { settings in
                        if let replicas { settings.maxReplicas = replicas }
                        if let downTime { settings.maxStoreDownTimeSeconds = downTime }
                        if let tolerance { settings.balanceTolerancePercent = tolerance }
                        if let limit { settings.storeLimit = limit }
                        if let label { settings.isolationLabel = label }
                    }
                }
            }
            let settings = try await options.withPD { try await $0.schedulerSettings() }
            let object: [String: Any] = [
                "maxReplicas": settings.maxReplicas, "maxStoreDownTimeSeconds": settings.maxStoreDownTimeSeconds,
                "replicaChecker": settings.replicaCheckerEnabled, "balanceRegion": settings.balanceRegionEnabled,
                "balanceLeader": settings.balanceLeaderEnabled, "hotRegion": settings.hotRegionEnabled,
                "balanceTolerancePercent": settings.effectiveTolerance, "storeLimit": settings.effectiveLimit,
                "isolationLabel": settings.isolationLabel,
            ]
            if json { return try Region.printJSON(object) }
            for (key, value) in object.sorted(by: { $0.key < $1.key }) { print("\(key): \(value)") }
        }
    }
}

extension Flotilla_V1_SchedulerSettings {
    var effectiveTolerance: UInt32 { balanceTolerancePercent == 0 ? 10 : balanceTolerancePercent }
    var effectiveLimit: UInt32 { storeLimit == 0 ? 4 : storeLimit }
}

/// `flotillactl store list|show|drain|resume`: stores as PD knows them, and draining one.
struct StoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "List, show and drain stores.",
        subcommands: [List.self, Show.self, Drain.self, Resume.self]
    )

    static func state(_ info: Flotilla_V1_StoreInfo) -> String {
        switch info.store.state {
        case .up: info.liveness == .up ? "up" : info.liveness == .down ? "down" : "disconnected"
        case .offline: "offline"
        case .tombstone: "tombstone"
        case .UNRECOGNIZED(let value): "state \(value)"
        }
    }

    static func json(_ info: Flotilla_V1_StoreInfo) -> [String: Any] {
        ["id": info.store.id, "address": info.store.address, "raftAddress": info.store.raftAddress, "state": state(info),
         "regionCount": info.stats.regionCount, "leaderCount": info.stats.leaderCount,
         "labels": Dictionary(info.store.labels.map { ($0.key, $0.value) }, uniquingKeysWith: { first, _ in first }),
         "lastHeartbeatAgeMs": info.lastHeartbeatAgeMs]
    }

    static func line(_ info: Flotilla_V1_StoreInfo) -> String {
        let labels = info.store.labels.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        return "store \(info.store.id)  \(info.store.address)  \(state(info))  regions \(info.stats.regionCount)  leaders \(info.stats.leaderCount)\(labels.isEmpty ? "" : "  \(labels)")"
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every store PD knows (tombstones too).")
        @OptionGroup var options: Region.Options
        @Flag(name: .customLong("json"), help: "A JSON array.") var json = false

        func run() async throws {
            let stores = try await options.withPD { try await $0.stores() }
            if json { return try Region.printJSON(stores.map(StoreCommand.json)) }
            for store in stores { print(StoreCommand.line(store)) }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One store by id.")
        @OptionGroup var options: Region.Options
        @Argument(help: "The store's id.") var id: UInt64
        @Flag(name: .customLong("json"), help: "A JSON object.") var json = false

        func run() async throws {
            let storeID = id
            guard let store = try await options.withPD({ try await $0.stores().first { $0.store.id == storeID } }) else {
                FileHandle.standardError.write(Data("flotillactl: PD knows no store \(storeID) (flotillactl store list)\n".utf8))
                throw ExitCode(1)
            }
            if json { return try Region.printJSON(StoreCommand.json(store)) }
            print(StoreCommand.line(store))
        }
    }

    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move every replica off a store; PD then makes it a tombstone (also: store delete).",
            discussion: "Refused when too few other stores could take its replicas. With --wait, shows the replicas left until it is a tombstone.",
            aliases: ["delete"])
        @OptionGroup var options: Region.Options
        @Argument(help: "The store's id.") var id: UInt64
        @Flag(name: .customLong("wait"), help: "Wait until the store is a tombstone.") var wait = false

        func run() async throws {
            let storeID = id
            try await options.withPD { try await $0.setStoreState(storeID, .offline) }
            print("store \(storeID) is draining (offline)")
            guard wait else { return }
            var last = -1
            while true {
                let (state, held) = try await options.withPD { client -> (Flotilla_V1_StoreState, Int) in
                    let state = try await client.stores().first { $0.store.id == storeID }?.store.state ?? .tombstone
                    let held = try await client.scanRegions().regions.filter { $0.region.peers.contains { $0.storeID == storeID } }.count
                    return (state, held)
                }
                if state == .tombstone { print("store \(storeID) is a tombstone"); return }
                if state == .up { FileHandle.standardError.write(Data("flotillactl: the drain of store \(storeID) was taken back\n".utf8)); throw ExitCode(1) }
                if held != last { print("\(held) replica\(held == 1 ? "" : "s") left on store \(storeID)"); last = held }
                try await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Take a drain back: the store is up again and keeps what it still holds.")
        @OptionGroup var options: Region.Options
        @Argument(help: "The store's id.") var id: UInt64

        func run() async throws {
            let storeID = id
            try await options.withPD { try await $0.setStoreState(storeID, .up) }
            print("store \(storeID) is up")
        }
    }
}
