//! `myelin verify`: SAS emoji verification of another user's device (or of our own other
//! device), as the requester, or as the responder with `--incoming`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use vodozemac::Curve25519PublicKey;

use crate::client::Client;
use crate::crypto::keys::Device;
use crate::crypto::sas::{self, Parties};
use crate::output;

/// How long either side waits for the other's next step.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// Verification events that arrived, waiting to be taken in order.
#[derive(Default)]
struct Events(VecDeque<Value>);

impl Events {
    /// The next event of one of `types` (for `transaction`, if given: its ID and the user we
    /// verify with), syncing until it comes. A cancellation of the transaction ends the wait.
    async fn next(
        &mut self,
        client: &mut Client,
        transaction: Option<(&str, &str)>,
        types: &[&str],
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let ours = |event: &Value| {
                transaction
                    .is_none_or(|(id, sender)| event["content"]["transaction_id"] == id && event["sender"] == sender)
                    && event["type"].as_str().is_some_and(|t| t.starts_with("m.key.verification."))
            };
            if let Some(position) = self.0.iter().position(|event| {
                ours(event)
                    && (event["type"] == "m.key.verification.cancel" || types.iter().any(|t| event["type"] == *t))
            }) {
                let event = self.0.remove(position).unwrap_or_default();
                if event["type"] == "m.key.verification.cancel" {
                    bail!(
                        "the other side cancelled: {} ({})",
                        event["content"]["reason"].as_str().unwrap_or("no reason"),
                        event["content"]["code"].as_str().unwrap_or("?")
                    );
                }
                return Ok(event);
            }
            anyhow::ensure!(Instant::now() < deadline, "the other side did not answer in time");
            let synced = client.sync_once(10_000).await?;
            self.0.extend(synced.to_device);
        }
    }
}

/// One verification in progress with one device.
struct Session {
    them: Device,
    transaction_id: String,
}

impl Session {
    async fn send(&self, client: &Client, event_type: &str, mut content: Value) -> anyhow::Result<()> {
        content["transaction_id"] = json!(self.transaction_id);
        client.send_to_device(&self.them.user_id, &self.them.device_id, event_type, &content).await
    }

    async fn cancel(&self, client: &Client, code: &str, reason: &str) {
        let _ = self.send(client, "m.key.verification.cancel", json!({ "code": code, "reason": reason })).await;
    }
}

pub async fn run(
    client: &mut Client,
    json: bool,
    user: Option<String>,
    device: Option<String>,
    yes: bool,
) -> anyhow::Result<()> {
    let mut events = Events::default();
    let (them, transaction_id, start, we_start) = match user {
        Some(user) => request(client, &mut events, &user, device.as_deref()).await?,
        None => respond(client, &mut events).await?,
    };
    let session = Session { them, transaction_id };
    let result = exchange(client, &session, &mut events, start, we_start, json, yes).await;
    if let Err(err) = &result {
        session.cancel(client, "m.user", &format!("{err:#}")).await;
    }
    let verified = result?;
    output::emit(json, &verified, |v| {
        format!(
            "Verified {} {} ({} keys matched).",
            v["user_id"].as_str().unwrap_or_default(),
            v["device_id"].as_str().unwrap_or_default(),
            v["verified_keys"].as_array().map_or(0, Vec::len)
        )
    })
}

