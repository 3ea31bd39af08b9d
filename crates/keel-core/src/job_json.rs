//! A job's JSON written straight to bytes, for the answers that carry many jobs.
//!
//! `serde_json` writes every key and string through its escaping loop, byte by byte, and a
//! batch's answer is a thousand jobs: under batch enqueue that loop and its callers were a third
//! of an HTTP thread's instructions. Here the keys are constants, the id, state and times are
//! ASCII that needs no escaping, and only text a client chose (names, keys, tags, errors) goes
//! through a check, and through `serde_json` if it needs escaping.
//!
//! Invariant: `write_json(job)` is byte for byte `serde_json::to_vec(job)` (the derived
//! `Serialize`, which stays the definition of the shape and of the OpenAPI schema); a
//! property test holds the two together. A field added to `Job` must be added to the test's
//! generator (its struct literal does not compile otherwise), and then fails the test until it
//! is written here.

use serde::Serialize;

use crate::backoff::Backoff;
use crate::job::Job;

impl Job {
    /// Appends the job's JSON object to `out`; see the module doc.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        self.write_json_fields(out);
        out.push(b'}');
    }

    /// Appends the job's JSON members without the braces, so an answer can add its own
    /// (a lease adds `"lease"`).
    pub fn write_json_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"id\":\"");
        out.extend_from_slice(
            self.id
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"queue\":");
        write_json_str(out, &self.queue);
        out.extend_from_slice(b",\"kind\":");
        write_json_str(out, &self.kind);
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(self.payload.get().as_bytes());
        out.extend_from_slice(b",\"state\":\"");
        out.extend_from_slice(self.state.as_str().as_bytes());
        out.extend_from_slice(b"\",\"priority\":");
        number(out, self.priority);
        out.extend_from_slice(b",\"attempt\":");
        number(out, self.attempt);
        out.extend_from_slice(b",\"max_attempts\":");
        number(out, self.max_attempts);
        out.extend_from_slice(b",\"timeout_ms\":");
        number(out, self.timeout_ms);
        out.extend_from_slice(b",\"backoff\":");
        write_backoff(out, &self.backoff);
        out.extend_from_slice(b",\"run_at\":");
        self.run_at.write_json(out);
        out.extend_from_slice(b",\"created_at\":");
        self.created_at.write_json(out);
        out.extend_from_slice(b",\"updated_at\":");
        self.updated_at.write_json(out);
        out.extend_from_slice(b",\"finished_at\":");
        match self.finished_at {
            Some(t) => t.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"idempotency_key\":");
        match &self.idempotency_key {
            Some(k) => write_json_str(out, k),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"tags\":[");
        for (i, tag) in self.tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(out, tag);
        }
        out.extend_from_slice(b"],\"last_error\":");
        match &self.last_error {
            Some(e) => write_json_value(out, e),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"result\":");
        match &self.result {
            Some(r) => out.extend_from_slice(r.get().as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(tp) = &self.traceparent {
            out.extend_from_slice(b",\"traceparent\":");
            write_json_str(out, tp);
        }
    }
}

/// Whether byte `b` must be escaped inside a JSON string: a control byte, a quote or a backslash.
#[inline]
pub fn json_byte_needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether `s` can stand inside a JSON string as it is (no byte `json_byte_needs_escape`).
pub fn json_str_is_plain(s: &str) -> bool {
    // No short circuit, so the check compiles to a vector loop.
    s.bytes()
        .fold(true, |ok, b| ok & !json_byte_needs_escape(b))
}

/// Appends `s` as a JSON string: as it is when nothing in it needs escaping (the usual case),
/// else escaped by `serde_json`.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if json_str_is_plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        write_json_value(out, s);
    }
}

fn number(out: &mut Vec<u8>, n: impl Serialize) {
    write_json_value(out, &n);
}

