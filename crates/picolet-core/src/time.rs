//! Wall-clock time without an RTC.
//!
//! The Pico has no battery-backed clock, so the core keeps a monotonic millisecond count
//! (supplied by the caller) plus an offset learned from a trusted source: SNTP, the host's
//! system clock, or the API server's HTTP `Date` header. Kubernetes timestamps are formatted here.
//! The calendar conversions are written by hand because the crates that do them (`time`,
//! `chrono`, `httpdate`) need `std` or `alloc` for parsing and formatting.
//!
//! Each kind of time has its own type, so that none is mistaken for another: [`Millis`] (an
//! instant on the monotonic clock), [`Duration`] (a span in milliseconds), [`UnixSeconds`]
//! (`Date` headers, certificate validity) and [`UnixMillis`] (the wall clock and the timestamps
//! the node writes), with explicit conversions between the Unix ones.

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

/// An instant on a monotonic millisecond clock that starts at boot; the only notion of "now" the
/// core uses. The driver reads its clock and wraps it with [`Millis::from_ms`].
///
/// Instants do not add: an instant plus a [`Duration`] is an instant, and an instant minus an
/// earlier one is a [`Duration`] (zero if it is not earlier, as a monotonic clock never goes back).
///
/// ```compile_fail
/// use picolet_core::time::Millis;
/// let _ = Millis::from_ms(1) + Millis::from_ms(2); // two instants do not add
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(u64);

impl Millis {
    /// Boot.
    pub const ZERO: Self = Self(0);
    /// Never: the wakeup of something that has nothing to do.
    pub const MAX: Self = Self(u64::MAX);

    /// The instant `ms` milliseconds after boot.
    pub const fn from_ms(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since boot.
    pub const fn as_ms(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is not earlier.
    pub const fn saturating_sub(self, earlier: Self) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Millis {
    type Output = Self;
    /// Saturates at [`Millis::MAX`] ("never").
    fn add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.0))
    }
}

impl AddAssign<Duration> for Millis {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub for Millis {
    type Output = Duration;
    /// Same as [`Millis::saturating_sub`].
    fn sub(self, earlier: Self) -> Duration {
        self.saturating_sub(earlier)
    }
}

/// A span of time in milliseconds: timeouts, intervals, ages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(u64);

impl Duration {
    /// No time at all.
    pub const ZERO: Self = Self(0);
    /// Longer than anything the core waits for.
    pub const MAX: Self = Self(u64::MAX);

    /// `ms` milliseconds.
    pub const fn from_ms(ms: u64) -> Self {
        Self(ms)
    }

    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Whole milliseconds.
    pub const fn as_ms(self) -> u64 {
        self.0
    }

    /// `self` times `n`, saturating.
    pub const fn saturating_mul(self, n: u64) -> Self {
        Self(self.0.saturating_mul(n))
    }

    /// `self` minus `other`, or zero.
    pub const fn saturating_sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }
}

impl Add for Duration {
    type Output = Self;
    /// Saturates at [`Duration::MAX`].
    fn add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }
}

impl From<Duration> for core::time::Duration {
    fn from(d: Duration) -> Self {
        core::time::Duration::from_millis(d.0)
    }
}

/// A Unix time in whole seconds: HTTP `Date` headers and X.509 validity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixSeconds(u64);

impl UnixSeconds {
    /// `secs` seconds after 1970-01-01T00:00:00Z.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs)
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is not earlier.
    pub const fn saturating_sub(self, earlier: Self) -> Duration {
        Duration::from_secs(self.0.saturating_sub(earlier.0))
    }
}

/// A Unix time in milliseconds: the wall clock and the timestamps the node writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(u64);

impl UnixMillis {
    /// `ms` milliseconds after 1970-01-01T00:00:00Z.
    pub const fn from_ms(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub const fn as_ms(self) -> u64 {
        self.0
    }

    /// The whole seconds, truncated.
    pub const fn to_seconds(self) -> UnixSeconds {
        UnixSeconds(self.0 / 1000)
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is not earlier.
    pub const fn saturating_sub(self, earlier: Self) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

impl From<UnixSeconds> for UnixMillis {
    fn from(s: UnixSeconds) -> Self {
        Self(s.0.saturating_mul(1000))
    }
}

/// Where a wall-clock sample came from; a precise source is never overridden by `Date` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockSource {
    /// SNTP or the host operating system: millisecond precision.
    Precise,
    /// An HTTP `Date` header: one-second precision.
    HttpDate,
}

/// Maps monotonic time to Unix time once a sample has been seen.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock {
    /// Unix milliseconds minus monotonic milliseconds, when known.
    offset_ms: Option<i64>,
    precise: bool,
}

impl WallClock {
    /// Records that at monotonic `now` the Unix time was `unix`.
    ///
    /// `Date` samples only replace the estimate when it is more than two seconds off, so that
    /// their one-second granularity does not make timestamps jitter backwards.
    pub fn sync(&mut self, now: Millis, unix: UnixMillis, source: ClockSource) {
        let offset = unix.0 as i64 - now.0 as i64;
        match source {
            ClockSource::Precise => {
                self.offset_ms = Some(offset);
                self.precise = true;
            }
            ClockSource::HttpDate if self.precise => {}
            ClockSource::HttpDate => {
                // The header truncates to the second: the true time is half a second later on average.
                let offset = offset + 500;
                match self.offset_ms {
                    Some(old) if (old - offset).abs() <= 2_000 => {}
                    _ => self.offset_ms = Some(offset),
                }
            }
        }
    }

