//! Schedules: a job template enqueued on a clock, by a cron expression in a time zone or every
//! fixed number of milliseconds. This module is the pure part: when the ticks are, which of the
//! due ticks to fire after downtime, and the job each tick becomes.
//!
//! Invariants (the store keeps them with these functions; its conformance cases check them):
//! - **Exactly once per tick.** A tick is an instant. The store fires a tick only when it is later
//!   than the schedule's last fired tick, in the same transaction that enqueues the job and moves
//!   the schedule on, and the job carries the idempotency key [`tick_key`] (schedule name + tick).
//!   So a restart at the tick instant, a clock that jumps back, or a second node firing the same
//!   schedule finds the tick already taken and enqueues nothing.
//! - **Ticks depend only on the cadence.** `Ticker::next_after` is a pure function of the pattern,
//!   the zone and the instant, so every node and every restart computes the same ticks. The time
//!   zone database is the one compiled into keel (`jiff`'s bundled tzdb), not the host's, so two
//!   nodes with different `tzdata` packages cannot disagree.
//!
//! Daylight-saving rule (cron in a zone; the Vixie cron / OCPS rule): patterns are matched
//! against the zone's wall clock.
//! - A *fixed* time (numbers in the second, minute and hour fields, e.g. `30 2 * * *`) runs once
//!   per matching day: on a spring-forward day, a time inside the gap runs at the first instant
//!   after the gap (02:30 in Europe/Berlin on the last Sunday of March runs at 03:00 CEST); on a
//!   fall-back day, a time in the repeated hour runs at its first occurrence only.
//! - An *interval* pattern (a `*` or step in those fields, e.g. `*/15 * * * *`) runs at every real
//!   instant whose wall-clock reading matches: none inside the gap, and both passes of the
//!   repeated hour (so the interval between runs stays 15 real minutes).
//!
//! `every_ms` ticks fall on whole multiples of `every_ms` since 1970-01-01T00:00:00Z, so they do
//! not depend on when the schedule was created or the server restarted.

use std::fmt;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::job::{Json, NewJob, When};
use crate::time::Time;

pub const MIN_EVERY_MS: i64 = 1_000;
pub const MAX_EVERY_MS: i64 = 366 * 24 * 3_600_000;
/// With `catch_up: none`, a tick fired at most this late still runs (a restart, a busy writer);
/// a later one counts as missed.
pub const MISFIRE_GRACE_MS: i64 = 60_000;

/// When a schedule ticks.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Cadence {
    /// A cron pattern (5 fields, or 6 with seconds first; `@daily`-style aliases) in an IANA zone.
    Cron {
        expr: String,
        timezone: String,
    },
    Every {
        every_ms: i64,
    },
}

/// What happens to ticks that passed while the server was down (or the schedule could not fire).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed ticks are skipped; a tick less than [`MISFIRE_GRACE_MS`] late still runs.
    None,
    /// The latest missed tick runs once; older missed ticks are skipped.
    #[default]
    One,
    /// Every missed tick runs, oldest first.
    All,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::One => "one",
            CatchUp::All => "all",
        }
    }

    pub fn parse(text: &str) -> Option<CatchUp> {
        [CatchUp::None, CatchUp::One, CatchUp::All]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

/// The job a tick enqueues: an enqueue request without `run_at`, `delay_ms` and
/// `idempotency_key`, which the tick supplies.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobTemplate {
    pub queue: String,
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub payload: Json,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl JobTemplate {
    /// The template of a validated enqueue request; its timing and key are dropped (the caller
    /// refuses requests that set them).
    pub fn from_new_job(new: NewJob) -> JobTemplate {
        JobTemplate {
            queue: new.queue,
            kind: new.kind,
            payload: new.payload,
            priority: new.priority,
            max_attempts: new.max_attempts,
            timeout_ms: new.timeout_ms,
            backoff: new.backoff,
            tags: new.tags,
        }
    }

    /// The job of `schedule`'s tick at `tick`: due at the tick, keyed by schedule and tick.
    pub fn job_at(&self, schedule: &str, tick: Time) -> NewJob {
        NewJob {
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            priority: self.priority,
            when: When::At(tick),
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            backoff: self.backoff,
            idempotency_key: Some(tick_key(schedule, tick)),
            tags: self.tags.clone(),
            traceparent: None,
        }
    }
}

/// The idempotency key of a tick: `schedule:<name>:<tick as RFC 3339>` (at most 166 characters
/// for a 128-character name, inside the 255 a key may have).
pub fn tick_key(schedule: &str, tick: Time) -> String {
    format!("schedule:{schedule}:{tick}")
}

/// A schedule's definition as stored; `paused` and the firing state live beside it.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub cadence: Cadence,
    #[serde(default)]
    pub catch_up: CatchUp,
    pub job: JobTemplate,
}

