//! Value types written the way people write them (`"500/s"`, `"30s"`, `"06:00"`, `"starttls"`)
//! and the range check every section uses for its numbers.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// TLS towards a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsSetting {
    None,
    Starttls,
    Tls,
}

/// A rate written as people write it: `"500/s"`, `"20000/h"`, `"10/m"`, `"100000/d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint =
            "write a rate as COUNT/UNIT with UNIT one of s, m, h, d, e.g. \"500/s\" or \"20000/h\"";
        let (count, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid rate {s:?}: {hint}"))?;
        let count: u32 =
            count.trim().replace('_', "").parse().map_err(|_| {
                format!("invalid rate {s:?}: {count:?} is not a whole number; {hint}")
            })?;
        if count == 0 {
            return Err(format!(
                "invalid rate {s:?}: the count must be at least 1 (leave the rate out for no limit)"
            ));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            other => {
                return Err(format!(
                    "invalid rate {s:?}: unknown unit {other:?}; {hint}"
                ));
            }
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(per),
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A UTC time of day, written `"HH:MM"` (24-hour clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

impl TimeOfDay {
    /// The current UTC time of day.
    pub fn now_utc() -> TimeOfDay {
        TimeOfDay::of_unix(crate::clock::unix_now())
    }

    /// The UTC time of day of a Unix time.
    pub fn of_unix(t: i64) -> TimeOfDay {
        let secs = t.rem_euclid(86_400);
        TimeOfDay {
            hour: (secs / 3600) as u8,
            minute: (secs % 3600 / 60) as u8,
        }
    }
}

impl std::fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl FromStr for TimeOfDay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid time of day {s:?}: write \"HH:MM\" (24-hour clock, UTC), e.g. \"06:00\""
            )
        };
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let hour: u8 = h.parse().map_err(|_| bad())?;
        let minute: u8 = m.parse().map_err(|_| bad())?;
        if hour > 23 || minute > 59 {
            return Err(bad());
        }
        Ok(TimeOfDay { hour, minute })
    }
}

/// A size in bytes written as people write it: `"64KB"`, `"1MB"`, `"512B"`. `KB` and `KiB` are
/// 1024 bytes, `MB` and `MiB` 1024 KB, `GB` and `GiB` 1024 MB; units in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = "write a size as a number and a unit (B, KB, MB, GB; KB = 1024 bytes), e.g. \"64KB\" or \"1MB\"";
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .ok_or_else(|| format!("invalid size {s:?}: missing unit; {hint}"))?;
        let (n, unit) = t.split_at(split);
        let n: u64 = n
            .replace('_', "")
            .parse()
            .map_err(|_| format!("invalid size {s:?}: {hint}"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "b" => 1,
            "kb" | "kib" | "k" => 1 << 10,
            "mb" | "mib" | "m" => 1 << 20,
            "gb" | "gib" | "g" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {other:?}; {hint}"
                ));
            }
        };
        n.checked_mul(scale)
            .map(Size)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

impl fmt::Display for Size {
    /// The largest unit that writes the size exactly: `64 KB`, `1 MB`, `1500 B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (scale, unit) in [(1u64 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")] {
            if n >= scale && n.is_multiple_of(scale) {
                return write!(f, "{} {unit}", n / scale);
            }
        }
        write!(f, "{n} B")
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size setting within `min..=max` (`default` when absent), or the problem: its span and a
/// message naming the key `what`.
pub fn check_size(
    v: Option<&Spanned<Size>>,
    default: Size,
    min: Size,
    max: Size,
    what: &str,
) -> Result<Size, (Range<usize>, String)> {
    within(v, default, min..=max, what, "\"")
}

/// A duration written as people write it: `"250ms"`, `"30s"`, `"5m"`, `"4h"`, `"2d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// The longest duration any setting takes: a run is nightly, a retry window days at most.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint =
            "write a duration as a number and a unit (ms, s, m, h, d), e.g. \"30s\" or \"4h\"";
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("invalid duration {s:?}: missing unit; {hint}"))?;
        let (n, unit) = t.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: {hint}"))?;
        let unit_secs = match unit.trim() {
            "ms" => None,
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86_400),
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?}; {hint}"
                ));
            }
        };
        let d = match unit_secs {
            None => Some(Duration::from_millis(n)),
            Some(k) => n.checked_mul(k).map(Duration::from_secs),
        };
        let d = d
            .filter(|d| *d <= MAX_DURATION)
            .ok_or_else(|| format!("invalid duration {s:?}: at most 30 days (\"30d\")"))?;
        Ok(Dur(d))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A number setting within `min..=max` (`default` when absent), or the problem: its span and a
/// message naming the key `what`. Shared by every section that validates numbers.
pub fn check_range(
    v: Option<&Spanned<u64>>,
    default: u64,
    min: u64,
    max: u64,
    what: &str,
) -> Result<u64, (Range<usize>, String)> {
    within(v, default, min..=max, what, "")
}

/// [`check_range`] and [`check_size`]: the value as written (between `quote`s) in the message.
fn within<T: PartialOrd + Copy + std::fmt::Display>(
    v: Option<&Spanned<T>>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    what: &str,
    quote: &str,
) -> Result<T, (Range<usize>, String)> {
    match v {
        None => Ok(default),
        Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err((
            v.span(),
            format!(
                "{what} = {quote}{}{quote} is out of range: use {} to {}",
                v.get_ref(),
                range.start(),
                range.end()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(
            "500/s".parse::<Rate>().unwrap(),
            Rate {
                count: 500,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(
            "20000/h".parse::<Rate>().unwrap().per,
            Duration::from_secs(3600)
        );
        assert_eq!("20_000/h".parse::<Rate>().unwrap().count, 20_000);
        assert!("500".parse::<Rate>().is_err());
        assert!("0/s".parse::<Rate>().is_err());
        assert!(
            "5/fortnight"
                .parse::<Rate>()
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            "250ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("4h".parse::<Dur>().unwrap().0, Duration::from_secs(14400));
        assert!("30".parse::<Dur>().unwrap_err().contains("missing unit"));
        assert!("3 weeks".parse::<Dur>().is_err());
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!("30d".parse::<Dur>().unwrap().0, MAX_DURATION);
        assert_eq!("720h".parse::<Dur>().unwrap().0, MAX_DURATION);
        for huge in ["31d", "721h", "999999999999999h", "18446744073709551615d"] {
            let e = huge.parse::<Dur>().unwrap_err();
            assert!(e.contains("at most 30 days"), "{huge}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!("64KB".parse::<Size>().unwrap(), Size(65_536));
        assert_eq!("1MB".parse::<Size>().unwrap(), Size(1 << 20));
        assert_eq!(" 1 MiB ".parse::<Size>().unwrap(), Size(1 << 20));
        assert_eq!("1_500B".parse::<Size>().unwrap(), Size(1500));
        assert_eq!("64kb".parse::<Size>().unwrap(), Size(65_536));
        assert!("1500".parse::<Size>().unwrap_err().contains("missing unit"));
        assert!("1TB".parse::<Size>().unwrap_err().contains("unknown unit"));
        assert!("99999999999999GB".parse::<Size>().is_err());
        assert_eq!(Size(65_536).to_string(), "64 KB");
        assert_eq!(Size(1 << 20).to_string(), "1 MB");
        assert_eq!(Size(1500).to_string(), "1500 B");
    }
}
