//! The `enqueued` event as SQLite stores it: the new job without what the event's own row says.
//!
//! An `enqueued` event carries the whole job, and in a batch enqueue its text was 62% of the
//! bytes written per job (~580 of ~1,020). Most of that text repeats the event's row (the job
//! id; the event's time as `created_at`, `updated_at` and, for a job due now, `run_at`), follows
//! from it (`state`), or is the same for nearly every new job (attempt 0, no result, no error,
//! no tags, the usual retry settings). The stored form leaves a field out exactly when the
//! decoder gives it back unchanged.
//!
//! Invariant: `decode(&encode(job, id, at), id, at) == job` for every job, id and time, not only
//! for new jobs (an import writes `enqueued` events holding whatever jobs it was given), with the
//! one exception every JSON form of a job shares: a `result` of JSON `null` reads back as no
//! result (serde reads `null` as `None`; no parsed job can hold `Some(null)`). Text
//! written before this form (the whole job) decodes as written, since each field present is
//! taken as it is; so no migration rewrites old events. Migration 5 marks the change of format
//! (it changes no table), so a keel that does not know it refuses the store.
//!
//! The `USUAL_*` values are part of the stored format: events written with one value decode
//! with it forever, so they must never change (even if the server's defaults do; then the new
//! defaults are simply written out).

use std::borrow::Cow;

use keel_core::{Backoff, EventData, Job, JobError, Json, State, Time};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const USUAL_MAX_ATTEMPTS: u32 = 20;
const USUAL_TIMEOUT_MS: i64 = 30_000;
const USUAL_BACKOFF: Backoff = Backoff {
    initial_ms: 1_000,
    max_ms: 3_600_000,
    jitter: 0.25,
};

/// `{"type": "enqueued", "data": {"job": …}}`, the same envelope as every stored event.
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: Cow<'a, str>,
    data: Data<'a>,
}

#[derive(Serialize, Deserialize)]
struct Data<'a> {
    job: Stored<'a>,
}

/// A job with every field the row can give back left out (`None`, empty or usual).
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<Uuid>,
    queue: Cow<'a, str>,
    kind: Cow<'a, str>,
    payload: Cow<'a, Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<State>,
    #[serde(default, skip_serializing_if = "is_zero")]
    priority: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "no_tags")]
    tags: Cow<'a, [String]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<Cow<'a, JobError>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Cow<'a, Json>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<Cow<'a, str>>,
}

