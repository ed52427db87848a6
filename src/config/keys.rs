//! The keys of config.json's top-level object: which ones exist, and typed reads of each value
//! with its default, so every bad value is refused with a message that names its key.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{Algorithm, ConfigError, error};
use crate::duration::{DurationError, parse_duration};

/// Every key tinylb reads; anything else is a typo and is refused.
const KNOWN_KEYS: &[&str] = &[
    "port",
    "servers",
    "healthCheckInterval",
    "healthCheckTimeout",
    "healthCheckRise",
    "healthCheckFall",
    "algorithm",
    "connectTimeout",
    "backendTimeout",
    "workers",
    "queueSize",
    "backendKeepAlive",
    "backendKeepAliveTotal",
    "forwardedServerHeader",
    "shutdownGracePeriod",
    "clientTimeout",
    "adminAddress",
    "accessLog",
    "stageTimers",
    "maxTunnels",
    "maxStuckConnections",
    "clientHeaderTimeout",
    "tunnelIdleTimeout",
    "clientMaxWorkers",
    "clientMaxTunnels",
    "clientBodyMinRate",
    "clientSendMinRate",
    "readyTimeout",
];

/// Typed access to the optional keys, each with its default and a message naming the key.
pub(super) struct Keys<'a>(pub(super) &'a Map<String, Value>);

impl<'a> Keys<'a> {
    /// The reader for a top-level object, refused if it has a key tinylb does not know.
    pub(super) fn new(object: &'a Map<String, Value>) -> Result<Keys<'a>, ConfigError> {
        if let Some(unknown) = object.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(error(
                &format!("{unknown:?}"),
                format!("unknown key; known keys are {}", KNOWN_KEYS.join(", ")),
            ));
        }
        Ok(Keys(object))
    }

    pub(super) fn required(&self, key: &str) -> Result<&Value, ConfigError> {
        self.0.get(key).ok_or_else(|| error(key, "is missing"))
    }

    pub(super) fn duration(&self, key: &str, default: &str) -> Result<Duration, ConfigError> {
        let text = match self.0.get(key) {
            None => default,
            Some(Value::String(text)) => text.as_str(),
            Some(Value::Number(n)) => {
                return Err(error(
                    key,
                    format!("{n} has no unit; write a string like \"{n}s\" or \"{n}ms\""),
                ));
            }
            Some(other) => {
                return Err(error(key, format!("{other} is not a duration like \"2s\"")));
            }
        };
        parse_duration(text).map_err(|e| match e {
            DurationError::MissingUnit => error(
                key,
                format!("{text:?} has no unit; write \"{text}s\" or \"{text}ms\""),
            ),
            DurationError::Invalid => error(
                key,
                format!("{text:?} is not a duration; write it like \"500ms\", \"2s\" or \"1m30s\""),
            ),
        })
    }

    pub(super) fn positive_duration(
        &self,
        key: &str,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        let value = self.duration(key, default)?;
        if value.is_zero() {
            return Err(error(key, "must be more than 0"));
        }
        Ok(value)
    }

    pub(super) fn count(
        &self,
        key: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let Some(value) = self.0.get(key) else {
            return Ok(default);
        };
        match value.as_u64() {
            Some(n) if range.contains(&n) => Ok(n),
            _ => Err(error(
                key,
                format!(
                    "{value} must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    pub(super) fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.0.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(error(key, format!("{other} must be true or false"))),
        }
    }

    pub(super) fn algorithm(&self) -> Result<Algorithm, ConfigError> {
        let name = match self.0.get("algorithm") {
            None => return Ok(Algorithm::RoundRobin),
            Some(Value::String(name)) => name,
            Some(other) => return Err(error("algorithm", format!("{other} is not a string"))),
        };
        Algorithm::from_name(name).ok_or_else(|| {
            error(
                "algorithm",
                format!(
                    "{name:?} is not one of {}",
                    Algorithm::ALL.map(|a| a.name()).join(", ")
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_refused;

    #[test]
    fn bad_values_name_their_key() {
        assert_refused(&[
            (
                r#"{"port": ":8080", "servers": ["http://a:1"], "algoritm": "x"}"#,
                "\"algoritm\": unknown key",
            ),
            (r#"{"port": ":8080"}"#, "servers: is missing"),
            (r#"{"servers": ["http://a:1"]}"#, "port: is missing"),
            (
                r#"{"port": ":8080", "servers": ["http://a:1"], "healthCheckInterval": "2"}"#,
                "healthCheckInterval: \"2\" has no unit",
            ),
            (
                r#"{"port": ":8080", "servers": ["http://a:1"], "healthCheckInterval": 2}"#,
                "healthCheckInterval: 2 has no unit",
            ),
            (
                r#"{"port": ":8080", "servers": ["http://a:1"], "algorithm": "fastest"}"#,
                "algorithm: \"fastest\" is not one of round-robin",
            ),
            (
                r#"{"port": ":8080", "servers": ["http://a:1"], "workers": 0}"#,
                "workers: 0 must be a whole number",
            ),
            (
                r#"{"port": ":8080", "servers": ["http://a:1"], "backendKeepAlive": -1}"#,
                "backendKeepAlive: -1 must be a whole number from 0 to 1024",
            ),
            (
                r#"{"port": ":8080", "servers": ["http://a:1"], "backendKeepAliveTotal": 1.5}"#,
                "backendKeepAliveTotal: 1.5 must be a whole number from 0 to 100000",
            ),
        ]);
    }
}
