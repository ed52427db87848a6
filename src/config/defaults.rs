//! The defaults of config.json's optional keys, each with the reason it is what it is.

/// Default worker threads: twice the best count of the benchmark sweeps (8, where more were no
/// faster), so that one client address, which may hold half of them (`clientMaxWorkers`), still
/// gets what it got alone, and everyone else keeps the other half; see "Defaults from
/// measurement" in docs/benchmarks.md.
pub const DEFAULT_WORKERS: usize = 16;
/// Default queue between the listener and the workers: deep enough that ordinary load gets no
/// 503, short enough that an overload is answered at once instead of piling up; see "Defaults
/// from measurement" in docs/benchmarks.md.
pub const DEFAULT_QUEUE_SIZE: usize = 512;

/// Default `clientTimeout`. tiny_http holds a thread per open connection, so an idle client
/// costs a thread until this runs out: 20 s frees them quickly yet outlasts a slow mobile
/// client's pauses (Apache's mod_reqtimeout allows 20 s for a request head).
pub const DEFAULT_CLIENT_TIMEOUT: &str = "20s";

/// Default `clientHeaderTimeout`. Each connection waiting for a head holds a tiny_http thread,
/// so this bounds what a client trickling its head (or sitting idle) costs. HAProxy's docs advise
/// about 10 s for `timeout http-request`, which likewise covers idle keep-alive; nginx's 60 s
/// `client_header_timeout` is sized for an event loop, where a waiting client costs a few KiB,
/// not a thread. A real client sends its head in one go, well within 10 s.
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: &str = "10s";

/// Default `backendKeepAliveTotal`, in workers: at most `workers` backend connections are busy
/// at once, so 4 × workers idle ones let a few origins each keep a full set between bursts (the
/// five-backend benchmark keeps about 20, so it runs as before), while 500 backends cannot keep
/// hundreds. Each costs about 77 KiB of memory and a descriptor: 32 of them about 2.4 MiB. Many
/// distinct origins reconnect more with it; see "Memory and the number of backends" in
/// docs/benchmarks.md.
pub const DEFAULT_KEEP_ALIVE_TOTAL_PER_WORKER: usize = 4;

/// Default `maxStuckConnections`. Each stuck connection holds a thread (with its stack) and two
/// descriptors until its process exits; 100 of them cost a few MiB, while a replacement costs
/// the new process's start-up (a health-check round) and a drain of the old one.
pub const DEFAULT_MAX_STUCK_CONNECTIONS: u64 = 100;

/// Default `maxTunnels`. Each open tunnel costs two small threads, four descriptors, two 16 KiB
/// buffers; nginx's default `worker_connections` of 512 likewise allows 256 proxied connections.
pub const DEFAULT_MAX_TUNNELS: u64 = 256;
/// Default `tunnelIdleTimeout`: longer than the ping interval of common WebSocket libraries
/// (25-30 s), so live but quiet connections survive, unlike with nginx's 60 s; short enough that
/// peers that vanished without a FIN are reclaimed.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: &str = "10m";

/// Default `clientBodyMinRate` and `clientSendMinRate`, in bytes per second: Apache's
/// `mod_reqtimeout` default (`body=20,MinRate=500`), with `clientTimeout` as the 20 s. A real
/// client on the slowest mobile link moves several KiB a second; 500 B/s only ends the ones
/// that trickle on purpose.
pub const DEFAULT_CLIENT_MIN_RATE: u64 = 500;

/// Default `readyTimeout`. A server process serves within about a second of its start: its
/// set-up, then the first health round, whose checks run at once and each take at most
/// `healthCheckTimeout` (1 s by default). 30 s is thirty times that, for a loaded machine or
/// a slow disk, and still gives up on a successor that will never serve (a broken binary, a
/// script in its place) within half a minute, while the old one serves on. systemd waits 90 s
/// for a whole service to start (`TimeoutStartSec`).
pub const DEFAULT_READY_TIMEOUT: &str = "30s";
