//! Configuration: built-in defaults (a zero-setup server on SQLite under `./data`), then an
//! optional TOML file, then `MYELIN_*` environment variables (nested keys joined by `__`).
//!
//! Unknown keys and invalid values are refused at start-up with an error naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

/// The whole configuration of one homeserver process.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name: the part after the colon in `@alice:example.org`. May carry a port.
    #[serde(deserialize_with = "string_or_number")]
    pub server_name: String,
    /// Where the SQLite database, the signing key and media live.
    pub data_dir: PathBuf,
    /// The URL clients reach the client API at; served in `/.well-known/matrix/client`.
    /// Defaults to `http://{server_name}`.
    pub public_baseurl: Option<String>,
    /// Listening sockets.
    pub listen: Listen,
    /// Database connection.
    pub database: Database,
    /// Who may create accounts.
    pub registration: Registration,
    /// Request rate limits.
    pub rate_limits: RateLimits,
    /// Size limits on requests.
    pub limits: Limits,
    /// The media repository.
    pub media: Media,
    /// What `/.well-known/matrix/server` delegates federation to.
    pub well_known: WellKnown,
    /// The Server-Server API: talking to other homeservers.
    pub federation: Federation,
    /// The log filter, in `tracing_subscriber::EnvFilter` syntax (`RUST_LOG` wins when set).
    pub log: String,
    /// Server administrators (full user IDs): they may use the `/_myelin/admin` endpoints.
    pub admins: Vec<String>,
}

/// Listening sockets.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Address and port of the Client-Server API listener.
    pub client: SocketAddr,
    /// Address and port of the federation (Server-Server API) listener, served over TLS when
    /// `federation.enabled`.
    pub federation: SocketAddr,
    /// Behind a reverse proxy: take the client's address (for rate limits and the device list)
    /// from the last `X-Forwarded-For` entry, the one the proxy appended. Only for a listener
    /// that nothing but the proxy can reach, or clients could pick their own address.
    pub x_forwarded: bool,
}

/// The Server-Server API.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Federation {
    /// Whether this server talks to other homeservers (and listens on `listen.federation`).
    pub enabled: bool,
    /// The federation listener's certificate chain (PEM). Required when enabled.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM). Required when enabled.
    pub tls_key: Option<PathBuf>,
    /// An extra CA certificate (PEM) trusted for other servers' certificates, besides the
    /// usual web roots: for tests and private deployments.
    pub trusted_ca: Option<PathBuf>,
    /// Accepts any certificate from other servers. For development only: it lets anyone on
    /// the network impersonate any server.
    pub allow_invalid_certificates: bool,
    /// Allows outbound requests to loopback, private and link-local addresses. Off, a server
    /// name that resolves there is refused, so that other servers cannot make this one probe
    /// its own network.
    pub allow_private_addresses: bool,
}

/// The media repository.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    /// Where media objects live, as an object store URL: `file:///path`, `s3://bucket/prefix`
    /// (credentials and endpoint from the usual `AWS_*` variables), or any other scheme the
    /// object_store crate reads. Unset: the `media/` folder of the data directory.
    pub store: Option<String>,
    /// Options of the store, in the object_store crate's keys (`aws_endpoint`,
    /// `aws_access_key_id`, `aws_region`, `aws_allow_http`, `google_service_account`, …); they
    /// win over the environment.
    #[serde(deserialize_with = "string_map")]
    pub store_options: BTreeMap<String, String>,
    /// The largest upload in bytes (`m.upload.size`).
    pub max_upload_size: u64,
    /// Bytes a user may have uploaded in all; unset: no quota.
    pub max_user_storage: Option<u64>,
    /// Whether the deprecated unauthenticated `/_matrix/media/v3/download` path still serves
    /// media (many clients still use it).
    pub legacy_unauthenticated: bool,
}

impl Default for Media {
    fn default() -> Self {
        Self {
            store: None,
            store_options: BTreeMap::new(),
            max_upload_size: 100 * 1024 * 1024,
            max_user_storage: None,
            legacy_unauthenticated: true,
        }
    }
}

