//! The JSON shape of a log line, written straight into the line:
//! `{"timestamp":…,"level":…,<the event's fields, message first>,"target":…,"span":{<the current
//! span's fields>,"name":…}}`, the keys tracing-subscriber's JSON format writes with
//! `flatten_event` and `with_current_span`, so readers of the logs see no difference.
//!
//! Every request logs a line or two inside a span of three fields, so this is on the hot path of
//! every request (docs/performance.md). tracing-subscriber's own JSON format gathers a span's
//! fields into a map of JSON values and serialises it when the span is made, and parses that text
//! back into a map for every line (its own source says it should not); it formats the timestamp
//! through `fmt` on every line. Here:
//! - a span's fields are stored (`SpanFields`) as the members of a JSON object, escaped as they
//!   are recorded, and copied into each line as they are;
//! - an event's fields are escaped into the line without a map of values in between;
//! - the timestamp's date and time of day are formatted once per second per thread; each line
//!   writes only its microseconds.
//!
//! Invariant: every line is one JSON object on one line: strings are escaped (quotes,
//! backslashes, control characters), and a non-finite number is written as `null`. A field
//! recorded on a span after it was made is appended; recorded twice, its key appears twice (JSON
//! readers keep the last).

use std::cell::Cell;
use std::fmt::{self, Write};
use std::time::{Duration, SystemTime as Clock, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as JSON lines; pair it with `SpanFields` for span fields.
pub struct JsonLines;

impl<S> FormatEvent<S, SpanFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanFields>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The line is made in a `String` and handed over whole: the writer is a `dyn` one, and a
        // line is some forty small writes.
        let mut line = String::with_capacity(384);
        let meta = event.metadata();
        line.push_str("{\"timestamp\":\"");
        match Clock::now().duration_since(UNIX_EPOCH) {
            Ok(now) if now.as_secs() <= LAST_SECOND => timestamp(&mut line, now)?,
            // Before 1970 or after 9999: not worth a fast path.
            _ => SystemTime.format_time(&mut Writer::new(&mut line))?,
        }
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push('"');
        let mut fields = Fields::new(&mut line, true);
        event.record(&mut fields);
        fields.result?;
        line.push_str(",\"target\":");
        string(&mut line, meta.target());
        if let Some(span) = ctx.lookup_current() {
            line.push_str(",\"span\":{");
            let ext = span.extensions();
            if let Some(members) = ext
                .get::<FormattedFields<SpanFields>>()
                .filter(|f| !f.fields.is_empty())
            {
                line.push_str(&members.fields);
                line.push(',');
            }
            line.push_str("\"name\":");
            string(&mut line, span.name());
            line.push('}');
        }
        line.push_str("}\n");
        w.write_str(&line)
    }
}

/// A span's fields as the members of a JSON object, without the braces: `"method":"POST",…`.
#[derive(Default)]
pub struct SpanFields;

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut w: Writer<'w>, fields: R) -> fmt::Result {
        let mut members = String::with_capacity(128);
        let mut visit = Fields::new(&mut members, false);
        fields.record(&mut visit);
        visit.result?;
        w.write_str(&members)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let more = !current.fields.is_empty();
        let mut visit = Fields::new(&mut current.fields, more);
        fields.record(&mut visit);
        visit.result
    }
}

/// The last second of year 9999, the last `keel_core::Time` can write.
const LAST_SECOND: u64 = 253_402_300_799;

/// Writes `since_epoch` (up to `LAST_SECOND`) as tracing-subscriber's `SystemTime` does, RFC 3339
/// in UTC with microseconds (`2026-12-07T05:59:01.123456Z`). The text up to the second is kept per
/// thread and made again only when the second changes.
fn timestamp(out: &mut String, since_epoch: Duration) -> fmt::Result {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let secs = since_epoch.as_secs();
    let cached = SECOND.with(|c| {
        let (s, text) = c.get();
        (s == secs).then_some(text)
    });
    let prefix = match cached {
        Some(text) => text,
        None => {
            // `Time` writes `YYYY-MM-DDTHH:MM:SS.mmmZ`; the first 20 bytes are the second.
            let ms = i64::try_from(secs)
                .map_err(|_| fmt::Error)?
                .saturating_mul(1_000);
            let whole = keel_core::Time::from_millis(ms).to_string();
            let mut text = [0; 20];
            text.copy_from_slice(whole.as_bytes().get(..20).ok_or(fmt::Error)?);
            SECOND.with(|c| c.set((secs, text)));
            text
        }
    };
    let mut micros = since_epoch.subsec_micros();
    let mut tail = *b"000000Z";
    for digit in tail[..6].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    // Both parts are ASCII by construction.
    out.push_str(std::str::from_utf8(&prefix).map_err(|_| fmt::Error)?);
    out.push_str(std::str::from_utf8(&tail).map_err(|_| fmt::Error)?);
    Ok(())
}

