//! What happens to a client request when the upstream leg fails it: sent again, retried, held
//! until the tool's annotations are known, passed through, or ended with an error. One pure
//! decision for every place a request can be lost (a send that fails, a binding that dies
//! with it, an upstream's error answer), so that the whole policy is one table, tested as one.
//!
//! It does no I/O and keeps no state: the session gathers the facts and carries out the fate.

/// How many times a request that is safe to repeat is sent again after it may have reached an
/// upstream that then went away. More than one: an upstream that is being restarted can take
/// the first resend down with it (a dying process still accepts connections for a moment); a
/// bound all the same, so that a request that crashes its server every time ends.
pub const SAFE_RETRIES: u8 = 3;

/// How many times one dispatch sends again a request the upstream provably did not take (its
/// connection was down, or it had forgotten the session) before it gives up.
pub const UNDELIVERED_RESENDS: u8 = 2;

/// Whether repeating a request is harmless, as far as the session knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Safety {
    /// Read-only methods, idempotent state changes, tools annotated read-only or idempotent,
    /// tools the operator allowed.
    Safe,
    /// Anything else whose effect could happen twice.
    Unsafe,
    /// `tools/call` of a tool whose annotations the session has not seen (no `tools/list`
    /// answer yet): the revived upstream can tell.
    UnknownTool,
    /// `initialize`: its answer is the handshake; it is never repeated behind the client's back.
    Initialize,
}

/// What the session knows about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Whether repeating it is harmless.
    pub safety: Safety,
    /// How many times it was sent again after it may have reached the upstream (or after the
    /// upstream said it forgot the session).
    pub attempts: u8,
    /// Whether the session has ended.
    pub closed: bool,
}

/// How the request was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The binding died and says the request never reached the server (stdio: not written).
    NotDelivered,
    /// The binding died with the request in flight: it may or may not have run.
    InFlight,
    /// Sending failed before anything went out (the connection is down); `tries` such failures
    /// so far in this dispatch, this one not counted.
    Unreachable {
        /// Earlier undelivered sends of this dispatch.
        tries: u8,
    },
    /// Sending was refused because the upstream forgot the session: not processed.
    SendSessionLost {
        /// Earlier undelivered sends of this dispatch.
        tries: u8,
    },
    /// The connection broke after the request went out.
    Interrupted,
    /// The upstream answered with a session error (`-32001`, or a "session" `-32600`): it did
    /// not process the request.
    SessionErrorAnswer,
    /// The upstream (another gateway) answered `-32011 upstream_restarted`.
    RemoteRestarted,
}

/// What happens to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Send it again on a revived binding; it did not run, so it costs no attempt.
    Resend,
    /// Send it again on a revived binding; it may have run, so it uses one of its
    /// [`SAFE_RETRIES`].
    Retry,
    /// The upstream forgot the session: mark the binding lost, revive, and send it again once.
    Reopen,
    /// Revive, list the tools, and decide again with the tool's annotations known.
    LearnTools,
    /// The upstream's own answer goes to the client.
    Deliver,
    /// End it with an error.
    Fail(Failure),
}

/// The error a request ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The upstream could not be reached (503, `-32010`).
    Unavailable,
    /// The upstream keeps forgetting the session (503, `-32010`).
    KeepsLosingSession,
    /// It may or may not have run (`-32011`, `upstream_restarted`).
    Restarted,
}

/// Decides the fate of one request.
pub fn decide(facts: Facts, loss: Loss) -> Fate {
    let Facts { safety, attempts, closed } = facts;
    let may_retry = safety == Safety::Safe && attempts < SAFE_RETRIES;
    match loss {
        // An initialize whose first upstream died at once is answered with why.
        Loss::NotDelivered | Loss::InFlight if safety == Safety::Initialize => Fate::Fail(Failure::Unavailable),
        Loss::NotDelivered if !closed => Fate::Resend,
        Loss::InFlight if safety == Safety::UnknownTool && attempts == 0 && !closed => Fate::LearnTools,
        Loss::NotDelivered | Loss::InFlight if may_retry && !closed => Fate::Retry,
        Loss::NotDelivered | Loss::InFlight => Fate::Fail(Failure::Restarted),
        Loss::Unreachable { tries } | Loss::SendSessionLost { tries } if tries < UNDELIVERED_RESENDS => Fate::Resend,
        Loss::Unreachable { .. } => Fate::Fail(Failure::Unavailable),
        Loss::SendSessionLost { .. } => Fate::Fail(Failure::KeepsLosingSession),
        Loss::Interrupted if may_retry => Fate::Retry,
        Loss::Interrupted => Fate::Fail(Failure::Restarted),
        Loss::SessionErrorAnswer if attempts == 0 => Fate::Reopen,
        Loss::SessionErrorAnswer => Fate::Deliver,
        Loss::RemoteRestarted if safety != Safety::Initialize && may_retry && !closed => Fate::Retry,
        Loss::RemoteRestarted => Fate::Deliver,
    }
}

#[cfg(test)]
mod tests {
    use super::Failure::*;
    use super::Safety::*;
    use super::*;

