//! The stale-command guard of an agent session: a command the master has given up on (its
//! call timed out, the session was cut, a partition held its packets) must never be acted
//! on when it arrives late. Every mutating request carries the master's deadline for it
//! (`x-orca-not-after-ms`, the master's clock); the session's first request (`hello`)
//! carries the master's time (`x-orca-master-ms`), from which the agent learns the offset
//! between the clocks, so skewed clocks do not matter. A late command is refused, not run.

use std::sync::atomic::{AtomicI64, Ordering};

use hyper::Request;

/// Header: the master's clock (unix ms) when it sent the session's hello.
pub const MASTER_MS: &str = "x-orca-master-ms";
/// Header: the master's clock (unix ms) after which it no longer waits for this command.
pub const NOT_AFTER_MS: &str = "x-orca-not-after-ms";

/// Slack for the hello's own transit time and scheduling delays (clock offset error).
const SLACK_MS: i64 = 2_000;

/// Unset offset marker.
const UNKNOWN: i64 = i64::MIN;

/// One session's view of the master's clock.
#[derive(Debug)]
pub struct SessionClock {
    /// agent clock − master clock, in ms, learnt at the hello.
    offset_ms: AtomicI64,
}

impl Default for SessionClock {
    fn default() -> Self {
        SessionClock {
            offset_ms: AtomicI64::new(UNKNOWN),
        }
    }
}

fn header_ms<B>(req: &Request<B>, name: &str) -> Option<i64> {
    req.headers().get(name)?.to_str().ok()?.parse().ok()
}

impl SessionClock {
    /// Learns the clock offset from a request carrying [`MASTER_MS`] (the hello).
    pub fn observe<B>(&self, req: &Request<B>, agent_now_ms: i64) {
        if let Some(master) = header_ms(req, MASTER_MS) {
            self.offset_ms
                .store(agent_now_ms.saturating_sub(master), Ordering::Relaxed);
        }
    }

    /// `Err(reason)` when `req` carries a deadline that has passed (by the master's clock,
    /// as this agent knows it). A request without one, or before the offset is known, is
    /// accepted.
    pub fn check<B>(&self, req: &Request<B>, agent_now_ms: i64) -> Result<(), String> {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        match (header_ms(req, NOT_AFTER_MS), offset) {
            (Some(not_after), offset) if offset != UNKNOWN => {
                late_by(not_after, offset, agent_now_ms).map_or(Ok(()), |late| {
                    Err(format!(
                        "stale command {} {}: it arrived {late} ms after the master stopped waiting for it; not executed",
                        req.method(),
                        req.uri().path()
                    ))
                })
            }
            _ => Ok(()),
        }
    }
}

/// How late a command with deadline `not_after` (master clock) is at `agent_now` (agent
/// clock), given `offset` = agent − master; `None` when it is in time.
pub fn late_by(not_after: i64, offset: i64, agent_now: i64) -> Option<i64> {
    let deadline = not_after.saturating_add(offset).saturating_add(SLACK_MS);
    (agent_now > deadline).then(|| agent_now - deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, i64)]) -> Request<()> {
        let mut b = Request::builder().method("POST").uri("/v1/containers");
        for (k, v) in headers {
            b = b.header(*k, v.to_string());
        }
        b.body(()).unwrap()
    }

    #[test]
    fn a_command_past_its_deadline_is_refused_whatever_the_clock_skew() {
        // The agent's clock is 1 h ahead of the master's.
        let skew = 3_600_000;
        let clock = SessionClock::default();
        // Before the hello nothing is known: accepted.
        assert!(clock.check(&req(&[(NOT_AFTER_MS, 10)]), 0).is_ok());
        clock.observe(&req(&[(MASTER_MS, 1_000_000)]), 1_000_000 + skew);
        // Sent at master time 1,010,000 with 30 s to run; arrives in time, and late.
        let cmd = req(&[(NOT_AFTER_MS, 1_040_000)]);
        assert!(clock.check(&cmd, 1_011_000 + skew).is_ok());
        assert!(
            clock.check(&cmd, 1_041_000 + skew).is_ok(),
            "within the slack"
        );
        let err = clock.check(&cmd, 1_050_000 + skew).unwrap_err();
        assert!(err.contains("stale command POST /v1/containers"), "{err}");
        // A request without a deadline (a read) is always served.
        assert!(clock.check(&req(&[]), i64::MAX).is_ok());
        assert_eq!(late_by(100, 0, 2_100), None);
        assert_eq!(late_by(100, 0, 2_101), Some(1));
    }
}
