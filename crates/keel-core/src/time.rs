//! `Time`: an instant with millisecond precision, the only clock type the domain knows.
//!
//! The domain never reads a clock; callers pass `now` in. On the wire a `Time` is an RFC 3339 UTC
//! string with exactly three fractional digits; in storage it is integer Unix milliseconds.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Time(i64);

/// The latest instant keel accepts (year 9999), so arithmetic on times cannot overflow.
const MAX_MS: i64 = 253_402_300_799_999;

impl Time {
    pub const EPOCH: Time = Time(0);

    /// For constants; the caller guarantees `ms` is in range.
    pub const fn from_millis_const(ms: i64) -> Time {
        Time(ms)
    }

    pub fn from_millis(ms: i64) -> Time {
        Time(ms.clamp(0, MAX_MS))
    }

    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + ms`, saturating at the bounds of representable time.
    pub fn plus_ms(self, ms: i64) -> Time {
        Time::from_millis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, negative when `earlier` is later.
    pub fn millis_since(self, earlier: Time) -> i64 {
        self.0 - earlier.0
    }

    /// Parses an RFC 3339 timestamp with an offset (`Z` or `+01:00`), truncating below milliseconds.
    pub fn parse_rfc3339(text: &str) -> Result<Time, String> {
        let ts: jiff::Timestamp = text
            .parse()
            .map_err(|e| format!("not an RFC 3339 timestamp with offset: {e}"))?;
        let ms = ts.as_millisecond();
        if !(0..=MAX_MS).contains(&ms) {
            return Err("timestamp is out of range (1970..9999)".to_owned());
        }
        Ok(Time(ms))
    }
}

impl Time {
    /// The RFC 3339 text, `YYYY-MM-DDTHH:MM:SS.mmmZ`, written without `fmt` or allocation: every
    /// job read, event and answer carries several, so this is on the hot path of every write.
    /// `None` outside 1970..=9999 (only `from_millis_const` can make such a `Time`).
    fn rfc3339(self) -> Option<[u8; 24]> {
        if !(0..=MAX_MS).contains(&self.0) {
            return None;
        }
        // The last time this thread wrote: the jobs of a batch share their three times, so an
        // answer of a thousand jobs formats one time, not three thousand.
        thread_local! {
            static LAST: std::cell::Cell<(i64, [u8; 24])> =
                const { std::cell::Cell::new((-1, [0; 24])) };
        }
        if let Some(text) = LAST.with(|last| {
            let (ms, text) = last.get();
            (ms == self.0).then_some(text)
        }) {
            return Some(text);
        }
        let text = self.format_rfc3339();
        LAST.with(|last| last.set((self.0, text)));
        Some(text)
    }

    fn format_rfc3339(self) -> [u8; 24] {
        let (days, ms_of_day) = (self.0 / 86_400_000, self.0 % 86_400_000);
        let (year, month, day) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, digits: usize, mut n: i64| {
            for i in (at..at + digits).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, ms_of_day / 3_600_000);
        put(14, 2, ms_of_day / 60_000 % 60);
        put(17, 2, ms_of_day / 1_000 % 60);
        put(20, 3, ms_of_day % 1_000);
        out
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (days >= 0), by Howard
/// Hinnant's `civil_from_days`: eras of 400 years, years starting in March.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Time {
    /// Appends the JSON string `Serialize` writes for this time.
    pub fn write_json(self, out: &mut Vec<u8>) {
        match self.rfc3339() {
            Some(text) => {
                out.push(b'"');
                out.extend_from_slice(&text);
                out.push(b'"');
            }
            None => crate::job_json::write_json_value(out, &self),
        }
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.rfc3339() {
            // The buffer holds only ASCII digits and punctuation.
            return f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
        }
        match jiff::Timestamp::from_millisecond(self.0) {
            Ok(ts) => write!(f, "{ts:.3}"),
            Err(_) => write!(f, "{}ms", self.0),
        }
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339() {
            Some(text) => s.serialize_str(
                std::str::from_utf8(&text).map_err(|e| serde::ser::Error::custom(e.to_string()))?,
            ),
            None => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Time::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// On the wire: an RFC 3339 string (`date-time`).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Time {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("An RFC 3339 UTC time with millisecond precision."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Time {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_exactly_three_fractional_digits() {
        assert_eq!(Time::from_millis(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Time::from_millis(1_795_413_600_123).to_string(),
            "2026-11-23T06:00:00.123Z"
        );
    }

    /// The formatter remembers its last time per thread: a repeat gives the same text, and the
    /// next time its own.
    #[test]
    fn a_repeated_time_reads_the_same_and_the_next_its_own() {
        let (a, b) = (Time::from_millis(1_795_413_600_123), Time::from_millis(0));
        for _ in 0..2 {
            assert_eq!(a.to_string(), "2026-11-23T06:00:00.123Z");
            assert_eq!(a.to_string(), "2026-11-23T06:00:00.123Z");
            assert_eq!(b.to_string(), "1970-01-01T00:00:00.000Z");
            assert_eq!(a.plus_ms(1).to_string(), "2026-11-23T06:00:00.124Z");
        }
    }

    /// The hand-written formatter against jiff's, at the edges of its range and of the calendar
    /// (leap days, centuries, the 400-year rule) and at random instants.
    #[test]
    fn formats_as_jiff_does_everywhere_in_range() {
        // jiff's own range ends a day early (9999-12-30T22:00Z); its Display cannot speak for
        // the last hours before MAX_MS, which keel writes as RFC 3339 all the same.
        let jiff = |ms: i64| {
            jiff::Timestamp::from_millisecond(ms)
                .ok()
                .map(|ts| format!("{ts:.3}"))
        };
        assert_eq!(
            Time::from_millis(MAX_MS).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
        let mut cases = vec![0, 1, 999, 86_399_999, 86_400_000, 253_402_207_200_000];
        for date in [
            "2000-02-29",
            "1972-02-29",
            "2100-03-01",
            "2400-02-29",
            "1999-12-31",
            "2026-12-31",
        ] {
            let day: jiff::civil::Date = date.parse().unwrap();
            let ms = day
                .to_zoned(jiff::tz::TimeZone::UTC)
                .unwrap()
                .timestamp()
                .as_millisecond();
            cases.extend([ms - 1, ms, ms + 86_399_999]);
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            // xorshift: a fixed, reproducible sample of the whole range.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push((x % (MAX_MS as u64 + 1)) as i64);
        }
        for ms in cases {
            let (t, Some(want)) = (Time::from_millis(ms), jiff(ms)) else {
                continue;
            };
            assert_eq!(t.to_string(), want, "at {ms} ms");
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{want}\""));
        }
    }

    #[test]
    fn parses_offsets_and_truncates_to_millis() {
        let t = Time::parse_rfc3339("2026-11-23T07:00:00.123456+01:00").unwrap();
        assert_eq!(t, Time::from_millis(1_795_413_600_123));
        assert!(Time::parse_rfc3339("2026-11-23 06:00").is_err());
        assert!(
            Time::parse_rfc3339("2026-11-23T06:00:00").is_err(),
            "offset is required"
        );
    }
}
