//! Human-readable numbers for the pages: sizes, durations, ages and losses.

use chrono::{DateTime, Utc};

/// `1536` -> `1.5 KiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n.max(0) as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration in seconds, to two units at most: `45 s`, `3 min 20 s`, `2 h 5 min`, `3 d 4 h`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "—".into();
    }
    let s = secs.round() as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

/// How long ago `t` was, relative to `now`: `just now`, `5 min ago`, `2 d ago`.
pub fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    if secs < 10 {
        "just now".into()
    } else {
        let d = duration(secs as f64);
        // One unit is enough for an age.
        let first: Vec<&str> = d.split(' ').take(2).collect();
        format!("{} ago", first.join(" "))
    }
}

/// A loss or learning rate with four significant digits, in scientific notation when small.
pub fn sig4(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() < 1e-3 || v.abs() >= 1e5 {
        format!("{v:.3e}")
    } else {
        let digits = (3 - v.abs().log10().floor() as i64).clamp(0, 6) as usize;
        format!("{v:.digits$}")
    }
}

/// A UTC timestamp to the second, `2026-11-26 12:34:56 UTC`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(45.2), "45 s");
        assert_eq!(duration(200.0), "3 min 20 s");
        assert_eq!(duration(7500.0), "2 h 5 min");
        assert_eq!(duration(3.0 * 86400.0 + 4.0 * 3600.0), "3 d 4 h");
        assert_eq!(duration(f64::NAN), "—");
    }

    #[test]
    fn ages() {
        let now = Utc::now();
        assert_eq!(age(now, now), "just now");
        assert_eq!(age(now - chrono::Duration::seconds(330), now), "5 min ago");
        assert_eq!(age(now - chrono::Duration::days(2), now), "2 d ago");
    }

    #[test]
    fn significant_digits() {
        assert_eq!(sig4(0.12345), "0.1235");
        assert_eq!(sig4(1.5), "1.500");
        assert_eq!(sig4(2.5e-6), "2.500e-6");
        assert_eq!(sig4(0.0), "0");
    }
}
