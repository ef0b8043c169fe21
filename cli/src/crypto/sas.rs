//! Interactive key verification with SAS (`m.sas.v1`) over to-device messages: both devices
//! show the same seven emoji (or three numbers) only if nobody sits between them; after the
//! users confirm, each sends MACs of the keys it vouches for, and the other checks them.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::Digest;
use vodozemac::Curve25519PublicKey;
use vodozemac::sas::{EstablishedSas, Mac, Sas};

use super::keys::Device;
use crate::client::Client;

pub const METHOD: &str = "m.sas.v1";
const KEY_AGREEMENT: &str = "curve25519-hkdf-sha256";
const HASH: &str = "sha256";

/// How MACs are encoded. `hkdf-hmac-sha256` is libolm's original method, whose base64 output
/// was garbled by a buffer reuse; the spec deprecates it but older clients offer nothing else,
/// so it is spoken (exactly as libolm wrote it) only when the other side lacks `.v2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacMethod {
    V2,
    Libolm,
}

impl MacMethod {
    const ALL: [MacMethod; 2] = [MacMethod::V2, MacMethod::Libolm];

    pub fn name(self) -> &'static str {
        match self {
            MacMethod::V2 => "hkdf-hmac-sha256.v2",
            MacMethod::Libolm => "hkdf-hmac-sha256",
        }
    }

    /// The method an `m.key.verification.accept` chose, if it is one we offered.
    pub fn chosen(accept: &Value) -> anyhow::Result<MacMethod> {
        let chosen = &accept["message_authentication_code"];
        MacMethod::ALL
            .into_iter()
            .find(|method| chosen == method.name())
            .with_context(|| format!("the other device chose a MAC method we did not offer ({chosen})"))
    }

    fn mac(self, sas: &EstablishedSas, input: &str, info: &str) -> String {
        match self {
            MacMethod::V2 => sas.calculate_mac(input, info).to_base64(),
            MacMethod::Libolm => sas.calculate_mac_invalid_base64(input, info),
        }
    }

    fn verify(self, sas: &EstablishedSas, input: &str, info: &str, mac: &Value) -> bool {
        let mac = mac.as_str().unwrap_or_default();
        match self {
            MacMethod::V2 => Mac::from_base64(mac).is_ok_and(|tag| sas.verify_mac(input, info, &tag).is_ok()),
            MacMethod::Libolm => {
                let expected = sas.calculate_mac_invalid_base64(input, info);
                // Compared in constant time, like `verify_mac` does for v2.
                expected.len() == mac.len()
                    && expected.bytes().zip(mac.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
        }
    }
}

/// The spec's SAS emoji table (`data-definitions/sas-emoji.json`): emoji and description.
pub const EMOJI: [(&str, &str); 64] = [
    ("🐶", "Dog"),
    ("🐱", "Cat"),
    ("🦁", "Lion"),
    ("🐎", "Horse"),
    ("🦄", "Unicorn"),
    ("🐷", "Pig"),
    ("🐘", "Elephant"),
    ("🐰", "Rabbit"),
    ("🐼", "Panda"),
    ("🐓", "Rooster"),
    ("🐧", "Penguin"),
    ("🐢", "Turtle"),
    ("🐟", "Fish"),
    ("🐙", "Octopus"),
    ("🦋", "Butterfly"),
    ("🌷", "Flower"),
    ("🌳", "Tree"),
    ("🌵", "Cactus"),
    ("🍄", "Mushroom"),
    ("🌏", "Globe"),
    ("🌙", "Moon"),
    ("☁️", "Cloud"),
    ("🔥", "Fire"),
    ("🍌", "Banana"),
    ("🍎", "Apple"),
    ("🍓", "Strawberry"),
    ("🌽", "Corn"),
    ("🍕", "Pizza"),
    ("🎂", "Cake"),
    ("❤️", "Heart"),
    ("😀", "Smiley"),
    ("🤖", "Robot"),
    ("🎩", "Hat"),
    ("👓", "Glasses"),
    ("🔧", "Spanner"),
    ("🎅", "Santa"),
    ("👍", "Thumbs Up"),
    ("☂️", "Umbrella"),
    ("⌛", "Hourglass"),
    ("⏰", "Clock"),
    ("🎁", "Gift"),
    ("💡", "Light Bulb"),
    ("📕", "Book"),
    ("✏️", "Pencil"),
    ("📎", "Paperclip"),
    ("✂️", "Scissors"),
    ("🔒", "Lock"),
    ("🔑", "Key"),
    ("🔨", "Hammer"),
    ("☎️", "Telephone"),
    ("🏁", "Flag"),
    ("🚂", "Train"),
    ("🚲", "Bicycle"),
    ("✈️", "Aeroplane"),
    ("🚀", "Rocket"),
    ("🏆", "Trophy"),
    ("⚽", "Ball"),
    ("🎸", "Guitar"),
    ("🎺", "Trumpet"),
    ("🔔", "Bell"),
    ("⚓", "Anchor"),
    ("🎧", "Headphones"),
    ("📁", "Folder"),
    ("📌", "Pin"),
];

/// The `m.key.verification.start` content we send.
pub fn start_content(our_device: &str, transaction_id: &str) -> Value {
    json!({
        "from_device": our_device,
        "method": METHOD,
        "transaction_id": transaction_id,
        "key_agreement_protocols": [KEY_AGREEMENT],
        "hashes": [HASH],
        "message_authentication_codes": MacMethod::ALL.map(MacMethod::name),
        "short_authentication_string": ["emoji", "decimal"],
    })
}

/// Checks that a start offers what we speak; returns the `m.key.verification.accept` content
/// and the MAC method it chooses (`.v2` whenever offered, as the spec demands).
pub fn accept_content(
    start: &Value,
    transaction_id: &str,
    our_key: &Curve25519PublicKey,
) -> anyhow::Result<(Value, MacMethod)> {
    let offers = |field: &str, wanted: &str| start[field].as_array().is_some_and(|a| a.iter().any(|v| v == wanted));
    anyhow::ensure!(start["method"] == METHOD, "the other device wants a verification method other than SAS");
    anyhow::ensure!(
        offers("key_agreement_protocols", KEY_AGREEMENT) && offers("hashes", HASH),
        "the other device does not speak curve25519-hkdf-sha256 with sha256"
    );
    let mac_method = MacMethod::ALL
        .into_iter()
        .find(|method| offers("message_authentication_codes", method.name()))
        .context("the other device offers no MAC method we speak")?;
    anyhow::ensure!(offers("short_authentication_string", "emoji"), "the other device cannot show emoji");
    let accept = json!({
        "transaction_id": transaction_id,
        "method": METHOD,
        "key_agreement_protocol": KEY_AGREEMENT,
        "hash": HASH,
        "message_authentication_code": mac_method.name(),
        "short_authentication_string": ["emoji", "decimal"],
        "commitment": commitment(our_key, start)?,
    });
    Ok((accept, mac_method))
}

/// Checks that an accept (to our start) chose what we offered; returns its MAC method.
pub fn check_accept(accept: &Value) -> anyhow::Result<MacMethod> {
    anyhow::ensure!(
        accept["key_agreement_protocol"] == KEY_AGREEMENT && accept["hash"] == HASH,
        "the other device chose a key agreement or hash we did not offer"
    );
    anyhow::ensure!(
        accept["short_authentication_string"].as_array().is_some_and(|a| a.iter().any(|v| v == "emoji")),
        "the other device cannot show emoji"
    );
    anyhow::ensure!(accept["commitment"].is_string(), "an accept without commitment");
    MacMethod::chosen(accept)
}

/// `UnpaddedBase64(SHA256(public key ‖ canonical JSON of the start content))`.
pub fn commitment(key: &Curve25519PublicKey, start: &Value) -> anyhow::Result<String> {
    let canonical = ruma_common::CanonicalJsonValue::try_from(start.clone()).context("a malformed start message")?;
    let digest = sha2::Sha256::digest(format!("{}{canonical}", key.to_base64()).as_bytes());
    Ok(base64::Engine::encode(&base64::engine::general_purpose::STANDARD_NO_PAD, digest))
}

/// Who is who in one verification: the device that sent `start` and the one that accepted.
pub struct Parties<'a> {
    pub starter: (&'a str, &'a str, &'a Curve25519PublicKey),
    pub accepter: (&'a str, &'a str, &'a Curve25519PublicKey),
    pub transaction_id: &'a str,
}

/// The emoji (number, emoji, description) and decimals both sides must see.
pub fn short_auth_string(
    sas: &EstablishedSas,
    parties: &Parties<'_>,
) -> (Vec<(u8, &'static str, &'static str)>, [u16; 3]) {
    let (su, sd, sk) = parties.starter;
    let (au, ad, ak) = parties.accepter;
    let info = format!(
        "MATRIX_KEY_VERIFICATION_SAS|{su}|{sd}|{}|{au}|{ad}|{}|{}",
        sk.to_base64(),
        ak.to_base64(),
        parties.transaction_id
    );
    let bytes = sas.bytes(&info);
    let emoji = bytes.emoji_indices().iter().map(|&i| (i, EMOJI[usize::from(i)].0, EMOJI[usize::from(i)].1)).collect();
    let (a, b, c) = bytes.decimals();
    (emoji, [a, b, c])
}

fn mac_info(sender: (&str, &str), receiver: (&str, &str), transaction_id: &str, key_id: &str) -> String {
    format!("MATRIX_KEY_VERIFICATION_MAC{}{}{}{}{transaction_id}{key_id}", sender.0, sender.1, receiver.0, receiver.1)
}

/// Our `m.key.verification.mac` content, vouching for `keys` (`(key ID, public key)`).
pub fn mac_content(
    sas: &EstablishedSas,
    method: MacMethod,
    us: (&str, &str),
    them: (&str, &str),
    transaction_id: &str,
    keys: &[(String, String)],
) -> Value {
    let mut macs = serde_json::Map::new();
    for (key_id, key) in keys {
        macs.insert(key_id.clone(), json!(method.mac(sas, key, &mac_info(us, them, transaction_id, key_id))));
    }
    let mut ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    let key_ids = method.mac(sas, &ids.join(","), &mac_info(us, them, transaction_id, "KEY_IDS"));
    json!({ "transaction_id": transaction_id, "mac": macs, "keys": key_ids })
}

/// Checks their MACs against the keys we know for them; returns the key IDs that matched.
/// Their device key must be among them; key IDs we do not know are skipped, as the spec says.
pub fn check_mac(
    sas: &EstablishedSas,
    method: MacMethod,
    content: &Value,
    us: (&str, &str),
    them: (&str, &str),
    transaction_id: &str,
    known: &[(String, String)],
) -> anyhow::Result<Vec<String>> {
    let macs = content["mac"].as_object().context("a MAC message without MACs")?;
    let mut ids: Vec<&str> = macs.keys().map(String::as_str).collect();
    ids.sort_unstable();
    anyhow::ensure!(
        method.verify(sas, &ids.join(","), &mac_info(them, us, transaction_id, "KEY_IDS"), &content["keys"]),
        "the key list's MAC does not match: the verification failed"
    );
    let mut verified = Vec::new();
    for (key_id, mac) in macs {
        let Some((_, key)) = known.iter().find(|(id, _)| id == key_id) else { continue };
        anyhow::ensure!(
            method.verify(sas, key, &mac_info(them, us, transaction_id, key_id), mac),
            "the MAC of {key_id} does not match: the verification failed"
        );
        verified.push(key_id.clone());
    }
    let device_key = format!("ed25519:{}", them.1);
    if !verified.contains(&device_key) {
        bail!("the other device did not vouch for its own key");
    }
    Ok(verified)
}

/// Starts the key exchange: our ephemeral key pair.
pub fn new_sas() -> Sas {
    Sas::new()
}

impl Client {
    /// Sends a plain (unencrypted, as verification messages are) to-device event to one device.
    pub async fn send_to_device(
        &self,
        user: &str,
        device: &str,
        event_type: &str,
        content: &Value,
    ) -> anyhow::Result<()> {
        let txn = uuid::Uuid::new_v4().to_string();
        let body = json!({ "messages": { user: { device: content } } });
        let _: Value = self.api.put(&["sendToDevice", event_type, &txn], &body).await?;
        Ok(())
    }

    /// Remembers that the user confirmed this device's keys.
    pub async fn mark_verified(&self, device: &Device) -> anyhow::Result<()> {
        sqlx::query("UPDATE devices SET verified = 1 WHERE user_id = $1 AND device_id = $2")
            .bind(&device.user_id)
            .bind(&device.device_id)
            .execute(&self.store.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sides after the key exchange, with what they show.
    fn established(start: &Value) -> (EstablishedSas, EstablishedSas, MacMethod) {
        let (alice, bob) = (Sas::new(), Sas::new());
        let (alice_key, bob_key) = (alice.public_key(), bob.public_key());
        let (accept, method) = accept_content(start, "txn1", &bob_key).unwrap();
        assert_eq!(accept["commitment"], commitment(&bob_key, start).unwrap());
        assert_eq!(check_accept(&accept).unwrap(), method);
        let alice = alice.diffie_hellman(bob_key).unwrap();
        let bob = bob.diffie_hellman(alice_key).unwrap();
        let parties = Parties {
            starter: ("@alice:x", "ALICEDEV", &alice_key),
            accepter: ("@bob:x", "BOBDEV", &bob_key),
            transaction_id: "txn1",
        };
        let (emoji_a, decimals_a) = short_auth_string(&alice, &parties);
        let (emoji_b, decimals_b) = short_auth_string(&bob, &parties);
        assert_eq!(emoji_a, emoji_b);
        assert_eq!(decimals_a, decimals_b);
        assert_eq!(emoji_a.len(), 7);
        assert!(decimals_a.iter().all(|d| (1000..=9191).contains(d)));
        (alice, bob, method)
    }

    const ALICE: (&str, &str) = ("@alice:x", "ALICEDEV");
    const BOB: (&str, &str) = ("@bob:x", "BOBDEV");

    #[test]
    fn two_sides_agree_on_the_emoji_and_check_each_others_macs() {
        let start = start_content("ALICEDEV", "txn1");
        let (alice, bob, method) = established(&start);
        assert_eq!(method, MacMethod::V2, "v2 whenever both speak it");

        let bob_keys = [("ed25519:BOBDEV".to_owned(), "Ym9iJ3Mga2V5".to_owned())];
        let mac = mac_content(&bob, method, BOB, ALICE, "txn1", &bob_keys);
        let verified = check_mac(&alice, method, &mac, ALICE, BOB, "txn1", &bob_keys).unwrap();
        assert_eq!(verified, ["ed25519:BOBDEV"]);
        // A different key under the same ID (a man in the middle) fails.
        let other = [("ed25519:BOBDEV".to_owned(), "bWFsbG9yeQ".to_owned())];
        assert!(check_mac(&alice, method, &mac, ALICE, BOB, "txn1", &other).is_err());
        // So does the same MAC read with the other encoding.
        assert!(check_mac(&alice, MacMethod::Libolm, &mac, ALICE, BOB, "txn1", &bob_keys).is_err());
        // A refused start: no SAS.
        assert!(accept_content(&json!({ "method": "m.reciprocate.v1" }), "t", &Sas::new().public_key()).is_err());
    }

    #[test]
    fn a_libolm_era_client_gets_its_own_mac_encoding() {
        let mut start = start_content("ALICEDEV", "txn1");
        start["message_authentication_codes"] = json!(["hkdf-hmac-sha256"]);
        let (alice, bob, method) = established(&start);
        assert_eq!(method, MacMethod::Libolm);

        let bob_keys = [("ed25519:BOBDEV".to_owned(), "Ym9iJ3Mga2V5".to_owned())];
        let mac = mac_content(&bob, method, BOB, ALICE, "txn1", &bob_keys);
        let garbled = bob.calculate_mac_invalid_base64("Ym9iJ3Mga2V5", &mac_info(BOB, ALICE, "txn1", "ed25519:BOBDEV"));
        assert_eq!(mac["mac"]["ed25519:BOBDEV"], garbled.as_str(), "exactly what libolm sends");
        let correct = bob.calculate_mac("Ym9iJ3Mga2V5", &mac_info(BOB, ALICE, "txn1", "ed25519:BOBDEV")).to_base64();
        assert_ne!(garbled, correct);
        assert_eq!(check_mac(&alice, method, &mac, ALICE, BOB, "txn1", &bob_keys).unwrap(), ["ed25519:BOBDEV"]);
        assert!(check_mac(&alice, MacMethod::V2, &mac, ALICE, BOB, "txn1", &bob_keys).is_err());

        // Nothing we speak: refused.
        start["message_authentication_codes"] = json!(["hmac-sha256"]);
        assert!(accept_content(&start, "t", &Sas::new().public_key()).is_err());
        // An accept choosing what we did not offer: refused.
        let (mut accept, _) = accept_content(&start_content("A", "t"), "t", &Sas::new().public_key()).unwrap();
        accept["message_authentication_code"] = json!("hmac-sha256");
        assert!(check_accept(&accept).is_err());
    }
}
