//! Request rate limits: token buckets per client IP address and per account (GCRA, from the
//! `governor` crate).
//!
//! Buckets live in process memory: with several processes behind a load balancer each enforces
//! its own share, which bounds abuse without a round trip to the database on every request.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::{self, RateLimits};

/// Keys kept before idle buckets are swept, bounding memory under address-spraying attacks.
const SWEEP_THRESHOLD: usize = 10_000;

/// The limits one process enforces.
#[derive(Debug)]
pub struct Limiters {
    enabled: bool,
    login_by_ip: DefaultKeyedRateLimiter<IpAddr>,
    login_by_account: DefaultKeyedRateLimiter<String>,
    registration_by_ip: DefaultKeyedRateLimiter<IpAddr>,
}

/// A refusal: the caller may retry after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl Limiters {
    /// Builds the buckets from configuration.
    pub fn new(config: &RateLimits) -> Self {
        Self {
            enabled: config.enabled,
            login_by_ip: DefaultKeyedRateLimiter::keyed(quota(config.login)),
            login_by_account: DefaultKeyedRateLimiter::keyed(quota(config.login)),
            registration_by_ip: DefaultKeyedRateLimiter::keyed(quota(config.registration)),
        }
    }

    /// A login attempt from `ip` for `account` (the identifier as given).
    pub fn login(&self, ip: Option<IpAddr>, account: Option<&str>) -> Result<(), RetryAfter> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(ip) = ip {
            check(&self.login_by_ip, &ip)?;
        }
        if let Some(account) = account {
            check(&self.login_by_account, &account.to_lowercase())?;
        }
        Ok(())
    }

    /// A registration attempt (or username check) from `ip`.
    pub fn registration(&self, ip: Option<IpAddr>) -> Result<(), RetryAfter> {
        match ip {
            Some(ip) if self.enabled => check(&self.registration_by_ip, &ip),
            _ => Ok(()),
        }
    }
}

fn quota(rate: config::Rate) -> Quota {
    // Config validation guarantees a positive finite rate and a burst of at least one.
    let period = Duration::from_secs_f64(1.0 / rate.per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).unwrap_or(Quota::per_second(NonZeroU32::MIN)).allow_burst(burst)
}

fn check<K>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Result<(), RetryAfter>
where
    K: Clone + std::hash::Hash + Eq,
{
    if limiter.len() > SWEEP_THRESHOLD {
        limiter.retain_recent();
    }
    limiter.check_key(key).map_err(|not_until| RetryAfter(not_until.wait_time_from(DefaultClock::default().now())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    #[test]
    fn burst_then_refusal_with_a_wait_then_disabled_means_unlimited() {
        let mut config = RateLimits {
            enabled: true,
            login: Rate { per_second: 0.5, burst: 2 },
            registration: Rate { per_second: 0.5, burst: 1 },
        };
        let limits = Limiters::new(&config);
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        assert!(limits.registration(ip).is_ok());
        let RetryAfter(wait) = limits.registration(ip).unwrap_err();
        assert!(wait > Duration::from_millis(1000) && wait <= Duration::from_secs(2), "{wait:?}");
        // Another address has its own bucket.
        assert!(limits.registration(Some(IpAddr::from([127, 0, 0, 2]))).is_ok());
        // Per-account limits apply whatever the address.
        assert!(limits.login(None, Some("Alice")).is_ok());
        assert!(limits.login(None, Some("alice")).is_ok());
        assert!(limits.login(None, Some("ALICE")).is_err());

        config.enabled = false;
        let unlimited = Limiters::new(&config);
        for _ in 0..100 {
            assert!(unlimited.registration(ip).is_ok());
        }
    }
}
