//! Encrypted attachments (version `v2`), per the spec's "Sending encrypted attachments"
//! (<https://spec.matrix.org/v1.19/client-server-api/#sending-encrypted-attachments>).
//!
//! A file is encrypted with AES-256-CTR under a fresh random key and IV; the key, IV and the
//! SHA-256 of the ciphertext travel in the (Megolm-encrypted) event as an [`EncryptedFile`].
//!
//! Streaming, for files too large to hold in memory:
//!
//! ```text
//! let mut encryptor = Encryptor::new();
//! for chunk in chunks { encryptor.update(&mut chunk); upload(chunk) }
//! let file = encryptor.finish(mxc_url);
//!
//! let mut decryptor = Decryptor::new(&file)?;
//! for chunk in chunks { decryptor.update(&mut chunk); write(chunk) }
//! decryptor.finish()?; // only now is the written plaintext known to be authentic
//! ```
//!
//! Chunks can be any size, so a whole file in memory is just one chunk.

use std::collections::BTreeMap;
use std::fmt;

use aes::Aes256;
use aes::cipher::{KeyIvInit, StreamCipher};
use anyhow::{Context, bail};
use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The spec describes a 64-bit block counter after a 64-bit nonce, and Element decrypts with
/// WebCrypto's `length: 64`, so a counter that overflows wraps within the low half only. The
/// counters we generate start at zero and never get there; this matters only for decrypting
/// files from senders that started their counter elsewhere.
type Aes256Ctr = ctr::Ctr64BE<Aes256>;

/// The only protocol version this module reads or writes.
const VERSION: &str = "v2";
const ALGORITHM: &str = "A256CTR";
const KEY_TYPE: &str = "oct";
const SHA256: &str = "sha256";

/// Senders are meant to use unpadded standard Base64 (URL-safe for `k`), but some clients
/// have been seen padding, so input is decoded with padding optional and after mapping the
/// URL-safe alphabet onto the standard one.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An encrypted file as it appears in an event's `file` or `thumbnail_file` property.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EncryptedFile {
    /// The `mxc://` URL of the uploaded ciphertext.
    pub url: String,
    /// The AES key.
    pub key: JsonWebKey,
    /// The initial counter block, unpadded standard Base64.
    pub iv: String,
    /// Hashes of the ciphertext, by algorithm; `sha256` is mandatory.
    pub hashes: BTreeMap<String, String>,
    /// Protocol version; `v2`.
    pub v: String,
}

/// The AES key as a JSON Web Key (RFC 7517) with the WebCrypto `ext` extension.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct JsonWebKey {
    /// Key type: `oct`.
    pub kty: String,
    /// Permitted operations: `encrypt` and `decrypt`.
    pub key_ops: Vec<String>,
    /// Algorithm: `A256CTR`.
    pub alg: String,
    /// The 256-bit key, URL-safe unpadded Base64.
    pub k: String,
    /// Extractable: `true`.
    pub ext: bool,
}

// Hand-written so that a stray `{:?}` in a log line cannot leak the key.
impl fmt::Debug for JsonWebKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonWebKey")
            .field("kty", &self.kty)
            .field("key_ops", &self.key_ops)
            .field("alg", &self.alg)
            .field("k", &"<redacted>")
            .field("ext", &self.ext)
            .finish()
    }
}

/// Encrypts a file chunk by chunk, hashing the ciphertext as it goes.
pub struct Encryptor {
    cipher: Aes256Ctr,
    hasher: Sha256,
    key: Zeroizing<[u8; 32]>,
    iv: [u8; 16],
}

impl Encryptor {
    /// Starts encrypting a new file under a fresh random key and IV.
    pub fn new() -> Self {
        let mut rng = rand::rngs::OsRng;
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        // Random nonce, then a counter starting at zero, as the spec requires.
        let mut iv = [0u8; 16];
        rng.fill_bytes(&mut iv[..8]);
        Self::with_key_and_iv(key, iv)
    }

