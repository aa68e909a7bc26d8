import ArgumentParser

/// `flotillactl`: the Flotilla admin command line.
@main
struct FlotillaCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flotillactl",
        abstract: "Administer a Flotilla cluster.",
        subcommands: [EngineCheck.self, Cluster.self, StoreCommand.self, Region.self, OperatorCommand.self, SchedulerCommand.self, KV.self, Status.self]
    )
}
