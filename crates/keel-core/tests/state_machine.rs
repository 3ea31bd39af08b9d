//! Property tests: no sequence of commands reaches an illegal job, loses a job, lets a stale
//! lease decide an outcome, or makes the event fold disagree with the job.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_core::lease::token_hash;
use keel_core::{
    Command, Event, EventData, Failure, Job, Json, NewJob, QueueConfig, State, Time,
    TransitionError, When, project, step,
};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Clone, Debug)]
enum Op {
    Advance(i64),
    Promote,
    Lease(i64),
    Heartbeat {
        stale: bool,
    },
    Complete {
        stale: bool,
    },
    Fail {
        stale: bool,
        retryable: bool,
        retry_in_ms: Option<i64>,
    },
    Expire,
    Cancel,
    Retry,
    Purge,
    Delivered {
        stale: bool,
    },
    Release {
        stale: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0i64..120_000).prop_map(Op::Advance),
        Just(Op::Promote),
        (1i64..60_000).prop_map(Op::Lease),
        any::<bool>().prop_map(|stale| Op::Heartbeat { stale }),
        any::<bool>().prop_map(|stale| Op::Complete { stale }),
        (
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(0i64..10_000)
        )
            .prop_map(|(stale, retryable, retry_in_ms)| Op::Fail {
                stale,
                retryable,
                retry_in_ms
            }),
        Just(Op::Expire),
        Just(Op::Cancel),
        Just(Op::Retry),
        Just(Op::Purge),
        any::<bool>().prop_map(|stale| Op::Delivered { stale }),
        any::<bool>().prop_map(|stale| Op::Release { stale }),
    ]
}

fn new_job(max_attempts: u32, delay: i64) -> NewJob {
    NewJob {
        queue: "q".into(),
        kind: "k".into(),
        payload: Json::from_text("{\"a\":1}".into()).unwrap(),
        priority: 0,
        when: if delay > 0 {
            When::Delay(delay)
        } else {
            When::Now
        },
        max_attempts: Some(max_attempts),
        timeout_ms: None,
        backoff: None,
        idempotency_key: None,
        tags: vec![],
        traceparent: None,
    }
}

