import ArgumentParser

/// `flotillactl`: the Flotilla admin command line.
@main
struct FlotillaCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flotillactl",
        abstract: "Administer a Flotilla cluster.",
        subcommands: [EngineCheck.self, Cluster.self, Region.self, KV.self, Status.self]
    )
}
