//! Throttling of failed authentication per client address (DESIGN.md §2: 429 / 12051 with
//! `Retry-After`).
//!
//! Each client gets a bucket of [`ThrottleConfig::burst`] failures (default [`FAILURE_BURST`]) that
//! refills by one every [`ThrottleConfig::refill`] (default [`FAILURE_REFILL`]). A request that presents wrong credentials (an unknown token or global key, an
//! unknown deploy hook id) takes one; a client whose bucket is empty gets 429 before its credentials
//! are looked at, so that its guesses learn nothing, until the bucket has refilled enough. Requests
//! with valid credentials, or none, cost nothing, and other clients are not affected: a guesser
//! cannot lock out anyone else, nor a token by guessing at it.
//!
//! Clients are told apart by their IP address; an IPv6 client by its /64 network (what one host is
//! usually given). Buckets live in this process's memory: each API node throttles on its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed authentications a client may make back to back, by default.
pub const FAILURE_BURST: u32 = 10;
/// Time after which a client may fail once more, by default.
pub const FAILURE_REFILL: Duration = Duration::from_secs(6);

/// How many failed authentications a client may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures a client may make back to back; 0 turns throttling off.
    pub burst: u32,
    /// Time after which a client may fail once more.
    pub refill: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            burst: FAILURE_BURST,
            refill: FAILURE_REFILL,
        }
    }
}
/// Clients remembered at most; when full, the clients closest to a full bucket are forgotten first
/// (forgetting a client gives it a full bucket, which those nearly have anyway).
pub const MAX_CLIENTS: usize = 16_384;

/// Who a request comes from, for throttling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    /// The key of an address: the address itself for IPv4, its /64 network for IPv6.
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(u128::from(u32::from(v4))),
                None => ClientKey((u128::from(v6) & !u128::from(u64::MAX)) | 1 << 32),
            },
        }
    }
}

/// The key of the client of a request, from the address the server recorded in its extensions
/// (`None` when it recorded none: such requests are not throttled).
pub fn client_key(extensions: &axum::http::Extensions) -> Option<ClientKey> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| ClientKey::of(info.0.ip()))
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures the client may still make, as of `at`.
    left: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, config: ThrottleConfig, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64()
            / config.refill.as_secs_f64().max(f64::MIN_POSITIVE);
        (self.left + gained).min(f64::from(config.burst))
    }
}

/// The failed-authentication buckets of every client.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    config: ThrottleConfig,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

impl AuthThrottle {
    /// A throttle with no failures recorded yet.
    pub fn new(config: ThrottleConfig) -> AuthThrottle {
        AuthThrottle {
            config,
            buckets: Mutex::default(),
        }
    }

    /// `Some(seconds to wait)` when `client` has no failure left, else `None`.
    pub fn check(&self, client: ClientKey) -> Option<u64> {
        self.check_at(client, Instant::now())
    }

    /// Counts one failed authentication of `client`.
    pub fn record_failure(&self, client: ClientKey) {
        self.record_failure_at(client, Instant::now());
    }

    fn check_at(&self, client: ClientKey, now: Instant) -> Option<u64> {
        if self.config.burst == 0 {
            return None;
        }
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let left = buckets.get(&client)?.refilled(self.config, now);
        (left < 1.0).then(|| {
            let wait = (1.0 - left) * self.config.refill.as_secs_f64();
            (wait.ceil() as u64).max(1)
        })
    }

    fn record_failure_at(&self, client: ClientKey, now: Instant) {
        if self.config.burst == 0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            forget_some(&mut buckets, self.config, now);
        }
        let left = buckets
            .get(&client)
            .map_or(f64::from(self.config.burst), |b| {
                b.refilled(self.config, now)
            });
        buckets.insert(
            client,
            Bucket {
                left: (left - 1.0).max(0.0),
                at: now,
            },
        );
    }
}

/// Makes room in a full table: drops the clients whose buckets are full again, and if that frees
/// nothing, the quarter of clients with the most failures left.
fn forget_some(buckets: &mut HashMap<ClientKey, Bucket>, config: ThrottleConfig, now: Instant) {
    let full = f64::from(config.burst);
    buckets.retain(|_, b| b.refilled(config, now) < full);
    if buckets.len() < MAX_CLIENTS {
        return;
    }
    let mut lefts: Vec<f64> = buckets.values().map(|b| b.refilled(config, now)).collect();
    lefts.sort_by(|a, b| b.total_cmp(a));
    let threshold = lefts[MAX_CLIENTS / 4];
    buckets.retain(|_, b| b.refilled(config, now) < threshold);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClientKey {
        ClientKey::of(s.parse().expect("ip"))
    }

    #[test]
    fn a_zero_burst_never_throttles() {
        let t = AuthThrottle::new(ThrottleConfig {
            burst: 0,
            refill: FAILURE_REFILL,
        });
        let now = Instant::now();
        let me = key("192.0.2.1");
        for _ in 0..1000 {
            assert_eq!(t.check_at(me, now), None);
            t.record_failure_at(me, now);
        }
        assert!(t.buckets.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_burst_then_one_failure_per_refill() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let me = key("192.0.2.1");
        for _ in 0..FAILURE_BURST {
            assert_eq!(t.check_at(me, now), None);
            t.record_failure_at(me, now);
        }
        let wait = t.check_at(me, now).expect("throttled");
        assert_eq!(wait, FAILURE_REFILL.as_secs());
        // Others are not affected.
        assert_eq!(t.check_at(key("192.0.2.2"), now), None);
        // One failure more after one refill period, not two.
        let later = now + FAILURE_REFILL;
        assert_eq!(t.check_at(me, later), None);
        t.record_failure_at(me, later);
        assert!(t.check_at(me, later).is_some());
        // A full refill forgives everything.
        let much_later = later + FAILURE_REFILL * FAILURE_BURST;
        for _ in 0..FAILURE_BURST {
            assert_eq!(t.check_at(me, much_later), None);
            t.record_failure_at(me, much_later);
        }
        assert!(t.check_at(me, much_later).is_some());
    }

    #[test]
    fn ipv6_clients_are_their_64_network() {
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        // An IPv6 network never shares a key with an IPv4 address.
        assert_ne!(key("::c000:201"), key("192.0.2.1"));
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_the_worst_guessers() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let guesser = key("198.51.100.7");
        for _ in 0..FAILURE_BURST {
            t.record_failure_at(guesser, now);
        }
        for i in 0..(MAX_CLIENTS as u32 + 100) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.record_failure_at(ClientKey::of(ip), now);
        }
        assert!(t.buckets.lock().unwrap().len() <= MAX_CLIENTS);
        assert!(
            t.check_at(guesser, now).is_some(),
            "the guesser is still throttled"
        );
    }
}
