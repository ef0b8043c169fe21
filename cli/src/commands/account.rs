//! Accounts: register, login, logout, whoami, accounts, who, profile.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::api::{Api, MatrixError};
use crate::client::{self, Client, Profile, Selector, blocking};
use crate::secrets::SecretStore;
use crate::{ProfileCommand, discovery, output};

/// The stages `register` can complete by itself.
const REGISTRATION_STAGES: [&str; 2] = ["m.login.dummy", "m.login.registration_token"];

#[allow(clippy::too_many_arguments)]
pub async fn register(
    http: &reqwest::Client,
    selector: &Selector,
    json: bool,
    server: &str,
    username: &str,
    password: Option<String>,
    token: Option<String>,
    device_name: &str,
) -> anyhow::Result<()> {
    let (dir, homeserver, api, password) = start_login(http, selector, server, password, "New password: ").await?;
    let url = api.client_url(&["register"])?;
    let mut body = json!({
        "username": username,
        "password": password,
        "initial_device_display_name": device_name,
        "inhibit_login": false,
    });
    let response: Value = loop {
        match api.send::<Value>(reqwest::Method::POST, url.clone(), &[], Some(&body)).await {
            Ok(done) => break done,
            Err(err) => {
                let Some(uia) = err.downcast_ref::<MatrixError>().filter(|e| e.body.get("flows").is_some()) else {
                    return Err(err.context("registration failed"));
                };
                let stage = next_stage(&uia.body, token.is_some())?;
                let mut auth = json!({ "type": stage, "session": uia.body["session"] });
                if stage == "m.login.registration_token" {
                    auth["token"] = json!(token);
                }
                if body.get("auth") == Some(&auth) {
                    return Err(err.context("registration failed"));
                }
                body["auth"] = auth;
            }
        }
    };
    finish_login(http, selector, json, homeserver, dir, &response).await
}

/// The first stage not yet completed of a flow made only of stages we can do.
fn next_stage(uia: &Value, have_token: bool) -> anyhow::Result<String> {
    let completed: BTreeSet<&str> =
        uia["completed"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let flows = uia["flows"].as_array().context("registration offers no flows")?;
    let doable = flows.iter().filter_map(|flow| flow["stages"].as_array()).find(|stages| {
        stages
            .iter()
            .filter_map(Value::as_str)
            .all(|stage| REGISTRATION_STAGES.contains(&stage) && (stage != "m.login.registration_token" || have_token))
    });
    let Some(stages) = doable else {
        if flows.iter().any(|flow| flow["stages"].to_string().contains("m.login.registration_token")) {
            bail!("this homeserver requires a registration token: pass --token");
        }
        bail!(
            "this homeserver's registration needs steps a terminal cannot do (e.g. a captcha or email): register elsewhere, then `myelin login`"
        );
    };
    stages
        .iter()
        .filter_map(Value::as_str)
        .find(|stage| !completed.contains(stage))
        .map(str::to_owned)
        .context("registration flow already complete, yet the server asks again")
}

pub async fn login(
    http: &reqwest::Client,
    selector: &Selector,
    json: bool,
    server: &str,
    username: &str,
    password: Option<String>,
    device_name: &str,
) -> anyhow::Result<()> {
    let (dir, homeserver, api, password) = start_login(http, selector, server, password, "Password: ").await?;
    let response: Value = api
        .post(
            &["login"],
            &json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": username },
                "password": password,
                "initial_device_display_name": device_name,
            }),
        )
        .await
        .context("login failed")?;
    finish_login(http, selector, json, homeserver, dir, &response).await
}

/// What register and login do first: claim the profile folder (before anything reaches the
/// server, so a taken profile fails fast), find the homeserver, get the password.
async fn start_login(
    http: &reqwest::Client,
    selector: &Selector,
    server: &str,
    password: Option<String>,
    prompt: &str,
) -> anyhow::Result<(std::path::PathBuf, String, Api, String)> {
    let dir = client::new_profile_dir(&profile_name(selector))?;
    let homeserver = discovery::discover(http, server).await?.base_url;
    let password = super::password(password, prompt)?;
    let api = Api::new(http.clone(), &homeserver, None);
    Ok((dir, homeserver, api, password))
}