/// Appends a backoff's JSON. The text of the last backoff written is remembered per thread: a
/// batch's jobs nearly always share one, and formatting its float was ~13% of an HTTP thread's
/// instructions under batch enqueue. The memo's key is every field, the float by its bits.
fn write_backoff(out: &mut Vec<u8>, backoff: &Backoff) {
    /// The last backoff's fields (the jitter by its bits) and its text.
    type Memo = (Option<(i64, i64, u64)>, Vec<u8>);
    thread_local! {
        static LAST: std::cell::RefCell<Memo> = const { std::cell::RefCell::new((None, Vec::new())) };
    }
    let key = (backoff.initial_ms, backoff.max_ms, backoff.jitter.to_bits());
    LAST.with_borrow_mut(|(last, text)| {
        if *last != Some(key) {
            text.clear();
            write_json_value(text, backoff);
            *last = Some(key);
        }
        out.extend_from_slice(text);
    });
}

/// Appends `value` as `serde_json` writes it. Writing to a `Vec` cannot fail, and the values
/// written here cannot fail to serialise (no maps with non-string keys); if one ever did, `null`
/// keeps the JSON well formed (and the property test would catch the difference).
pub fn write_json_value(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    let mark = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(mark);
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::{Backoff, Job, JobError, Json, State, Time};

    fn texts() -> impl Strategy<Value = String> {
        // Plain names, and text with every kind of byte that needs escaping or is multi-byte.
        prop_oneof![
            "[a-z0-9._:-]{1,12}",
            "[a\"\\\\\u{1}\u{1f}\u{7f}é😀\n\t ]{0,6}"
        ]
    }

    prop_compose! {
        fn jobs()(
            id in any::<u128>(),
            queue in texts(),
            kind in texts(),
            payload in prop::sample::select(vec!["null", "{}", "{\"a\": [1, 2.5, \"x\\\"y\"]}", "\"é\""]),
            state in prop::sample::select(State::ALL.to_vec()),
            priority in any::<i32>(),
            attempt in any::<u32>(),
            max_attempts in any::<u32>(),
            timeout_ms in any::<i64>(),
            jitter in prop::sample::select(vec![0.0, 0.25, 1.0 / 3.0]),
            times in prop::array::uniform4(0i64..=253_402_300_799_999),
            finished in any::<bool>(),
            key in prop::option::of(texts()),
            tags in prop::collection::vec(texts(), 0..3),
            error in prop::option::of((texts(), prop::option::of(texts()))),
            result in prop::option::of(prop::sample::select(vec!["0", "[null]", "{\"b\":\"\\u0001\"}"])),
            traceparent in prop::option::of(texts()),
        ) -> Job {
            Job {
                id: uuid::Uuid::from_u128(id),
                queue,
                kind,
                payload: Json::from_text(payload.to_owned()).unwrap(),
                state,
                priority,
                attempt,
                max_attempts,
                timeout_ms,
                backoff: Backoff { initial_ms: 1_000, max_ms: timeout_ms, jitter },
                run_at: Time::from_millis(times[0]),
                created_at: Time::from_millis(times[1]),
                updated_at: Time::from_millis(times[2]),
                finished_at: finished.then(|| Time::from_millis(times[3])),
                idempotency_key: key,
                tags,
                last_error: error.map(|(message, kind)| JobError {
                    message,
                    kind,
                    attempt,
                    at: Time::from_millis(times[3]),
                }),
                result: result.map(|r| Json::from_text(r.to_owned()).unwrap()),
                traceparent,
                lease: None,
            }
        }
    }

    /// The backoff memo gives back a text only for the very backoff it was written for: each
    /// step changes one field (the jitter's sign alone included) and must be written anew.
    #[test]
    fn a_backoff_is_remembered_only_for_itself() {
        let base = Backoff {
            initial_ms: 1_000,
            max_ms: 60_000,
            jitter: 0.0,
        };
        let steps = [
            base,
            base,
            Backoff {
                initial_ms: 2_000,
                ..base
            },
            Backoff {
                max_ms: 70_000,
                ..base
            },
            Backoff {
                jitter: -0.0,
                ..base
            },
            Backoff {
                jitter: 0.5,
                ..base
            },
            base,
        ];
        for b in steps {
            let mut out = Vec::new();
            super::write_backoff(&mut out, &b);
            assert_eq!(out, serde_json::to_vec(&b).unwrap(), "{b:?}");
        }
    }

    proptest! {
        #[test]
        fn writes_what_serde_writes(job in jobs()) {
            let mut fast = Vec::new();
            job.write_json(&mut fast);
            let reference = serde_json::to_vec(&job).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&reference));
        }
    }
}
