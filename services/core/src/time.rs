use std::time::{Duration, SystemTime, UNIX_EPOCH};

use healthcode_proto::Timestamp;
use serde::{Deserialize, Serialize};

/// An instant as microseconds since the Unix epoch: the resolution the facts
/// keep and, on ScyllaDB, the resolution of cell write timestamps.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMicros(pub i64);

/// Seconds of 0001-01-01 and 9999-12-31: the span prost-types accepts, and one
/// whose microseconds fit in an i64 without overflow.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

impl UnixMicros {
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => UnixMicros(d.as_micros() as i64),
            Err(e) => UnixMicros(-(e.duration().as_micros() as i64)),
        }
    }

    /// The instant of a protobuf timestamp, or `None` when it is out of range.
    pub fn from_timestamp(ts: &Timestamp) -> Option<Self> {
        if !(0..1_000_000_000).contains(&ts.nanos) || !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
            return None;
        }
        Some(UnixMicros(ts.seconds * 1_000_000 + i64::from(ts.nanos / 1_000)))
    }

    pub fn to_timestamp(self) -> Timestamp {
        Timestamp { seconds: self.0.div_euclid(1_000_000), nanos: (self.0.rem_euclid(1_000_000) * 1_000) as i32 }
    }

    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_micros(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_micros(self.0.unsigned_abs())
        }
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        UnixMicros(self.0.saturating_add(d.as_micros().min(i64::MAX as u128) as i64))
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        UnixMicros(self.0.saturating_sub(d.as_micros().min(i64::MAX as u128) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trip_keeps_microseconds() {
        let ts = Timestamp { seconds: 1_700_000_000, nanos: 123_456_789 };
        let t = UnixMicros::from_timestamp(&ts).unwrap();
        assert_eq!(t, UnixMicros(1_700_000_000_123_456));
        assert_eq!(t.to_timestamp(), Timestamp { seconds: 1_700_000_000, nanos: 123_456_000 });
    }

    #[test]
    fn negative_instants_round_trip() {
        let t = UnixMicros(-1_500_000);
        assert_eq!(t.to_timestamp(), Timestamp { seconds: -2, nanos: 500_000_000 });
        assert_eq!(UnixMicros::from_timestamp(&t.to_timestamp()), Some(t));
    }

    #[test]
    fn out_of_range_timestamps_are_refused() {
        assert_eq!(UnixMicros::from_timestamp(&Timestamp { seconds: 0, nanos: -1 }), None);
        assert_eq!(UnixMicros::from_timestamp(&Timestamp { seconds: 0, nanos: 1_000_000_000 }), None);
        assert_eq!(UnixMicros::from_timestamp(&Timestamp { seconds: i64::MAX, nanos: 0 }), None);
    }
}
