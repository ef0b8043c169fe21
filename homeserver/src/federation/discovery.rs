//! Server discovery: where to connect for a server name
//! (<https://spec.matrix.org/v1.19/server-server-api/#resolving-server-names>).
//!
//! IP literal or explicit port: there. Otherwise `/.well-known/matrix/server` may delegate to
//! another host (then the same rules for it), else an SRV record `_matrix-fed._tcp` (or the
//! deprecated `_matrix._tcp`), else port 8448. Results are cached: delegation for as long as
//! the response allows (a day by default, two at most), failures for an hour.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;

use super::FederationError;

const DEFAULT_PORT: u16 = 8448;
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
const WELL_KNOWN_FAILURE_TTL: Duration = Duration::from_secs(3600);
/// A delegation response larger than this is not a delegation.
const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;

/// Where and how to send requests for one server name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// `https://HOST:PORT`: the host is the name the certificate must be valid for (and the
    /// SNI); the port is the one to connect to.
    pub base_url: String,
    /// The `Host` header.
    pub host_header: String,
    /// The host to resolve instead of the URL's (an SRV target).
    pub connect_host: Option<String>,
}

/// A server name split into host and optional port.
fn split_server_name(name: &str) -> Result<(String, Option<u16>), FederationError> {
    let bad = || FederationError::BadServerName(name.to_owned());
    ruma_common::ServerName::parse(name).map_err(|_| bad())?;
    if let Some(rest) = name.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8448`.
        let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().map_err(|_| bad())?),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        return Ok((format!("[{ip}]"), port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_owned(), Some(port.parse().map_err(|_| bad())?))),
        None => Ok((name.to_owned(), None)),
    }
}

/// The address a host is, if it is one: as URLs read hosts, so `127.1` and `2130706433`
/// count (they would reach the address without a DNS lookup).
fn ip_literal(host: &str) -> Option<IpAddr> {
    match url::Host::parse(host).ok()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Whether an address is on the public internet (not loopback, private, link-local, …).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

/// Resolves server names, with caches.
#[derive(Clone)]
pub struct Discovery {
    dns: Option<TokioResolver>,
    cache: Arc<Mutex<HashMap<String, (Destination, Instant)>>>,
    /// URL hosts whose connections go to another host (SRV targets), read by the resolver.
    pub(super) connect_overrides: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

impl Default for Discovery {
    fn default() -> Self {
        Self::new()
    }
}

impl Discovery {
    /// Uses the system's DNS configuration for SRV lookups; without one (a container with no
    /// `/etc/resolv.conf`), SRV lookups are skipped.
    pub fn new() -> Self {
        let dns = match TokioResolver::builder_tokio().and_then(|mut builder| {
            // A missing SRV record must not hold a request up for long.
            builder.options_mut().timeout = Duration::from_secs(3);
            builder.options_mut().attempts = 1;
            builder.build()
        }) {
            Ok(dns) => Some(dns),
            Err(err) => {
                tracing::warn!("no DNS resolver configuration, SRV records are not looked up: {err}");
                None
            }
        };
        Self { dns, cache: Arc::default(), connect_overrides: Arc::default() }
    }

    /// Where to reach `server_name`. `well_known` fetches `https://HOST/.well-known/matrix/server`
    /// (through the same guarded client as everything else).
    pub async fn resolve<F, Fut>(&self, server_name: &str, well_known: F) -> Result<Destination, FederationError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Option<(String, Option<Duration>)>>,
    {
        let (host, port) = split_server_name(server_name)?;
        // Steps 1 and 2: an IP literal or an explicit port needs no lookup.
        if ip_literal(&host).is_some() || port.is_some() {
            return Ok(direct(&host, port, server_name));
        }
        if let Some((destination, expires)) = self.cache.lock().expect("cache").get(server_name).cloned()
            && expires > Instant::now()
        {
            return Ok(destination);
        }
        let (destination, ttl) = match well_known(host.clone()).await {
            Some((delegated, ttl)) => match split_server_name(&delegated) {
                Ok((d_host, d_port)) if ip_literal(&d_host).is_some() || d_port.is_some() => {
                    (direct(&d_host, d_port, &delegated), ttl.unwrap_or(WELL_KNOWN_DEFAULT_TTL))
                }
                Ok((d_host, _)) => (self.srv_or_default(&d_host).await, ttl.unwrap_or(WELL_KNOWN_DEFAULT_TTL)),
                Err(_) => {
                    tracing::info!("{server_name} delegates to {delegated:?}, which is no server name: ignored");
                    (self.srv_or_default(&host).await, WELL_KNOWN_FAILURE_TTL)
                }
            },
            None => (self.srv_or_default(&host).await, WELL_KNOWN_FAILURE_TTL),
        };
        if let Some(target) = &destination.connect_host {
            let url_host = split_server_name(&destination.host_header).map(|(h, _)| h).unwrap_or_default();
            self.connect_overrides.lock().expect("overrides").insert(url_host, target.clone());
        }
        let expires = Instant::now() + ttl.min(WELL_KNOWN_MAX_TTL);
        self.cache.lock().expect("cache").insert(server_name.to_owned(), (destination.clone(), expires));
        Ok(destination)
    }

    /// Steps 4 to 6 (and 3.3 to 3.5 for a delegated host): SRV, then port 8448.
    async fn srv_or_default(&self, host: &str) -> Destination {
        if let Some(dns) = &self.dns {
            for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
                let Ok(lookup) = dns.srv_lookup(format!("{service}.{host}.")).await else { continue };
                let best = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        hickory_resolver::proto::rr::RData::SRV(srv) => Some(srv.clone()),
                        _ => None,
                    })
                    .min_by_key(|srv| (srv.priority, std::cmp::Reverse(srv.weight)));
                if let Some(srv) = best {
                    let target = srv.target.to_utf8().trim_end_matches('.').to_owned();
                    if target.is_empty() {
                        continue;
                    }
                    return Destination {
                        base_url: format!("https://{host}:{}", srv.port),
                        host_header: host.to_owned(),
                        connect_host: Some(target),
                    };
                }
            }
        }
        Destination {
            base_url: format!("https://{host}:{DEFAULT_PORT}"),
            host_header: host.to_owned(),
            connect_host: None,
        }
    }
}

