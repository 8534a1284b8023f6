//! Reading values out of the parsed YAML, each error naming the key it concerns.

use std::time::Duration;

use yaml_rust2::Yaml;

use super::{ConfigError, error, parse_duration};

pub(super) type Map = yaml_rust2::yaml::Hash;

pub(super) fn get<'a>(m: &'a Map, key: &str) -> Option<&'a Yaml> {
    m.get(&Yaml::String(key.to_owned()))
        .filter(|v| !matches!(v, Yaml::Null))
}

pub(super) fn check_keys(m: &Map, at: &str, known: &[&str]) -> Result<(), ConfigError> {
    for k in m.keys() {
        let name = k.as_str().unwrap_or("?");
        if !known.contains(&name) {
            let key = if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            };
            return Err(error(
                &key,
                format!("unknown key (known here: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

pub(super) fn as_map<'a>(y: &'a Yaml, key: &str) -> Result<&'a Map, ConfigError> {
    y.as_hash().ok_or_else(|| error(key, "expected a mapping"))
}

pub(super) fn as_list<'a>(y: &'a Yaml, key: &str) -> Result<&'a Vec<Yaml>, ConfigError> {
    y.as_vec().ok_or_else(|| error(key, "expected a list"))
}

pub(super) fn full(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

pub(super) fn string(m: &Map, at: &str, name: &str) -> Result<Option<String>, ConfigError> {
    match get(m, name) {
        None => Ok(None),
        Some(Yaml::String(s)) => Ok(Some(s.clone())),
        Some(Yaml::Integer(i)) => Ok(Some(i.to_string())),
        Some(_) => Err(error(&full(at, name), "expected a string")),
    }
}

pub(super) fn duration(m: &Map, at: &str, name: &str) -> Result<Option<Duration>, ConfigError> {
    match get(m, name) {
        None => Ok(None),
        Some(Yaml::String(s)) => parse_duration(s)
            .map(Some)
            .map_err(|e| error(&full(at, name), e)),
        Some(Yaml::Integer(0)) => Ok(Some(Duration::ZERO)),
        Some(_) => Err(error(
            &full(at, name),
            "expected a duration like 30s, 5m or 24h",
        )),
    }
}

/// Like [`duration`], for an interval: zero is refused.
pub(super) fn interval(m: &Map, at: &str, name: &str) -> Result<Option<Duration>, ConfigError> {
    match duration(m, at, name)? {
        Some(Duration::ZERO) => Err(error(
            &full(at, name),
            "an interval must be longer than zero",
        )),
        d => Ok(d),
    }
}

pub(super) fn number(m: &Map, at: &str, name: &str) -> Result<Option<u32>, ConfigError> {
    match get(m, name) {
        None => Ok(None),
        Some(Yaml::Integer(i)) => u32::try_from(*i)
            .map(Some)
            .map_err(|_| error(&full(at, name), "out of range")),
        Some(_) => Err(error(&full(at, name), "expected a number")),
    }
}

/// A count of bytes (a plain number).
pub(super) fn bytes(m: &Map, at: &str, name: &str) -> Result<Option<u64>, ConfigError> {
    match get(m, name) {
        None => Ok(None),
        Some(Yaml::Integer(i)) if *i > 0 => Ok(Some(*i as u64)),
        Some(_) => Err(error(
            &full(at, name),
            "expected a number of bytes above zero",
        )),
    }
}

pub(super) fn boolean(m: &Map, at: &str, name: &str) -> Result<Option<bool>, ConfigError> {
    match get(m, name) {
        None => Ok(None),
        Some(Yaml::Boolean(b)) => Ok(Some(*b)),
        // YAML 1.1's other spellings, which Litestream's YAML reader takes as booleans.
        Some(Yaml::String(s)) => match s.as_str() {
            "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y" | "Y" => Ok(Some(true)),
            "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n" | "N" => Ok(Some(false)),
            _ => Err(error(&full(at, name), "expected true or false")),
        },
        Some(_) => Err(error(&full(at, name), "expected true or false")),
    }
}