/// Why a cadence cannot be used; the message names the field's problem for a 422.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CadenceError {
    Cron(String),
    TimeZone(String),
    Every(String),
}

impl fmt::Display for CadenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CadenceError::Cron(m) | CadenceError::TimeZone(m) | CadenceError::Every(m) => {
                f.write_str(m)
            }
        }
    }
}

/// A cadence ready to compute ticks.
#[derive(Clone, Debug)]
pub struct Ticker(TickerKind);

#[derive(Clone, Debug)]
enum TickerKind {
    Cron(Box<Cron>, TimeZone),
    Every(i64),
}

impl Cadence {
    /// Checks the cadence and compiles it. A cron pattern that can never match (February 30)
    /// is refused here, so a stored schedule always has a next tick.
    pub fn ticker(&self) -> Result<Ticker, CadenceError> {
        match self {
            Cadence::Every { every_ms } => {
                if !(MIN_EVERY_MS..=MAX_EVERY_MS).contains(every_ms) {
                    return Err(CadenceError::Every(format!(
                        "must be between {MIN_EVERY_MS} and {MAX_EVERY_MS}, got {every_ms}"
                    )));
                }
                Ok(Ticker(TickerKind::Every(*every_ms)))
            }
            Cadence::Cron { expr, timezone } => {
                let tz = TimeZone::get(timezone).map_err(|_| {
                    CadenceError::TimeZone(format!(
                        "{timezone:?} is not an IANA time zone name (like \"Europe/Berlin\" or \"UTC\")"
                    ))
                })?;
                if expr.len() > 256 {
                    return Err(CadenceError::Cron(
                        "must be at most 256 characters".to_owned(),
                    ));
                }
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .year(Year::Disallowed)
                    .build()
                    .parse(expr)
                    .map_err(|e| CadenceError::Cron(format!("is not a cron pattern: {e}")))?;
                let ticker = Ticker(TickerKind::Cron(Box::new(cron), tz));
                // Every pattern without a year that matches at all matches again within 28
                // years, so "no tick after the epoch" means "never".
                if ticker.next_after(Time::EPOCH).is_none() {
                    return Err(CadenceError::Cron(
                        "never matches a real date (like February 30)".to_owned(),
                    ));
                }
                Ok(ticker)
            }
        }
    }
}

impl Ticker {
    /// The first tick strictly after `t`; `None` past the end of representable time.
    pub fn next_after(&self, t: Time) -> Option<Time> {
        match &self.0 {
            TickerKind::Every(every) => {
                let next = (t.as_millis().div_euclid(*every) + 1).checked_mul(*every)?;
                in_range(next)
            }
            TickerKind::Cron(cron, tz) => {
                let zoned = Timestamp::from_millisecond(t.as_millis())
                    .ok()?
                    .to_zoned(tz.clone());
                let next = cron.find_next_occurrence(&zoned, false).ok()?;
                in_range(next.timestamp().as_millisecond())
            }
        }
    }

