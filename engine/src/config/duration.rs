//! Durations in Litestream's form (Go's `time.ParseDuration`): `30s`, `5m`, `1h30m`.

use std::time::Duration;

/// Parses a duration like Go's `time.ParseDuration` (Litestream's format): one or more
/// number-unit pairs, units `ns`, `us`, `ms`, `s`, `m`, `h`; e.g. `30s`, `5m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 30s, 5m, 24h or 1h30m");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    // A century is beyond any interval or retention; more is a typo, not a setting.
    Duration::try_from_secs_f64(total)
        .ok()
        .filter(|d| *d <= Duration::from_secs(100 * 365 * 86_400))
        .ok_or_else(|| format!("{s:?} is too long a duration"))
}

/// A duration that must not be zero: an interval of nothing would busy-loop a core.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?}: an interval must be longer than zero")),
        d => Ok(d),
    }
}
