import CRocksDB

/// An error reported by RocksDB or by this wrapper, carrying RocksDB's own message.
///
/// `kind` is parsed from RocksDB's status prefix ("Corruption: …", "IO error: …") so callers
/// can react to the class of failure without matching on strings.
public struct RocksDBError: Error, Sendable, CustomStringConvertible, Equatable {
    /// The class of a RocksDB status, as RocksDB names it.
    public enum Kind: String, Sendable {
        case notFound = "NotFound"
        case corruption = "Corruption"
        case notSupported = "Not implemented"
        case invalidArgument = "Invalid argument"
        case ioError = "IO error"
        case mergeInProgress = "Merge in progress"
        case incomplete = "Result incomplete"
        case shutdownInProgress = "Shutdown in progress"
        case timedOut = "Operation timed out"
        case aborted = "Operation aborted"
        case busy = "Resource busy"
        case expired = "Operation expired"
        case tryAgain = "Operation failed. Try again."
        case compactionTooLarge = "Compaction too large"
        case columnFamilyDropped = "Column family dropped"
        /// A status this wrapper does not recognise, or an error raised by the wrapper itself.
        case other = "Other"
    }

    /// The class of failure.
    public let kind: Kind
    /// What this wrapper was doing, e.g. `open(/var/lib/flotilla)` or `write`.
    public let operation: String
    /// RocksDB's message, verbatim.
    public let message: String

    public init(kind: Kind, operation: String, message: String) {
        self.kind = kind
        self.operation = operation
        self.message = message
    }

    /// Builds an error from a RocksDB status string such as `"IO error: While lock file: …"`.
    init(operation: String, status: String) {
        var parsedKind = Kind.other
        // "Operation failed. Try again." contains a period, so match by prefix.
        for candidate in [Kind.notFound, .corruption, .notSupported, .invalidArgument, .ioError,
                          .mergeInProgress, .incomplete, .shutdownInProgress, .timedOut,
                          .aborted, .busy, .expired, .tryAgain, .compactionTooLarge,
                          .columnFamilyDropped]
        where status.hasPrefix(candidate.rawValue) {
            parsedKind = candidate
            break
        }
        self.init(kind: parsedKind, operation: operation, message: status)
    }

    public var description: String {
        "RocksDB \(operation) failed: \(message)"
    }
}

/// Runs a C call that reports failure through a `char** errptr`, and throws RocksDB's message.
@inline(__always)
func withErrorPointer<T>(
    _ operation: @autoclosure () -> String,
    _ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> T
) throws(RocksDBError) -> T {
    var errorMessage: UnsafeMutablePointer<CChar>? = nil
    let result = body(&errorMessage)
    if let errorMessage {
        let status = String(cString: errorMessage)
        rocksdb_free(errorMessage)
        throw RocksDBError(operation: operation(), status: status)
    }
    return result
}