    /// The first tick at or after `t`.
    pub fn first_from(&self, t: Time) -> Option<Time> {
        if t == Time::EPOCH {
            // Nothing is before the epoch; the epoch itself is a tick of every `every_ms`.
            return match &self.0 {
                TickerKind::Every(_) => Some(t),
                TickerKind::Cron(..) => self.next_after(t),
            };
        }
        self.next_after(t.plus_ms(-1))
    }

    /// The last tick at or before `t`, if one is at or after `floor`. Walks forward from
    /// `floor`, so it is only used for short spans (the caller bounds them).
    fn last_up_to(&self, floor: Time, t: Time) -> Option<Time> {
        match &self.0 {
            TickerKind::Every(every) => {
                let last = t.as_millis().div_euclid(*every) * every;
                (last >= floor.as_millis()).then(|| Time::from_millis(last))
            }
            TickerKind::Cron(cron, tz) => {
                let zoned = Timestamp::from_millisecond(t.as_millis())
                    .ok()?
                    .to_zoned(tz.clone());
                let last = cron.find_previous_occurrence(&zoned, true).ok()?;
                let last = Time::from_millis(last.timestamp().as_millisecond());
                (last >= floor).then_some(last)
            }
        }
    }
}

/// Where a schedule's clock stands: whether it runs, the tick it waits for (`None` while
/// paused), and the latest tick fired or skipped (no tick at or before it fires again).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ScheduleClock {
    pub paused: bool,
    pub next_run_at: Option<Time>,
    pub last_tick_at: Option<Time>,
}

impl ScheduleClock {
    /// The clock after a schedule is created or replaced at `now`, paused or not (`None`: as it
    /// was; a new one runs). A replaced schedule keeps its clock: the tick it was waiting for
    /// (if the new cadence has it) still fires, and no tick it fired fires again. A new one, or
    /// one that was paused, starts at its first tick at or after `now`.
    pub fn after_put(
        ticker: &Ticker,
        existing: Option<&ScheduleClock>,
        paused: Option<bool>,
        now: Time,
    ) -> ScheduleClock {
        let paused = paused.unwrap_or(existing.is_some_and(|c| c.paused));
        let last_tick_at = existing.and_then(|c| c.last_tick_at);
        let from = existing
            .and_then(|c| c.next_run_at)
            .map_or(now, |n| n.min(now));
        ScheduleClock {
            paused,
            next_run_at: if paused {
                None
            } else {
                first_tick(ticker, from, last_tick_at)
            },
            last_tick_at,
        }
    }

    /// The clock after pausing or resuming at `now`. Resuming starts at the first tick at or
    /// after `now`: ticks that passed while paused are not caught up.
    pub fn after_pause(&self, ticker: &Ticker, paused: bool, now: Time) -> ScheduleClock {
        if self.paused == paused {
            return *self;
        }
        ScheduleClock {
            paused,
            next_run_at: if paused {
                None
            } else {
                first_tick(ticker, now, self.last_tick_at)
            },
            last_tick_at: self.last_tick_at,
        }
    }
}

/// The first tick at or after `from` that is later than `last`.
pub fn first_tick(ticker: &Ticker, from: Time, last: Option<Time>) -> Option<Time> {
    let from = match last {
        Some(l) if l >= from => l.plus_ms(1),
        _ => from,
    };
    ticker.first_from(from)
}

fn in_range(ms: i64) -> Option<Time> {
    let t = Time::from_millis(ms);
    (t.as_millis() == ms).then_some(t)
}

/// What one firing pass does for one schedule.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Firing {
    /// Ticks to enqueue, oldest first.
    pub fire: Vec<Time>,
    /// Due ticks skipped by the catch-up rule: the first and the last of them.
    pub skipped: Option<(Time, Time)>,
    /// The schedule's next tick afterwards (may still be due when `max_fire` cut `all` short).
    pub next_run_at: Option<Time>,
}

