/// The outcome of counting votes.
enum VoteResult: Equatable {
    case pending, won, lost
}

/// Quorum arithmetic for a majority configuration and for joint (two-majority) ones.
enum Quorum {
    /// The highest index that a majority of `voters` has reached; `UInt64.max` for an empty
    /// set, so that an empty outgoing half never limits a joint result.
    static func committedIndex(voters: Set<NodeID>, match: (NodeID) -> UInt64) -> UInt64 {
        if voters.isEmpty { return .max }
        // Called on every acknowledgement: sort on the stack, not in a new array.
        return withUnsafeTemporaryAllocation(of: UInt64.self, capacity: voters.count) { allocation in
            var buffer = allocation
            var count = 0
            for voter in voters {
                buffer[count] = match(voter)
                count += 1
            }
            buffer.sort(by: >)
            return buffer[voters.count / 2]
        }
    }

    static func committedIndex(_ conf: ConfState, match: (NodeID) -> UInt64) -> UInt64 {
        min(committedIndex(voters: conf.voters, match: match),
            committedIndex(voters: conf.votersOutgoing, match: match))
    }

    /// A majority result over `voters`: won with a majority of yes, lost once a majority is
    /// impossible. An empty set wins (it never blocks the other half of a joint config).
    static func voteResult(voters: Set<NodeID>, votes: [NodeID: Bool]) -> VoteResult {
        if voters.isEmpty { return .won }
        var granted = 0
        var missing = 0
        for voter in voters {
            switch votes[voter] {
            case .some(true): granted += 1
            case .some(false): break
            case .none: missing += 1
            }
        }
        let majority = voters.count / 2 + 1
        if granted >= majority { return .won }
        if granted + missing >= majority { return .pending }
        return .lost
    }

    static func voteResult(_ conf: ConfState, votes: [NodeID: Bool]) -> VoteResult {
        let incoming = voteResult(voters: conf.voters, votes: votes)
        let outgoing = voteResult(voters: conf.votersOutgoing, votes: votes)
        if incoming == .won && outgoing == .won { return .won }
        if incoming == .lost || outgoing == .lost { return .lost }
        return .pending
    }
}
