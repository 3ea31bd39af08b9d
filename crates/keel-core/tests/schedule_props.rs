//! Property test of schedule firing: drive `plan_firing` the way a store does (fire what is
//! planned, move `next_run_at` on) through passes at random moments, with the clock jumping
//! forward by hours and back by minutes, and check the promises that hold for any timeline:
//! no tick fires twice, fired ticks only increase, every fired tick is a real tick that was due,
//! and with `catch_up: all` no tick between the first and the last pass is ever lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_core::Time;
use keel_core::schedule::{Cadence, CatchUp, plan_firing};
use proptest::prelude::*;

const START: i64 = 1_795_413_600_000; // 2026-11-23T06:00:00Z

fn cadence() -> impl Strategy<Value = Cadence> {
    prop_oneof![
        (1i64..=600).prop_map(|s| Cadence::Every {
            every_ms: s * 1_000
        }),
        prop::sample::select(vec![
            "*/5 * * * *",
            "0 * * * *",
            "30 2 * * *",
            "*/30 * * * *",
            "0 7 * * MON-FRI",
            "15,45 1-3 * * *",
        ])
        .prop_flat_map(|expr| {
            prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York"]).prop_map(
                move |tz| Cadence::Cron {
                    expr: expr.to_owned(),
                    timezone: tz.to_owned(),
                },
            )
        }),
    ]
}

fn catch_up() -> impl Strategy<Value = CatchUp> {
    prop::sample::select(vec![CatchUp::None, CatchUp::One, CatchUp::All])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_tick_fires_at_most_once_and_all_loses_none(
        cadence in cadence(),
        catch_up in catch_up(),
        // Clock steps in ms: mostly forward (up to 6 h), sometimes back (up to 10 min).
        steps in prop::collection::vec(-600_000i64..21_600_000, 1..40),
        max_fire in 1usize..50,
    ) {
        let ticker = cadence.ticker().unwrap();
        let mut now = Time::from_millis(START);
        let mut next = ticker.first_from(now);
        let mut fired: Vec<Time> = vec![];
        // The latest moment a pass ran at (not the start: a clock whose only pass is behind the
        // start has seen no tick due).
        let mut latest_pass: Option<Time> = None;
        for step in steps {
            now = now.plus_ms(step);
            latest_pass = latest_pass.max(Some(now));
            // A store keeps firing while the schedule is due (the `all` bound cuts passes).
            while let Some(due) = next.filter(|n| *n <= now) {
                let f = plan_firing(&ticker, due, now, catch_up, max_fire);
                for tick in &f.fire {
                    prop_assert!(*tick <= now, "fired a tick from the future");
                    prop_assert!(*tick >= due, "fired a tick before next_run_at");
                    if let Some(last) = fired.last() {
                        prop_assert!(tick > last, "tick {tick} fired again or out of order");
                    }
                    prop_assert_eq!(ticker.first_from(*tick), Some(*tick), "not a real tick");
                    fired.push(*tick);
                }
                if let Some((from, until)) = f.skipped {
                    prop_assert!(from <= until && until <= now);
                    if let Some(first_fired) = f.fire.first() {
                        prop_assert!(until < *first_fired, "skipped a tick it fired");
                    }
                }
                prop_assert!(f.next_run_at > Some(due), "next_run_at did not move on");
                next = f.next_run_at;
            }
        }
        if catch_up == CatchUp::All {
            // Every tick from the first one up to the latest moment seen fired, exactly once (a
            // clock that went back fires nothing new until it passes the last fired tick).
            let mut expected = vec![];
            let mut at = ticker.first_from(Time::from_millis(START));
            while let Some(tick) = at.filter(|t| Some(*t) <= latest_pass) {
                expected.push(tick);
                at = ticker.next_after(tick);
            }
            prop_assert_eq!(fired, expected);
        }
    }
}
