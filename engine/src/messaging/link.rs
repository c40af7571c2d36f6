//! The rule that keeps one connection per pair of processes, as a pure function: [`admit`].
//!
//! Either process of a pair may dial the other, when it first has something to send. If both
//! dial at once, the connection **dialled by the lower process id** is kept:
//! - a listener always admits a dialer with a lower id than its own (closing any other
//!   connection it had with it, which can only be a stale one);
//! - a listener admits a dialer with a higher id only if it has no connection with it and is
//!   not dialling it itself; otherwise it refuses with [`Refusal::Duplicate`], and the dialer
//!   waits for the connection the lower process is making (and dials again, with backoff, if
//!   none comes).
//!
//! Both ends decide from their own state, so two simultaneous dials end as exactly one
//! connection: the lower process refuses the higher one's dial (it is dialling itself), and the
//! higher process admits the lower one's.

use super::address::ProcessId;
use super::frame::Refusal;

/// What a process has with one other process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// No connection and no dial.
    Idle,
    /// This process is dialling it.
    Dialing,
    /// A connection is open.
    Up,
}

/// Whether a listener `me` in `state` with `dialer` admits the dialer's new connection.
pub(crate) fn admit(me: ProcessId, dialer: ProcessId, state: LinkState) -> Result<(), Refusal> {
    if dialer == me {
        return Err(Refusal::SameProcess(me));
    }
    if dialer < me || state == LinkState::Idle {
        Ok(())
    } else {
        Err(Refusal::Duplicate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LinkState::*;

    const LOW: ProcessId = ProcessId(1);
    const HIGH: ProcessId = ProcessId(2);

    #[test]
    fn the_lower_process_dial_is_kept() {
        // The higher process admits the lower's dial whatever it has.
        for state in [Idle, Dialing, Up] {
            assert_eq!(admit(HIGH, LOW, state), Ok(()), "{state:?}");
        }
        // The lower process admits the higher's dial only with nothing of its own.
        assert_eq!(admit(LOW, HIGH, Idle), Ok(()));
        assert_eq!(admit(LOW, HIGH, Dialing), Err(Refusal::Duplicate));
        assert_eq!(admit(LOW, HIGH, Up), Err(Refusal::Duplicate));
        assert_eq!(admit(LOW, LOW, Idle), Err(Refusal::SameProcess(LOW)));
    }

    /// Both dial at once (each is `Dialing` when the other's hello arrives): exactly one of the
    /// two dials is admitted, the lower process's.
    #[test]
    fn simultaneous_dials_end_as_one_connection() {
        let low_admits_high = admit(LOW, HIGH, Dialing).is_ok();
        let high_admits_low = admit(HIGH, LOW, Dialing).is_ok();
        assert!(!low_admits_high && high_admits_low);
    }
}
