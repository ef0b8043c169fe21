//! Devices (list, rename, delete) and room key export/import.

use anyhow::Context;
use serde_json::{Value, json};

use crate::client::Client;
use crate::key_export::{self, ExportedRoomKey};
use crate::{DevicesCommand, KeysCommand, output};

pub async fn run(client: &Client, json: bool, command: DevicesCommand) -> anyhow::Result<()> {
    match command {
        DevicesCommand::List { user: Some(user) } if user != client.profile.user_id => {
            let (identity, devices) = client.device_trust(&user).await?;
            let shown = json!({ "user_id": user, "identity": identity, "devices": devices });
            output::emit(json, &shown, |_| {
                let identity = match &identity {
                    None => format!("{user} has no cross-signing identity"),
                    Some(id) if id.changed_from.is_some() => format!(
                        "{user}'s identity CHANGED (was {}); verify them again\nmaster key {}",
                        id.changed_from.as_deref().unwrap_or_default(),
                        id.master_key
                    ),
                    Some(id) if id.verified => format!("{user}: verified, master key {}", id.master_key),
                    Some(id) => format!("{user}: not verified, master key {}", id.master_key),
                };
                let devices = devices.iter().map(|d| {
                    let trust = match (d.verified, d.cross_signed) {
                        (true, _) => "verified               ",
                        (false, true) => "signed by its owner    ",
                        (false, false) => "NOT signed by its owner",
                    };
                    format!(
                        "{:<12} {:<24} {trust} ed25519 {}",
                        d.device_id,
                        d.display_name.as_deref().unwrap_or("(unnamed)"),
                        d.ed25519
                    )
                });
                std::iter::once(identity).chain(devices).collect::<Vec<_>>().join("\n")
            })
        }
        DevicesCommand::List { .. } => {
            let response: Value = client.api.get(&["devices"], &[]).await?;
            let devices: Vec<Value> = response["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    json!({
                        "device_id": d["device_id"],
                        "display_name": d["display_name"],
                        "last_seen_ip": d["last_seen_ip"],
                        "last_seen_ts": d["last_seen_ts"],
                        "current": d["device_id"] == client.profile.device_id.as_str(),
                    })
                })
                .collect();
            output::emit(json, &devices, |devices| {
                devices
                    .iter()
                    .map(|d| {
                        format!(
                            "{} {:<12} {:<24} {}",
                            if d["current"] == true { "*" } else { " " },
                            d["device_id"].as_str().unwrap_or_default(),
                            d["display_name"].as_str().unwrap_or("(unnamed)"),
                            d["last_seen_ts"]
                                .as_i64()
                                .map(|ts| format!("last seen {}", output::time(ts)))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        DevicesCommand::Rename { device_id, name } => {
            let _: Value = client.api.put(&["devices", &device_id], &json!({ "display_name": name })).await?;
            output::emit(json, &json!({ "device_id": device_id, "display_name": name }), |_| "Renamed.".to_owned())
        }
        DevicesCommand::Delete { device_ids, password } => {
            anyhow::ensure!(
                !device_ids.contains(&client.profile.device_id),
                "that is this device: use `myelin logout` to remove it"
            );
            let url = client.api.client_url(&["delete_devices"])?;
            let password = password.map(Ok).or_else(|| {
                std::io::IsTerminal::is_terminal(&std::io::stdin()).then(|| super::password(None, "Password: "))
            });
            let password = password.transpose()?;
            let _: Value = crate::api::with_password_auth(
                &client.api,
                reqwest::Method::POST,
                url,
                json!({ "devices": device_ids }),
                &client.profile.user_id,
                password.as_deref(),
            )
            .await?;
            output::emit(json, &json!({ "deleted": device_ids }), |d| format!("Deleted {}", d["deleted"]))
        }
    }
}

pub async fn keys(client: &mut Client, json: bool, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Export { path, passphrase } => {
            client.catch_up().await?;
            let passphrase = passphrase_or_prompt(passphrase, true)?;
            let keys = client.export_room_keys().await?;
            let plain = zeroize::Zeroizing::new(serde_json::to_vec(&keys)?);
            let armored = key_export::encrypt(&plain, &passphrase, key_export::DEFAULT_ROUNDS)?;
            crate::client::write_private(&path, armored.as_bytes())?;
            output::emit(json, &json!({ "path": path, "exported": keys.len() }), |r| {
                format!("Exported {} room keys to {}", r["exported"], path.display())
            })
        }
        KeysCommand::CrossSigning { password } => {
            let done = client.bootstrap_cross_signing(password.as_deref()).await?;
            output::emit(json, &done, |d| {
                format!(
                    "Cross-signing keys published; this device ({}) is signed.\nmaster key: {}",
                    d["signed_device"].as_str().unwrap_or_default(),
                    d["master_key"].as_str().unwrap_or_default()
                )
            })
        }
        KeysCommand::Import { path, passphrase } => {
            let armored = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let passphrase = passphrase_or_prompt(passphrase, false)?;
            let plain = zeroize::Zeroizing::new(key_export::decrypt(&armored, &passphrase)?);
            let keys: Vec<ExportedRoomKey> =
                serde_json::from_slice(&plain).context("the key file holds no room keys")?;
            let (mut imported, mut skipped) = (0, 0);
            for key in &keys {
                let claimed = key.sender_claimed_keys.get("ed25519").map(String::as_str).unwrap_or_default();
                if key.algorithm == crate::crypto::MEGOLM_ALGORITHM
                    && client
                        .import_room_key(&key.room_id, &key.sender_key, claimed, &key.session_key)
                        .await
                        .unwrap_or(false)
                {
                    imported += 1;
                } else {
                    skipped += 1;
                }
            }
            output::emit(json, &json!({ "imported": imported, "skipped": skipped, "total": keys.len() }), |r| {
                format!(
                    "Imported {} of {} room keys ({} already known or unusable)",
                    r["imported"], r["total"], r["skipped"]
                )
            })
        }
    }
}

fn passphrase_or_prompt(given: Option<String>, confirm: bool) -> anyhow::Result<String> {
    if let Some(passphrase) = given {
        anyhow::ensure!(!passphrase.is_empty(), "the passphrase is empty");
        return Ok(passphrase);
    }
    anyhow::ensure!(
        std::io::IsTerminal::is_terminal(&std::io::stdin()),
        "no passphrase: pass --passphrase or set MYELIN_KEY_PASSPHRASE"
    );
    let passphrase = rpassword::prompt_password("Key file passphrase: ")?;
    if confirm {
        anyhow::ensure!(rpassword::prompt_password("Again: ")? == passphrase, "the passphrases differ");
    }
    anyhow::ensure!(!passphrase.is_empty(), "the passphrase is empty");
    Ok(passphrase)
}
