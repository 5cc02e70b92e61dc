//! Refusals under a flood: the first few each second get their own log line, the rest are
//! counted and written as one summary line per reason for that second. The counts add up:
//! individual lines plus summarised counts equal `natsgate_connections_rejected_total`.
//!
//! The budget is process-wide, as the log it protects is.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Reject;

/// Refusals logged individually per window, all reasons together.
pub(crate) const INDIVIDUAL_PER_WINDOW: u32 = 10;
/// The summary window.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// One window's state.
#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: [u64; Reject::ALL.len()],
}

/// A window's suppressed counts, by reason, to be written as summary lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) period: Duration,
    pub(crate) counts: Vec<(Reject, u64)>,
}

/// The refusal log budget.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    window: Mutex<Option<Window>>,
}

impl Budget {
    pub(crate) const fn new() -> Budget {
        Budget {
            window: Mutex::new(None),
        }
    }

    /// Records one refusal at `now`: `true` if it gets its own line. Also returns the summary
    /// of a window that has ended, if it suppressed anything.
    pub(crate) fn note(&self, reason: Reject, now: Instant) -> (bool, Option<Summary>) {
        let mut guard = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let ended = take_ended(&mut guard, now);
        let w = guard.get_or_insert_with(|| Window {
            start: now,
            logged: 0,
            suppressed: [0; Reject::ALL.len()],
        });
        let individual = w.logged < INDIVIDUAL_PER_WINDOW;
        if individual {
            w.logged += 1;
        } else {
            let i = Reject::ALL.iter().position(|r| *r == reason).unwrap_or(0);
            w.suppressed[i] += 1;
        }
        (individual, ended)
    }

    /// The summary of the current window if it has ended by `now` (or `force`), which starts
    /// a new one.
    pub(crate) fn flush(&self, now: Instant, force: bool) -> Option<Summary> {
        let mut guard = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if force {
            return guard.take().and_then(|w| summary(w, now));
        }
        take_ended(&mut guard, now)
    }
}

fn take_ended(window: &mut Option<Window>, now: Instant) -> Option<Summary> {
    match window {
        Some(w) if now.duration_since(w.start) >= WINDOW => {
            window.take().and_then(|w| summary(w, now))
        }
        _ => None,
    }
}

fn summary(w: Window, now: Instant) -> Option<Summary> {
    let counts: Vec<(Reject, u64)> = Reject::ALL
        .iter()
        .zip(w.suppressed)
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (*r, n))
        .collect();
    (!counts.is_empty()).then(|| Summary {
        period: now.duration_since(w.start),
        counts,
    })
}

/// The process's budget.
static BUDGET: Budget = Budget::new();

/// Records one refusal: `true` if the caller should log it individually. A summary that is due
/// is written here.
pub(crate) fn refused(reason: Reject) -> bool {
    let (individual, ended) = BUDGET.note(reason, Instant::now());
    if let Some(s) = ended {
        write(&s);
    }
    individual
}

/// Writes the summary of the current window once it has ended (or now, if `force`): the flood
/// may stop mid-window with nobody left to trigger it.
pub(crate) fn flush(force: bool) {
    if let Some(s) = BUDGET.flush(Instant::now(), force) {
        write(&s);
    }
}

/// Flushes every half window until dropped.
pub(crate) async fn flush_forever() {
    let mut tick = tokio::time::interval(WINDOW / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush(false);
    }
}

fn write(s: &Summary) {
    for (reason, count) in &s.counts {
        tracing::info!(
            reason = reason.as_str(),
            count,
            period_ms = s.period.as_millis() as u64,
            "connections refused (summary: more than {INDIVIDUAL_PER_WINDOW} refusals per second are counted, not logged one by one)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_becomes_a_few_lines_whose_counts_add_up() {
        let b = Budget::new();
        let t0 = Instant::now();
        let mut individual = 0u64;
        let mut summaries = Vec::new();
        // 5,000 refusals over 2 s, alternating reasons.
        for i in 0..5_000u32 {
            let now = t0 + Duration::from_micros(400 * u64::from(i));
            let reason = if i % 2 == 0 {
                Reject::Limit
            } else {
                Reject::TlsHandshake
            };
            let (one, ended) = b.note(reason, now);
            individual += u64::from(one);
            summaries.extend(ended);
        }
        summaries.extend(b.flush(t0 + Duration::from_secs(3), false));
        assert_eq!(b.flush(t0 + Duration::from_secs(4), true), None);
        let summarised: u64 = summaries.iter().flat_map(|s| &s.counts).map(|c| c.1).sum();
        let lines = individual + summaries.iter().map(|s| s.counts.len() as u64).sum::<u64>();
        assert_eq!(individual + summarised, 5_000);
        assert_eq!(individual, 2 * u64::from(INDIVIDUAL_PER_WINDOW));
        assert!(lines <= 24, "{lines} lines: {summaries:?}");
    }

    #[test]
    fn a_trickle_is_logged_line_by_line() {
        let b = Budget::new();
        let t0 = Instant::now();
        for i in 0..100u64 {
            let (one, ended) = b.note(Reject::AuthTimeout, t0 + Duration::from_millis(200 * i));
            assert!(one, "refusal {i}");
            assert_eq!(ended, None);
        }
        assert_eq!(b.flush(t0 + Duration::from_secs(60), true), None);
    }

    #[test]
    fn a_forced_flush_writes_an_unfinished_window() {
        let b = Budget::new();
        let t0 = Instant::now();
        for _ in 0..INDIVIDUAL_PER_WINDOW + 3 {
            b.note(Reject::Protocol, t0);
        }
        assert_eq!(b.flush(t0 + Duration::from_millis(10), false), None);
        let s = b.flush(t0 + Duration::from_millis(10), true).unwrap();
        assert_eq!(s.counts, vec![(Reject::Protocol, 3)]);
    }
}