/// Asks the user's devices to verify; the first that is ready is the one we verify.
async fn request(
    client: &mut Client,
    events: &mut Events,
    user: &str,
    device: Option<&str>,
) -> anyhow::Result<(Device, String, Value, bool)> {
    let candidates: Vec<Device> = client
        .query_devices(&[user.to_owned()])
        .await?
        .into_iter()
        .filter(|d| d.device_id != client.profile.device_id && device.is_none_or(|wanted| d.device_id == wanted))
        .collect();
    anyhow::ensure!(!candidates.is_empty(), "{user} has no such device to verify");
    let transaction_id = uuid::Uuid::new_v4().to_string();
    let request = json!({
        "from_device": client.profile.device_id,
        "methods": [sas::METHOD],
        "timestamp": crate::crypto::now_ms(),
        "transaction_id": transaction_id,
    });
    for device in &candidates {
        client.send_to_device(&device.user_id, &device.device_id, "m.key.verification.request", &request).await?;
    }
    eprintln!("Waiting for {user} to accept the verification on their device…");
    let ready = events.next(client, Some((&transaction_id, user)), &["m.key.verification.ready"]).await?;
    let from = ready["content"]["from_device"].as_str().unwrap_or_default();
    let them = candidates.iter().find(|d| d.device_id == from).cloned().context("an answer from an unknown device")?;
    anyhow::ensure!(
        ready["content"]["methods"].as_array().is_some_and(|m| m.iter().any(|m| m == sas::METHOD)),
        "the other device cannot do SAS verification"
    );
    for other in candidates.iter().filter(|d| d.device_id != them.device_id) {
        let cancel =
            json!({ "transaction_id": transaction_id, "code": "m.accepted", "reason": "answered on another device" });
        let _ = client.send_to_device(&other.user_id, &other.device_id, "m.key.verification.cancel", &cancel).await;
    }
    let start = sas::start_content(&client.profile.device_id, &transaction_id);
    client.send_to_device(&them.user_id, &them.device_id, "m.key.verification.start", &start).await?;
    Ok((them, transaction_id, start, true))
}

/// Waits for someone to ask us (a request, or a start from clients that skip the request).
async fn respond(client: &mut Client, events: &mut Events) -> anyhow::Result<(Device, String, Value, bool)> {
    eprintln!("Waiting for a verification request…");
    let first = events.next(client, None, &["m.key.verification.request", "m.key.verification.start"]).await?;
    let sender = first["sender"].as_str().context("a request without sender")?.to_owned();
    let content = &first["content"];
    let transaction_id = content["transaction_id"].as_str().context("a request without transaction_id")?.to_owned();
    let from = content["from_device"].as_str().context("a request without from_device")?;
    let them = client
        .query_devices(std::slice::from_ref(&sender))
        .await?
        .into_iter()
        .find(|d| d.device_id == from)
        .with_context(|| format!("{sender}'s device {from} is unknown"))?;
    let start = if first["type"] == "m.key.verification.request" {
        anyhow::ensure!(
            content["methods"].as_array().is_some_and(|m| m.iter().any(|m| m == sas::METHOD)),
            "the request offers no SAS verification"
        );
        let ready = json!({ "from_device": client.profile.device_id, "methods": [sas::METHOD], "transaction_id": transaction_id });
        client.send_to_device(&them.user_id, &them.device_id, "m.key.verification.ready", &ready).await?;
        let start =
            events.next(client, Some((&transaction_id, &sender)), &["m.key.verification.start"]).await?["content"]
                .clone();
        anyhow::ensure!(start["from_device"] == them.device_id.as_str(), "the verification started on another device");
        start
    } else {
        content.clone()
    };
    Ok((them, transaction_id, start, false))
}

