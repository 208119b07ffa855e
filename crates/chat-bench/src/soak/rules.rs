//! The pure parts of `soak`: reading `--duration`, what one interval's line says, and the
//! rules of the final verdict. Kept apart from the sockets so the rules can be unit-tested
//! and quoted exactly in `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::time::Duration;

/// Parses a duration: plain seconds (`1800`, `12.5`) or a number with a unit `s`, `m` or
/// `h` (`90s`, `30m`, `1.5h`). A soak is told in minutes more often than in seconds, hence
/// the units; zero, negative or non-finite values are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 1800, 90s, 30m, 1h)"))?;
    let secs = value * scale;
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        return Err(format!("{text:?}: the duration must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What happened during one reporting interval (one minute by default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interval {
    /// Seconds since the start of the soak at the end of the interval.
    pub at_secs: f64,
    /// Its length in seconds (the last one may be shorter).
    pub secs: f64,
    /// Server resident memory at the end of the interval (summed over `--server-pid`s).
    pub rss_kib: Option<u64>,
    /// New messages handed to the socket (re-sends not counted).
    pub sent: u64,
    /// Messages that reached the other member for the first time (live or by catch-up).
    pub delivered: u64,
    /// Re-sends of unacknowledged messages (same `client_msg_id`).
    pub resent: u64,
    /// `error` frames by code.
    pub errors: BTreeMap<String, u64>,
    /// Connections that ended and were opened again (planned or not).
    pub reconnects: u64,
    /// Connect attempts that failed (TCP, upgrade or auth).
    pub connect_failures: u64,
    /// Send -> first copy at the other member, in milliseconds.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Interval {
    /// Progress: something was delivered, or nothing was asked to be (no sends, nothing
    /// waiting for an acknowledgement).
    pub fn progress(&self, unacked_at_end: u64) -> bool {
        self.delivered > 0 || (self.sent == 0 && unacked_at_end == 0)
    }

    /// A stall: sends were made and nothing at all was delivered in the whole interval.
    pub fn stalled(&self) -> bool {
        self.sent > 0 && self.delivered == 0
    }
}

/// The exactly-once check of the whole run, added up over rooms (see `soak::member`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Messages acknowledged to their sender (own copy seen, with its seq).
    pub acked: u64,
    /// Acknowledged messages the other member never received.
    pub lost: u64,
    /// Messages seen at two different seqs by one member (stored twice).
    pub duplicated: u64,
    /// Seq positions where the two members of a room hold different messages.
    pub disagreements: u64,
    /// A seq that came twice with two different messages, or messages that are not ours.
    pub conflicting: u64,
    /// Live `message` frames that stepped back in seq on one connection.
    pub live_out_of_order: u64,
    /// Seqs a member could never fill (a gap that catch-up did not close).
    pub gaps: u64,
    /// Messages still unacknowledged when the drain ended, after re-sends.
    pub unacked: u64,
    /// History pages that were not gapless, oldest first and of the room.
    pub bad_history: u64,
}

impl Delivery {
    pub fn add(&mut self, o: &Delivery) {
        self.acked += o.acked;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.disagreements += o.disagreements;
        self.conflicting += o.conflicting;
        self.live_out_of_order += o.live_out_of_order;
        self.gaps += o.gaps;
        self.unacked += o.unacked;
        self.bad_history += o.bad_history;
    }
}

/// The memory rule's inputs and outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Memory {
    /// No `--server-pid`, a reading failed, or the run was not longer than the baseline time.
    NotJudged(&'static str),
    Judged {
        baseline_kib: u64,
        end_kib: u64,
        /// (end - baseline) / baseline, in percent.
        growth_percent: f64,
        limit_percent: f64,
    },
}