    const SAFETIES: [Safety; 4] = [Safe, Unsafe, UnknownTool, Initialize];
    const LOSSES: [Loss; 9] = [
        Loss::NotDelivered,
        Loss::InFlight,
        Loss::Unreachable { tries: 0 },
        Loss::Unreachable { tries: UNDELIVERED_RESENDS },
        Loss::SendSessionLost { tries: 1 },
        Loss::SendSessionLost { tries: UNDELIVERED_RESENDS },
        Loss::Interrupted,
        Loss::SessionErrorAnswer,
        Loss::RemoteRestarted,
    ];

    /// The whole table, written out: every loss × every safety × fresh / retried / out of
    /// retries × live / closed session.
    fn expected(safety: Safety, attempts: u8, closed: bool, loss: Loss) -> Fate {
        let fresh = attempts == 0;
        let retries_left = attempts < SAFE_RETRIES;
        match (loss, safety) {
            (Loss::NotDelivered, Initialize) => Fate::Fail(Unavailable),
            (Loss::NotDelivered, _) if !closed => Fate::Resend,
            (Loss::NotDelivered, _) => Fate::Fail(Restarted),

            (Loss::InFlight, Initialize) => Fate::Fail(Unavailable),
            (Loss::InFlight, UnknownTool) if fresh && !closed => Fate::LearnTools,
            (Loss::InFlight, Safe) if retries_left && !closed => Fate::Retry,
            (Loss::InFlight, _) => Fate::Fail(Restarted),

            (Loss::Unreachable { tries }, _) if tries < 2 => Fate::Resend,
            (Loss::Unreachable { .. }, _) => Fate::Fail(Unavailable),
            (Loss::SendSessionLost { tries }, _) if tries < 2 => Fate::Resend,
            (Loss::SendSessionLost { .. }, _) => Fate::Fail(KeepsLosingSession),

            (Loss::Interrupted, Safe) if retries_left => Fate::Retry,
            (Loss::Interrupted, _) => Fate::Fail(Restarted),

            (Loss::SessionErrorAnswer, _) if fresh => Fate::Reopen,
            (Loss::SessionErrorAnswer, _) => Fate::Deliver,

            (Loss::RemoteRestarted, Safe) if retries_left && !closed => Fate::Retry,
            (Loss::RemoteRestarted, _) => Fate::Deliver,
        }
    }

    #[test]
    fn every_pending_state_loss_and_safety() {
        let mut cases = 0;
        for safety in SAFETIES {
            for attempts in [0, 1, SAFE_RETRIES - 1, SAFE_RETRIES] {
                for closed in [false, true] {
                    for loss in LOSSES {
                        let got = decide(Facts { safety, attempts, closed }, loss);
                        assert_eq!(
                            got,
                            expected(safety, attempts, closed, loss),
                            "{safety:?} attempts={attempts} closed={closed} {loss:?}"
                        );
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 4 * 4 * 2 * 9);
    }

    /// The rules the table encodes, stated one by one, so that a change to the table that
    /// breaks one of them is named.
    #[test]
    fn the_rules() {
        let f = |safety, attempts| Facts { safety, attempts, closed: false };
        // Something that may have run is never repeated unless it is safe.
        for loss in [Loss::InFlight, Loss::Interrupted, Loss::RemoteRestarted] {
            assert_ne!(decide(f(Unsafe, 0), loss), Fate::Retry);
            assert_ne!(decide(f(Unsafe, 0), loss), Fate::Resend);
        }
        // A safe one is repeated a bounded number of times.
        assert_eq!(decide(f(Safe, SAFE_RETRIES - 1), Loss::InFlight), Fate::Retry);
        assert_eq!(decide(f(Safe, SAFE_RETRIES), Loss::InFlight), Fate::Fail(Restarted));
        // What never reached the server goes again, whatever it is, but initialize is answered.
        assert_eq!(decide(f(Unsafe, 0), Loss::NotDelivered), Fate::Resend);
        assert_eq!(decide(f(Initialize, 0), Loss::NotDelivered), Fate::Fail(Unavailable));
        // An unannotated tool waits for the annotations, once.
        assert_eq!(decide(f(UnknownTool, 0), Loss::InFlight), Fate::LearnTools);
        assert_eq!(decide(f(UnknownTool, 1), Loss::InFlight), Fate::Fail(Restarted));
        // A closed session starts nothing new.
        let closed = Facts { safety: Safe, attempts: 0, closed: true };
        for loss in [Loss::NotDelivered, Loss::InFlight, Loss::RemoteRestarted] {
            assert!(!matches!(decide(closed, loss), Fate::Resend | Fate::Retry | Fate::LearnTools), "{loss:?}");
        }
        // A forgotten session is reopened once; then its error goes through.
        assert_eq!(decide(f(Unsafe, 0), Loss::SessionErrorAnswer), Fate::Reopen);
        assert_eq!(decide(f(Unsafe, 1), Loss::SessionErrorAnswer), Fate::Deliver);
    }
}