    fn with_key_and_iv(key: Zeroizing<[u8; 32]>, iv: [u8; 16]) -> Self {
        let cipher = Aes256Ctr::new(&(*key).into(), &iv.into());
        Self { cipher, hasher: Sha256::new(), key, iv }
    }

    /// Encrypts the next chunk of the file in place. Chunks may be of any length.
    pub fn update(&mut self, buf: &mut [u8]) {
        // Cannot panic: the keystream runs out only after 2^64 blocks.
        self.cipher.apply_keystream(buf);
        self.hasher.update(&*buf);
    }

    /// Ends the file, describing it as uploaded to `url` (the URL is only known once the
    /// ciphertext has been uploaded, which is why it comes last).
    pub fn finish(self, url: String) -> EncryptedFile {
        EncryptedFile {
            url,
            key: JsonWebKey {
                kty: KEY_TYPE.to_owned(),
                key_ops: vec!["encrypt".to_owned(), "decrypt".to_owned()],
                alg: ALGORITHM.to_owned(),
                k: URL_SAFE_NO_PAD.encode(self.key.as_slice()),
                ext: true,
            },
            iv: STANDARD_NO_PAD.encode(self.iv),
            hashes: BTreeMap::from([(SHA256.to_owned(), STANDARD_NO_PAD.encode(self.hasher.finalize()))]),
            v: VERSION.to_owned(),
        }
    }
}

impl Default for Encryptor {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrypts a file chunk by chunk, hashing the ciphertext as it goes.
///
/// Plaintext comes out before the hash can be checked, so nothing may trust it (show it, hand
/// it to another program, give it its final file name) until [`Decryptor::finish`] succeeds.
pub struct Decryptor {
    cipher: Aes256Ctr,
    hasher: Sha256,
    expected_sha256: [u8; 32],
}

impl Decryptor {
    /// Checks that `file` describes a file this module can decrypt, and starts decrypting it.
    pub fn new(file: &EncryptedFile) -> anyhow::Result<Self> {
        if file.v != VERSION {
            bail!("unsupported encrypted file version {:?} (only {VERSION:?} is supported)", file.v);
        }
        if file.key.kty != KEY_TYPE {
            bail!("unsupported encrypted file key type {:?} (expected {KEY_TYPE:?})", file.key.kty);
        }
        if file.key.alg != ALGORITHM {
            bail!("unsupported encrypted file algorithm {:?} (expected {ALGORITHM:?})", file.key.alg);
        }
        let key: Zeroizing<[u8; 32]> =
            Zeroizing::new(decode_fixed(&file.key.k).context("the encrypted file's key is not 32 Base64 bytes")?);
        let iv: [u8; 16] = decode_fixed(&file.iv).context("the encrypted file's IV is not 16 Base64 bytes")?;
        let sha256 = file.hashes.get(SHA256).context("the encrypted file has no SHA-256 hash")?;
        let expected_sha256 = decode_fixed(sha256).context("the encrypted file's SHA-256 is not 32 Base64 bytes")?;
        let cipher = Aes256Ctr::new(&(*key).into(), &iv.into());
        Ok(Self { cipher, hasher: Sha256::new(), expected_sha256 })
    }

    /// Decrypts the next chunk of the file in place. Chunks may be of any length.
    pub fn update(&mut self, buf: &mut [u8]) {
        // The hash covers the ciphertext, so it must see the bytes before they are decrypted.
        self.hasher.update(&*buf);
        // Cannot panic: the keystream runs out only after 2^64 blocks.
        self.cipher.apply_keystream(buf);
    }

    /// Ends the file, failing if the ciphertext was not the one described.
    pub fn finish(self) -> anyhow::Result<()> {
        let actual: [u8; 32] = self.hasher.finalize().into();
        // Constant time out of habit; the hash is public, so little would leak anyway.
        let difference = actual.iter().zip(&self.expected_sha256).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            bail!("the file's SHA-256 does not match: it was altered or corrupted");
        }
        Ok(())
    }
}

