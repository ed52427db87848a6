//! One set of connections per backend origin, all within one idle budget.
//!
//! Backends that differ only by path prefix (`http://10.0.0.5:8080/a`, `.../b`) reach the same
//! server, so they share one [`Connections`]: 500 backends on 5 ports keep 5 pools, not 500.
//! Each pooled connection holds about 72 KiB of ureq's buffers, so it is the idle connections,
//! not the backends, that cost memory. Each origin keeps at most `backendKeepAlive` of them,
//! and all origins together at most `backendKeepAliveTotal` ([`IdleBudget`]): first come,
//! first served, so the origins that are busy now keep theirs, however many others there are.

use std::collections::HashMap;
use std::sync::Arc;

use super::connections::{AgentSettings, Connections};
use super::idle::IdleBudget;
use crate::config::Config;

/// The connections for each of `config.servers`, in order: one [`Connections`] per distinct
/// origin, shared by the servers with that origin, all with places in one budget. An origin
/// already in `running` keeps its connections, and its idle ones unless a setting they are
/// built from changed (the timeouts, `backendKeepAlive`, `backendKeepAliveTotal`).
pub fn share_connections(config: &Config, running: &[Arc<Connections>]) -> Vec<Arc<Connections>> {
    // The same budget across reloads: connections made before count in it until they close.
    let budget = match running.first() {
        Some(connections) => connections.budget_handle(),
        None => IdleBudget::new(config.backend_keep_alive_total),
    };
    budget.set_limit(config.backend_keep_alive_total);
    let settings = AgentSettings::of(config);
    let mut pools: Vec<Arc<Connections>> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    config
        .servers
        .iter()
        .map(|server| {
            let origin = server.url.origin.as_str();
            let at = *position.entry(origin).or_insert_with(|| {
                pools.push(match running.iter().find(|c| c.origin() == origin) {
                    Some(kept) => {
                        kept.reconfigure(settings);
                        Arc::clone(kept)
                    }
                    None => Arc::new(Connections::new(origin, settings, Arc::clone(&budget))),
                });
                pools.len() - 1
            });
            Arc::clone(&pools[at])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(servers: &[&str], extra: &str) -> Config {
        let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        Config::parse(&format!(
            r#"{{"port": ":0", "servers": [{}]{extra}}}"#,
            list.join(", ")
        ))
        .unwrap()
    }

    #[test]
    fn backends_on_one_origin_share_its_connections_and_all_share_the_budget() {
        let config = config(
            &["http://a:1/x", "http://b:1", "http://a:1/y", "http://a:1"],
            r#", "backendKeepAlive": 3, "backendKeepAliveTotal": 5"#,
        );
        let pools = share_connections(&config, &[]);
        assert!(Arc::ptr_eq(&pools[0], &pools[2]) && Arc::ptr_eq(&pools[0], &pools[3]));
        assert!(!Arc::ptr_eq(&pools[0], &pools[1]));
        assert_eq!(pools[1].origin(), "http://b:1");
        assert_eq!((pools[0].max_idle(), pools[0].budget().limit()), (3, 5));
        assert!(std::ptr::eq(pools[0].budget(), pools[1].budget()));
    }

    #[test]
    fn a_reload_keeps_origins_and_budget_and_rebuilds_only_on_change() {
        let first = config(&["http://a:1/x", "http://b:1"], "");
        let running = share_connections(&first, &[]);
        let again = share_connections(&first, &running);
        assert!(Arc::ptr_eq(&running[0], &again[0]) && Arc::ptr_eq(&running[1], &again[1]));
        assert!(!running[0].reconfigure(AgentSettings::of(&first)));

        let grown = config(
            &["http://a:1/x", "http://b:1", "http://c:1"],
            r#", "backendKeepAliveTotal": 6"#,
        );
        let after = share_connections(&grown, &running);
        assert!(Arc::ptr_eq(&running[0], &after[0]));
        assert!(std::ptr::eq(after[2].budget(), running[0].budget()));
        assert_eq!(running[0].budget().limit(), 6);
        assert!(
            !running[0].reconfigure(AgentSettings::of(&grown)),
            "rebuilt already"
        );
    }
}
