import Linearizability
import Testing

/// Known histories, linearizable and not (in the spirit of Porcupine's and Knossos's register
/// tests, written here as small transcripts).
@Suite("Linearizability checker")
struct RegisterCheckerTests {
    func op(_ client: Int, _ from: UInt64, _ to: UInt64?, _ kind: RegisterOperation.Kind, key: String = "x") -> RegisterOperation {
        RegisterOperation(client: client, key: key, invokedAt: from, returnedAt: to, kind: kind)
    }

    @Test func sequentialHistories() {
        #expect(RegisterChecker.check([op(0, 0, 1, .write("1")), op(0, 2, 3, .read(observed: "1"))]) == .linearizable)
        #expect(RegisterChecker.check([op(0, 0, 1, .read(observed: nil))]) == .linearizable, "absent at first")
        guard case .violation = RegisterChecker.check([op(0, 0, 1, .write("1")), op(0, 2, 3, .read(observed: "2"))]) else {
            Issue.record("a read of a value never written passed")
            return
        }
    }

    @Test func concurrentReadsMaySeeEitherValue() {
        // write 1 ... then write 2 overlapping two reads that see 2 then 1: not linearizable
        // (a read after another that saw 2 cannot see 1 unless 1 was written after 2).
        let ok = [op(0, 0, 10, .write("1")), op(1, 11, 30, .write("2")),
                  op(2, 12, 14, .read(observed: "1")), op(3, 15, 20, .read(observed: "2"))]
        #expect(RegisterChecker.check(ok) == .linearizable)
        let bad = [op(0, 0, 10, .write("1")), op(1, 11, 30, .write("2")),
                   op(2, 12, 14, .read(observed: "2")), op(3, 15, 20, .read(observed: "1"))]
        guard case .violation(_, let counterexample) = RegisterChecker.check(bad) else {
            Issue.record("a new value then the old one, in order, passed")
            return
        }
        #expect(counterexample.count == 4, "every operation is needed to tell the story: \(counterexample)")
    }

    @Test func aStaleReadAfterAnAcknowledgedWriteIsCaught() {
        let history = [op(0, 0, 1, .write("a")), op(0, 2, 3, .write("b")), op(1, 4, 5, .read(observed: "a"))]
        guard case .violation(let key, let counterexample) = RegisterChecker.check(history) else {
            Issue.record("a stale read passed")
            return
        }
        #expect(key == "x" && counterexample.count == 3)
    }

    @Test func unknownWritesMayOrMayNotHaveHappened() {
        // A write whose outcome is unknown may show up later, or never.
        #expect(RegisterChecker.check([op(0, 0, nil, .write("1")), op(1, 5, 6, .read(observed: "1"))]) == .linearizable)
        #expect(RegisterChecker.check([op(0, 0, nil, .write("1")), op(1, 5, 6, .read(observed: nil))]) == .linearizable)
        // ...but not before it was invoked.
        guard case .violation = RegisterChecker.check([op(1, 0, 1, .read(observed: "1")), op(0, 2, nil, .write("1"))]) else {
            Issue.record("a read of a value before its write was invoked passed")
            return
        }
    }