/// Database connection.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// `sqlite://PATH` or `postgres://…`. Defaults to `sqlite://{data_dir}/myelin.db`.
    pub url: Option<String>,
    /// Upper bound on pooled connections; unset: 4 on SQLite, 16 on PostgreSQL.
    pub max_connections: Option<u32>,
}

/// Who may create accounts.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    /// Whether `POST /register` creates accounts at all.
    pub enabled: bool,
    /// When set, registration requires this pre-shared token (`m.login.registration_token`).
    #[serde(deserialize_with = "optional_string_or_number")]
    pub token: Option<String>,
}

/// Request rate limits, per client IP address and per account.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Master switch; benchmarks and tests turn it off.
    pub enabled: bool,
    /// `POST /login`, per IP address and per account.
    pub login: Rate,
    /// `POST /register` and `GET /register/available`, per IP address.
    pub registration: Rate,
    /// Events sent (messages, state, redactions), per user. Server administrators are exempt.
    pub message: Rate,
    /// Room joins, per user. Server administrators are exempt.
    pub join: Rate,
    /// Media uploads, per user. Server administrators are exempt.
    pub media_upload: Rate,
    /// Federation requests, per origin server (after its signature checked out).
    pub federation: Rate,
}

/// A token bucket: refills `per_second` requests per second, holds at most `burst`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

/// Size and time limits on requests and connections.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted JSON request body in bytes.
    pub max_request_body: usize,
    /// Open connections of both listeners together; more wait in the kernel's backlog.
    /// Lowered at start-up to what the file descriptor limit allows.
    pub max_connections: usize,
    /// From accepting a connection, or from the first byte of a later request on it, to the end
    /// of the request's head, in milliseconds.
    pub head_timeout_ms: u64,
    /// The longest silence while a request body arrives, in milliseconds.
    pub body_timeout_ms: u64,
    /// How long a kept-alive connection may wait for its next request, in milliseconds.
    pub idle_timeout_ms: u64,
}

/// Federation delegation advertised to other servers.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WellKnown {
    /// `host[:port]` other servers should use for federation; unset means
    /// `/.well-known/matrix/server` answers 404 and servers fall back to the spec's defaults.
    pub server: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost:8008".to_owned(),
            data_dir: PathBuf::from("./data"),
            public_baseurl: None,
            listen: Listen::default(),
            database: Database::default(),
            registration: Registration::default(),
            rate_limits: RateLimits::default(),
            limits: Limits::default(),
            media: Media::default(),
            well_known: WellKnown::default(),
            federation: Federation::default(),
            log: "info,poem=warn,ruma_state_res=warn".to_owned(),
            admins: Vec::new(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            client: SocketAddr::from(([127, 0, 0, 1], 8008)),
            federation: SocketAddr::from(([0, 0, 0, 0], 8448)),
            x_forwarded: false,
        }
    }
}