impl Memory {
    /// RSS at the end more than `limit_percent` above the baseline (the reading at the end of
    /// the first interval that ends at or after `--baseline-secs`, two minutes by default) is
    /// growth. The first minutes are excluded because connecting, the database's caches and
    /// the allocator's arenas fill then; what counts is what keeps growing after.
    pub fn judge(baseline: Option<u64>, end: Option<u64>, limit_percent: f64) -> Self {
        match (baseline, end) {
            (Some(b), Some(e)) if b > 0 => Memory::Judged {
                baseline_kib: b,
                end_kib: e,
                growth_percent: (e as f64 - b as f64) / b as f64 * 100.0,
                limit_percent,
            },
            (None, _) => Memory::NotJudged(
                "no baseline reading (no --server-pid, or the run ended before --baseline-secs)",
            ),
            _ => Memory::NotJudged("no reading of the server's memory at the end"),
        }
    }

    pub fn grew(&self) -> bool {
        matches!(self, Memory::Judged { growth_percent, limit_percent, .. } if growth_percent > limit_percent)
    }
}

/// The baseline reading: the first interval ending at or after `baseline_secs`, when the run
/// lasts longer than that (an interval must follow it, or there is nothing to compare).
pub fn baseline(intervals: &[Interval], baseline_secs: f64) -> Option<(usize, u64)> {
    let i = intervals
        .iter()
        .position(|iv| iv.at_secs + 1e-6 >= baseline_secs)?;
    if i + 1 >= intervals.len() {
        return None;
    }
    Some((i, intervals[i].rss_kib?))
}

