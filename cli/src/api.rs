//! A thin, spec-shaped Client-Server API client: JSON in, JSON out, Matrix errors as one line.
//!
//! Endpoints are built from path segments so room IDs, aliases and event types are always
//! percent-encoded, and every request goes through one place that maps `{errcode, error}`
//! bodies to [`MatrixError`] and honours `M_LIMIT_EXCEEDED`'s `retry_after_ms`.

use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// How often a rate-limited request is retried before the error is reported.
const RATE_LIMIT_RETRIES: u32 = 5;
/// The longest wait a `retry_after_ms` may impose on us.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// An error response from the homeserver, shown as `M_FORBIDDEN: reason (HTTP 403)`.
#[derive(Debug)]
pub struct MatrixError {
    pub status: StatusCode,
    pub errcode: String,
    pub error: String,
    /// The whole body: user-interactive auth puts its flows and session here.
    pub body: Value,
}

impl std::fmt::Display for MatrixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (HTTP {})", self.errcode, self.error, self.status.as_u16())
    }
}

impl std::error::Error for MatrixError {}

/// A homeserver's Client-Server API, with or without an access token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl Api {
    pub fn new(http: reqwest::Client, base_url: &str, token: Option<String>) -> Self {
        Self { http, base_url: base_url.trim_end_matches('/').to_owned(), token }
    }

    /// `{base}/_matrix/client/v3/{segments…}`, each segment percent-encoded.
    pub fn client_url(&self, segments: &[&str]) -> anyhow::Result<reqwest::Url> {
        self.url(&["_matrix", "client", "v3"], segments)
    }

    /// `{base}/{prefix…}/{segments…}`, each segment percent-encoded.
    pub fn url(&self, prefix: &[&str], segments: &[&str]) -> anyhow::Result<reqwest::Url> {
        let mut url =
            reqwest::Url::parse(&self.base_url).with_context(|| format!("bad homeserver URL {}", self.base_url))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("bad homeserver URL {}", self.base_url))?
            .pop_if_empty()
            .extend(prefix)
            .extend(segments);
        Ok(url)
    }

    pub async fn get<T: DeserializeOwned>(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<T> {
        self.send(Method::GET, self.client_url(segments)?, query, None).await
    }

    pub async fn post<T: DeserializeOwned>(&self, segments: &[&str], body: &Value) -> anyhow::Result<T> {
        self.send(Method::POST, self.client_url(segments)?, &[], Some(body)).await
    }

    pub async fn put<T: DeserializeOwned>(&self, segments: &[&str], body: &Value) -> anyhow::Result<T> {
        self.send(Method::PUT, self.client_url(segments)?, &[], Some(body)).await
    }

    /// One JSON request; rate-limited requests are retried after the server's `retry_after_ms`.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        url: reqwest::Url,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<T> {
        let mut attempt = 0;
        loop {
            let mut request = self.http.request(method.clone(), url.clone()).query(query);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.with_context(|| format!("cannot reach {}", self.base_url))?;
            match error_of(response).await {
                Ok(response) => {
                    return response
                        .json::<T>()
                        .await
                        .with_context(|| format!("unexpected answer to {method} {}", url.path()));
                }
                Err(err) => {
                    attempt += 1;
                    match retry_after(&err) {
                        Some(wait) if attempt <= RATE_LIMIT_RETRIES => tokio::time::sleep(wait).await,
                        _ => return Err(err.into()),
                    }
                }
            }
        }
    }

    /// A request whose body is not JSON (media); the caller reads the response.
    pub async fn raw(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.with_context(|| format!("cannot reach {}", self.base_url))?;
        Ok(error_of(response).await?)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Passes a success through; turns anything else into a [`MatrixError`].
async fn error_of(response: reqwest::Response) -> Result<reqwest::Response, MatrixError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let errcode = body["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned();
    let error = body["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("request failed").to_owned());
    Err(MatrixError { status, errcode, error, body })
}

fn retry_after(err: &MatrixError) -> Option<Duration> {
    if err.status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let ms = err.body["retry_after_ms"].as_u64().unwrap_or(1000);
    Some(Duration::from_millis(ms).min(MAX_RETRY_AFTER))
}

/// The error code of a failed request, if the homeserver sent one.
pub fn errcode(err: &anyhow::Error) -> Option<&str> {
    err.downcast_ref::<MatrixError>().map(|err| err.errcode.as_str())
}

/// Runs a request that may need user-interactive authentication with the account password
/// (device deletion, cross-signing upload): first without `auth`, then with the session the
/// server handed out.
pub async fn with_password_auth<T: DeserializeOwned>(
    api: &Api,
    method: Method,
    url: reqwest::Url,
    mut body: Value,
    user_id: &str,
    password: Option<&str>,
) -> anyhow::Result<T> {
    match api.send::<T>(method.clone(), url.clone(), &[], Some(&body)).await {
        Ok(done) => Ok(done),
        Err(err) => {
            let Some(matrix) = err.downcast_ref::<MatrixError>() else { return Err(err) };
            if matrix.status != StatusCode::UNAUTHORIZED || matrix.body.get("flows").is_none() {
                return Err(err);
            }
            let session = matrix.body["session"].clone();
            let Some(password) = password else {
                anyhow::bail!(
                    "the homeserver asks for your password to do this: pass --password or set MYELIN_PASSWORD"
                )
            };
            body["auth"] = json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user_id },
                "password": password,
                "session": session,
            });
            api.send(method, url, &[], Some(&body)).await
        }
    }
}
