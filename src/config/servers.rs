//! Where tinylb listens and where it forwards: listen addresses (`port`, `adminAddress`) and the
//! `servers` list of backend URLs with optional weights, each checked once at start.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::Value;

use super::{BackendUrl, ConfigError, ServerConfig, error};

/// `":8080"` (every interface, as Go writes it), `"127.0.0.1:8080"`, `"[::1]:8080"` or
/// `"localhost:8080"`.
pub(super) fn parse_listen(value: &Value) -> Result<SocketAddr, ConfigError> {
    parse_address("port", value)
}

/// A listen address for the config key `key`.
pub(super) fn parse_address(key: &str, value: &Value) -> Result<SocketAddr, ConfigError> {
    let Value::String(text) = value else {
        return Err(error(
            key,
            format!("{value} is not an address; write it as a string like \":8080\""),
        ));
    };
    let parsed = if let Some(port) = text.strip_prefix(':') {
        port.parse::<u16>()
            .ok()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p))
    } else if let Some(port) = text.strip_prefix("localhost:") {
        port.parse::<u16>()
            .ok()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
    } else {
        text.parse::<SocketAddr>().ok()
    };
    parsed.ok_or_else(|| {
        let hint = if text.parse::<u16>().is_ok() {
            format!("; write \":{text}\"")
        } else {
            String::new()
        };
        error(
            key,
            format!("{text:?} is not a listen address like \":8080\" or \"127.0.0.1:8080\"{hint}"),
        )
    })
}

pub(super) fn parse_servers(value: &Value) -> Result<Vec<ServerConfig>, ConfigError> {
    let Value::Array(entries) = value else {
        return Err(error(
            "servers",
            format!("{value} is not a list of URLs like [\"http://localhost:5001\"]"),
        ));
    };
    if entries.is_empty() {
        return Err(error(
            "servers",
            "is empty; list at least one backend like \"http://localhost:5001\"",
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| parse_server(&format!("servers[{i}]"), entry))
        .collect()
}

fn parse_server(key: &str, entry: &Value) -> Result<ServerConfig, ConfigError> {
    match entry {
        Value::String(url) => Ok(ServerConfig {
            url: parse_backend_url(key, url)?,
            weight: 1,
        }),
        Value::Object(fields) => {
            if let Some(unknown) = fields.keys().find(|k| *k != "url" && *k != "weight") {
                return Err(error(
                    key,
                    format!("unknown key {unknown:?}; a server has \"url\" and \"weight\""),
                ));
            }
            let url = match fields.get("url") {
                Some(Value::String(url)) => parse_backend_url(&format!("{key}.url"), url)?,
                Some(other) => {
                    return Err(error(
                        &format!("{key}.url"),
                        format!("{other} is not a string"),
                    ));
                }
                None => return Err(error(&format!("{key}.url"), "is missing")),
            };
            let weight = match fields.get("weight") {
                None => 1,
                Some(value) => match value.as_u64() {
                    Some(0) => {
                        return Err(error(
                            &format!("{key}.weight"),
                            "0 is not allowed; a weight is at least 1 (remove the server to stop its traffic)",
                        ));
                    }
                    Some(w) if w <= 1_000_000 => w as u32,
                    _ => {
                        return Err(error(
                            &format!("{key}.weight"),
                            format!("{value} must be a whole number from 1 to 1000000"),
                        ));
                    }
                },
            };
            Ok(ServerConfig { url, weight })
        }
        other => Err(error(
            key,
            format!("{other} is not a URL string or {{\"url\": ..., \"weight\": ...}}"),
        )),
    }
}

/// Checks a backend URL: plain `http://host[:port][/prefix]` only.
fn parse_backend_url(key: &str, url: &str) -> Result<BackendUrl, ConfigError> {
    if url.starts_with("https://") {
        return Err(error(
            key,
            format!(
                "{url:?}: https backends are not supported (tinylb speaks plain HTTP to backends); \
                 use an http:// URL"
            ),
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        let suggestion = match url.split_once("://") {
            Some((scheme, _)) => format!("scheme {scheme:?} is not supported; use http://"),
            None => format!("has no scheme; write \"http://{url}\""),
        };
        return Err(error(key, format!("{url:?} {suggestion}")));
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.is_empty() {
        return Err(error(key, format!("{url:?} has no host")));
    }
    if authority.contains('@') {
        return Err(error(
            key,
            format!("{url:?}: user names in backend URLs are not supported"),
        ));
    }
    if path.contains(['?', '#']) {
        return Err(error(
            key,
            format!("{url:?}: a backend URL may have a path prefix but no query or fragment"),
        ));
    }
    let valid = authority
        .parse::<crate::message::http::uri::Authority>()
        .is_ok_and(|parsed| {
            let after_host = &authority[parsed.host().len()..];
            !parsed.host().is_empty() && (after_host.is_empty() || parsed.port_u16().is_some())
        });
    if !valid {
        return Err(error(key, format!("{url:?} has a bad host or port")));
    }
    Ok(BackendUrl {
        original: url.to_string(),
        origin: format!("http://{authority}"),
        prefix: path.trim_end_matches('/').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_refused;

    #[test]
    fn bad_addresses_and_servers_name_their_key() {
        assert_refused(&[
            (r#"{"port": ":8080", "servers": []}"#, "servers: is empty"),
            (
                r#"{"port": ":8080", "servers": ["localhost:5003"]}"#,
                "servers[0]: \"localhost:5003\" has no scheme; write \"http://localhost:5003\"",
            ),
            (
                r#"{"port": ":8080", "servers": ["https://a:1"]}"#,
                "https backends are not supported",
            ),
            (
                r#"{"port": ":8080", "servers": [{"url": "http://a:1", "weight": 0}]}"#,
                "servers[0].weight: 0 is not allowed",
            ),
            (
                r#"{"port": "8080", "servers": ["http://a:1"]}"#,
                "write \":8080\"",
            ),
            (
                r#"{"port": 8080, "servers": ["http://a:1"]}"#,
                "port: 8080 is not an address",
            ),
            (
                r#"{"port": ":8080", "servers": ["http://a:x"]}"#,
                "bad host or port",
            ),
        ]);
    }
}