/// Key exchange, the short authentication string, the user's confirmation, MACs.
async fn exchange(
    client: &mut Client,
    session: &Session,
    events: &mut Events,
    start: Value,
    we_start: bool,
    json: bool,
    yes: bool,
) -> anyhow::Result<Value> {
    let txn = session.transaction_id.as_str();
    let transaction = Some((txn, session.them.user_id.as_str()));
    let ours = sas::new_sas();
    let our_key = ours.public_key();
    let (their_key, mac_method) = if we_start {
        let accept = events.next(client, transaction, &["m.key.verification.accept"]).await?;
        let mac_method = match sas::check_accept(&accept["content"]) {
            Ok(method) => method,
            Err(err) => {
                session.cancel(client, "m.unknown_method", &format!("{err:#}")).await;
                return Err(err);
            }
        };
        let commitment = accept["content"]["commitment"].as_str().unwrap_or_default().to_owned();
        session.send(client, "m.key.verification.key", json!({ "key": our_key.to_base64() })).await?;
        let key = their_key(&events.next(client, transaction, &["m.key.verification.key"]).await?)?;
        if sas::commitment(&key, &start)? != commitment {
            session.cancel(client, "m.mismatched_commitment", "the key does not match its commitment").await;
            bail!("the other device's key does not match its commitment: someone may be interfering");
        }
        (key, mac_method)
    } else {
        let (accept, mac_method) = match sas::accept_content(&start, txn, &our_key) {
            Ok(accept) => accept,
            Err(err) => {
                session.cancel(client, "m.unknown_method", &format!("{err:#}")).await;
                return Err(err);
            }
        };
        session.send(client, "m.key.verification.accept", accept).await?;
        let key = their_key(&events.next(client, transaction, &["m.key.verification.key"]).await?)?;
        session.send(client, "m.key.verification.key", json!({ "key": our_key.to_base64() })).await?;
        (key, mac_method)
    };
    let established = ours.diffie_hellman(their_key).context("the other device's key is unusable")?;
    let (me, my_device) = (client.profile.user_id.clone(), client.profile.device_id.clone());
    let (me, my_device) = (me.as_str(), my_device.as_str());
    let (them, their_device) = (session.them.user_id.as_str(), session.them.device_id.as_str());
    let parties = if we_start {
        Parties { starter: (me, my_device, &our_key), accepter: (them, their_device, &their_key), transaction_id: txn }
    } else {
        Parties { starter: (them, their_device, &their_key), accepter: (me, my_device, &our_key), transaction_id: txn }
    };
    let (emoji, decimals) = sas::short_auth_string(&established, &parties);
    let shown: Vec<Value> =
        emoji.iter().map(|(n, e, d)| json!({ "number": n, "emoji": e, "description": d })).collect();
    if json {
        eprintln!("{}", json!({ "emoji": shown, "decimals": decimals }));
    } else {
        println!("Compare with {them}'s device {their_device}:");
        println!("  {}", emoji.iter().map(|(_, e, _)| format!("{e:^6}")).collect::<String>());
        println!("  {}", emoji.iter().map(|(_, _, d)| format!("{d:^6.6}")).collect::<Vec<_>>().join(""));
        println!("  or the numbers {}-{}-{}", decimals[0], decimals[1], decimals[2]);
    }
    if !confirm(yes)? {
        session.cancel(client, "m.mismatched_sas", "the emoji did not match").await;
        bail!("the emoji did not match: verification cancelled (someone may be interfering)");
    }
    let mut our_keys = vec![(format!("ed25519:{my_device}"), client.ed25519())];
    if let Some(master) = client.master_public_key().await? {
        our_keys.push((format!("ed25519:{master}"), master));
    }
    session
        .send(
            client,
            "m.key.verification.mac",
            sas::mac_content(&established, mac_method, (me, my_device), (them, their_device), txn, &our_keys),
        )
        .await?;
    let mac = events.next(client, transaction, &["m.key.verification.mac"]).await?;
    let mut known = vec![(format!("ed25519:{their_device}"), session.them.ed25519.clone())];
    let their_master = client.cross_signing_of(them).await?.map(|(keys, _)| keys);
    if let Some(keys) = &their_master {
        known.push((format!("ed25519:{}", keys.master), keys.master.clone()));
    }
    let verified =
        sas::check_mac(&established, mac_method, &mac["content"], (me, my_device), (them, their_device), txn, &known)?;
    client.mark_verified(&session.them).await?;
    if let Some(keys) = their_master
        && verified.contains(&format!("ed25519:{}", keys.master))
    {
        client.confirm_master_key(them, &keys.master).await?;
        if them != me {
            client.sign_master_key(them, &keys.master, keys.master_object).await?;
        }
    }
    session.send(client, "m.key.verification.done", json!({})).await?;
    // Their `done` is a courtesy; the keys are already checked.
    let _ =
        tokio::time::timeout(Duration::from_secs(5), events.next(client, transaction, &["m.key.verification.done"]))
            .await;
    Ok(json!({
        "user_id": them,
        "device_id": their_device,
        "transaction_id": txn,
        "emoji": shown,
        "decimals": decimals,
        "verified_keys": verified,
    }))
}

fn their_key(event: &Value) -> anyhow::Result<Curve25519PublicKey> {
    Curve25519PublicKey::from_base64(event["content"]["key"].as_str().unwrap_or_default()).context("a malformed key")
}

fn confirm(yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    anyhow::ensure!(
        std::io::IsTerminal::is_terminal(&std::io::stdin()),
        "cannot ask whether the emoji match: run in a terminal (or pass --yes after comparing them another way)"
    );
    eprint!("Do they match? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