/// Writes each field as `"name":value`, separated by commas; with `comma`, one goes before the
/// first too.
struct Fields<'a> {
    out: &'a mut String,
    comma: bool,
    /// A `Display` or `Debug` of a field's value may fail; the line is then dropped.
    result: fmt::Result,
}

impl<'a> Fields<'a> {
    fn new(out: &'a mut String, comma: bool) -> Fields<'a> {
        Fields {
            out,
            comma,
            result: Ok(()),
        }
    }

    fn key(&mut self, field: &Field) {
        if self.comma {
            self.out.push(',');
        }
        self.comma = true;
        string(self.out, field.name());
        self.out.push(':');
    }

    /// A number, written as it is (a JSON number).
    fn number(&mut self, field: &Field, text: &str) {
        self.key(field);
        self.out.push_str(text);
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        string(self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            // The shortest text that reads back as `value`, as `Display` writes, in a tenth of
            // its instructions (it may choose an exponent for very large or small numbers, which
            // JSON allows).
            self.number(field, zmij::Buffer::new().format_finite(value));
        } else {
            self.number(field, "null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        if self.result.is_ok() {
            self.result = quoted(self.out, format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        if self.result.is_ok() {
            self.result = quoted(self.out, format_args!("{value:?}"));
        }
    }
}

/// A JSON string of `text`.
fn string(out: &mut String, text: &str) {
    out.push('"');
    escape(out, text);
    out.push('"');
}

/// A JSON string of formatted text, escaped as it is formatted.
fn quoted(out: &mut String, args: fmt::Arguments<'_>) -> fmt::Result {
    out.push('"');
    Escaped(out).write_fmt(args)?;
    out.push('"');
    Ok(())
}

/// Appends `text` escaped for the inside of a JSON string: quotes, backslashes and control
/// characters.
fn escape(out: &mut String, text: &str) {
    // Most text: copied as it is, after the same check keel's JSON answers make.
    if keel_core::json_str_is_plain(text) {
        out.push_str(text);
        return;
    }
    let mut plain = 0;
    for (i, b) in text.bytes().enumerate() {
        if !keel_core::json_byte_needs_escape(b) {
            continue;
        }
        out.push_str(&text[plain..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        plain = i + 1;
    }
    out.push_str(&text[plain..]);
}

/// Escapes what is formatted through it.
struct Escaped<'a>(&'a mut String);

impl Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;

        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn lines(log: impl FnOnce()) -> Vec<Value> {
        let out = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .fmt_fields(SpanFields)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    #[test]
    fn lines_are_json_with_the_event_fields_flat_and_the_span_nested() {
        let awkward = "quote \" backslash \\ newline \n tab \t bell \u{7} snow ☃ cr \r unit \u{1f}";
        let got = lines(|| {
            let span = tracing::info_span!("request", method = "POST", request_id = awkward);
            let _entered = span.enter();
            tracing::info!(message = "Job enqueued.", job_id = %"0194", n = 5_i64, neg = i64::MIN, big = u64::MAX, ratio = 1.5, third = 1.0 / 3.0, tiny = 1e-7, huge = -1e21, nan = f64::NAN, inf = f64::INFINITY, ok = true, no = false, text = awkward, debug = ?vec![1, 2]);
        });
        let line = &got[0];
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "Job enqueued.");
        assert_eq!(line["job_id"], "0194");
        assert_eq!(line["n"], 5);
        assert_eq!(line["big"], u64::MAX);
        assert_eq!(line["ratio"], 1.5);
        assert_eq!(line["neg"], i64::MIN);
        // Floats read back exactly.
        assert_eq!(line["third"].as_f64(), Some(1.0 / 3.0));
        assert_eq!(line["tiny"].as_f64(), Some(1e-7));
        assert_eq!(line["huge"].as_f64(), Some(-1e21));
        assert_eq!(line["inf"], Value::Null);
        assert_eq!(line["no"], false);
        assert_eq!(line["nan"], Value::Null);
        assert_eq!(line["ok"], true);
        assert_eq!(line["text"], awkward);
        assert_eq!(line["debug"], "[1, 2]");
        assert_eq!(line["target"], "keel::logformat::tests");
        assert_eq!(
            line["span"],
            json!({"method": "POST", "request_id": awkward, "name": "request"})
        );
    }

    #[test]
    fn lines_outside_a_span_have_no_span_and_a_span_without_fields_has_its_name() {
        let got = lines(|| {
            tracing::warn!(message = "Outside.");
            let span = tracing::info_span!("quiet");
            let _entered = span.enter();
            tracing::warn!(message = "Inside.");
        });
        assert_eq!(got[0]["message"], "Outside.");
        assert!(got[0].get("span").is_none(), "{}", got[0]);
        assert_eq!(got[1]["span"], json!({"name": "quiet"}));
        assert_eq!(got[1]["level"], "WARN");
    }

    #[test]
    fn fields_recorded_on_a_span_later_are_added_to_its_lines() {
        let got = lines(|| {
            let span =
                tracing::info_span!("request", method = "POST", status = tracing::field::Empty);
            let _entered = span.enter();
            tracing::info!(message = "Before.");
            span.record("status", 201_u64);
            tracing::info!(message = "After.");
            let bare = tracing::info_span!("bare", late = tracing::field::Empty);
            let _inner = bare.enter();
            bare.record("late", "quote \"");
            tracing::info!(message = "Inner.");
        });
        assert_eq!(got[0]["span"], json!({"method": "POST", "name": "request"}));
        assert_eq!(
            got[1]["span"],
            json!({"method": "POST", "status": 201, "name": "request"})
        );
        assert_eq!(got[2]["span"], json!({"late": "quote \"", "name": "bare"}));
    }

    fn stamp(secs: u64, micros: u32) -> String {
        let mut out = String::new();
        timestamp(&mut out, Duration::new(secs, micros * 1_000)).unwrap();
        out
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds_and_follow_each_second() {
        assert_eq!(stamp(0, 0), "1970-01-01T00:00:00.000000Z");
        // A leap day, then the second after its last one on the same thread: the kept text of
        // the second must be made again, across a change of day and month.
        assert_eq!(stamp(951_868_799, 999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(stamp(951_868_800, 7), "2000-03-01T00:00:00.000007Z");
        assert_eq!(stamp(951_868_800, 120_450), "2000-03-01T00:00:00.120450Z");
        assert_eq!(stamp(LAST_SECOND, 1), "9999-12-31T23:59:59.000001Z");
    }

    #[test]
    fn timestamps_match_what_tracing_subscriber_writes() {
        // The same instant cannot be had twice, so compare the shape and the second.
        let mut theirs = String::new();
        let before = Clock::now().duration_since(UNIX_EPOCH).unwrap();
        SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        let ours = stamp(before.as_secs(), before.subsec_micros());
        assert_eq!(ours.len(), theirs.len(), "{ours} against {theirs}");
        let second = |t: &str| t[..19].to_owned();
        assert!(
            second(&ours) == second(&theirs) || before.subsec_millis() > 900,
            "{ours} against {theirs}"
        );
    }

    #[test]
    fn every_byte_that_needs_escaping_is_escaped_wherever_it_is() {
        // Every ASCII byte at every offset of a 19-byte string, against a byte-by-byte answer:
        // the fast check for plain text must not let one through.
        let reference = |text: &str| -> String {
            text.chars()
                .map(|c| match c {
                    '"' => "\\\"".to_owned(),
                    '\\' => "\\\\".to_owned(),
                    '\n' => "\\n".to_owned(),
                    '\r' => "\\r".to_owned(),
                    '\t' => "\\t".to_owned(),
                    c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
                    c => c.to_string(),
                })
                .collect()
        };
        let mut text = vec![b'a'; 19];
        for at in 0..text.len() {
            for b in 0..0x80u8 {
                text[at] = b;
                let text = std::str::from_utf8(&text).unwrap();
                let mut out = String::new();
                escape(&mut out, text);
                assert_eq!(out, reference(text), "byte {b:#x} at {at}");
            }
            text[at] = b'a';
        }
        // Multi-byte characters (every byte >= 0x80) are plain.
        let snow = "☃é€𝄞".repeat(5);
        let mut out = String::new();
        escape(&mut out, &snow);
        assert_eq!(out, snow);
        out.clear();
        escape(&mut out, &format!("{snow}\"{snow}\u{1}"));
        assert_eq!(out, format!("{snow}\\\"{snow}\\u0001"));
    }
}
