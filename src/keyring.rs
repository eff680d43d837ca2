//! The keyring: named 256-bit keys that encrypt secrets at rest, one of them primary.
//!
//! The keyring file (`[store] keyring`, in production a Kubernetes Secret volume) reads:
//!
//! ```toml
//! primary = "2026-12"
//! [keys]
//! "2026-06" = "base64 of 32 random bytes"
//! "2026-12" = "base64 of 32 random bytes"
//! ```
//!
//! [`Keyring::seal`] encrypts with the primary key under XChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`) with a random 192-bit nonce, and writes `enc1:<key name>:<base64url of
//! nonce ‖ ciphertext ‖ tag>`. The caller's associated data (which record, which field) is bound
//! in, so a ciphertext moved elsewhere does not open. [`Keyring::open`] opens with whichever key
//! the text names: any key in the keyring decrypts, which is what lets a key rotate without
//! downtime. Keys live in [`Zeroizing`] buffers and `Debug` shows their names only; no error
//! carries a key, a plaintext or a ciphertext.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::secret::{random_bytes, RandomError, Secret};

/// What every sealed value starts with (the format's version 1).
pub const SEALED_PREFIX: &str = "enc1:";
/// Key size in bytes (256 bits).
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// The longest key name.
pub const MAX_NAME_LEN: usize = 64;

/// Named keys, one of them primary. Cheap to share behind an `Arc`.
pub struct Keyring {
    primary: String,
    keys: BTreeMap<String, Zeroizing<[u8; KEY_BYTES]>>,
}

/// Why a keyring file could not be used; the keyring in service (if any) stays.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("reading keyring {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or shape (the message never quotes a line: it may hold a key).
    #[error("keyring {path}: {message}")]
    Parse { path: String, message: String },
    #[error("keyring {path}: {}", problems.join("; "))]
    Invalid { path: String, problems: Vec<String> },
}

/// Why a sealed value did not open. Names the key, never a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("is not a well-formed enc1: value")]
    Malformed,
    #[error("is encrypted under key {0:?}, which the keyring does not hold")]
    UnknownKey(String),
    #[error(
        "does not decrypt under key {0:?}: tampered with, or moved from another endpoint or field"
    )]
    Failed(String),
    #[error("is encrypted, but no [store] keyring is configured")]
    NoKeyring,
}

/// Why a value could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("encryption failed")]
    Cipher,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyring {
    primary: String,
    keys: BTreeMap<String, Zeroizing<String>>,
}

impl Keyring {
    /// Reads and validates the keyring file at `path`.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|source| KeyringError::Read {
                path: shown.clone(),
                source,
            })?;
        Self::parse(&text, &shown)
    }

    /// Parses keyring text (read from `path`, for messages).
    pub fn parse(text: &str, path: &str) -> Result<Self, KeyringError> {
        let raw: RawKeyring = toml::from_str(text).map_err(|err| KeyringError::Parse {
            path: path.to_owned(),
            message: err.message().to_owned(),
        })?;
        let mut problems = Vec::new();
        let mut keys = BTreeMap::new();
        for (name, encoded) in raw.keys {
            if let Err(why) = check_name(&name) {
                problems.push(format!("keys.{name:?}: {why}"));
                continue;
            }
            match decode_key(&encoded) {
                Some(key) => {
                    keys.insert(name, key);
                }
                None => problems.push(format!(
                    "keys.{name:?}: must be the standard base64 of {KEY_BYTES} bytes (`hooksign keyring new NAME` makes one)"
                )),
            }
        }
        if !keys.contains_key(&raw.primary) && !problems.iter().any(|p| p.contains(&raw.primary)) {
            problems.push(format!(
                "primary: {:?} is not one of [keys] ({})",
                raw.primary,
                keys.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if !problems.is_empty() {
            return Err(KeyringError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(Self {
            primary: raw.primary,
            keys,
        })
    }

    /// A keyring of one key (tests, benchmarks).
    pub fn single(name: &str, key: [u8; KEY_BYTES]) -> Self {
        Self {
            primary: name.to_owned(),
            keys: BTreeMap::from([(name.to_owned(), Zeroizing::new(key))]),
        }
    }

    /// The primary key's name: what [`Keyring::seal`] encrypts under.
    pub fn primary(&self) -> &str {
        &self.primary
    }

    /// Every key's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Encrypts `plaintext` under the primary key, binding `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, SealError> {
        let key = self
            .keys
            .get(&self.primary)
            .expect("the primary is one of the keys (checked when the keyring was parsed)");
        let nonce = random_bytes::<NONCE_BYTES>()?;
        let cipher = XChaCha20Poly1305::new(key.as_slice().into());
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(nonce.as_slice()),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::Cipher)?;
        let mut bytes = Vec::with_capacity(NONCE_BYTES + sealed.len());
        bytes.extend_from_slice(nonce.as_slice());
        bytes.extend_from_slice(&sealed);
        Ok(format!(
            "{SEALED_PREFIX}{}:{}",
            self.primary,
            URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// Decrypts a value [`Keyring::seal`] wrote, with whichever key it names, checking `aad`.
    pub fn open(&self, text: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let (name, body) = split_sealed(text).ok_or(OpenError::Malformed)?;
        let key = self
            .keys
            .get(name)
            .ok_or_else(|| OpenError::UnknownKey(name.to_owned()))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Malformed)?;
        if bytes.len() < NONCE_BYTES + TAG_BYTES {
            return Err(OpenError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let cipher = XChaCha20Poly1305::new(key.as_slice().into());
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Failed(name.to_owned()))
    }
}

/// Whether `text` is a sealed value (`enc1:…`) rather than a plaintext secret.
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED_PREFIX)
}

/// The name of the key a sealed value was written under.
pub fn key_name_of(text: &str) -> Option<&str> {
    split_sealed(text).map(|(name, _)| name)
}

/// A new key line for the keyring's `[keys]` table: `"NAME" = "<base64 of 32 random bytes>"`.
pub fn new_key_line(name: &str) -> Result<String, String> {
    check_name(name)?;
    let key = random_bytes::<KEY_BYTES>().map_err(|err| err.to_string())?;
    let encoded = Secret::new(STANDARD.encode(key.as_slice()));
    Ok(format!("{name:?} = {:?}", encoded.expose()))
}

fn split_sealed(text: &str) -> Option<(&str, &str)> {
    text.strip_prefix(SEALED_PREFIX)?.split_once(':')
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a key name is 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-'"
        ))
    }
}