fn check_legal(job: &Job) {
    assert_eq!(
        job.state == State::Running,
        job.lease.is_some(),
        "lease iff running: {job:?}"
    );
    assert_eq!(
        job.state.is_final(),
        job.finished_at.is_some(),
        "finished_at iff final: {job:?}"
    );
    assert!(
        job.attempt <= job.max_attempts,
        "attempt within budget: {job:?}"
    );
    if job.state == State::Running {
        assert!(
            job.attempt >= 1,
            "a running job has been handed out: {job:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn no_sequence_reaches_an_illegal_state_or_loses_the_job(
        max_attempts in 1u32..5, delay in 0i64..5_000, ops in proptest::collection::vec(op(), 0..60),
    ) {
        let mut now = Time::from_millis(1_800_000_000_000);
        let job = new_job(max_attempts, delay).into_job(Uuid::now_v7(), &QueueConfig::default(), now);
        let mut events = vec![Event { seq: 1, job_id: job.id, at: now, data: EventData::Enqueued { job: Box::new(job.clone()) } }];
        let mut current: Option<Job> = Some(job);
        let mut token = String::new();
        let mut n = 0u64;

        for op in ops {
            let Some(job) = current.clone() else { break };
            let stale_token = format!("stale-{n}");
            let pick = |stale: bool| if stale { stale_token.clone() } else { token.clone() };
            let cmd = match op {
                Op::Advance(ms) => { now = now.plus_ms(ms); continue; }
                Op::Promote => Command::Promote,
                Op::Lease(ms) => {
                    n += 1;
                    Command::Lease { token_hash: token_hash(&format!("token-{n}")), lease_ms: ms, worker: None }
                }
                Op::Heartbeat { stale } => Command::Heartbeat { token: pick(stale), lease_ms: 1_000 },
                Op::Complete { stale } => Command::Complete { token: pick(stale), result: None },
                Op::Fail { stale, retryable, retry_in_ms } => Command::Fail(Failure {
                    token: pick(stale), message: "boom".into(), kind: None, retryable, retry_in_ms, jitter: 0.5,
                }),
                Op::Expire => Command::ExpireLease { jitter: 0.5 },
                Op::Cancel => Command::Cancel,
                Op::Retry => Command::Retry,
                Op::Purge => Command::Purge,
                Op::Delivered { stale } => Command::Delivered { token: pick(stale), status: Some(503), duration_ms: 12, error: None },
                Op::Release { stale } => Command::Release { token: pick(stale) },
            };
            let stale = matches!(&cmd,
                Command::Heartbeat { token: t, .. } | Command::Complete { token: t, .. }
                | Command::Delivered { token: t, .. } | Command::Release { token: t } if t.starts_with("stale"))
                || matches!(&cmd, Command::Fail(f) if f.token.starts_with("stale"));
            match step(&job, &cmd, now) {
                Ok((next, new_events)) => {
                    prop_assert!(!stale, "a stale token decided an outcome: {cmd:?}");
                    prop_assert!(!new_events.is_empty());
                    if next.is_none() {
                        prop_assert!(matches!(cmd, Command::Purge), "only purge removes a job");
                    }
                    if let Some(j) = &next {
                        check_legal(j);
                        if j.state == State::Dead && job.state == State::Running {
                            let fatal = matches!(&cmd, Command::Fail(f) if !f.retryable);
                            prop_assert!(fatal || j.attempt == j.max_attempts, "dead only when out of attempts or fatal");
                        }
                    }
                    for data in new_events {
                        let seq = events.len() as i64 + 1;
                        events.push(Event { seq, job_id: events[0].job_id, at: now, data });
                    }
                    prop_assert_eq!(&project(&events), &next, "the fold of the events is the job");
                    if matches!(cmd, Command::Lease { .. }) {
                        token = format!("token-{n}");
                    }
                    current = next;
                }
                Err(TransitionError::LeaseLost) => {
                    prop_assert!(stale || job.state != State::Running, "current token refused: {cmd:?} on {job:?}");
                }
                Err(TransitionError::InvalidState { .. }) => {}
            }
        }
    }
}

#[test]
fn failures_use_backoff_then_die_when_attempts_run_out() {
    let t0 = Time::from_millis(1_800_000_000_000);
    let mut job = new_job(2, 0).into_job(Uuid::now_v7(), &QueueConfig::default(), t0);
    let lease = |job: &Job, tok: &str| {
        step(
            job,
            &Command::Lease {
                token_hash: token_hash(tok),
                lease_ms: 1000,
                worker: None,
            },
            t0,
        )
        .unwrap()
        .0
        .unwrap()
    };
    let fail = |tok: &str| {
        Command::Fail(Failure {
            token: tok.into(),
            message: "x".into(),
            kind: None,
            retryable: true,
            retry_in_ms: None,
            jitter: 0.0,
        })
    };

    job = lease(&job, "a");
    let (next, events) = step(&job, &fail("a"), t0).unwrap();
    let next = next.unwrap();
    assert_eq!(next.state, State::Scheduled);
    assert_eq!(
        next.run_at,
        t0.plus_ms(1_000),
        "first retry waits initial_ms with zero jitter"
    );
    assert_eq!(
        events.iter().map(|e| e.type_name()).collect::<Vec<_>>(),
        ["failed", "scheduled"]
    );

    let job = step(&next, &Command::Promote, t0.plus_ms(1_000))
        .unwrap()
        .0
        .unwrap();
    let job = lease(&job, "b");
    assert_eq!(
        step(&job, &fail("a"), t0).unwrap_err(),
        TransitionError::LeaseLost,
        "old token is fenced off"
    );
    let dead = step(&job, &fail("b"), t0).unwrap().0.unwrap();
    assert_eq!((dead.state, dead.attempt), (State::Dead, 2));
}