/// An IP literal or explicit port: connect there, `Host` is the name as given.
fn direct(host: &str, port: Option<u16>, name: &str) -> Destination {
    Destination {
        base_url: format!("https://{host}:{}", port.unwrap_or(DEFAULT_PORT)),
        host_header: name.to_owned(),
        connect_host: None,
    }
}

/// Reads a `/.well-known/matrix/server` body: the delegated server name.
pub fn parse_well_known(body: &[u8]) -> Option<String> {
    if body.len() > WELL_KNOWN_MAX_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("m.server")?.as_str().map(str::to_owned)
}

/// The lifetime a `Cache-Control` header gives a delegation (`max-age`; none for `no-store`).
pub fn well_known_ttl(cache_control: Option<&str>) -> Option<Duration> {
    let header = cache_control?;
    header.split(',').map(str::trim).find_map(|directive| {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        let seconds = directive.strip_prefix("max-age=")?.parse().ok()?;
        Some(Duration::from_secs(seconds))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_addresses_and_explicit_ports_need_no_lookup() {
        let discovery = Discovery::new();
        let never = |_host: String| async { panic!("no well-known lookup expected") };
        let d = discovery.resolve("localhost:18448", never).await.unwrap();
        assert_eq!(d.base_url, "https://localhost:18448");
        assert_eq!(d.host_header, "localhost:18448");
        let d = discovery.resolve("1.2.3.4", never).await.unwrap();
        assert_eq!(d.base_url, "https://1.2.3.4:8448");
        assert_eq!(d.host_header, "1.2.3.4");
        let d = discovery.resolve("[2001:db8::1]:443", never).await.unwrap();
        assert_eq!(d.base_url, "https://[2001:db8::1]:443");
        assert!(discovery.resolve("bad name!", never).await.is_err());
    }

    #[tokio::test]
    async fn delegation_is_followed_and_cached() {
        let discovery = Discovery::new();
        let delegate = |host: String| async move {
            assert_eq!(host, "example.invalid");
            Some(("matrix.example.invalid:443".to_owned(), None))
        };
        let d = discovery.resolve("example.invalid", delegate).await.unwrap();
        assert_eq!(d.base_url, "https://matrix.example.invalid:443");
        assert_eq!(d.host_header, "matrix.example.invalid:443");
        // Cached: no second lookup.
        let again = discovery.resolve("example.invalid", |_| async { panic!("cached") }).await.unwrap();
        assert_eq!(again, d);
        // No delegation and no SRV record: port 8448 of the name itself.
        let d = discovery.resolve("other.invalid", |_| async { None }).await.unwrap();
        assert_eq!(d.base_url, "https://other.invalid:8448");
        assert_eq!(d.host_header, "other.invalid");
    }

    #[test]
    fn private_addresses_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn well_known_bodies_and_cache_headers() {
        assert_eq!(
            parse_well_known(br#"{"m.server": "delegated.example:443"}"#).as_deref(),
            Some("delegated.example:443")
        );
        assert_eq!(parse_well_known(b"not json"), None);
        assert_eq!(parse_well_known(br#"{"m.server": 1}"#), None);
        assert_eq!(well_known_ttl(Some("public, max-age=600")), Some(Duration::from_secs(600)));
        assert_eq!(well_known_ttl(Some("no-store")), Some(Duration::ZERO));
        assert_eq!(well_known_ttl(None), None);
    }
}
