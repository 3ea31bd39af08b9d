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

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::from_millisecond(self.0) {
            Ok(ts) => write!(f, "{ts:.3}"),
            Err(_) => write!(f, "{}ms", self.0),
        }
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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
