//! Input rules that hold for every entry point: names, numeric ranges, sizes, JSON depth.
//!
//! Violations are collected as [`FieldError`]s carrying a JSON pointer into the request body, so
//! a caller sees every problem at once and exactly where it is. Nothing here has side effects.

use serde::Serialize;

/// One violation: where (an RFC 6901 pointer into the request body) and what.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub pointer: String,
    pub message: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// Size limits; the defaults are API.md's.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_payload_bytes: usize,
    pub max_result_bytes: usize,
    pub max_batch: usize,
    pub max_json_depth: usize,
    pub max_tags: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 4 << 20,
            max_payload_bytes: 1 << 20,
            max_result_bytes: 64 << 10,
            max_batch: 1_000,
            max_json_depth: 64,
            max_tags: 32,
        }
    }
}

pub const MAX_NAME_LEN: usize = 128;

/// Queue, kind and tag names: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        Some(c) => Err(format!("contains {c:?}; allowed are A-Z a-z 0-9 . _ : -")),
        None => Ok(()),
    }
}

/// Pushes an error for `value` at `pointer` unless it lies in `lo..=hi`. The pointer is written
/// out only for a value out of range, so a caller can pass `format_args!` and pay nothing for
/// a good one (a batch validates a thousand jobs per request).
pub fn check_range(
    errors: &mut Vec<FieldError>,
    pointer: impl std::fmt::Display,
    value: i64,
    lo: i64,
    hi: i64,
) {
    if !(lo..=hi).contains(&value) {
        errors.push(FieldError::new(
            pointer.to_string(),
            format!("must be between {lo} and {hi}, got {value}"),
        ));
    }
}

/// The bytes of JSON text outside its strings (quotes excluded), with their positions, so
/// scanners can treat them as structure. A string's contents are skipped with `memchr` (to its
/// closing quote, stepping over escapes), so long strings cost little: a batch of a thousand
/// jobs is ~150 KB scanned on the request path. Linear, no allocation, safe on any input (an
/// unterminated string ends the scan).
fn structure(text: &[u8]) -> impl Iterator<Item = (usize, u8)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        loop {
            let b = *text.get(i)?;
            i += 1;
            if b != b'"' {
                return Some((i - 1, b));
            }
            // A string: on to its closing quote, stepping over each escaped byte.
            loop {
                let at = i + memchr::memchr2(b'"', b'\\', text.get(i..)?)?;
                i = at + 1;
                if text.get(at) != Some(&b'\\') {
                    break;
                }
                i += 1;
            }
        }
    })
}

/// The deepest nesting of arrays and objects in a JSON text (0 for a scalar). Strings are
/// skipped, so brackets inside them do not count. Safe on any input.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for (_, b) in structure(text) {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Removes insignificant whitespace from valid JSON text, keeping key order and string contents
/// byte for byte. Borrows when there is nothing to remove (the common case).
pub fn compact_json(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    // `bytes[..kept]` is in `out` or was whitespace.
    let mut kept = 0;
    for (i, b) in structure(bytes) {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            let o = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
            o.extend_from_slice(bytes.get(kept..i).unwrap_or_default());
            kept = i + 1;
        }
    }
    match out {
        // Only ASCII whitespace between tokens was removed, so the bytes stay valid UTF-8.
        Some(mut bytes_out) => {
            bytes_out.extend_from_slice(bytes.get(kept..).unwrap_or_default());
            std::borrow::Cow::Owned(
                String::from_utf8(bytes_out)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            )
        }
        None => std::borrow::Cow::Borrowed(text),
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901).
pub fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_alphabet_and_length() {
        assert!(check_name("email.welcome:v2-x_y").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("has space").is_err());
        assert!(check_name("é").is_err());
        assert!(check_name(&"a".repeat(128)).is_ok());
        assert!(check_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn compaction_keeps_strings_and_order() {
        assert_eq!(
            compact_json(r#"{ "b" : [1, 2] ,"a":" x \" y "}"#),
            r#"{"b":[1,2],"a":" x \" y "}"#
        );
        assert!(matches!(
            compact_json(r#"{"a":1}"#),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(compact_json("\n 7 \t"), "7");
    }

    /// The byte-at-a-time scan `structure` replaced, kept as its reference: a byte is
    /// structure when it is outside every string and is not a quote.
    fn reference_structure(text: &[u8]) -> Vec<(usize, u8)> {
        let (mut in_string, mut escaped, mut out) = (false, false, Vec::new());
        for (i, &b) in text.iter().enumerate() {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
            } else if b == b'"' {
                in_string = true;
            } else {
                out.push((i, b));
            }
        }
        out
    }

    proptest::proptest! {
        /// Any text, valid JSON or not, built from the bytes that matter to the scan.
        #[test]
        fn structure_agrees_with_the_byte_at_a_time_scan(text in "[\\[\\]{}\"\\\\ a,:\n]{0,48}") {
            let bytes = text.as_bytes();
            proptest::prop_assert_eq!(structure(bytes).collect::<Vec<_>>(), reference_structure(bytes));
            let spaces: Vec<usize> = reference_structure(bytes)
                .into_iter()
                .filter(|(_, b)| matches!(b, b' ' | b'\n'))
                .map(|(i, _)| i)
                .collect();
            let kept: Vec<u8> = bytes
                .iter()
                .enumerate()
                .filter(|(i, _)| !spaces.contains(i))
                .map(|(_, b)| *b)
                .collect();
            let compacted = compact_json(&text);
            proptest::prop_assert_eq!(compacted.as_bytes(), &kept[..]);
        }
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[{"}]}"#), 3);
        assert_eq!(json_depth(br#"["\"[" ]"#), 1);
        assert_eq!(json_depth(&b"[".repeat(100)), 100);
    }
}

/// A W3C `traceparent` header (Trace Context level 1) in its canonical form, or `None` when it
/// does not parse. Callers ignore a value that does not parse, as the recommendation asks of a
/// receiver, rather than refusing the request. A later version's value is cut to the fields
/// version 00 defines.
pub fn traceparent(value: &str) -> Option<String> {
    let value = value.trim_matches([' ', '\t']);
    let head = value.get(..55)?;
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    let mut parts = head.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let shaped = version.len() == 2
        && trace.len() == 32
        && parent.len() == 16
        && flags.len() == 2
        && [version, trace, parent, flags].into_iter().all(hex);
    let tail_ok = match (version, value.as_bytes().get(55)) {
        (_, None) => true,
        ("00", Some(_)) => false,
        (_, Some(b)) => *b == b'-',
    };
    (shaped && version != "ff" && nonzero(trace) && nonzero(parent) && tail_ok)
        .then(|| head.to_owned())
}

#[cfg(test)]
mod traceparent_tests {
    use super::traceparent;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn accepts_the_canonical_form_and_cuts_later_versions() {
        assert_eq!(traceparent(GOOD).as_deref(), Some(GOOD));
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert_eq!(
            traceparent(v1).as_deref(),
            Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }

    #[test]
    fn refuses_what_the_recommendation_calls_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(traceparent(bad), None, "{bad:?}");
        }
    }
}