/// Why a soak failed; empty when it passed. Intervals shorter than `min_stall_secs` (a last,
/// cut-short one) are not judged for stalls: a second with sends and no delivery is latency,
/// not a stall.
pub fn failures(
    delivery: &Delivery,
    intervals: &[Interval],
    memory: &Memory,
    drained: bool,
    min_stall_secs: f64,
) -> Vec<String> {
    let mut out = Vec::new();
    let d = delivery;
    for (n, what) in [
        (
            d.lost,
            "acknowledged messages never delivered to the other member",
        ),
        (d.duplicated, "messages stored or delivered twice"),
        (
            d.disagreements,
            "seq positions where the two members disagree",
        ),
        (
            d.conflicting,
            "seqs seen with two different messages, or foreign messages",
        ),
        (d.live_out_of_order, "live messages out of seq order"),
        (d.gaps, "seqs never received (a gap catch-up did not close)"),
        (d.unacked, "messages never acknowledged despite re-sends"),
        (d.bad_history, "bad history pages"),
    ] {
        if n > 0 {
            out.push(format!("{n} {what}"));
        }
    }
    if !drained {
        out.push("the drain ended before everything in flight arrived".to_owned());
    }
    for iv in intervals
        .iter()
        .filter(|iv| iv.stalled() && iv.secs >= min_stall_secs)
    {
        out.push(format!(
            "stall: nothing delivered in the interval ending at {:.0} s although {} messages were sent",
            iv.at_secs, iv.sent
        ));
    }
    if memory.grew()
        && let Memory::Judged {
            baseline_kib,
            end_kib,
            growth_percent,
            limit_percent,
        } = memory
    {
        out.push(format!(
                "memory growth: server RSS {end_kib} KiB at the end is {growth_percent:.1} % above the baseline {baseline_kib} KiB (limit {limit_percent} %)"
            ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(at: f64, rss: u64, sent: u64, delivered: u64) -> Interval {
        Interval {
            at_secs: at,
            secs: 60.0,
            rss_kib: Some(rss),
            sent,
            delivered,
            ..Interval::default()
        }
    }

    #[test]
    fn durations() {
        let s = |t| parse_duration(t).map(|d| d.as_secs_f64());
        assert_eq!(s("1800"), Ok(1800.0));
        assert_eq!(s("30m"), Ok(1800.0));
        assert_eq!(s("90s"), Ok(90.0));
        assert_eq!(s("1.5h"), Ok(5400.0));
        assert_eq!(s(" 10 "), Ok(10.0));
        assert_eq!(s("2M"), Ok(120.0));
        for bad in ["", "m", "0", "-5", "10d", "abc", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let ivs: Vec<_> = (1..=5)
            .map(|m| iv(60.0 * m as f64, 1000, 100, 100))
            .collect();
        let (i, b) = baseline(&ivs, 120.0).unwrap_or_else(|| panic!("no baseline"));
        assert_eq!((i, b), (1, 1000));
        let mem = Memory::judge(Some(b), Some(1100), 10.0);
        assert!(!mem.grew(), "exactly 10 % is allowed");
        assert!(failures(&Delivery::default(), &ivs, &mem, true, 30.0).is_empty());
    }

    #[test]
    fn more_than_ten_percent_above_the_baseline_is_growth() {
        let mem = Memory::judge(Some(1000), Some(1101), 10.0);
        assert!(mem.grew());
        let f = failures(&Delivery::default(), &[], &mem, true, 30.0);
        assert_eq!(f.len(), 1);
        assert!(f[0].starts_with("memory growth"), "{f:?}");
        // Shrinking is fine.
        assert!(!Memory::judge(Some(1000), Some(500), 10.0).grew());
    }

    #[test]
    fn memory_is_not_judged_without_a_baseline() {
        // The baseline interval must be followed by another one.
        let ivs = vec![iv(60.0, 1000, 1, 1), iv(120.0, 1000, 1, 1)];
        assert_eq!(baseline(&ivs, 120.0), None);
        assert_eq!(baseline(&ivs, 60.0), Some((0, 1000)));
        let mem = Memory::judge(None, Some(5000), 10.0);
        assert!(matches!(mem, Memory::NotJudged(_)));
        assert!(!mem.grew());
        let no_rss = vec![
            Interval {
                at_secs: 120.0,
                ..Interval::default()
            },
            iv(180.0, 1, 1, 1),
        ];
        assert_eq!(baseline(&no_rss, 120.0), None);
    }

    #[test]
    fn a_minute_with_sends_and_no_delivery_is_a_stall() {
        let ivs = vec![
            iv(60.0, 1, 100, 100),
            iv(120.0, 1, 100, 0),
            iv(180.0, 1, 0, 0),
        ];
        assert!(ivs[1].stalled());
        assert!(!ivs[2].stalled(), "no sends, nothing to deliver");
        assert!(!ivs[1].progress(0));
        assert!(ivs[2].progress(0));
        assert!(
            !ivs[2].progress(3),
            "messages waiting and nothing delivered"
        );
        let f = failures(
            &Delivery::default(),
            &ivs,
            &Memory::NotJudged("x"),
            true,
            30.0,
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].starts_with("stall"), "{f:?}");
    }

    #[test]
    fn a_cut_short_last_interval_is_not_judged_for_stalls() {
        let mut short = iv(61.0, 1, 10, 0);
        short.secs = 1.0;
        assert!(short.stalled());
        let ivs = vec![iv(60.0, 1, 100, 100), short];
        assert!(
            failures(
                &Delivery::default(),
                &ivs,
                &Memory::NotJudged("x"),
                true,
                30.0
            )
            .is_empty()
        );
    }

    #[test]
    fn any_loss_duplicate_gap_or_unacked_message_fails() {
        let base = Delivery {
            acked: 100,
            ..Delivery::default()
        };
        assert!(failures(&base, &[], &Memory::NotJudged("x"), true, 30.0).is_empty());
        for d in [
            Delivery { lost: 1, ..base },
            Delivery {
                duplicated: 1,
                ..base
            },
            Delivery {
                disagreements: 1,
                ..base
            },
            Delivery {
                conflicting: 1,
                ..base
            },
            Delivery {
                live_out_of_order: 1,
                ..base
            },
            Delivery { gaps: 1, ..base },
            Delivery { unacked: 1, ..base },
            Delivery {
                bad_history: 1,
                ..base
            },
        ] {
            assert_eq!(
                failures(&d, &[], &Memory::NotJudged("x"), true, 30.0).len(),
                1,
                "{d:?}"
            );
        }
        assert_eq!(
            failures(&base, &[], &Memory::NotJudged("x"), false, 30.0).len(),
            1
        );
        let mut sum = Delivery::default();
        sum.add(&Delivery {
            lost: 2,
            acked: 3,
            ..base
        });
        sum.add(&Delivery { lost: 1, ..base });
        assert_eq!((sum.lost, sum.acked), (3, 103));
    }
}