    @Test func compareAndSwapOutcomesMustFitTheOrder() {
        let ok = [op(0, 0, 1, .compareAndSwap(expected: nil, new: "1", succeeded: true)),
                  op(1, 2, 5, .compareAndSwap(expected: "1", new: "2", succeeded: true)),
                  op(2, 3, 6, .compareAndSwap(expected: "1", new: "3", succeeded: false)),
                  op(3, 7, 8, .read(observed: "2"))]
        #expect(RegisterChecker.check(ok) == .linearizable)
        // Two CAS from the same value both succeeding: the register was changed twice from 1.
        let bad = [op(0, 0, 1, .write("1")),
                   op(1, 2, 5, .compareAndSwap(expected: "1", new: "2", succeeded: true)),
                   op(2, 3, 6, .compareAndSwap(expected: "1", new: "3", succeeded: true))]
        guard case .violation = RegisterChecker.check(bad) else {
            Issue.record("two successful CAS from one value passed")
            return
        }
        #expect(RegisterChecker.check([op(0, 0, nil, .compareAndSwap(expected: nil, new: "1", succeeded: nil)),
                                       op(1, 1, 2, .read(observed: "1"))]) == .linearizable)
    }

    @Test func theCounterexampleDropsWhatDoesNotMatter() {
        // Noise on the key (reads that fit) around a lost write.
        var history = (0..<20).map { op(5, UInt64($0) * 100, UInt64($0) * 100 + 1, .read(observed: nil)) }
        history.append(op(0, 5_000, 5_001, .write("lost")))
        history.append(op(1, 6_000, 6_001, .read(observed: nil)))
        guard case .violation(_, let counterexample) = RegisterChecker.check(history) else {
            Issue.record("a lost write passed")
            return
        }
        #expect(counterexample == [op(0, 5_000, 5_001, .write("lost")), op(1, 6_000, 6_001, .read(observed: nil))])
    }

    @Test func keysAreIndependentAndABadKeyIsNamed() {
        let history = [op(0, 0, 1, .write("1"), key: "a"), op(1, 0, 1, .write("1"), key: "b"),
                       op(0, 2, 3, .read(observed: "1"), key: "a"), op(1, 2, 3, .read(observed: nil), key: "b")]
        guard case .violation(let key, _) = RegisterChecker.check(history) else {
            Issue.record("a lost write on key b passed")
            return
        }
        #expect(key == "b")
    }

    @Test func manyConcurrentClientsAreCheckedQuickly() {
        // 8 clients, 400 operations on one register, linearizable by construction: each
        // operation takes effect at the midpoint of its interval.
        var state: String? = nil
        var history: [RegisterOperation] = []
        var effects: [(at: UInt64, index: Int)] = []
        var seed: UInt64 = 42
        func random(_ bound: UInt64) -> UInt64 {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return (seed >> 33) % bound
        }
        for index in 0..<400 {
            let start = UInt64(index) * 10 + random(5)
            let length = 5 + random(60)
            history.append(op(index % 8, start, start + length, random(2) == 0 ? .write("\(index)") : .read(observed: nil)))
            effects.append((start + length / 2, index))
        }
        for effect in effects.sorted(by: { $0.at < $1.at }) {
            switch history[effect.index].kind {
            case .write(let value): state = value
            case .read: history[effect.index].kind = .read(observed: state)
            default: break
            }
        }
        let started = ContinuousClock.now
        #expect(RegisterChecker.check(history) == .linearizable)
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    func isViolation(_ verdict: LinearizabilityVerdict) -> Bool {
        if case .violation = verdict { return true }
        return false
    }

    /// Porcupine's README example, as a transcript: client 0 writes 100 over [0, 50]; client
    /// 1 reads 100 over [10, 40]; client 2 reads the initial 0 over [20, 30]. Linearizable
    /// (client 2's read, the write, client 1's read). Moving client 2's read after client 1's
    /// (the new value seen, then the old one) is not.
    @Test func porcupinesReadmeRegister() {
        let good = [op(0, 0, 50, .write("100")), op(1, 10, 40, .read(observed: "100")), op(2, 20, 30, .read(observed: "0"))]
        #expect(RegisterChecker.check(good, initial: "0") == .linearizable)
        let bad = [op(0, 0, 50, .write("100")), op(1, 10, 20, .read(observed: "100")), op(2, 25, 35, .read(observed: "0"))]
        #expect(isViolation(RegisterChecker.check(bad, initial: "0")))
    }

    /// Knossos-style compare-and-swap register transcripts (its `cas-register` model): a
    /// chain of swaps, a failed swap that must have seen another value, and unknown outcomes
    /// (Knossos's `:info`) that may or may not have happened.
    @Test func knossosStyleCompareAndSwapRegister() {
        let chain = [op(0, 0, 1, .write("1")), op(1, 2, 3, .compareAndSwap(expected: "1", new: "2", succeeded: true)),
                     op(2, 4, 5, .read(observed: "2"))]
        #expect(RegisterChecker.check(chain) == .linearizable)
        let lostSwap = [op(0, 0, 1, .write("1")), op(1, 2, 3, .compareAndSwap(expected: "1", new: "2", succeeded: true)),
                        op(2, 4, 5, .read(observed: "1"))]
        #expect(isViolation(RegisterChecker.check(lostSwap)), "a read after an acknowledged swap sees the old value")
        let impossibleFailure = [op(0, 0, 1, .write("1")), op(1, 2, 3, .compareAndSwap(expected: "1", new: "2", succeeded: false))]
        #expect(isViolation(RegisterChecker.check(impossibleFailure)), "a swap that failed while the register held what it expected")
        // Two concurrent swaps from 1: exactly one may succeed.
        let bothWon = [op(0, 0, 1, .write("1")), op(1, 2, 10, .compareAndSwap(expected: "1", new: "2", succeeded: true)),
                       op(2, 3, 11, .compareAndSwap(expected: "1", new: "3", succeeded: true))]
        #expect(isViolation(RegisterChecker.check(bothWon)))
        let oneWon = [op(0, 0, 1, .write("1")), op(1, 2, 10, .compareAndSwap(expected: "1", new: "2", succeeded: true)),
                      op(2, 3, 11, .compareAndSwap(expected: "1", new: "3", succeeded: false)), op(3, 12, 13, .read(observed: "2"))]
        #expect(RegisterChecker.check(oneWon) == .linearizable)
        // An unknown swap seen later took effect; one never seen may not have.
        let unknownSeen = [op(0, 0, 1, .write("1")), op(1, 2, nil, .compareAndSwap(expected: "1", new: "2", succeeded: nil)),
                           op(2, 5, 6, .read(observed: "2")), op(2, 7, 8, .read(observed: "2"))]
        #expect(RegisterChecker.check(unknownSeen) == .linearizable)
        let unknownThenUndone = [op(0, 0, 1, .write("1")), op(1, 2, nil, .compareAndSwap(expected: "1", new: "2", succeeded: nil)),
                                 op(2, 5, 6, .read(observed: "2")), op(2, 7, 8, .read(observed: "1"))]
        #expect(isViolation(RegisterChecker.check(unknownThenUndone)), "nothing wrote 1 again after the swap was seen")
    }
}