    /// Unix milliseconds at monotonic `now`, or `None` before the first sample.
    pub fn unix_ms(&self, now: Millis) -> Option<UnixMillis> {
        self.offset_ms
            .map(|off| UnixMillis((now.0 as i64 + off).max(0) as u64))
    }
}

/// A Unix time that formats as Kubernetes `Time` (RFC 3339, seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc3339(pub UnixMillis);

/// A Unix time that formats as Kubernetes `MicroTime`
/// (`2006-01-02T15:04:05.000000Z`, six fractional digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MicroTime(pub UnixMillis);

fn write_date_time(f: &mut fmt::Formatter<'_>, unix: UnixMillis) -> fmt::Result {
    let secs = unix.to_seconds().0;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    write!(
        f,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_date_time(f, self.0)?;
        f.write_str("Z")
    }
}

impl fmt::Display for MicroTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_date_time(f, self.0)?;
        write!(f, ".{:06}Z", (self.0.0 % 1000) * 1000)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) to days since 1970-01-01; the inverse of [`civil_from_days`].
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an HTTP `Date` header in IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix
/// seconds. Returns `None` for anything else: a bad header must never move the clock.
pub fn parse_http_date(value: &[u8]) -> Option<UnixSeconds> {
    let s = core::str::from_utf8(value).ok()?.trim();
    let rest = s.get(5..)?; // "Sun, "
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    // IMF-fixdate years have exactly four digits; a longer one could overflow the arithmetic.
    let year_text = parts.next()?;
    if year_text.len() != 4 {
        return None;
    }
    let year: i64 = year_text.parse().ok()?;
    let hms = parts.next()?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    let mut t = hms.split(':');
    let h: u64 = t.next()?.parse().ok()?;
    let mi: u64 = t.next()?.parse().ok()?;
    let se: u64 = t.next()?.parse().ok()?;
    if t.next().is_some() || !(1..=31).contains(&day) || h > 23 || mi > 59 || se > 60 || year < 1970
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(UnixSeconds(days as u64 * 86_400 + h * 3600 + mi * 60 + se))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn formats_kubernetes_times() {
        // 2026-11-26T15:40:01.123Z
        let ms = UnixMillis(1_795_707_601_123);
        assert_eq!(format!("{}", Rfc3339(ms)), "2026-11-26T15:40:01Z");
        assert_eq!(format!("{}", MicroTime(ms)), "2026-11-26T15:40:01.123000Z");
        assert_eq!(
            format!("{}", MicroTime(UnixMillis(0))),
            "1970-01-01T00:00:00.000000Z"
        );
        // a leap day
        assert_eq!(
            format!("{}", Rfc3339(UnixMillis(951_782_400_000))),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn parses_http_dates_and_rejects_garbage() {
        assert_eq!(
            parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(UnixSeconds(784_111_777))
        );
        assert_eq!(
            parse_http_date(b"Thu, 26 Nov 2026 15:40:01 GMT"),
            Some(UnixSeconds(1_795_707_601))
        );
        for bad in [
            &b""[..],
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"\xff\xfe",
            b"Sun, 06 Nov 1994 08:49 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn refuses_years_that_are_not_four_digits() {
        // Found by the fuzz smoke test: a huge year overflowed the day arithmetic.
        assert_eq!(
            parse_http_date(b"Sun, 06 Nov 99999999999999 08:49:37 GMT"),
            None
        );
        assert_eq!(parse_http_date(b"Sun, 06 Nov 20260 08:49:37 GMT"), None);
        assert_eq!(parse_http_date(b"Sun, 06 Nov +994 08:49:37 GMT"), None);
    }

    #[test]
    fn instants_durations_and_unix_times() {
        let boot = Millis::from_ms(1_000);
        let later = boot + Duration::from_secs(2);
        assert_eq!(later.as_ms(), 3_000);
        assert_eq!(later - boot, Duration::from_ms(2_000));
        assert_eq!(boot - later, Duration::ZERO);
        assert_eq!(Millis::MAX + Duration::from_ms(1), Millis::MAX);
        let s = UnixSeconds::from_secs(1_795_707_601);
        assert_eq!(UnixMillis::from(s).as_ms(), 1_795_707_601_000);
        assert_eq!(UnixMillis::from_ms(1_795_707_601_999).to_seconds(), s);
        assert_eq!(
            core::time::Duration::from(Duration::from_ms(1_500)),
            core::time::Duration::from_millis(1_500)
        );
    }

    #[test]
    fn calendar_round_trips() {
        for days in (-1000..100_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn http_date_does_not_override_precise_clock_or_jitter() {
        let mut c = WallClock::default();
        assert_eq!(c.unix_ms(Millis(5)), None);
        c.sync(Millis(1_000), UnixMillis(10_000_000), ClockSource::HttpDate);
        assert_eq!(c.unix_ms(Millis(2_000)), Some(UnixMillis(10_001_500)));
        // a sample within 2 s is ignored
        c.sync(Millis(3_000), UnixMillis(10_002_000), ClockSource::HttpDate);
        assert_eq!(c.unix_ms(Millis(3_000)), Some(UnixMillis(10_002_500)));
        c.sync(Millis(3_000), UnixMillis(20_000_000), ClockSource::Precise);
        c.sync(Millis(4_000), UnixMillis(99_000_000), ClockSource::HttpDate);
        assert_eq!(c.unix_ms(Millis(4_000)), Some(UnixMillis(20_001_000)));
    }
}