// serde hands `skip_serializing_if` a reference to the field, here a `Cow`.
#[allow(clippy::ptr_arg)]
fn no_tags(tags: &Cow<'_, [String]>) -> bool {
    tags.is_empty()
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// `Some(value)` unless it is what the decoder would give anyway.
fn unless<T: PartialEq>(value: T, derived: T) -> Option<T> {
    (value != derived).then_some(value)
}

/// The stored text of the `enqueued` event of job `id`, at `at`, holding `job`.
pub(crate) fn encode(job: &Job, id: Uuid, at: Time) -> serde_json::Result<String> {
    let stored = Stored {
        id: unless(job.id, id),
        queue: Cow::Borrowed(&job.queue),
        kind: Cow::Borrowed(&job.kind),
        payload: Cow::Borrowed(&job.payload),
        state: unless(job.state, State::waiting(job.run_at, at)),
        priority: job.priority,
        attempt: job.attempt,
        max_attempts: unless(job.max_attempts, USUAL_MAX_ATTEMPTS),
        timeout_ms: unless(job.timeout_ms, USUAL_TIMEOUT_MS),
        backoff: unless(job.backoff, USUAL_BACKOFF),
        run_at: unless(job.run_at, at),
        created_at: unless(job.created_at, at),
        updated_at: unless(job.updated_at, at),
        finished_at: job.finished_at,
        idempotency_key: job.idempotency_key.as_deref().map(Cow::Borrowed),
        tags: Cow::Borrowed(&job.tags),
        last_error: job.last_error.as_ref().map(Cow::Borrowed),
        result: job.result.as_ref().map(Cow::Borrowed),
        traceparent: job.traceparent.as_deref().map(Cow::Borrowed),
    };
    let envelope = Envelope {
        kind: Cow::Borrowed("enqueued"),
        data: Data { job: stored },
    };
    // Sized up front: growing the buffer while writing a job was a tenth of the writer's time
    // in batch enqueue.
    let room = 192 + job.payload.get().len() + job.tags.iter().map(|t| t.len() + 3).sum::<usize>();
    let mut buf = Vec::with_capacity(room);
    serde_json::to_writer(&mut buf, &envelope)?;
    // serde_json writes UTF-8 only.
    String::from_utf8(buf).map_err(|e| serde::ser::Error::custom(e.to_string()))
}

/// The `enqueued` event stored as `text` for job `id` at `at`, in either stored form.
pub(crate) fn decode(text: &str, id: Uuid, at: Time) -> serde_json::Result<EventData> {
    let Envelope { data, .. } = serde_json::from_str(text)?;
    let s = data.job;
    let run_at = s.run_at.unwrap_or(at);
    let job = Job {
        id: s.id.unwrap_or(id),
        queue: s.queue.into_owned(),
        kind: s.kind.into_owned(),
        payload: s.payload.into_owned(),
        state: s.state.unwrap_or_else(|| State::waiting(run_at, at)),
        priority: s.priority,
        attempt: s.attempt,
        max_attempts: s.max_attempts.unwrap_or(USUAL_MAX_ATTEMPTS),
        timeout_ms: s.timeout_ms.unwrap_or(USUAL_TIMEOUT_MS),
        backoff: s.backoff.unwrap_or(USUAL_BACKOFF),
        run_at,
        created_at: s.created_at.unwrap_or(at),
        updated_at: s.updated_at.unwrap_or(at),
        finished_at: s.finished_at,
        idempotency_key: s.idempotency_key.map(Cow::into_owned),
        tags: s.tags.into_owned(),
        last_error: s.last_error.map(Cow::into_owned),
        result: s.result.map(Cow::into_owned),
        traceparent: s.traceparent.map(Cow::into_owned),
        lease: None,
    };
    Ok(EventData::Enqueued { job: Box::new(job) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Time {
        Time::from_millis(1_800_000_000_123)
    }

    /// A job as `enqueue` creates it: due now, the usual settings.
    fn new_job(id: Uuid) -> Job {
        Job {
            id,
            queue: "emails".into(),
            kind: "send".into(),
            payload: Json::from_text(r#"{"to": "a@example.com", "n": [1, 2.5e3]}"#.into()).unwrap(),
            state: State::Available,
            priority: 0,
            attempt: 0,
            max_attempts: USUAL_MAX_ATTEMPTS,
            timeout_ms: USUAL_TIMEOUT_MS,
            backoff: USUAL_BACKOFF,
            run_at: at(),
            created_at: at(),
            updated_at: at(),
            finished_at: None,
            idempotency_key: None,
            tags: vec![],
            last_error: None,
            result: None,
            traceparent: None,
            lease: None,
        }
    }

    fn round_trip(job: &Job, id: Uuid, at: Time) -> (String, Job) {
        let text = encode(job, id, at).unwrap();
        match decode(&text, id, at).unwrap() {
            EventData::Enqueued { job } => (text, *job),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn a_new_job_is_stored_without_what_the_row_gives_and_comes_back_whole() {
        let id = Uuid::from_u128(7);
        let job = new_job(id);
        let (text, back) = round_trip(&job, id, at());
        assert_eq!(back, job);
        assert_eq!(
            text,
            r#"{"type":"enqueued","data":{"job":{"queue":"emails","kind":"send","payload":{"to": "a@example.com", "n": [1, 2.5e3]}}}}"#
        );
        // What the events API shows is the whole job, as before.
        let full = serde_json::to_string(&EventData::Enqueued { job: Box::new(job) }).unwrap();
        assert!(
            text.len() * 3 < full.len(),
            "{} vs {}",
            text.len(),
            full.len()
        );
    }

    /// Every field away from what the row would give: each is written and read back.
    #[test]
    fn every_field_that_differs_from_the_row_is_kept() {
        let id = Uuid::from_u128(7);
        let later = at().plus_ms(60_000);
        let mut job = new_job(Uuid::from_u128(8));
        job.priority = -3;
        job.attempt = 2;
        job.max_attempts = 5;
        job.timeout_ms = 1_000;
        job.backoff = Backoff {
            initial_ms: 10,
            ..USUAL_BACKOFF
        };
        job.run_at = later;
        job.created_at = at().plus_ms(-5);
        job.updated_at = at().plus_ms(5);
        job.finished_at = Some(at().plus_ms(9));
        job.idempotency_key = Some("k-1".into());
        job.tags = vec!["a".into(), "b\"c".into()];
        job.last_error = Some(JobError {
            message: "boom".into(),
            kind: Some("timeout".into()),
            attempt: 2,
            at: at(),
        });
        job.result = Some(Json::from_text("[null]".into()).unwrap());
        job.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        // Run later, yet not scheduled: the state must be written, not derived.
        job.state = State::Completed;
        assert_eq!(round_trip(&job, id, at()).1, job);
    }

    /// The state is left out only when the decoder derives the same one from `run_at`.
    #[test]
    fn the_state_is_derived_only_when_it_matches() {
        let id = Uuid::from_u128(7);
        let mut job = new_job(id);
        job.run_at = at().plus_ms(1);
        job.state = State::Scheduled;
        let (text, back) = round_trip(&job, id, at());
        assert_eq!(back, job);
        assert!(!text.contains("\"state\""), "{text}");
        job.state = State::Available;
        let (text, back) = round_trip(&job, id, at());
        assert_eq!(back, job);
        assert!(text.contains(r#""state":"available""#), "{text}");
        let mut due = new_job(id);
        due.state = State::Scheduled;
        assert_eq!(round_trip(&due, id, at()).1, due);
    }

    /// Events written before this form hold the whole job; they decode to the same job.
    #[test]
    fn the_earlier_whole_job_form_still_decodes() {
        let id = Uuid::from_u128(7);
        let mut job = new_job(id);
        job.tags = vec!["t".into()];
        job.idempotency_key = Some("k".into());
        let whole = serde_json::to_string(&EventData::Enqueued {
            job: Box::new(job.clone()),
        })
        .unwrap();
        // Decoded against another time and id, so nothing could come from the row.
        let other = at().plus_ms(1_000);
        match decode(&whole, Uuid::from_u128(9), other).unwrap() {
            EventData::Enqueued { job: back } => assert_eq!(*back, job),
            e => panic!("{e:?}"),
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// The invariant over any mix of fields: each one either what the row would give or
        /// something else, in every combination.
        #[test]
        fn any_job_comes_back_as_it_was_stored(
            other_id in any::<bool>(),
            state in prop::sample::select(vec![State::Available, State::Scheduled, State::Running, State::Completed, State::Dead, State::Cancelled]),
            priority in prop::sample::select(vec![0, 1, -1, i32::MAX, i32::MIN]),
            attempt in prop::sample::select(vec![0u32, 1, u32::MAX]),
            max_attempts in prop::sample::select(vec![USUAL_MAX_ATTEMPTS, 1, 21]),
            timeout_ms in prop::sample::select(vec![USUAL_TIMEOUT_MS, 1, 30_001]),
            jitter in prop::sample::select(vec![USUAL_BACKOFF.jitter, 0.0, 1.0]),
            run_at in -2i64..=2,
            created_at in -1i64..=1,
            updated_at in -1i64..=1,
            finished_at in prop::option::of(-1i64..=1),
            key in prop::option::of("[a-z\\\"]{0,3}"),
            tags in prop::collection::vec("[a-z\\\"é]{0,3}", 0..3),
            error in any::<bool>(),
            result in prop::option::of(prop::sample::select(vec!["0", "{\"a\": [true]}"])),
            traceparent in any::<bool>(),
        ) {
            let id = Uuid::from_u128(7);
            let mut job = new_job(if other_id { Uuid::from_u128(8) } else { id });
            job.state = state;
            job.priority = priority;
            job.attempt = attempt;
            job.max_attempts = max_attempts;
            job.timeout_ms = timeout_ms;
            job.backoff.jitter = jitter;
            job.run_at = at().plus_ms(run_at);
            job.created_at = at().plus_ms(created_at);
            job.updated_at = at().plus_ms(updated_at);
            job.finished_at = finished_at.map(|d| at().plus_ms(d));
            job.idempotency_key = key;
            job.tags = tags;
            job.last_error = error.then(|| JobError {
                message: "m".into(),
                kind: None,
                attempt: 1,
                at: at(),
            });
            job.result = result.map(|r| Json::from_text(r.to_owned()).unwrap());
            job.traceparent =
                traceparent.then(|| "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
            prop_assert_eq!(round_trip(&job, id, at()).1, job);
        }
    }

    #[test]
    fn text_that_is_not_an_enqueued_job_is_an_error() {
        let id = Uuid::from_u128(7);
        for bad in [
            "",
            "{}",
            r#"{"type":"enqueued","data":{}}"#,
            r#"{"type":"enqueued","data":{"job":{"queue":1}}}"#,
        ] {
            assert!(decode(bad, id, at()).is_err(), "{bad}");
        }
    }
}