impl Default for Registration {
    fn default() -> Self {
        // Open by default so that the zero-configuration server on loopback is usable at once;
        // `main` warns when it is open on a non-loopback address.
        Self { enabled: true, token: None }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            login: Rate { per_second: 0.17, burst: 5 },
            registration: Rate { per_second: 0.17, burst: 6 },
            message: Rate { per_second: 2.0, burst: 30 },
            join: Rate { per_second: 0.1, burst: 10 },
            media_upload: Rate { per_second: 1.0, burst: 20 },
            federation: Rate { per_second: 50.0, burst: 200 },
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        // Matrix events are at most 65,536 bytes; 1 MiB leaves room for any JSON request
        // the client API takes while keeping a hostile body from exhausting memory.
        Self {
            max_request_body: 1024 * 1024,
            // Like nginx's defaults (its keep-alive is 75 s; ours outlasts the 90 s idle pools of
            // common HTTP clients, so they rarely reuse a connection we are closing).
            max_connections: 4096,
            head_timeout_ms: 30_000,
            body_timeout_ms: 60_000,
            idle_timeout_ms: 120_000,
        }
    }
}

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, the environment or a value could not be read.
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    /// A value was read but is not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The dotted key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Loads defaults, then `file` (if given), then `MYELIN_*` variables from the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    reason: format!("{} is not a readable file", file.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Config = figment
            .merge(
                Env::prefixed("MYELIN_")
                    // Not configuration keys: the config file's path (read by the command line
                    // parser) and the test suite's namespace.
                    .filter(|key| {
                        let key = key.as_str().to_ascii_lowercase();
                        key != "config_file" && !key.starts_with("test_")
                    })
                    .split("__"),
            )
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that deserialize fine but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if let Err(e) = ruma_common::ServerName::parse(&self.server_name) {
            return invalid("server_name", format!("{:?} is not a server name: {e}", self.server_name));
        }
        if let Some(url) = &self.public_baseurl
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid("public_baseurl", format!("{url:?} is not an http(s) URL"));
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            // Only the scheme: the URL may carry a password.
            let scheme = url.split(':').next().unwrap_or_default();
            return invalid("database.url", format!("scheme {scheme:?} is neither sqlite: nor postgres://"));
        }
        if self.database.max_connections == Some(0) {
            return invalid("database.max_connections", "must be at least 1".to_owned());
        }
        if let Some(token) = &self.registration.token
            && (token.is_empty() || token.len() > 64)
        {
            return invalid("registration.token", "must be 1 to 64 characters".to_owned());
        }
        let rates = &self.rate_limits;
        for (key, rate) in [
            ("rate_limits.login", rates.login),
            ("rate_limits.registration", rates.registration),
            ("rate_limits.message", rates.message),
            ("rate_limits.join", rates.join),
            ("rate_limits.media_upload", rates.media_upload),
            ("rate_limits.federation", rates.federation),
        ] {
            if !(rate.per_second.is_finite() && rate.per_second > 0.0) || rate.burst == 0 {
                return invalid(key, "per_second must be > 0 and burst >= 1".to_owned());
            }
        }
        if self.limits.max_request_body < 65_536 {
            return invalid("limits.max_request_body", "must be at least 65536 bytes".to_owned());
        }
        let limits = &self.limits;
        if limits.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1".to_owned());
        }
        for (key, ms) in [
            ("limits.head_timeout_ms", limits.head_timeout_ms),
            ("limits.body_timeout_ms", limits.body_timeout_ms),
            ("limits.idle_timeout_ms", limits.idle_timeout_ms),
        ] {
            if ms == 0 {
                return invalid(key, "must be at least 1".to_owned());
            }
        }
        if self.media.max_upload_size == 0 {
            return invalid("media.max_upload_size", "must be at least 1".to_owned());
        }
        for admin in &self.admins {
            if ruma_common::UserId::parse(admin).is_err() {
                return invalid("admins", format!("{admin:?} is not a user ID"));
            }
        }
        if self.federation.enabled {
            for (key, path) in
                [("federation.tls_cert", &self.federation.tls_cert), ("federation.tls_key", &self.federation.tls_key)]
            {
                match path {
                    None => return invalid(key, "federation is enabled: a PEM file is required".to_owned()),
                    Some(path) if !path.is_file() => {
                        return invalid(key, format!("{} is not a readable file", path.display()));
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(path) = &self.federation.trusted_ca
            && !path.is_file()
        {
            return invalid("federation.trusted_ca", format!("{} is not a readable file", path.display()));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return invalid("log", e.to_string());
        }
        Ok(())
    }

    /// The database URL, defaulting to a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("myelin.db").display()),
        }
    }

    /// The connection pool's size. SQLite takes one writer at a time and its queries run on a
    /// thread per connection: a few connections serve a small machine with less memory and
    /// fewer thread switches than many. PostgreSQL serves concurrent queries itself.
    pub fn database_connections(&self) -> u32 {
        let sqlite = self.database_url().starts_with("sqlite:");
        self.database.max_connections.unwrap_or(if sqlite { 4 } else { 16 })
    }

    /// The base URL clients should use, without a trailing slash.
    pub fn public_baseurl(&self) -> String {
        match &self.public_baseurl {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.server_name),
        }
    }

    /// Folder for media objects (the local object store).
    pub fn media_dir(&self) -> PathBuf {
        self.data_dir.join("media")
    }
}