/// Decodes Base64 in any of the variants senders use into exactly `N` bytes.
fn decode_fixed<const N: usize>(text: &str) -> anyhow::Result<[u8; N]> {
    let standard = text.trim().replace('-', "+").replace('_', "/");
    let bytes = Zeroizing::new(LENIENT.decode(standard).context("invalid Base64")?);
    bytes.as_slice().try_into().with_context(|| format!("expected {N} bytes, found {}", bytes.len()))
}

#[cfg(test)]
mod tests {
    use aes::cipher::BlockCipherEncrypt;
    use aes::cipher::KeyInit;

    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn encrypt_in_chunks(data: &[u8], chunk: usize) -> (Vec<u8>, EncryptedFile) {
        let mut encryptor = Encryptor::new();
        let mut buf = data.to_vec();
        for piece in buf.chunks_mut(chunk) {
            encryptor.update(piece);
        }
        (buf, encryptor.finish("mxc://example.org/abc".to_owned()))
    }

    fn decrypt_in_chunks(file: &EncryptedFile, data: &[u8], chunk: usize) -> anyhow::Result<Vec<u8>> {
        let mut decryptor = Decryptor::new(file)?;
        let mut buf = data.to_vec();
        for piece in buf.chunks_mut(chunk) {
            decryptor.update(piece);
        }
        decryptor.finish()?;
        Ok(buf)
    }

