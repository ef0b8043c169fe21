//! The server's ed25519 signing key: generated once, kept in the data directory, and loaded
//! unchanged on every start (federation peers pin it by key ID).
//!
//! The file uses Synapse's format, `ed25519 <version> <unpadded base64 seed>`, so that keys can
//! move between implementations.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use rand::Rng;
use rand::distributions::Alphanumeric;

/// Errors loading or creating the signing key.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// The key file could not be read or written.
    #[error("signing key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The key file is not in the expected format.
    #[error("signing key file {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads keys the way other Matrix implementations write them: padded or not, and tolerant of
/// non-zero trailing bits (the spec's own test seed has them).
pub(crate) const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The server's signing key.
pub struct SigningKey {
    version: String,
    key: ed25519_dalek::SigningKey,
    /// The same key as ruma-signatures' signer, built once: building it derives the public key,
    /// which costs as much as a signature.
    pair: ruma_signatures::Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only public parts: the seed must never reach a log.
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads the key from `path`, creating it (mode 0600, written atomically) if it is missing.
    pub fn load_or_generate(path: &Path) -> Result<Self, SigningKeyError> {
        let io = |source| SigningKeyError::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text)
                .map_err(|reason| SigningKeyError::Malformed { path: path.display().to_string(), reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()
                    .map_err(|reason| SigningKeyError::Malformed { path: path.display().to_string(), reason })?;
                if create_atomically(path, key.to_file_contents().as_bytes()).map_err(io)? {
                    Ok(key)
                } else {
                    // Another process sharing the data directory created it first: use theirs,
                    // or the two would sign with different keys under one server name.
                    Self::load_or_generate(path)
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    fn generate() -> Result<Self, &'static str> {
        let suffix: String = rand::rngs::OsRng.sample_iter(Alphanumeric).take(4).map(char::from).collect();
        let seed: [u8; 32] = rand::rngs::OsRng.r#gen();
        Self::from_seed(format!("a_{suffix}"), &seed)
    }

    fn from_seed(version: String, seed: &[u8; 32]) -> Result<Self, &'static str> {
        // A PKCS#8 v1 document for an Ed25519 key (RFC 8410): a fixed header, then the seed.
        const PKCS8_PREFIX: [u8; 16] =
            [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        let mut der = zeroize::Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PKCS8_PREFIX);
        der.extend_from_slice(seed);
        let pair = ruma_signatures::Ed25519KeyPair::from_der(&der, version.clone())
            .map_err(|_| "the seed does not form an Ed25519 key")?;
        Ok(Self { version, key: ed25519_dalek::SigningKey::from_bytes(seed), pair })
    }

    fn parse(text: &str) -> Result<Self, &'static str> {
        let mut parts = text.split_whitespace();
        let (Some("ed25519"), Some(version), Some(seed), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("expected one line `ed25519 <version> <base64 seed>`");
        };
        let seed = LENIENT_BASE64.decode(seed).map_err(|_| "the seed is not base64")?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| "the seed is not 32 bytes")?;
        Self::from_seed(version.to_owned(), &seed)
    }

    fn to_file_contents(&self) -> String {
        format!("ed25519 {} {}\n", self.version, STANDARD_NO_PAD.encode(self.key.to_bytes()))
    }

    /// The key ID, `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    /// The public key, unpadded base64 as Matrix publishes keys.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.key.verifying_key().as_bytes())
    }

    /// The key as ruma-signatures' signer, for events and federation requests.
    pub fn ruma_key_pair(&self) -> &ruma_signatures::Ed25519KeyPair {
        &self.pair
    }

    /// The key of the spec's cryptographic test vectors: key ID `ed25519:1`.
    #[cfg(test)]
    pub(crate) fn spec_test_vector() -> Self {
        Self::parse("ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").expect("the spec's seed")
    }
}

/// A key this server signed with before a rotation: still published (as `old_verify_keys`)
/// so that what it signed keeps verifying.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OldKey {
    /// The public key, unpadded base64.
    pub key: String,
    /// When it stopped being used (ms).
    pub expired_ts: i64,
}

/// The old keys kept in `path` (`{key_id: {key, expired_ts}}`); none if the file is missing.
pub fn load_old_keys(path: &Path) -> Result<std::collections::BTreeMap<String, OldKey>, SigningKeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|_| SigningKeyError::Malformed {
            path: path.display().to_string(),
            reason: "expected {key_id: {key, expired_ts}}",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(source) => Err(SigningKeyError::Io { path: path.display().to_string(), source }),
    }
}

