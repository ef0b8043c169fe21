//! Finding a homeserver's client API from a server name, per the spec's server discovery
//! (<https://spec.matrix.org/v1.19/client-server-api/#server-discovery>).

use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// A homeserver found by discovery.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Homeserver {
    /// Base URL of the Client-Server API, without a trailing slash.
    pub base_url: String,
    /// Spec versions it advertises.
    pub versions: Vec<String>,
}

#[derive(Deserialize)]
struct WellKnown {
    #[serde(rename = "m.homeserver")]
    homeserver: BaseUrl,
}

#[derive(Deserialize)]
struct BaseUrl {
    base_url: String,
}

#[derive(Deserialize)]
struct Versions {
    versions: Vec<String>,
}

/// An HTTP client with sane timeouts.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("myelin/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// Resolves `server` (a server name, or an explicit `http(s)://` URL) to a homeserver.
///
/// 1. A server name is tried as `https://{name}`; an explicit URL is used as given.
/// 2. `GET /.well-known/matrix/client` there: if it names `m.homeserver.base_url`, use that;
///    if it is absent (404), keep the URL from step 1; any other failure is fatal (the spec's
///    FAIL_PROMPT / FAIL_ERROR).
/// 3. `GET /_matrix/client/versions` must answer, proving a homeserver is there.
pub async fn discover(http: &reqwest::Client, server: &str) -> anyhow::Result<Homeserver> {
    let start = if server.starts_with("http://") || server.starts_with("https://") {
        server.trim_end_matches('/').to_owned()
    } else {
        format!("https://{server}")
    };
    let well_known = http
        .get(format!("{start}/.well-known/matrix/client"))
        .send()
        .await
        .with_context(|| format!("cannot reach {start}"))?;
    let base_url = match well_known.status() {
        reqwest::StatusCode::NOT_FOUND => start,
        status if status.is_success() => {
            let doc: WellKnown = well_known.json().await.context("invalid /.well-known/matrix/client")?;
            doc.homeserver.base_url.trim_end_matches('/').to_owned()
        }
        status => bail!("{start}/.well-known/matrix/client answered {status}"),
    };
    let versions = http
        .get(format!("{base_url}/_matrix/client/versions"))
        .send()
        .await
        .with_context(|| format!("cannot reach {base_url}"))?
        .error_for_status()
        .with_context(|| format!("{base_url} is not a Matrix homeserver"))?
        .json::<Versions>()
        .await
        .with_context(|| format!("{base_url} is not a Matrix homeserver"))?;
    Ok(Homeserver { base_url, versions: versions.versions })
}

#[cfg(test)]
mod tests {
    use myelin_homeserver::test_support::{TestBackend, TestServer};

    use super::*;

    #[tokio::test]
    async fn discovers_a_live_server_through_well_known() {
        // Discovery starts from the server's 127.0.0.1 address and must follow the well-known
        // document to its advertised base URL, `http://localhost:<port>`.
        let mut server = TestServer::start(TestBackend::Sqlite).await;
        let found = discover(&http_client().unwrap(), &format!("{}/", server.base_url)).await.unwrap();
        assert_eq!(found.base_url, format!("http://{}", server.config.server_name));
        assert!(found.versions.iter().any(|v| v == "v1.19"));
        server.stop().await;
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_homeserver() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = discover(&http_client().unwrap(), &url).await.unwrap_err();
        assert!(format!("{err:#}").contains("cannot reach"), "{err:#}");
    }
}