/// The profile a new login goes to: `--profile`, else `default`.
fn profile_name(selector: &Selector) -> String {
    selector.profile.clone().unwrap_or_else(|| "default".to_owned())
}

/// Stores a new login as a profile; if that fails, the new device is logged out again so no
/// orphan device (which others would encrypt for) is left behind.
async fn finish_login(
    http: &reqwest::Client,
    selector: &Selector,
    json: bool,
    homeserver: String,
    dir: std::path::PathBuf,
    response: &Value,
) -> anyhow::Result<()> {
    let token = response["access_token"].as_str().context("the homeserver sent no access token")?.to_owned();
    let base_url = homeserver.clone();
    let setup = async {
        let user_id = response["user_id"].as_str().context("no user_id")?.to_owned();
        let device_id = response["device_id"].as_str().context("no device_id")?.to_owned();
        let name = profile_name(selector);
        let (id, forced, store_dir) = (client::secret_id(&dir), selector.keyring, dir.clone());
        let secrets = blocking(move || SecretStore::open(&store_dir, &id, forced)).await?;
        let profile = Profile { homeserver, user_id, device_id, secret_store: secrets.backend() };
        let mut client = Client::create(http.clone(), &name, dir, profile, token.clone(), secrets).await?;
        if let Err(err) = client.catch_up().await {
            // No half-made profile: the device is logged out below, so this one is useless.
            client.forget().await?;
            return Err(err);
        }
        anyhow::Ok(client)
    };
    match setup.await {
        Ok(client) => {
            let summary = summary(&client);
            output::emit(json, &summary, |s| {
                format!(
                    "Logged in as {} (device {}) on {}.\nProfile {:?}; secrets in the {}.",
                    s["user_id"].as_str().unwrap_or_default(),
                    s["device_id"].as_str().unwrap_or_default(),
                    s["homeserver"].as_str().unwrap_or_default(),
                    s["profile"].as_str().unwrap_or_default(),
                    s["secret_store"].as_str().unwrap_or_default(),
                )
            })
        }
        Err(err) => {
            let _ = Api::new(http.clone(), &base_url, Some(token)).post::<Value>(&["logout"], &json!({})).await;
            Err(err)
        }
    }
}

fn summary(client: &Client) -> Value {
    json!({
        "profile": client.name,
        "user_id": client.profile.user_id,
        "device_id": client.profile.device_id,
        "homeserver": client.profile.homeserver,
        "secret_store": client.secrets.describe(),
        "curve25519": client.curve25519(),
        "ed25519": client.ed25519(),
    })
}

pub async fn logout(client: Client, json: bool, all: bool) -> anyhow::Result<()> {
    let path = if all { vec!["logout", "all"] } else { vec!["logout"] };
    match client.api.post::<Value>(&path, &json!({})).await {
        Ok(_) => {}
        // Already logged out elsewhere (e.g. the device was deleted): just forget it here.
        Err(err) if crate::api::errcode(&err) == Some("M_UNKNOWN_TOKEN") => {}
        Err(err) => return Err(err.context("logout failed; nothing was removed")),
    }
    let result = json!({ "logged_out": client.profile.user_id, "profile": client.name });
    client.forget().await?;
    output::emit(json, &result, |r| format!("Logged out {}; its keys and local store are gone.", r["logged_out"]))
}

pub async fn whoami(client: &Client, json: bool) -> anyhow::Result<()> {
    let whoami: Value = client.api.get(&["account", "whoami"], &[]).await?;
    anyhow::ensure!(whoami["user_id"] == client.profile.user_id.as_str(), "the access token belongs to another user");
    let summary = summary(client);
    output::emit(json, &summary, |s| {
        format!(
            "{} (device {}) on {}\nprofile:      {}\nsecret store: {}\ndevice keys:  curve25519 {}, ed25519 {}",
            s["user_id"].as_str().unwrap_or_default(),
            s["device_id"].as_str().unwrap_or_default(),
            s["homeserver"].as_str().unwrap_or_default(),
            s["profile"].as_str().unwrap_or_default(),
            s["secret_store"].as_str().unwrap_or_default(),
            s["curve25519"].as_str().unwrap_or_default(),
            s["ed25519"].as_str().unwrap_or_default(),
        )
    })
}