impl SigningKey {
    /// Replaces the key in `path` with a new one. The old key is first added to `old_path` as
    /// expired at `now`, so that a crash in between leaves it both current and listed (harmless)
    /// rather than lost. Returns the new key.
    pub fn rotate(path: &Path, old_path: &Path, now: i64) -> Result<Self, SigningKeyError> {
        let current = Self::load_or_generate(path)?;
        let mut old = load_old_keys(old_path)?;
        old.insert(current.key_id(), OldKey { key: current.public_key_base64(), expired_ts: now });
        let json = serde_json::to_vec_pretty(&old).expect("old keys serialize");
        let io = |path: &Path, source| SigningKeyError::Io { path: path.display().to_string(), source };
        write_atomically(old_path, &json).map_err(|e| io(old_path, e))?;
        let new = Self::generate()
            .map_err(|reason| SigningKeyError::Malformed { path: path.display().to_string(), reason })?;
        write_atomically(path, new.to_file_contents().as_bytes()).map_err(|e| io(path, e))?;
        Ok(new)
    }
}

/// Writes a file so that a crash leaves either no file or the whole file: temp file, fsync,
/// rename, fsync of the directory.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = write_temporary(path, contents)?;
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Like [`write_atomically`], but only if `path` does not exist yet; `false` when it does. A
/// hard link, unlike a rename, refuses to replace an existing file, so of several processes
/// starting at once on one data directory exactly one creates it.
fn create_atomically(path: &Path, contents: &[u8]) -> std::io::Result<bool> {
    let tmp = write_temporary(path, contents)?;
    let linked = std::fs::hard_link(&tmp, path);
    std::fs::remove_file(&tmp)?;
    match linked {
        Ok(()) => sync_parent(path).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        // Some network and container volumes have no hard links: exclusive creation still lets
        // one process win (a crash mid-write then leaves a file that fails to load, loudly).
        Err(e) if matches!(e.kind(), std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied) => {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => {
                    file.write_all(contents)?;
                    file.sync_all()?;
                    sync_parent(path).map(|()| true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// `contents` in a new file (mode 0600) next to `path`, synced, under a name of its own.
fn write_temporary(path: &Path, contents: &[u8]) -> std::io::Result<std::path::PathBuf> {
    let unique: String = rand::rngs::OsRng.sample_iter(Alphanumeric).take(12).map(char::from).collect();
    let tmp = path.with_extension(format!("tmp.{unique}"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(tmp)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_together_they_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let ids: Vec<String> = std::thread::scope(|scope| {
            let starts: Vec<_> =
                (0..8).map(|_| scope.spawn(|| SigningKey::load_or_generate(&path).unwrap().key_id())).collect();
            starts.into_iter().map(|start| start.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary files left");
    }

    #[test]
    fn generated_once_then_loaded_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let first = SigningKey::load_or_generate(&path).unwrap();
        let again = SigningKey::load_or_generate(&path).unwrap();
        assert_eq!(first.key_id(), again.key_id());
        assert_eq!(first.public_key_base64(), again.public_key_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let debug = format!("{first:?}");
        assert!(!debug.contains(&STANDARD_NO_PAD.encode(first.key.to_bytes())));
    }

    /// The spec's cryptographic test vectors (appendices, "JSON Signing").
    #[test]
    fn signs_the_spec_test_vectors() {
        let key = SigningKey::spec_test_vector();
        let pair = key.ruma_key_pair();
        for (json, signature) in [
            ("{}", "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"),
            (
                r#"{"one": 1, "two": "Two"}"#,
                "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw",
            ),
        ] {
            let mut object: ruma_common::CanonicalJsonObject = serde_json::from_str(json).unwrap();
            ruma_signatures::sign_json("domain", pair, &mut object).unwrap();
            let signed = serde_json::to_value(&object).unwrap();
            assert_eq!(signed["signatures"]["domain"]["ed25519:1"], signature, "{json}");
        }
    }

    #[test]
    fn reads_synapse_format_and_refuses_garbage() {
        // The seed of RFC 8032's first test vector; its public key is known.
        let key = SigningKey::parse("ed25519 a_test nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A\n").unwrap();
        assert_eq!(key.key_id(), "ed25519:a_test");
        assert_eq!(key.public_key_base64(), "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert!(SigningKey::parse("ed25519 a_test").is_err());
        assert!(SigningKey::parse("rsa a_test AAAA").is_err());
        assert!(SigningKey::parse("ed25519 a_test AAAA").is_err());
    }
}
