//! Access-token authentication: the [`AuthedUser`] extractor.
//!
//! Written by hand rather than with poem-openapi's `SecurityScheme` derive because a missing
//! or unknown token must produce Matrix's JSON `M_MISSING_TOKEN` / `M_UNKNOWN_TOKEN`, and the
//! token may come from the `Authorization: Bearer` header or the deprecated `access_token`
//! query parameter. Both appear in the OpenAPI document as security schemes.

use std::net::IpAddr;

use poem::http::StatusCode;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

use super::error::{ErrCode, MatrixError};
use crate::accounts::tokens::hash_token;
use crate::state::AppState;
use crate::storage::now_ms;

/// How stale `last_seen_ts` may get before a request refreshes it: the spec allows it to be
/// "a few minutes out of date", and this keeps most requests free of a write.
const LAST_SEEN_GRANULARITY_MS: i64 = 60_000;

/// The user and device an access token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthedUser {
    /// The user ID.
    pub user_id: String,
    /// The device the token was issued to.
    pub device_id: String,
}

const BEARER: &str = "accessTokenBearer";
const QUERY: &str = "accessTokenQuery";

impl<'a> ApiExtractor<'a> for AuthedUser {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(
            BEARER,
            MetaSecurityScheme {
                ty: "http",
                description: Some("An access token from `/login` or `/register`, as `Authorization: Bearer <token>`."),
                name: None,
                key_in: None,
                scheme: Some("bearer"),
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
        registry.create_security_scheme(
            QUERY,
            MetaSecurityScheme {
                ty: "apiKey",
                description: Some("Deprecated: the access token in the `access_token` query parameter."),
                name: Some("access_token"),
                key_in: Some("query"),
                scheme: None,
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![BEARER, QUERY]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let state = req.data::<AppState>().ok_or_else(MatrixError::internal)?;
        let token = access_token(req)
            .ok_or_else(|| MatrixError::new(ErrCode::MissingToken, StatusCode::UNAUTHORIZED, "Missing access token"))?;
        let owner = state.storage.token_owner(&hash_token(&token)).await.map_err(MatrixError::from)?;
        let Some(owner) = owner else {
            let mut err = MatrixError::new(ErrCode::UnknownToken, StatusCode::UNAUTHORIZED, "Unknown access token");
            // Tokens here never expire; an unknown one was logged out or never existed.
            err.soft_logout = Some(false);
            return Err(err.into());
        };
        let now = now_ms();
        if owner.last_seen_ts.is_none_or(|seen| now - seen > LAST_SEEN_GRANULARITY_MS) {
            let ip = client_ip(req).map(|ip| ip.to_string());
            state
                .storage
                .touch_device(&owner.user_id, &owner.device_id, ip.as_deref(), now)
                .await
                .map_err(MatrixError::from)?;
        }
        Ok(Self { user_id: owner.user_id, device_id: owner.device_id })
    }
}

/// The access token from `Authorization: Bearer …`, else from `?access_token=`.
fn access_token(req: &Request) -> Option<String> {
    if let Some(value) = req.headers().get(poem::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned()).filter(|t| !t.is_empty());
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.uri().query()?).ok()?;
    pairs.into_iter().find(|(k, _)| k == "access_token").map(|(_, v)| v).filter(|t| !t.is_empty())
}

/// The address of the client: the connected one, or with `listen.x_forwarded` the one the
/// reverse proxy in front appended to `X-Forwarded-For` (the last entry: earlier ones are
/// whatever the client sent).
pub fn client_ip(req: &Request) -> Option<IpAddr> {
    let peer = req.remote_addr().as_socket_addr().map(|addr| addr.ip());
    if !req.data::<AppState>().is_some_and(|state| state.config.listen.x_forwarded) {
        return peer;
    }
    let forwarded = req.headers().get_all("x-forwarded-for").iter().next_back();
    let last = forwarded.and_then(|value| Some(value.to_str().ok()?.rsplit(',').next()?.trim().to_owned()));
    // Some balancers append `address:port`.
    last.and_then(|entry| entry.parse().ok().or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())))
        .or(peer)
}
