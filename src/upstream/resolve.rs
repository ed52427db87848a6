//! A backend's host name resolved now and then, not on every request.
//!
//! ureq resolves the host of every request it sends, even when it then reuses a pooled
//! connection and never needs the address (ureq's `run.rs`, `connect`). For a backend named
//! `localhost`, as in `make run`'s config.json, that is a getaddrinfo call per request, which
//! reads /etc/hosts (docs/benchmarks.md shows what that costs).
//!
//! nginx resolves upstream names once, at start. tinylb keeps each backend's answer for
//! [`RESOLVED_FOR`] and forgets it when a connect fails, so a name that moves is followed
//! within seconds. When a lookup fails but an earlier answer exists, the earlier answer is
//! used (and the lookup tried again after [`RESOLVED_FOR`]): a DNS hiccup must not take a
//! working backend down. Addresses given as IP literals never reach getaddrinfo either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long an answer is used before the name is looked up again.
pub const RESOLVED_FOR: Duration = Duration::from_secs(10);

/// The last answer for one backend's host, shared by that backend's Agents.
#[derive(Debug)]
pub struct AddressCache<R: Resolver = DefaultResolver> {
    lookup: R,
    resolved_for: Duration,
    last: RwLock<Option<Answer>>,
}

#[derive(Debug)]
struct Answer {
    /// `host:port` of the URI it answers, so that a different URI never gets it.
    authority: String,
    addrs: ResolvedSocketAddrs,
    at: Instant,
}

impl AddressCache {
    /// A cache in front of ureq's own resolver (getaddrinfo, or a parse for IP literals).
    pub fn new() -> Arc<AddressCache> {
        Arc::new(AddressCache::with_lookup(
            DefaultResolver::default(),
            RESOLVED_FOR,
        ))
    }
}

impl<R: Resolver> AddressCache<R> {
    fn with_lookup(lookup: R, resolved_for: Duration) -> AddressCache<R> {
        AddressCache {
            lookup,
            resolved_for,
            last: RwLock::new(None),
        }
    }

    /// Drops the answer, so the next request looks the name up again: called when connecting
    /// failed, which may mean the name now points elsewhere.
    pub fn forget(&self) {
        *self.last.write() = None;
    }

    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let authority = uri.authority().map_or("", |a| a.as_str());
        // The request path: a read lock and a copy of the addresses, nothing allocated.
        let earlier = {
            let last = self.last.read();
            match last.as_ref().filter(|answer| answer.authority == authority) {
                Some(answer) if answer.at.elapsed() < self.resolved_for => {
                    return Ok(answer.addrs.clone());
                }
                Some(answer) => Some(answer.addrs.clone()),
                None => None,
            }
        };
        let addrs = match self.lookup.resolve(uri, config, timeout) {
            Ok(addrs) => addrs,
            Err(error) => match earlier {
                Some(addrs) => {
                    log::warn!(
                        "looking up {authority} failed ({error}); using its earlier address"
                    );
                    addrs
                }
                None => return Err(error),
            },
        };
        *self.last.write() = Some(Answer {
            authority: authority.to_string(),
            addrs: addrs.clone(),
            at: Instant::now(),
        });
        Ok(addrs)
    }
}

/// The cache as ureq's resolver for one Agent.
#[derive(Debug)]
pub struct CachedResolver(pub Arc<AddressCache>);

impl Resolver for CachedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        self.0.resolve(uri, config, timeout)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Answers 10.0.0.N for its Nth lookup, or fails once `failing` is set.
    #[derive(Debug, Default)]
    struct CountingLookup {
        lookups: AtomicUsize,
        failing: std::sync::atomic::AtomicBool,
    }

    impl Resolver for CountingLookup {
        fn resolve(
            &self,
            _uri: &Uri,
            _config: &Config,
            _timeout: NextTimeout,
        ) -> Result<ResolvedSocketAddrs, ureq::Error> {
            let n = self.lookups.fetch_add(1, Ordering::Relaxed) + 1;
            if self.failing.load(Ordering::Relaxed) {
                return Err(ureq::Error::HostNotFound);
            }
            let mut addrs = self.empty();
            addrs.push(SocketAddr::from(([10, 0, 0, n as u8], 80)));
            Ok(addrs)
        }
    }

    fn first_address(
        cache: &AddressCache<CountingLookup>,
        uri: &str,
    ) -> Result<SocketAddr, ureq::Error> {
        let uri: Uri = uri.parse().unwrap();
        let config = Config::default();
        let timeout = NextTimeout {
            after: ureq::unversioned::transport::time::Duration::NotHappening,
            reason: ureq::Timeout::Resolve,
            per_read: None,
            per_write: None,
        };
        cache.resolve(&uri, &config, timeout).map(|addrs| addrs[0])
    }

    fn lookups(cache: &AddressCache<CountingLookup>) -> usize {
        cache.lookup.lookups.load(Ordering::Relaxed)
    }

    #[test]
    fn a_name_is_looked_up_once_while_its_answer_is_fresh() {
        let cache = AddressCache::with_lookup(CountingLookup::default(), RESOLVED_FOR);
        for _ in 0..100 {
            let addr = first_address(&cache, "http://backend.test:80/").unwrap();
            assert_eq!(addr, SocketAddr::from(([10, 0, 0, 1], 80)));
        }
        assert_eq!(lookups(&cache), 1);
    }

    #[test]
    fn forgetting_and_expiry_look_the_name_up_again() {
        let cache = AddressCache::with_lookup(CountingLookup::default(), RESOLVED_FOR);
        first_address(&cache, "http://backend.test/").unwrap();
        cache.forget();
        let addr = first_address(&cache, "http://backend.test/").unwrap();
        assert_eq!(addr, SocketAddr::from(([10, 0, 0, 2], 80)));

        let expiring = AddressCache::with_lookup(CountingLookup::default(), Duration::ZERO);
        first_address(&expiring, "http://backend.test/").unwrap();
        first_address(&expiring, "http://backend.test/").unwrap();
        assert_eq!(lookups(&expiring), 2);
    }

    #[test]
    fn another_authority_never_gets_the_cached_answer() {
        let cache = AddressCache::with_lookup(CountingLookup::default(), RESOLVED_FOR);
        first_address(&cache, "http://one.test/").unwrap();
        let addr = first_address(&cache, "http://two.test/").unwrap();
        assert_eq!(addr, SocketAddr::from(([10, 0, 0, 2], 80)));
    }

    #[test]
    fn a_failed_lookup_keeps_the_earlier_answer_but_not_a_missing_one() {
        let cache = AddressCache::with_lookup(CountingLookup::default(), Duration::ZERO);
        first_address(&cache, "http://backend.test/").unwrap();
        cache.lookup.failing.store(true, Ordering::Relaxed);
        let addr = first_address(&cache, "http://backend.test/").unwrap();
        assert_eq!(addr, SocketAddr::from(([10, 0, 0, 1], 80)));

        cache.forget();
        assert!(matches!(
            first_address(&cache, "http://backend.test/"),
            Err(ureq::Error::HostNotFound)
        ));
    }
}
