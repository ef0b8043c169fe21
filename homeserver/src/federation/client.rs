//! Outbound federation requests: discovery, TLS (web roots plus `federation.trusted_ca`),
//! refusal of private addresses (SSRF protection), the `X-Matrix` signature, Matrix errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use ruma_common::CanonicalJsonValue;
use serde_json::Value;

use super::FederationError;
use super::authorization::XMatrix;
use super::discovery::{self, Discovery};
use crate::config::Config;
use crate::crypto::SigningKey;

/// How long one request to another server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest JSON response read from another server (a `send_join` state can be large).
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// The largest key document read.
const SMALL_RESPONSE_BYTES: usize = 64 * 1024;
/// How long a failed key fetch keeps us from asking that server again.
const KEY_FAILURE_TTL: Duration = Duration::from_secs(60);
/// A delegation document is a few bytes.
const WELL_KNOWN_LIMIT: usize = 64 * 1024;

/// Makes signed requests to other homeservers.
#[derive(Debug)]
pub struct FederationClient {
    /// For unsigned fetches (delegation, key documents, media `Location`s): follows redirects.
    http: reqwest::Client,
    /// For signed requests: follows none.
    signed_http: reqwest::Client,
    discovery: Discovery,
    server_name: String,
    key: Arc<SigningKey>,
    allow_private: bool,
    key_failures: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// One key fetch per server at a time (see [`Self::key_fetch_turn`]).
    key_fetches: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

/// Resolves host names for outbound requests, refusing private addresses unless allowed, and
/// sending SRV-delegated hosts to their targets.
struct GuardedResolver {
    allow_private: bool,
    overrides: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = self.overrides.lock().expect("overrides").get(name.as_str()).cloned();
        let host = host.unwrap_or_else(|| name.as_str().to_owned());
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                addresses.iter().copied().filter(|a| allow_private || discovery::is_public(a.ip())).collect();
            if allowed.is_empty() {
                let reason = if addresses.is_empty() {
                    format!("{host} has no address")
                } else {
                    format!("{host} resolves only to private addresses (federation.allow_private_addresses is off)")
                };
                return Err(reason.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl FederationClient {
    /// Builds the client from the `federation` configuration.
    pub fn new(config: &Config, key: Arc<SigningKey>) -> Result<Self, FederationError> {
        let setup = |reason: String| FederationError::Setup(reason);
        let discovery = Discovery::new();
        let resolver = GuardedResolver {
            allow_private: config.federation.allow_private_addresses,
            overrides: discovery.connect_overrides.clone(),
        };
        let resolver = Arc::new(resolver);
        let trusted = match &config.federation.trusted_ca {
            Some(path) => {
                let pem =
                    std::fs::read(path).map_err(|e| setup(format!("federation.trusted_ca {}: {e}", path.display())))?;
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| setup(format!("federation.trusted_ca {}: {e}", path.display())))?
            }
            None => Vec::new(),
        };
        if config.federation.allow_invalid_certificates {
            tracing::warn!(
                "federation.allow_invalid_certificates is ON: other servers' certificates are not checked, \
                 so anyone on the network path can impersonate any server. Never use this in production."
            );
        }
        let build = |redirect: reqwest::redirect::Policy| {
            let mut builder = reqwest::Client::builder()
                .dns_resolver(resolver.clone())
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(Duration::from_secs(10))
                .https_only(true)
                .no_proxy()
                .redirect(redirect)
                .user_agent(concat!("Myelin/", env!("CARGO_PKG_VERSION")))
                .tls_danger_accept_invalid_certs(config.federation.allow_invalid_certificates);
            if !trusted.is_empty() {
                builder = builder.tls_certs_merge(trusted.clone());
            }
            builder.build().map_err(|e| setup(format!("the federation HTTP client: {e}")))
        };
        let http = build(redirect_policy(config.federation.allow_private_addresses))?;
        // Signed API requests follow no redirect: the signature names the destination and the
        // path, and the `Host` header would be carried to another host.
        let signed_http = build(reqwest::redirect::Policy::none())?;
        Ok(Self {
            http,
            signed_http,
            discovery,
            server_name: config.server_name.clone(),
            key,
            allow_private: config.federation.allow_private_addresses,
            key_failures: Default::default(),
            key_fetches: Default::default(),
        })
    }

    /// Our server name (the `origin` of our requests).
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// A signed GET; `path` includes the query string, already percent-encoded.
    pub async fn get(&self, destination: &str, path: &str) -> Result<Value, FederationError> {
        self.request(Method::GET, destination, path, None, true).await
    }

    /// A signed POST with a JSON body.
    pub async fn post(&self, destination: &str, path: &str, body: &Value) -> Result<Value, FederationError> {
        self.request(Method::POST, destination, path, Some(body), true).await
    }

    /// A signed PUT with a JSON body.
    pub async fn put(&self, destination: &str, path: &str, body: &Value) -> Result<Value, FederationError> {
        self.request(Method::PUT, destination, path, Some(body), true).await
    }

    /// A GET without signature of a small document (a key document: the other server may
    /// need our keys to check a signature, and must not have to ask us back first).
    pub async fn get_small(&self, destination: &str, path: &str) -> Result<Value, FederationError> {
        self.request_limited(Method::GET, destination, path, None, false, SMALL_RESPONSE_BYTES).await
    }

    /// Refuses to fetch `server`'s keys again within a minute of a failure.
    pub fn recent_key_failure(&self, server: &str) -> Result<(), FederationError> {
        let mut failures = self.key_failures.lock().expect("key failures");
        failures.retain(|_, at| at.elapsed() < KEY_FAILURE_TTL);
        match failures.get(server) {
            Some(_) => Err(FederationError::Unreachable {
                server: server.to_owned(),
                reason: "its keys could not be fetched a moment ago".to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Waits until no one else fetches `server`'s keys: events of one server checked at once
    /// make one fetch, the others then find the keys stored. Per server, so that a server slow
    /// to answer holds up no one else's.
    pub async fn key_fetch_turn(&self, server: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut turns = self.key_fetches.lock().expect("key fetches");
            match turns.get(server).and_then(std::sync::Weak::upgrade) {
                Some(turn) => turn,
                None => {
                    if turns.len() >= 1024 {
                        turns.retain(|_, turn| turn.strong_count() > 0);
                    }
                    let turn = Arc::new(tokio::sync::Mutex::new(()));
                    turns.insert(server.to_owned(), Arc::downgrade(&turn));
                    turn
                }
            }
        };
        turn.lock_owned().await
    }

    /// Remembers that fetching `server`'s keys failed.
    pub fn note_key_failure(&self, server: &str) {
        let mut failures = self.key_failures.lock().expect("key failures");
        if failures.len() < 10_000 {
            failures.insert(server.to_owned(), std::time::Instant::now());
        }
    }

    async fn request(
        &self,
        method: Method,
        destination: &str,
        path: &str,
        body: Option<&Value>,
        signed: bool,
    ) -> Result<Value, FederationError> {
        self.request_limited(method, destination, path, body, signed, MAX_RESPONSE_BYTES).await
    }

    async fn request_limited(
        &self,
        method: Method,
        destination: &str,
        path: &str,
        body: Option<&Value>,
        signed: bool,
        limit: usize,
    ) -> Result<Value, FederationError> {
        let response = self.send(method, destination, path, body, signed).await?;
        let status = response.status();
        let bytes = read_limited(response, limit)
            .await
            .map_err(|reason| FederationError::Unreachable { server: destination.to_owned(), reason })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
            FederationError::Invalid(format!(
                "{destination} answered {path} with something that is not JSON (HTTP {status})"
            ))
        })?;
        if !status.is_success() {
            return Err(FederationError::Remote {
                server: destination.to_owned(),
                status: status.as_u16(),
                body: value,
            });
        }
        Ok(value)
    }

    /// A signed GET whose answer is not JSON (media): its `Content-Type` and at most `limit`
    /// bytes. Error answers (JSON) become [`FederationError::Remote`].
    pub async fn get_bytes(
        &self,
        destination: &str,
        path: &str,
        limit: usize,
    ) -> Result<(Option<String>, Vec<u8>), FederationError> {
        let response = self.send(Method::GET, destination, path, None, true).await?;
        let status = response.status();
        let content_type =
            response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = read_limited(response, limit)
            .await
            .map_err(|reason| FederationError::Unreachable { server: destination.to_owned(), reason })?;
        if !status.is_success() {
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::json!({}));
            return Err(FederationError::Remote { server: destination.to_owned(), status: status.as_u16(), body });
        }
        Ok((content_type, bytes))
    }

    /// A plain GET of a URL another server pointed us to (a media `Location`), through the
    /// same guarded client: its `Content-Type`, `Content-Disposition` and at most `limit` bytes.
    pub async fn get_url(
        &self,
        url: &str,
        limit: usize,
    ) -> Result<(Option<String>, Option<String>, Vec<u8>), FederationError> {
        let unreachable = |reason: String| FederationError::Unreachable { server: url.to_owned(), reason };
        self.check_literal(url).map_err(unreachable)?;
        let response = self.http.get(url).send().await.map_err(|e| unreachable(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(unreachable(format!("HTTP {}", response.status())));
        }
        let header = |name| {
            response.headers().get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok()).map(str::to_owned)
        };
        let (content_type, disposition) =
            (header(reqwest::header::CONTENT_TYPE), header(reqwest::header::CONTENT_DISPOSITION));
        let bytes = read_limited(response, limit).await.map_err(unreachable)?;
        Ok((content_type, disposition, bytes))
    }

    /// Discovery, the private-address check, the signature: the request, sent.
    async fn send(
        &self,
        method: Method,
        destination: &str,
        path: &str,
        body: Option<&Value>,
        signed: bool,
    ) -> Result<reqwest::Response, FederationError> {
        if destination == self.server_name {
            return Err(FederationError::BadServerName(format!("{destination} (that is this server)")));
        }
        let target = self.discovery.resolve(destination, |host| self.well_known(host)).await?;
        let unreachable = |reason: String| FederationError::Unreachable { server: destination.to_owned(), reason };
        self.check_literal(&target.base_url).map_err(unreachable)?;
        let url = format!("{}{path}", target.base_url);
        let client = if signed { &self.signed_http } else { &self.http };
        let mut request = client.request(method.clone(), &url).header(reqwest::header::HOST, &target.host_header);
        if let Some(body) = body {
            request = request.json(body);
        }
        if signed {
            let content = body
                .map(|b| CanonicalJsonValue::try_from(b.clone()))
                .transpose()
                .map_err(|e| FederationError::Invalid(format!("a request body that is not canonical JSON: {e}")))?;
            let header =
                XMatrix::sign(&self.key, &self.server_name, destination, method.as_str(), path, content.as_ref())
                    .map_err(FederationError::Invalid)?;
            request = request.header(reqwest::header::AUTHORIZATION, header.to_header());
        }
        request.send().await.map_err(|e| unreachable(error_chain(&e)))
    }

    /// `/.well-known/matrix/server` of `host`: the delegated name and how long to trust it.
    async fn well_known(&self, host: String) -> Option<(String, Option<Duration>)> {
        let url = format!("https://{host}/.well-known/matrix/server");
        let response = self.http.get(&url).timeout(Duration::from_secs(10)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let ttl = discovery::well_known_ttl(
            response.headers().get(reqwest::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()),
        );
        let body = read_limited(response, WELL_KNOWN_LIMIT).await.ok()?;
        discovery::parse_well_known(&body).map(|name| (name, ttl))
    }

    /// IP literals never reach the resolver: check them here.
    fn check_literal(&self, base_url: &str) -> Result<(), String> {
        let Ok(url) = reqwest::Url::parse(base_url) else { return Err(format!("a bad URL {base_url}")) };
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if self.allow_private || discovery::is_public(ip) {
            Ok(())
        } else {
            Err(format!("{ip} is a private address (federation.allow_private_addresses is off)"))
        }
    }
}

/// Follows up to five redirects, never to plain HTTP and never to a private IP literal (a
/// host name goes through the guarded resolver anyway; a literal would bypass it).
fn redirect_policy(allow_private: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("too many redirects");
        }
        if attempt.url().scheme() != "https" {
            return attempt.error("a redirect away from HTTPS");
        }
        let ip = match attempt.url().host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        match ip {
            Some(ip) if !allow_private && !discovery::is_public(ip) => {
                attempt.error(format!("a redirect to the private address {ip}"))
            }
            _ => attempt.follow(),
        }
    })
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if response.content_length().is_some_and(|len| len > limit as u64) {
        return Err("the response is too large".into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > limit {
            return Err("the response is too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error with its causes: "error sending request" alone says nothing.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
