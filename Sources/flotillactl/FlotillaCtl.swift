import ArgumentParser
import Foundation

/// `flotillactl`: the Flotilla admin command line.
///
/// Exit codes: 0 success, 1 the operation failed (the reason on stderr), 2 a usage error (a
/// bad flag or argument; the usage on stderr). Shell completions:
/// `flotillactl --generate-completion-script bash|zsh|fish`.
@main
struct FlotillaCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flotillactl",
        abstract: "Administer a Flotilla cluster.",
        discussion: "Exit codes: 0 success, 1 the operation failed, 2 usage error. Completions: --generate-completion-script bash|zsh|fish.",
        subcommands: [EngineCheck.self, Cluster.self, StoreCommand.self, Region.self, OperatorCommand.self, SchedulerCommand.self,
                      KV.self, Backup.self, Restore.self, Status.self]
    )

    /// Parses and runs the command, mapping ArgumentParser's usage failures (EX_USAGE, 64)
    /// to exit code 2.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }
}
