//! Small parsers and formatters: durations, expiry times, `k=v` pairs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// `30s`, `10m`, `24h`, `7d`, `500ms`, or combined (`1h30m`), in milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64> {
    let text = text.trim();
    if text.is_empty() {
        bail!("empty duration; use a number with a unit, e.g. 30s, 10m, 24h, 7d");
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let (number, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        let value: u64 = number
            .parse()
            .with_context(|| format!("{text:?} is not a duration; use e.g. 30s, 10m, 24h, 7d"))?;
        let unit_ms = unit_ms(unit)
            .with_context(|| format!("{text:?}: unknown unit {unit:?}; use ms, s, m, h, d or w"))?;
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|v| total_ms.checked_add(v))
            .with_context(|| format!("{text:?} is too long"))?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total_ms)
}

fn unit_ms(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    })
}

/// An expiry: a duration from `now_ms` (`90d`) or an RFC 3339 time.
pub fn parse_expiry_ms(text: &str, now_ms: u64) -> Result<u64> {
    if let Ok(ms) = parse_duration_ms(text) {
        return now_ms
            .checked_add(ms)
            .context("the expiry is too far in the future");
    }
    let time = humantime::parse_rfc3339_weak(text.trim()).with_context(|| {
        format!("{text:?} is neither a duration (90d) nor an RFC 3339 time (2030-01-31T00:00:00Z)")
    })?;
    let since = time
        .duration_since(UNIX_EPOCH)
        .context("the expiry is before 1970")?;
    Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// `--context k=v`: a non-empty key, `=`, any value.
pub fn parse_context_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("{text:?}: the key before '=' is empty; use k=v")),
        None => Err(format!("{text:?} has no '='; use k=v")),
    }
}

pub fn context_map(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    pairs.iter().cloned().collect()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `2030-01-31T00:00:00Z`, or `-` for 0.
pub fn format_time_ms(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

pub fn format_opt_time_ms(ms: Option<u64>) -> String {
    ms.map(format_time_ms).unwrap_or_else(|| "-".into())
}

/// `7d`, `1h30m`, `250ms`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut rest = ms;
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("30s").ok(), Some(30_000));
        assert_eq!(parse_duration_ms("10m").ok(), Some(600_000));
        assert_eq!(parse_duration_ms("24h").ok(), Some(86_400_000));
        assert_eq!(parse_duration_ms("7d").ok(), Some(604_800_000));
        assert_eq!(parse_duration_ms("250ms").ok(), Some(250));
        assert_eq!(parse_duration_ms("1h30m").ok(), Some(5_400_000));
        assert_eq!(parse_duration_ms("2w").ok(), Some(14 * 86_400_000));
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in ["", "10", "s", "10x", "1.5h", "-1s", "99999999999999999999d"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn durations_round_trip_through_the_formatter() {
        for ms in [1, 999, 30_000, 5_400_000, 604_800_000, 90_061_001] {
            assert_eq!(parse_duration_ms(&format_duration_ms(ms)).ok(), Some(ms));
        }
    }

    #[test]
    fn expiry_is_a_duration_or_a_time() {
        assert_eq!(parse_expiry_ms("1d", 1000).ok(), Some(86_401_000));
        assert_eq!(
            parse_expiry_ms("2030-01-01T00:00:00Z", 0).ok(),
            Some(1_893_456_000_000)
        );
        assert!(parse_expiry_ms("next tuesday", 0).is_err());
        assert_eq!(format_time_ms(1_893_456_000_000), "2030-01-01T00:00:00Z");
    }

    #[test]
    fn context_pairs_need_an_equals_sign() {
        assert_eq!(
            parse_context_pair("tenant=acme"),
            Ok(("tenant".into(), "acme".into()))
        );
        assert_eq!(parse_context_pair("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(
            parse_context_pair("empty="),
            Ok(("empty".into(), "".into()))
        );
        assert!(parse_context_pair("tenant").is_err());
        assert!(parse_context_pair("=acme").is_err());
    }
}