/// Decides a firing pass at `now` for a schedule whose next tick `next` is due (`next <= now`).
/// `max_fire` bounds one pass (the rest of an `all` catch-up is due again at once).
pub fn plan_firing(
    ticker: &Ticker,
    next: Time,
    now: Time,
    catch_up: CatchUp,
    max_fire: usize,
) -> Firing {
    if next > now {
        return Firing {
            fire: vec![],
            skipped: None,
            next_run_at: Some(next),
        };
    }
    match catch_up {
        CatchUp::All => {
            let mut fire = vec![next];
            let mut after = ticker.next_after(next);
            while let Some(t) = after {
                if t > now || fire.len() >= max_fire.max(1) {
                    break;
                }
                fire.push(t);
                after = ticker.next_after(t);
            }
            Firing {
                fire,
                skipped: None,
                next_run_at: after,
            }
        }
        CatchUp::One | CatchUp::None => {
            let latest = ticker.last_up_to(next, now).unwrap_or(next);
            let skipped_until = if latest > next {
                ticker.last_up_to(next, latest.plus_ms(-1))
            } else {
                None
            };
            let on_time = catch_up == CatchUp::One || now.millis_since(latest) <= MISFIRE_GRACE_MS;
            let (fire, skipped) = match (on_time, skipped_until) {
                (true, until) => (vec![latest], until.map(|u| (next, u))),
                (false, _) => (vec![], Some((next, latest))),
            };
            Firing {
                fire,
                skipped,
                next_run_at: ticker.next_after(latest),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Time {
        Time::parse_rfc3339(text).unwrap_or(Time::EPOCH)
    }

    fn cron(expr: &str, tz: &str) -> Ticker {
        match (Cadence::Cron {
            expr: expr.into(),
            timezone: tz.into(),
        })
        .ticker()
        {
            Ok(t) => t,
            Err(e) => panic!("{expr} in {tz}: {e}"),
        }
    }

    fn ticks(ticker: &Ticker, from: &str, until: &str) -> Vec<String> {
        let mut out = vec![];
        let mut at = ticker.first_from(t(from));
        while let Some(tick) = at.filter(|x| *x <= t(until)) {
            out.push(tick.to_string());
            at = ticker.next_after(tick);
        }
        out
    }

    #[test]
    fn fixed_time_in_a_spring_forward_gap_runs_once_after_the_gap() {
        // Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z).
        let berlin = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&berlin, "2026-03-28T00:00:00Z", "2026-03-31T00:00:00Z"),
            [
                "2026-03-28T01:30:00.000Z", // 02:30 CET
                "2026-03-29T01:00:00.000Z", // 03:00 CEST, the first instant after the gap
                "2026-03-30T00:30:00.000Z", // 02:30 CEST
            ]
        );
        // America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z).
        let ny = cron("30 2 * * *", "America/New_York");
        assert_eq!(
            ticks(&ny, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z"),
            [
                "2026-03-07T07:30:00.000Z",
                "2026-03-08T07:00:00.000Z",
                "2026-03-09T06:30:00.000Z",
            ]
        );
    }

    #[test]
    fn fixed_time_in_a_fall_back_overlap_runs_once_at_its_first_occurrence() {
        // Europe/Berlin: 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z); 02:30 happens twice.
        let berlin = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&berlin, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            ["2026-10-25T00:30:00.000Z", "2026-10-26T01:30:00.000Z"]
        );
        // America/New_York: 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z); 01:30 happens twice.
        let ny = cron("30 1 * * *", "America/New_York");
        assert_eq!(
            ticks(&ny, "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z"),
            ["2026-11-01T05:30:00.000Z", "2026-11-02T06:30:00.000Z"]
        );
    }

    #[test]
    fn interval_patterns_follow_real_time_across_both_transitions() {
        let every_half_hour = cron("*/30 * * * *", "Europe/Berlin");
        // Spring: nothing inside the gap; 30 real minutes from 01:30 CET to 03:00 CEST.
        assert_eq!(
            ticks(
                &every_half_hour,
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:30:00Z"
            ),
            [
                "2026-03-29T00:30:00.000Z",
                "2026-03-29T01:00:00.000Z",
                "2026-03-29T01:30:00.000Z"
            ]
        );
        // Autumn: both passes of the repeated hour, each 30 real minutes apart.
        assert_eq!(
            ticks(
                &every_half_hour,
                "2026-10-24T23:30:00Z",
                "2026-10-25T01:30:00Z"
            ),
            [
                "2026-10-24T23:30:00.000Z",
                "2026-10-25T00:00:00.000Z",
                "2026-10-25T00:30:00.000Z",
                "2026-10-25T01:00:00.000Z",
                "2026-10-25T01:30:00.000Z",
            ]
        );
    }

    #[test]
    fn weekday_pattern_in_a_zone() {
        // 2026-11-23 is a Monday; 07:00 in Berlin is 06:00Z in winter.
        let ticker = cron("0 7 * * MON-FRI", "Europe/Berlin");
        assert_eq!(
            ticks(&ticker, "2026-11-21T00:00:00Z", "2026-11-25T00:00:00Z"),
            ["2026-11-23T06:00:00.000Z", "2026-11-24T06:00:00.000Z"]
        );
        // Strictly after: a tick is not its own successor; a millisecond before it is.
        assert_eq!(
            ticker.next_after(t("2026-11-23T06:00:00Z")),
            Some(t("2026-11-24T06:00:00Z"))
        );
        assert_eq!(
            ticker.next_after(t("2026-11-23T05:59:59.999Z")),
            Some(t("2026-11-23T06:00:00Z"))
        );
        assert_eq!(
            ticker.first_from(t("2026-11-23T06:00:00Z")),
            Some(t("2026-11-23T06:00:00Z"))
        );
    }

    #[test]
    fn every_ms_ticks_on_multiples_since_the_epoch() {
        let Ok(ticker) = (Cadence::Every { every_ms: 60_000 }).ticker() else {
            panic!("valid cadence refused");
        };
        assert_eq!(
            ticker.first_from(t("2026-11-23T06:00:30.500Z")),
            Some(t("2026-11-23T06:01:00Z"))
        );
        assert_eq!(
            ticker.first_from(t("2026-11-23T06:01:00Z")),
            Some(t("2026-11-23T06:01:00Z"))
        );
        assert_eq!(
            ticker.next_after(t("2026-11-23T06:01:00Z")),
            Some(t("2026-11-23T06:02:00Z"))
        );
    }

    #[test]
    fn bad_cadences_are_refused_with_a_reason() {
        let err = |c: Cadence| c.ticker().err().map(|e| e.to_string()).unwrap_or_default();
        let c = |expr: &str, tz: &str| Cadence::Cron {
            expr: expr.into(),
            timezone: tz.into(),
        };
        assert!(err(c("61 * * * *", "UTC")).contains("not a cron pattern"));
        assert!(err(c("* * *", "UTC")).contains("not a cron pattern"));
        assert!(err(c("*/0 * * * *", "UTC")).contains("not a cron pattern"));
        assert!(err(c("0 0 30 2 *", "UTC")).contains("never matches"));
        assert!(err(c("0 7 * * *", "Mars/Olympus")).contains("IANA"));
        assert!(err(Cadence::Every { every_ms: 999 }).contains("between"));
        assert!(err(Cadence::Every { every_ms: 0 }).contains("between"));
        assert!(c("@hourly", "UTC").ticker().is_ok());
        assert!(c("0 */5 * * * *", "UTC").ticker().is_ok(), "seconds field");
    }

    fn every(ms: i64) -> Ticker {
        match (Cadence::Every { every_ms: ms }).ticker() {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn catch_up_all_fires_every_missed_tick_in_bounded_passes() {
        let ticker = every(60_000);
        let next = t("2026-11-23T06:00:00Z");
        let now = t("2026-11-23T06:04:30Z");
        let f = plan_firing(&ticker, next, now, CatchUp::All, 1_000);
        assert_eq!(f.fire.len(), 5);
        assert_eq!(f.fire[0], next);
        assert_eq!(f.fire[4], t("2026-11-23T06:04:00Z"));
        assert_eq!(f.skipped, None);
        assert_eq!(f.next_run_at, Some(t("2026-11-23T06:05:00Z")));
        // A bound of 2: the next pass starts where this one stopped, still due.
        let f = plan_firing(&ticker, next, now, CatchUp::All, 2);
        assert_eq!(f.fire, [next, t("2026-11-23T06:01:00Z")]);
        assert_eq!(f.next_run_at, Some(t("2026-11-23T06:02:00Z")));
    }

    #[test]
    fn catch_up_one_fires_the_latest_and_skips_the_rest() {
        let ticker = every(60_000);
        let next = t("2026-11-23T06:00:00Z");
        let f = plan_firing(
            &ticker,
            next,
            t("2026-11-23T09:00:30Z"),
            CatchUp::One,
            1_000,
        );
        assert_eq!(f.fire, [t("2026-11-23T09:00:00Z")]);
        assert_eq!(f.skipped, Some((next, t("2026-11-23T08:59:00Z"))));
        assert_eq!(f.next_run_at, Some(t("2026-11-23T09:01:00Z")));
        // On time: the tick itself, nothing skipped.
        let f = plan_firing(
            &ticker,
            next,
            t("2026-11-23T06:00:00.004Z"),
            CatchUp::One,
            1_000,
        );
        assert_eq!(f.fire, [next]);
        assert_eq!(f.skipped, None);
    }

    #[test]
    fn catch_up_none_skips_ticks_later_than_the_grace() {
        let ticker = cron("0 7 * * *", "Europe/Berlin");
        let next = t("2026-11-23T06:00:00Z");
        // Down for two days: both missed ticks skipped, none fired.
        let f = plan_firing(
            &ticker,
            next,
            t("2026-11-25T09:00:00Z"),
            CatchUp::None,
            1_000,
        );
        assert_eq!(f.fire, []);
        assert_eq!(f.skipped, Some((next, t("2026-11-25T06:00:00Z"))));
        assert_eq!(f.next_run_at, Some(t("2026-11-26T06:00:00Z")));
        // 59 s late (a restart): still runs.
        let f = plan_firing(
            &ticker,
            next,
            t("2026-11-23T06:00:59Z"),
            CatchUp::None,
            1_000,
        );
        assert_eq!(f.fire, [next]);
        assert_eq!(f.skipped, None);
    }

    #[test]
    fn nothing_fires_before_the_next_tick() {
        let ticker = every(60_000);
        let next = t("2026-11-23T06:00:00Z");
        for catch_up in [CatchUp::None, CatchUp::One, CatchUp::All] {
            let f = plan_firing(&ticker, next, next.plus_ms(-1), catch_up, 10);
            assert_eq!(f.fire, []);
            assert_eq!(f.next_run_at, Some(next));
        }
    }

    #[test]
    fn tick_jobs_are_due_at_the_tick_and_keyed_by_it() {
        let template = JobTemplate {
            queue: "reports".into(),
            kind: "report.daily".into(),
            payload: Json::null(),
            priority: 5,
            max_attempts: Some(3),
            timeout_ms: None,
            backoff: None,
            tags: vec!["cron".into()],
        };
        let tick = t("2026-11-23T06:00:00Z");
        let job = template.job_at("daily", tick);
        assert_eq!(job.when, When::At(tick));
        assert_eq!(
            job.idempotency_key.as_deref(),
            Some("schedule:daily:2026-11-23T06:00:00.000Z")
        );
        assert_eq!((job.priority, job.max_attempts), (5, Some(3)));
        assert_ne!(
            template
                .job_at("daily", tick.plus_ms(60_000))
                .idempotency_key,
            job.idempotency_key
        );
    }
}
