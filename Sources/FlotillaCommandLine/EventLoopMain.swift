import ArgumentParser
import NIOCore
import NIOPosix

extension AsyncParsableCommand {
    /// Parses the command line and runs the command with Swift Concurrency's tasks on NIO's
    /// event loops (the threads gRPC does its I/O on) instead of a separate pool, so a request
    /// does not hop between the two. Call it from `static func main()` of the root command: it
    /// installs the executor on the main thread, before the command's first task is enqueued.
    /// The command's tasks must not block (blocking work goes to `NIOThreadPool`).
    @MainActor
    public static func mainOnEventLoops() async {
        NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