/// Environment values that look like numbers or booleans arrive as such; a server name, token
/// or store option may legitimately be all digits or `true`, so accept them all as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    S(String),
    I(i64),
    U(u64),
    B(bool),
}

impl From<StringOrNumber> for String {
    fn from(raw: StringOrNumber) -> Self {
        match raw {
            StringOrNumber::S(s) => s,
            StringOrNumber::I(i) => i.to_string(),
            StringOrNumber::U(u) => u.to_string(),
            StringOrNumber::B(b) => b.to_string(),
        }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    StringOrNumber::deserialize(deserializer).map(String::from)
}

fn string_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, StringOrNumber>::deserialize(deserializer)?;
    Ok(raw.into_iter().map(|(k, v)| (k, v.into())).collect())
}

fn optional_string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Option::<StringOrNumber>::deserialize(deserializer).map(|raw| raw.map(String::from))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type.
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_zero_config_server() {
        let c = Config::default();
        assert_eq!(c.server_name, "localhost:8008");
        assert_eq!(c.listen.client.to_string(), "127.0.0.1:8008");
        assert!(c.database_url().starts_with("sqlite://./data/myelin.db"));
        c.validate().unwrap();
    }

    #[test]
    fn environment_overrides_nested_keys_and_unknown_keys_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MYELIN_SERVER_NAME", "localhost:9000");
            jail.set_env("MYELIN_LISTEN__CLIENT", "127.0.0.1:9000");
            jail.set_env("MYELIN_RATE_LIMITS__ENABLED", "false");
            jail.set_env("MYELIN_REGISTRATION__TOKEN", "12345");
            jail.set_env("MYELIN_CONFIG_FILE", "ignored.toml");
            jail.set_env("MYELIN_TEST_POSTGRES_URL", "postgres://ignored");
            jail.set_env("MYELIN_MEDIA__STORE_OPTIONS__AWS_ALLOW_HTTP", "true");
            jail.set_env("MYELIN_MEDIA__STORE_OPTIONS__AWS_REGION", "1");
            let c = Config::load(None).unwrap();
            assert_eq!(c.media.store_options["aws_allow_http"], "true");
            assert_eq!(c.media.store_options["aws_region"], "1");
            assert_eq!(c.server_name, "localhost:9000");
            assert_eq!(c.listen.client.port(), 9000);
            assert!(!c.rate_limits.enabled);
            assert_eq!(c.registration.token.as_deref(), Some("12345"));

            jail.set_env("MYELIN_LISTEN__CLEINT", "127.0.0.1:1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("cleint"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        // In a jail: other tests set MYELIN_* variables, and the jail serializes them.
        figment::Jail::expect_with(|_| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../myelin.example.toml");
            let example = Config::load(Some(&path)).unwrap();
            let json = |c: &Config| serde_json::to_string(c).unwrap();
            assert_eq!(json(&example), json(&Config::default()));
            Ok(())
        });
    }

    #[test]
    fn invalid_values_name_their_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[listen]\nclient = \"not an address\"\n")?;
            let err = Config::load(Some(Path::new("bad.toml"))).unwrap_err().to_string();
            assert!(err.contains("listen.client"), "{err}");

            jail.create_file("bad2.toml", "server_name = \"bad name!\"\n")?;
            let err = Config::load(Some(Path::new("bad2.toml"))).unwrap_err().to_string();
            assert!(err.contains("server_name"), "{err}");
            Ok(())
        });
    }
}