fn decode_key(encoded: &str) -> Option<Zeroizing<[u8; KEY_BYTES]>> {
    let bytes = Zeroizing::new(STANDARD.decode(encoded.trim()).ok()?);
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    if bytes.len() != KEY_BYTES {
        return None;
    }
    key.copy_from_slice(&bytes);
    Some(key)
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(primary: &str) -> Keyring {
        let a = new_key_line("a").unwrap();
        let b = new_key_line("b").unwrap();
        Keyring::parse(
            &format!("primary = {primary:?}\n[keys]\n{a}\n{b}\n"),
            "k.toml",
        )
        .unwrap()
    }

    #[test]
    fn sealed_values_open_with_their_aad_only() {
        let ring = keyring("a");
        let sealed = ring.seal(b"whsec_secret", b"uuid-1\0secret").unwrap();
        assert!(sealed.starts_with("enc1:a:"), "{sealed}");
        assert!(!sealed.contains("whsec"));
        assert_eq!(
            &ring.open(&sealed, b"uuid-1\0secret").unwrap()[..],
            b"whsec_secret"
        );
        assert_eq!(
            ring.open(&sealed, b"uuid-2\0secret"),
            Err(OpenError::Failed("a".into()))
        );
        // Random nonces: the same plaintext seals differently each time.
        assert_ne!(
            sealed,
            ring.seal(b"whsec_secret", b"uuid-1\0secret").unwrap()
        );
    }

    #[test]
    fn any_key_opens_and_the_primary_seals() {
        let old = keyring("a");
        let sealed = old.seal(b"x", b"ad").unwrap();
        // The same keys, another primary (what the rotation procedure does).
        let text = format!(
            "primary = \"b\"\n[keys]\n\"a\" = {:?}\n\"b\" = {:?}\n",
            STANDARD.encode(old.keys["a"].as_slice()),
            STANDARD.encode(old.keys["b"].as_slice())
        );
        let new = Keyring::parse(&text, "k.toml").unwrap();
        assert_eq!(&new.open(&sealed, b"ad").unwrap()[..], b"x");
        assert_eq!(key_name_of(&new.seal(b"x", b"ad").unwrap()), Some("b"));
        let only_b = keyring("b");
        assert_eq!(
            only_b.open(&sealed, b"ad"),
            Err(OpenError::Failed("a".into()))
        );
        let other = Keyring::single("c", [7; 32]);
        assert_eq!(
            other.open(&sealed, b"ad"),
            Err(OpenError::UnknownKey("a".into()))
        );
    }

    #[test]
    fn tampered_and_malformed_values_are_refused() {
        let ring = keyring("a");
        let sealed = ring.seal(b"secret", b"ad").unwrap();
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            ring.open(&tampered, b"ad"),
            Err(OpenError::Failed("a".into()))
        );
        assert_eq!(ring.open("enc1:a:!!", b"ad"), Err(OpenError::Malformed));
        assert_eq!(ring.open("enc1:a:AAAA", b"ad"), Err(OpenError::Malformed));
        assert_eq!(ring.open("whsec_x", b"ad"), Err(OpenError::Malformed));
    }

    #[test]
    fn bad_keyrings_are_refused_without_showing_keys() {
        let err = Keyring::parse(
            "primary = \"z\"\n[keys]\n\"a\" = \"c2hvcnQ=\"\n\"b c\" = \"AAAA\"\n",
            "k.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("keys.\"a\": must be the standard base64"),
            "{err}"
        );
        assert!(err.contains("keys.\"b c\": a key name"), "{err}");
        assert!(err.contains("primary: \"z\""), "{err}");
        assert!(!err.contains("c2hvcnQ"), "{err}");
        let syntax = Keyring::parse("primary = \n[keys]\n\"a\" = \"c2hvcnQ=\"\n", "k.toml")
            .unwrap_err()
            .to_string();
        assert!(!syntax.contains("c2hvcnQ"), "{syntax}");
        assert!(Keyring::parse("primary = \"a\"\nextra = 1\n[keys]\n", "k").is_err());
    }

    #[test]
    fn debug_shows_names_only() {
        let ring = keyring("a");
        let text = format!("{ring:?}");
        assert!(text.contains("\"a\"") && text.contains("\"b\""), "{text}");
        assert!(!text.contains(&STANDARD.encode(ring.keys["a"].as_slice())));
    }

    #[test]
    fn key_lines_are_well_formed() {
        let line = new_key_line("2026-12").unwrap();
        let ring =
            Keyring::parse(&format!("primary = \"2026-12\"\n[keys]\n{line}\n"), "k").unwrap();
        assert_eq!(ring.primary(), "2026-12");
        assert!(new_key_line("bad name").is_err());
        assert!(new_key_line("").is_err());
    }
}
