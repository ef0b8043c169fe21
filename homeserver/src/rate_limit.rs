//! Request rate limits: token buckets per client IP address, per account, per user for sends,
//! joins and uploads (server administrators exempt), and per origin server for federation (GCRA,
//! from the `governor` crate).
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
    message_by_user: DefaultKeyedRateLimiter<String>,
    join_by_user: DefaultKeyedRateLimiter<String>,
    upload_by_user: DefaultKeyedRateLimiter<String>,
    federation_by_origin: DefaultKeyedRateLimiter<String>,
    exempt: std::collections::HashSet<String>,
}

/// A refusal: the caller may retry after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl Limiters {
    /// Builds the buckets from configuration.
    /// Builds the buckets from configuration; `exempt` users (server administrators) have none.
    pub fn new(config: &RateLimits, exempt: &[String]) -> Self {
        Self {
            enabled: config.enabled,
            login_by_ip: DefaultKeyedRateLimiter::keyed(quota(config.login)),
            login_by_account: DefaultKeyedRateLimiter::keyed(quota(config.login)),
            registration_by_ip: DefaultKeyedRateLimiter::keyed(quota(config.registration)),
            message_by_user: DefaultKeyedRateLimiter::keyed(quota(config.message)),
            join_by_user: DefaultKeyedRateLimiter::keyed(quota(config.join)),
            upload_by_user: DefaultKeyedRateLimiter::keyed(quota(config.media_upload)),
            federation_by_origin: DefaultKeyedRateLimiter::keyed(quota(config.federation)),
            exempt: exempt.iter().cloned().collect(),
        }
    }

    /// An event sent by `user_id` (message, state event, redaction).
    pub fn message(&self, user_id: &str) -> Result<(), RetryAfter> {
        self.per_user(&self.message_by_user, user_id)
    }

    /// A join by `user_id`.
    pub fn join(&self, user_id: &str) -> Result<(), RetryAfter> {
        self.per_user(&self.join_by_user, user_id)
    }

    /// A media upload by `user_id`.
    pub fn media_upload(&self, user_id: &str) -> Result<(), RetryAfter> {
        self.per_user(&self.upload_by_user, user_id)
    }

    /// A request from server `origin` (authenticated): one server's flood cannot crowd out the
    /// others.
    pub fn federation(&self, origin: &str) -> Result<(), RetryAfter> {
        if !self.enabled {
            return Ok(());
        }
        check(&self.federation_by_origin, &origin.to_owned())
    }

    fn per_user(&self, limiter: &DefaultKeyedRateLimiter<String>, user_id: &str) -> Result<(), RetryAfter> {
        if !self.enabled || self.exempt.contains(user_id) {
            return Ok(());
        }
        check(limiter, &user_id.to_owned())
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
            ..RateLimits::default()
        };
        let limits = Limiters::new(&config, &[]);
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

        // Per user, administrators exempt; per origin server.
        config.message = Rate { per_second: 0.5, burst: 2 };
        config.federation = Rate { per_second: 0.5, burst: 1 };
        let limits = Limiters::new(&config, &["@admin:x".to_owned()]);
        assert!(limits.message("@a:x").is_ok() && limits.message("@a:x").is_ok());
        assert!(limits.message("@a:x").is_err());
        assert!(limits.message("@b:x").is_ok(), "each user has their own bucket");
        assert!((0..10).all(|_| limits.message("@admin:x").is_ok()), "administrators are exempt");
        assert!(limits.federation("a.example").is_ok() && limits.federation("a.example").is_err());
        assert!(limits.federation("b.example").is_ok(), "one server's flood leaves the others alone");

        config.enabled = false;
        let unlimited = Limiters::new(&config, &[]);
        for _ in 0..100 {
            assert!(unlimited.registration(ip).is_ok());
        }
    }
}
