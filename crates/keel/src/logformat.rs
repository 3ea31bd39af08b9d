//! The JSON shape of a log line, written straight into the line:
//! `{"timestamp":…,"level":…,<the event's fields, message first>,"target":…,"span":{<the current
//! span's fields>,"name":…}}`, the keys tracing-subscriber's JSON format writes with
//! `flatten_event` and `with_current_span`, so readers of the logs see no difference.
//!
//! That format parses the current span's fields back from their JSON text into a map on every
//! line (its own source says it should not); here the stored text (`JsonFields`, one JSON object
//! per span) is copied in as it is, and the event's fields are escaped into the line without a
//! map of values in between.
//!
//! Invariant: every line is one JSON object on one line: strings are escaped (quotes,
//! backslashes, control characters), and a non-finite number is written as `null`.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as JSON lines; pair it with `JsonFields` for span fields.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        write!(w, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        string(&mut w, meta.target())?;
        if let Some(span) = ctx.lookup_current() {
            w.write_str(",\"span\":{")?;
            let ext = span.extensions();
            // `JsonFields` stores a span's fields as one JSON object's text: copy its members.
            let members = ext
                .get::<FormattedFields<N>>()
                .map(|f| f.fields.trim())
                .and_then(|t| t.strip_prefix('{'))
                .and_then(|t| t.strip_suffix('}'))
                .map(str::trim)
                .unwrap_or("");
            if !members.is_empty() {
                w.write_str(members)?;
                w.write_char(',')?;
            }
            w.write_str("\"name\":")?;
            string(&mut w, span.name())?;
            w.write_char('}')?;
        }
        w.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`.
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.w.write_char(',')?;
        string(self.w, field.name())?;
        self.w.write_char(':')
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.w));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |w| string(w, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                w.write_str("null")
            }
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, |w| quoted(w, format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, |w| quoted(w, format_args!("{value:?}")));
    }
}

/// A JSON string of `text`.
fn string(w: &mut impl Write, text: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(text)?;
    w.write_char('"')
}

/// A JSON string of formatted text, escaped as it is formatted.
fn quoted(w: &mut impl Write, args: fmt::Arguments<'_>) -> fmt::Result {
    w.write_char('"')?;
    Escaped(&mut *w).write_fmt(args)?;
    w.write_char('"')
}

/// Escapes what is written through it for the inside of a JSON string.
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::JsonFields;

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
            .fmt_fields(JsonFields::new())
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
        let awkward = "quote \" backslash \\ newline \n tab \t bell \u{7} snow ☃";
        let got = lines(|| {
            let span = tracing::info_span!("request", method = "POST", request_id = awkward);
            let _entered = span.enter();
            tracing::info!(message = "Job enqueued.", job_id = %"0194", n = 5_i64, big = u64::MAX, ratio = 1.5, nan = f64::NAN, ok = true, text = awkward, debug = ?vec![1, 2]);
        });
        let line = &got[0];
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "Job enqueued.");
        assert_eq!(line["job_id"], "0194");
        assert_eq!(line["n"], 5);
        assert_eq!(line["big"], u64::MAX);
        assert_eq!(line["ratio"], 1.5);
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
}
