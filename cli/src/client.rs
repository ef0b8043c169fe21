//! Profiles (one logged-in account each) and the [`Client`] a command works with.
//!
//! A profile is a folder `$MYELIN_HOME/profiles/<name>/` (default `~/.local/share/myelin`) with
//! `profile.json` (homeserver, user and device: nothing secret) and the encrypted local store.
//! Its access token and store key live in the OS secret store ([`crate::secrets`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use vodozemac::olm::Account;

use crate::api::Api;
use crate::secrets::{Backend, SecretStore, Secrets};
use crate::store::Store;

/// Which profile a command acts for.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub profile: Option<String>,
    pub user: Option<String>,
    pub keyring: Option<Backend>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    pub homeserver: String,
    pub user_id: String,
    pub device_id: String,
    /// Where this profile's secrets are kept.
    pub secret_store: Backend,
}

/// A logged-in account, ready to talk to its homeserver and to encrypt.
pub struct Client {
    pub name: String,
    pub dir: PathBuf,
    pub profile: Profile,
    pub api: Api,
    pub store: Store,
    pub account: Account,
    pub secrets: SecretStore,
}

/// `$MYELIN_HOME`, else `$XDG_DATA_HOME/myelin`, else `~/.local/share/myelin`.
pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("MYELIN_HOME") {
        return Ok(PathBuf::from(home));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(data).join("myelin"));
    }
    let home = std::env::var_os("HOME").context("neither MYELIN_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/myelin"))
}

fn profiles_dir() -> anyhow::Result<PathBuf> {
    Ok(home()?.join("profiles"))
}

/// Every profile that holds a login, by name.
pub fn profiles() -> anyhow::Result<Vec<(String, Profile)>> {
    let dir = profiles_dir()?;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(found) };
    for entry in entries {
        let entry = entry?;
        if let Some(profile) = read_profile(&entry.path())? {
            found.push((entry.file_name().to_string_lossy().into_owned(), profile));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

fn read_profile(dir: &Path) -> anyhow::Result<Option<Profile>> {
    match std::fs::read(dir.join("profile.json")) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged", dir.join("profile.json").display()))?,
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// The profile a command acts for: `--profile`, else the one logged in as `--user`, else
/// `default`, else the only one there is.
pub fn select(selector: &Selector) -> anyhow::Result<(String, Profile)> {
    let all = profiles()?;
    if let Some(name) = &selector.profile {
        return all
            .into_iter()
            .find(|(found, _)| found == name)
            .with_context(|| format!("no account is logged in under profile {name:?}: run `myelin login`"));
    }
    if let Some(user) = &selector.user {
        return all
            .into_iter()
            .find(|(_, profile)| &profile.user_id == user)
            .with_context(|| format!("{user} is not logged in here: run `myelin login`"));
    }
    let mut all = all;
    if let Some(default) = all.iter().position(|(name, _)| name == "default") {
        return Ok(all.swap_remove(default));
    }
    match all.len() {
        0 => bail!("not logged in: run `myelin login` or `myelin register`"),
        1 => Ok(all.swap_remove(0)),
        _ => bail!(
            "several accounts are logged in ({}): choose one with --profile or --user",
            all.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The folder of a profile that is about to be created; refuses to replace a login.
pub fn new_profile_dir(name: &str) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            && !name.starts_with('.'),
        "a profile name may use letters, digits and - _ . @"
    );
    let dir = profiles_dir()?.join(name);
    if let Some(profile) = read_profile(&dir)? {
        bail!("profile {name:?} is logged in as {}: log out first or choose another --profile", profile.user_id);
    }
    create_private_dir(&dir)?;
    Ok(dir)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Runs a blocking secret-store call off the async threads (keyrings block; see `secrets`).
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work).await.context("the secret store thread failed")?
}

impl Client {
    /// Opens the selected profile: its secrets, store and Olm account.
    pub async fn open(http: reqwest::Client, selector: &Selector) -> anyhow::Result<Self> {
        let (name, profile) = select(selector)?;
        let dir = profiles_dir()?.join(&name);
        let (secrets, loaded) = {
            let (dir, id, backend) = (dir.clone(), secret_id(&dir), profile.secret_store);
            blocking(move || {
                let store = SecretStore::open(&dir, &id, Some(backend))?;
                let loaded = store.load()?;
                Ok((store, loaded))
            })
            .await?
        };
        let loaded = loaded.with_context(|| {
            format!("the secrets of profile {name:?} are gone from the {}: log in again", secrets.describe())
        })?;
        let store = Store::open(&dir.join("store.db"), &loaded.store_key).await?;
        let account = crate::crypto::keys::load_account(&store)
            .await?
            .context("the local store has no encryption account: log in again")?;
        let api = Api::new(http, &profile.homeserver, Some(loaded.access_token.clone()));
        Ok(Self { name, dir, profile, api, store, account, secrets })
    }

    /// Sets up a fresh profile after a successful login or registration: secrets into the
    /// secret store, a new store and Olm account, device keys published.
    pub async fn create(
        http: reqwest::Client,
        name: &str,
        dir: PathBuf,
        profile: Profile,
        access_token: String,
        secrets: SecretStore,
    ) -> anyhow::Result<Self> {
        let mut store_key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut store_key);
        let blob = Secrets { access_token: access_token.clone(), store_key };
        let secrets = blocking(move || secrets.save(&blob).map(|()| secrets)).await?;
        let store = Store::open(&dir.join("store.db"), &store_key).await?;
        store_key.fill(0);
        let api = Api::new(http, &profile.homeserver, Some(access_token));
        let mut client = Self { name: name.to_owned(), dir, profile, api, store, account: Account::new(), secrets };
        client.save_account().await?;
        client.publish_keys(true, Some(0), false).await?;
        // Written last: a profile exists only once everything it needs is in place.
        let json = serde_json::to_vec_pretty(&client.profile)?;
        write_private(&client.dir.join("profile.json"), &json)?;
        Ok(client)
    }

    /// Takes the profile's lock (other `myelin` processes of this profile wait), then reloads
    /// the Olm account, which another process may have changed. Hold it across anything that
    /// changes Olm or Megolm state; dropping the file releases it.
    pub async fn lock(&mut self) -> anyhow::Result<std::fs::File> {
        let path = self.dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => bail!("another myelin process holds profile {:?}", self.name),
                Err(std::fs::TryLockError::Error(err)) => return Err(err).context("cannot lock the profile"),
            }
        }
        if let Some(account) = crate::crypto::keys::load_account(&self.store).await? {
            self.account = account;
        }
        Ok(file)
    }

    /// Removes the profile's secrets and local store (after logout).
    pub async fn forget(self) -> anyhow::Result<()> {
        let Client { dir, store, secrets, .. } = self;
        store.pool.close().await;
        blocking(move || secrets.delete()).await?;
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))
    }
}

/// The keyring entry name of a profile: its folder, so two homes never share an entry.
pub fn secret_id(dir: &Path) -> String {
    format!("profile:{}", dir.display())
}

/// Writes a file readable only by us, atomically (a crash leaves the old file or the new one).
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
