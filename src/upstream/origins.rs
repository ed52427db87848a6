//! One set of connections per backend origin, and the idle budget shared out among origins.
//!
//! Backends that differ only by path prefix (`http://10.0.0.5:8080/a`, `.../b`) reach the same
//! server, so they share one [`Connections`]: 500 backends on 5 ports keep at most 5 pools,
//! not 500. Each pooled connection holds about 72 KiB of ureq's buffers, so it is the idle
//! connections, not the backends, that cost memory; their sum is bounded by
//! `backendKeepAliveTotal`, shared out by [`idle_caps`].

use std::collections::HashMap;
use std::sync::Arc;

use super::connections::{AgentSettings, Connections};
use crate::config::Config;

/// How many idle connections each of `origins` origins may keep: `total` shared out as evenly
/// as possible (the first ones in config order get the remainder), never more than
/// `per_origin`, and at least 1 each, so that no origin loses keep-alive altogether. The sum
/// is therefore at most `total`, or `origins` when there are more origins than that. A
/// `per_origin` or `total` of 0 turns pooling off.
pub fn idle_caps(origins: usize, per_origin: usize, total: usize) -> Vec<usize> {
    if per_origin == 0 || total == 0 || origins == 0 {
        return vec![0; origins];
    }
    let (share, remainder) = (total / origins, total % origins);
    (0..origins)
        .map(|i| (share + usize::from(i < remainder)).clamp(1, per_origin))
        .collect()
}

/// The connections for each of `config.servers`, in order: one [`Connections`] per distinct
/// origin, shared by the servers with that origin. An origin already in `running` keeps its
/// connections, and its idle ones unless its settings or its share of the budget changed.
pub fn share_connections(config: &Config, running: &[Arc<Connections>]) -> Vec<Arc<Connections>> {
    let mut origins: Vec<&str> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for server in &config.servers {
        position.entry(&server.url.origin).or_insert_with(|| {
            origins.push(&server.url.origin);
            origins.len() - 1
        });
    }
    let caps = idle_caps(
        origins.len(),
        config.backend_keep_alive,
        config.backend_keep_alive_total,
    );
    let pools: Vec<Arc<Connections>> = origins
        .iter()
        .zip(caps)
        .map(|(origin, max_idle)| {
            let settings = AgentSettings::of(config, max_idle);
            match running.iter().find(|c| c.origin() == *origin) {
                Some(kept) => {
                    kept.reconfigure(settings);
                    Arc::clone(kept)
                }
                None => Arc::new(Connections::new(origin, settings)),
            }
        })
        .collect();
    config
        .servers
        .iter()
        .map(|server| Arc::clone(&pools[position[server.url.origin.as_str()]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_evenly_within_each_cap() {
        // (origins, per origin, total) → caps
        let cases: &[(usize, usize, usize, &[usize])] = &[
            (1, 8, 32, &[8]),
            (5, 8, 32, &[7, 7, 6, 6, 6]),
            (5, 8, 100, &[8, 8, 8, 8, 8]),
            (2, 8, 4, &[2, 2]),
            (3, 8, 4, &[2, 1, 1]),
            (4, 8, 4, &[1, 1, 1, 1]),
            (3, 2, 5, &[2, 2, 1]),
            (3, 0, 32, &[0, 0, 0]),
            (3, 8, 0, &[0, 0, 0]),
            (0, 8, 32, &[]),
        ];
        for &(origins, per_origin, total, want) in cases {
            assert_eq!(
                idle_caps(origins, per_origin, total),
                want,
                "{origins} origins, {per_origin} each, {total} in all"
            );
        }
    }

    #[test]
    fn the_sum_stays_within_the_total_unless_origins_outnumber_it() {
        for origins in 1..40 {
            for per_origin in 1..10 {
                for total in 1..50 {
                    let caps = idle_caps(origins, per_origin, total);
                    let sum: usize = caps.iter().sum();
                    assert!(sum <= total.max(origins), "{origins} {per_origin} {total}");
                    assert!(caps.iter().all(|&c| (1..=per_origin).contains(&c)));
                    if origins <= total {
                        assert_eq!(sum, total.min(origins * per_origin));
                    }
                }
            }
        }
    }

    fn config(servers: &[&str], extra: &str) -> Config {
        let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        Config::parse(&format!(
            r#"{{"port": ":0", "servers": [{}]{extra}}}"#,
            list.join(", ")
        ))
        .unwrap()
    }

    #[test]
    fn backends_on_one_origin_share_its_connections() {
        let config = config(
            &["http://a:1/x", "http://b:1", "http://a:1/y", "http://a:1"],
            r#", "backendKeepAliveTotal": 5"#,
        );
        let pools = share_connections(&config, &[]);
        assert!(Arc::ptr_eq(&pools[0], &pools[2]) && Arc::ptr_eq(&pools[0], &pools[3]));
        assert!(!Arc::ptr_eq(&pools[0], &pools[1]));
        assert_eq!((pools[0].max_idle(), pools[1].max_idle()), (3, 2));
        assert_eq!(pools[1].origin(), "http://b:1");
    }

    #[test]
    fn a_reload_keeps_an_origins_connections_and_rebuilds_only_on_change() {
        let first = config(&["http://a:1/x", "http://b:1"], "");
        let running = share_connections(&first, &[]);
        let again = share_connections(&first, &running);
        assert!(Arc::ptr_eq(&running[0], &again[0]) && Arc::ptr_eq(&running[1], &again[1]));
        assert!(!running[0].reconfigure(AgentSettings::of(&first, running[0].max_idle())));

        // A third origin takes a share of the budget from the others.
        let grown = config(
            &["http://a:1/x", "http://b:1", "http://c:1"],
            r#", "backendKeepAliveTotal": 6"#,
        );
        let after = share_connections(&grown, &running);
        assert!(Arc::ptr_eq(&running[0], &after[0]));
        assert_eq!(
            after.iter().map(|c| c.max_idle()).collect::<Vec<_>>(),
            [2, 2, 2]
        );
    }
}