    /// AES-256 in counter mode from the raw block cipher, with the spec's 64-bit counter.
    fn reference_ctr(key: &[u8; 32], iv: &[u8; 16], data: &[u8]) -> Vec<u8> {
        let aes = Aes256::new(&(*key).into());
        let nonce = &iv[..8];
        let start = u64::from_be_bytes(iv[8..].try_into().unwrap());
        data.chunks(16)
            .enumerate()
            .flat_map(|(i, chunk)| {
                let mut block = [0u8; 16];
                block[..8].copy_from_slice(nonce);
                block[8..].copy_from_slice(&start.wrapping_add(i as u64).to_be_bytes());
                let mut block = block.into();
                aes.encrypt_block(&mut block);
                chunk.iter().zip(block).map(|(d, k)| d ^ k).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn round_trips_with_any_chunking() {
        let data = sample(1000);
        for encrypt_chunk in [1, 3, 15, 16, 17, 100, 1000, 4096] {
            let (ciphertext, file) = encrypt_in_chunks(&data, encrypt_chunk);
            assert_eq!(ciphertext.len(), data.len());
            assert_ne!(ciphertext, data);
            for decrypt_chunk in [1, 7, 16, 33, 999, 1000] {
                let plaintext = decrypt_in_chunks(&file, &ciphertext, decrypt_chunk).unwrap();
                assert_eq!(plaintext, data, "chunks of {encrypt_chunk} then {decrypt_chunk}");
            }
        }
    }

    #[test]
    fn round_trips_whole_files_of_any_length() {
        for len in [0, 1, 16, 31, 65_537] {
            let data = sample(len);
            let (ciphertext, file) = encrypt_in_chunks(&data, len.max(1));
            assert_eq!(file.url, "mxc://example.org/abc");
            assert_eq!(decrypt_in_chunks(&file, &ciphertext, len.max(1)).unwrap(), data);
        }
    }

    #[test]
    fn each_file_gets_its_own_key_and_iv() {
        let (first, a) = encrypt_in_chunks(&sample(64), 64);
        let (second, b) = encrypt_in_chunks(&sample(64), 64);
        assert_ne!(a.key.k, b.key.k);
        assert_ne!(a.iv, b.iv);
        assert_ne!(first, second);
    }

    #[test]
    fn tampering_is_detected() {
        let data = sample(100);
        let (ciphertext, file) = encrypt_in_chunks(&data, 100);
        for position in [0, 50, 99] {
            let mut tampered = ciphertext.clone();
            tampered[position] ^= 1;
            let err = decrypt_in_chunks(&file, &tampered, 10).unwrap_err();
            assert_eq!(err.to_string(), "the file's SHA-256 does not match: it was altered or corrupted");
            assert!(decrypt_in_chunks(&file, &tampered, 100).is_err());
        }
        // Truncation too.
        assert!(decrypt_in_chunks(&file, &ciphertext[..99], 100).is_err());
    }

    #[test]
    fn json_has_the_spec_shape() {
        let (_, file) = encrypt_in_chunks(&sample(10), 10);
        let json = serde_json::to_value(&file).unwrap();
        let object = json.as_object().unwrap();
        let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["hashes", "iv", "key", "url", "v"]);
        assert_eq!(json["v"], "v2");
        assert_eq!(json["url"], "mxc://example.org/abc");

        let key = json["key"].as_object().unwrap();
        let mut key_fields: Vec<_> = key.keys().map(String::as_str).collect();
        key_fields.sort_unstable();
        assert_eq!(key_fields, ["alg", "ext", "k", "key_ops", "kty"]);
        assert_eq!(json["key"]["kty"], "oct");
        assert_eq!(json["key"]["alg"], "A256CTR");
        assert_eq!(json["key"]["ext"], true);
        assert_eq!(json["key"]["key_ops"], serde_json::json!(["encrypt", "decrypt"]));
        let k = json["key"]["k"].as_str().unwrap();
        assert_eq!(k.len(), 43);
        assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(URL_SAFE_NO_PAD.decode(k).unwrap().len(), 32);

        let iv = json["iv"].as_str().unwrap();
        assert_eq!(iv.len(), 22);
        let iv = STANDARD_NO_PAD.decode(iv).unwrap();
        assert_eq!(iv.len(), 16);
        assert_eq!(iv[8..], [0; 8]);

        let hashes = json["hashes"].as_object().unwrap();
        assert_eq!(hashes.len(), 1);
        let sha256 = hashes["sha256"].as_str().unwrap();
        assert_eq!(sha256.len(), 43);
        assert_eq!(STANDARD_NO_PAD.decode(sha256).unwrap().len(), 32);
    }

    #[test]
    fn reads_the_spec_example() {
        let file: EncryptedFile = serde_json::from_value(serde_json::json!({
            "url": "mxc://example.org/FHyPlCeYUSFFxlgbQYZmoEoe",
            "v": "v2",
            "key": {
                "alg": "A256CTR",
                "ext": true,
                "k": "aWF6-32KGYaC3A_FEUCk1Bt0JA37zP0wrStgmdCaW-0",
                "key_ops": ["encrypt", "decrypt"],
                "kty": "oct"
            },
            "iv": "w+sE15fzSc0AAAAAAAAAAA",
            "hashes": { "sha256": "fdSLu/YkRx3Wyh3KQabP3rd6+SFiKg5lsJZQHtkSAYA" }
        }))
        .unwrap();
        let decryptor = Decryptor::new(&file).unwrap();
        assert_eq!(STANDARD_NO_PAD.encode(decryptor.expected_sha256), file.hashes["sha256"]);
        // We have no ciphertext for it, so the hash cannot match.
        assert!(decrypt_in_chunks(&file, b"not the file", 4).is_err());
    }

    #[test]
    fn matches_nist_sp_800_38a_ctr_aes256() {
        // SP 800-38A F.5.5 CTR-AES256.Encrypt. Its counter is a full 128-bit one, but the
        // low half does not overflow within these four blocks, so it applies unchanged.
        let key: [u8; 32] = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4").try_into().unwrap();
        let iv: [u8; 16] = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
        let plaintext = hex(concat!(
            "6bc1bee22e409f96e93d7e117393172a",
            "ae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52ef",
            "f69f2445df4f9b17ad2b417be66c3710",
        ));
        let expected = hex(concat!(
            "601ec313775789a5b7a7f504bbf3d228",
            "f443e3ca4d62b59aca84e990cacaf5c5",
            "2b0930daa23de94ce87017ba2d84988d",
            "dfc9c58db67aada613c2dd08457941a6",
        ));
        assert_eq!(reference_ctr(&key, &iv, &plaintext), expected);

        let mut encryptor = Encryptor::with_key_and_iv(Zeroizing::new(key), iv);
        let mut buf = plaintext.clone();
        let (head, tail) = buf.split_at_mut(5);
        encryptor.update(head);
        encryptor.update(tail);
        assert_eq!(buf, expected);

        let file = encryptor.finish("mxc://example.org/nist".to_owned());
        assert_eq!(file.key.k, URL_SAFE_NO_PAD.encode(key));
        assert_eq!(file.iv, STANDARD_NO_PAD.encode(iv));
        assert_eq!(file.hashes["sha256"], STANDARD_NO_PAD.encode(Sha256::digest(&expected)));
        assert_eq!(decrypt_in_chunks(&file, &expected, 7).unwrap(), plaintext);
    }

    #[test]
    fn counter_wraps_within_its_low_64_bits() {
        // Only a foreign sender could start the counter here; Element would wrap it like this.
        let key = [7u8; 32];
        let iv: [u8; 16] = hex("0001020304050607fffffffffffffffe").try_into().unwrap();
        let plaintext = sample(80);
        let mut encryptor = Encryptor::with_key_and_iv(Zeroizing::new(key), iv);
        let mut buf = plaintext.clone();
        encryptor.update(&mut buf);
        assert_eq!(buf, reference_ctr(&key, &iv, &plaintext));
    }

    #[test]
    fn accepts_padded_and_url_safe_base64() {
        let data = sample(40);
        let (ciphertext, mut file) = encrypt_in_chunks(&data, 40);
        let key = URL_SAFE_NO_PAD.decode(&file.key.k).unwrap();
        file.key.k = base64::engine::general_purpose::STANDARD.encode(key);
        let iv = STANDARD_NO_PAD.decode(&file.iv).unwrap();
        file.iv = base64::engine::general_purpose::URL_SAFE.encode(iv);
        let hash = file.hashes["sha256"].clone() + "=";
        file.hashes.insert("sha256".to_owned(), hash);
        assert_eq!(decrypt_in_chunks(&file, &ciphertext, 40).unwrap(), data);
    }

    #[test]
    fn rejects_what_it_cannot_decrypt() {
        let (_, file) = encrypt_in_chunks(&sample(10), 10);
        let reject = |change: fn(&mut EncryptedFile)| {
            let mut bad = file.clone();
            change(&mut bad);
            Decryptor::new(&bad).err().map(|err| format!("{err:#}"))
        };
        assert!(reject(|_| {}).is_none());
        assert!(reject(|f| f.v = "v1".to_owned()).unwrap().contains("version"));
        assert!(reject(|f| f.v = "v3".to_owned()).unwrap().contains("version"));
        assert!(reject(|f| f.key.alg = "A128CTR".to_owned()).unwrap().contains("algorithm"));
        assert!(reject(|f| f.key.kty = "RSA".to_owned()).unwrap().contains("key type"));
        assert!(reject(|f| f.key.k = URL_SAFE_NO_PAD.encode([1u8; 16])).unwrap().contains("key"));
        assert!(reject(|f| f.key.k = "not base64!".to_owned()).unwrap().contains("key"));
        assert!(reject(|f| f.iv = STANDARD_NO_PAD.encode([1u8; 8])).unwrap().contains("IV"));
        assert!(reject(|f| f.hashes.clear()).unwrap().contains("no SHA-256"));
        assert!(
            reject(|f| {
                f.hashes.insert("sha256".to_owned(), "AAAA".to_owned());
            })
            .unwrap()
            .contains("SHA-256")
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        let (_, file) = encrypt_in_chunks(&sample(10), 10);
        let debug = format!("{file:?}");
        assert!(!debug.contains(&file.key.k));
        assert!(debug.contains("redacted"));
    }
}
