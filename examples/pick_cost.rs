//! What choosing a backend costs, for docs/benchmarks.md ("Cost as work grows"): the time of
//! one `Balancer::pick` (under its mutex) with 5, 50 and 500 backends, per algorithm.
//!
//! ```text
//! cargo run --release --example pick_cost
//! ```
//!
//! One thread, no network: the backends point at a closed port and are never contacted. Each
//! pick is released at once, as a request would release it when done. The best of five rounds
//! is printed, so a busy machine shows as less noise rather than a slower pick.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use tinylb::backend::Backend;
use tinylb::balancer::{Algorithm, Balancer};
use tinylb::config::Config;

const PICKS: u32 = 200_000;
const ROUNDS: usize = 5;

fn main() {
    println!("| backends | algorithm | ns per pick (best of {ROUNDS} × {PICKS}) |");
    println!("|--:|---|--:|");
    for count in [5, 50, 500] {
        let servers: Vec<String> = (0..count)
            .map(|i| format!("\"http://127.0.0.1:{}\"", 20_000 + i))
            .collect();
        let text = format!(
            r#"{{"port": "127.0.0.1:0", "servers": [{}]}}"#,
            servers.join(",")
        );
        let config = Config::parse(&text).expect("a valid config");
        for (name, algorithm) in [
            ("round-robin", Algorithm::RoundRobin),
            ("weighted-round-robin", Algorithm::WeightedRoundRobin),
            ("least-connections", Algorithm::LeastConnections),
            ("ip-hash", Algorithm::IpHash),
        ] {
            let backends = Backend::all(&config);
            let balancer = Balancer::new(backends, algorithm, config.workers);
            let best = (0..ROUNDS)
                .map(|_| {
                    let started = Instant::now();
                    for i in 0..PICKS {
                        let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i % 1024)));
                        black_box(balancer.pick(client, &[]));
                    }
                    started.elapsed().as_nanos() as f64 / f64::from(PICKS)
                })
                .fold(f64::INFINITY, f64::min);
            println!("| {count} | {name} | {best:.0} |");
        }
    }
}