pub fn accounts(json: bool) -> anyhow::Result<()> {
    let all: Vec<Value> = client::profiles()?
        .into_iter()
        .map(|(name, p)| json!({ "profile": name, "user_id": p.user_id, "device_id": p.device_id, "homeserver": p.homeserver }))
        .collect();
    output::emit(json, &all, |all| {
        if all.is_empty() {
            return "No accounts: run `myelin login` or `myelin register`.".to_owned();
        }
        all.iter()
            .map(|a| {
                format!(
                    "{:<12} {} ({})",
                    a["profile"].as_str().unwrap_or_default(),
                    a["user_id"].as_str().unwrap_or_default(),
                    a["homeserver"].as_str().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Presence of everyone sharing a room with us.
pub async fn who(client: &mut Client, json: bool, all: bool) -> anyhow::Result<()> {
    // A sync marks us online too, as any client's would.
    client.catch_up().await?;
    let rooms: Value = client.api.get(&["joined_rooms"], &[]).await?;
    let mut users = BTreeSet::new();
    for room in rooms["joined_rooms"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        let members: Value = client.api.get(&["rooms", room, "joined_members"], &[]).await?;
        users.extend(members["joined"].as_object().into_iter().flat_map(|m| m.keys().cloned()));
    }
    users.remove(&client.profile.user_id);
    let mut people = Vec::new();
    for user in users {
        let presence: Value = match client.api.get(&["presence", &user, "status"], &[]).await {
            Ok(presence) => presence,
            Err(err) if crate::api::errcode(&err).is_some() => json!({ "presence": "unknown" }),
            Err(err) => return Err(err),
        };
        let state = presence["presence"].as_str().unwrap_or("unknown").to_owned();
        if all || state == "online" {
            people.push(json!({
                "user_id": user,
                "presence": state,
                "last_active_ago": presence["last_active_ago"],
                "currently_active": presence["currently_active"],
                "status_msg": presence["status_msg"],
            }));
        }
    }
    output::emit(json, &people, |people| {
        if people.is_empty() {
            return "Nobody you share a room with is online.".to_owned();
        }
        people
            .iter()
            .map(|p| {
                let ago =
                    p["last_active_ago"].as_u64().map(|ms| format!(" (active {}s ago)", ms / 1000)).unwrap_or_default();
                format!(
                    "{:<10} {}{ago}",
                    p["presence"].as_str().unwrap_or_default(),
                    p["user_id"].as_str().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

pub async fn profile(client: &Client, json: bool, command: ProfileCommand) -> anyhow::Result<()> {
    let me = client.profile.user_id.clone();
    match command {
        ProfileCommand::Get { user } => {
            let user = user.unwrap_or(me);
            let profile: Value = client.api.get(&["profile", &user], &[]).await?;
            let shown =
                json!({ "user_id": user, "displayname": profile["displayname"], "avatar_url": profile["avatar_url"] });
            output::emit(json, &shown, |p| {
                format!(
                    "{}\nname:   {}\navatar: {}",
                    p["user_id"].as_str().unwrap_or_default(),
                    p["displayname"].as_str().unwrap_or("(none)"),
                    p["avatar_url"].as_str().unwrap_or("(none)")
                )
            })
        }
        ProfileCommand::Set { name, avatar } => {
            anyhow::ensure!(name.is_some() || avatar.is_some(), "nothing to change: pass --name and/or --avatar");
            if let Some(name) = &name {
                let _: Value =
                    client.api.put(&["profile", &me, "displayname"], &json!({ "displayname": name })).await?;
            }
            if let Some(avatar) = &avatar {
                anyhow::ensure!(
                    avatar.starts_with("mxc://"),
                    "--avatar must be an mxc:// URI (upload it with send-file first)"
                );
                let _: Value =
                    client.api.put(&["profile", &me, "avatar_url"], &json!({ "avatar_url": avatar })).await?;
            }
            let shown = json!({ "user_id": me, "displayname": name, "avatar_url": avatar });
            output::emit(json, &shown, |_| "Profile updated.".to_owned())
        }
    }
}
