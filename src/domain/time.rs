//! Timestamps: stored as milliseconds since the Unix epoch, shown as RFC 3339 UTC with milliseconds.

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time with millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_millis())
    }

    /// From milliseconds since the epoch.
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// This time plus `d` (saturating).
    pub fn plus(self, d: std::time::Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// The time from `earlier` to this one; zero when `earlier` is not earlier.
    pub fn since(self, earlier: Timestamp) -> std::time::Duration {
        std::time::Duration::from_millis(
            u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0),
        )
    }

    /// Seconds since the epoch with a millisecond fraction (the log line format).
    pub fn epoch_seconds(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    fn datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0).unwrap_or(DateTime::UNIX_EPOCH)
    }

    /// RFC 3339, UTC, milliseconds: `2026-11-22T18:11:19.117Z`.
    pub fn to_rfc3339(self) -> String {
        self.datetime().to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// The first instant of the calendar month (UTC) that contains this time.
    pub fn month_start(self) -> Timestamp {
        let d = self.datetime();
        Timestamp::from_ymd(d.year(), d.month())
    }

    /// The first instant of the next calendar month (UTC).
    pub fn next_month_start(self) -> Timestamp {
        let d = self.datetime();
        if d.month() == 12 {
            Timestamp::from_ymd(d.year() + 1, 1)
        } else {
            Timestamp::from_ymd(d.year(), d.month() + 1)
        }
    }

    fn from_ymd(year: i32, month: u32) -> Timestamp {
        Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
            .single()
            .map(|d| Timestamp(d.timestamp_millis()))
            .unwrap_or(Timestamp(0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Timestamp(t.timestamp_millis()))
            .map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date-time"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_and_z() {
        assert_eq!(
            Timestamp::from_millis(1_577_470_279_117).to_rfc3339(),
            "2019-12-27T18:11:19.117Z"
        );
    }

    #[test]
    fn month_boundaries() {
        let t = Timestamp::from_millis(1_577_470_279_117); // 2019-12-27
        assert_eq!(t.month_start().to_rfc3339(), "2019-12-01T00:00:00.000Z");
        assert_eq!(
            t.next_month_start().to_rfc3339(),
            "2020-01-01T00:00:00.000Z"
        );
    }
}
