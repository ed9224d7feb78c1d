//! The Ed25519 signing key: it signs audit checkpoints and (later) deletion certificates
//! (JWS, `alg: EdDSA`, RFC 8037), so anyone holding the public key can check both.
//!
//! - The key lives next to the keyring, `<dir of keys.keyring>/signing-ed25519.pk8`: PKCS#8 v2
//!   DER as ring writes it (PKCS#8 v1 and PEM, e.g. from `openssl genpkey -algorithm ed25519`,
//!   are read too).
//! - The key id is public: `ed25519:` + the first 16 hex characters of sha256(public key).
//! - `lethe keys public --format jwk` prints [`SigningKey::public_jwk`].
//!
//! Danger: the file is the only copy of the private key. It is created with mode 0600 (in a
//! 0700 directory) and never overwritten: creation publishes a fully written temp file with a
//! hard link, which fails if the key already exists, so two processes starting at once agree on
//! one key. Losing the file does not lose data, but checkpoints and certificates signed by it can
//! then only be checked with a saved copy of its public key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use thiserror::Error;

use crate::util::sha256_hex;

/// File name of the signing key, in the keyring's directory.
pub const SIGNING_KEY_FILE: &str = "signing-ed25519.pk8";

#[derive(Debug, Error)]
pub enum SignError {
    #[error(
        "signing key {path} does not exist\n  fix: run `lethe run <job>` once to create it, or restore the key file from its backup next to keys.keyring"
    )]
    Missing { path: PathBuf },
    #[error(
        "cannot read signing key {path}: {source}\n  fix: check the file's permissions (lethe needs to read it; mode 0600, owned by lethe's user)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "signing key {path} is not an Ed25519 PKCS#8 key: {message}\n  fix: restore the key file from its backup; if it is lost, move it aside and let lethe create a new one (then publish the new public key: checkpoints and certificates signed by the old key verify only with the old public key)"
    )]
    Garbled { path: PathBuf, message: String },
    #[error("cannot write signing key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system random number generator failed")]
    Rng,
    #[error(
        "another `lethe keys rotate` is running ({path} exists)\n  fix: wait for it; if none is running (a rotation was killed), remove {path} and rotate again"
    )]
    Busy { path: PathBuf },
}

impl SignError {
    /// Missing, unreadable or garbled key files are the operator's to fix (exit code 2).
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            SignError::Missing { .. } | SignError::Read { .. } | SignError::Garbled { .. }
        )
    }
}

/// `<dir of keyring>/signing-ed25519.pk8`.
pub fn signing_key_path(keyring: &Path) -> PathBuf {
    keyring
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(SIGNING_KEY_FILE)
}

/// An Ed25519 key pair. `Debug` shows the key id and path, never key material.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// `ed25519:<16 hex>`: a public fingerprint of an Ed25519 public key.
pub fn key_id_of(public_key: &[u8]) -> String {
    format!("ed25519:{}", &sha256_hex(public_key)[..16])
}

impl SigningKey {
    /// Load the key at `path`; with `create`, a missing key is generated and written (mode
    /// 0600). An existing file is never replaced, even if it is garbled.
    pub fn load_or_create(path: &Path, create: bool) -> Result<SigningKey, SignError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && next_path(path).exists() => {
                // A rotation stopped between retiring the old key and installing the new one:
                // finish it.
                std::fs::rename(next_path(path), path).map_err(|source| SignError::Write {
                    path: path.into(),
                    source,
                })?;
                Self::load_or_create(path, create)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Err(SignError::Missing { path: path.into() });
                }
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| SignError::Rng)?;
                if write_new_private(path, pkcs8.as_ref())? {
                    Self::parse(path, pkcs8.as_ref())
                } else {
                    // Another process created it first: use theirs.
                    let bytes = std::fs::read(path).map_err(|source| SignError::Read {
                        path: path.into(),
                        source,
                    })?;
                    Self::parse(path, &bytes)
                }
            }
            Err(source) => Err(SignError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<SigningKey, SignError> {
        let garbled = |message: String| SignError::Garbled {
            path: path.into(),
            message,
        };
        let der = if bytes.starts_with(b"-----BEGIN") {
            let text =
                std::str::from_utf8(bytes).map_err(|_| garbled("PEM is not UTF-8".into()))?;
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::trim)
                .collect();
            B64.decode(body)
                .map_err(|e| garbled(format!("PEM body is not base64: {e}")))?
        } else {
            bytes.to_vec()
        };
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| garbled(e.to_string()))?;
        crate::util::warn_if_shared(path, "the signing key");
        Ok(SigningKey {
            pair,
            path: path.into(),
        })
    }

    /// Where the key was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes")
    }

    /// `ed25519:<first 16 hex of sha256(public key)>`.
    pub fn key_id(&self) -> String {
        key_id_of(&self.public_key())
    }

    /// A 64-byte Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// The public key as a JWK (RFC 8037), `kid` its RFC 7638 thumbprint:
    /// `{"kty":"OKP","crv":"Ed25519","x":…,"kid":…,"alg":"EdDSA","use":"sig"}`.
    pub fn public_jwk(&self) -> serde_json::Value {
        public_jwk(&self.public_key())
    }

    /// The RFC 7638 thumbprint of the public key: the `kid` of its JWK and of its JWS.
    pub fn thumbprint(&self) -> String {
        jwk_thumbprint(&self.public_key())
    }

    /// A JWS in compact serialization (RFC 7515), `alg: EdDSA` (RFC 8037), of `payload`, with
    /// `kid` and `typ` in its protected header.
    pub fn jws(&self, typ: &str, payload: &[u8]) -> String {
        let header = serde_json::json!({"alg": "EdDSA", "kid": self.thumbprint(), "typ": typ});
        let input = format!(
            "{}.{}",
            B64URL.encode(serde_json::to_vec(&header).expect("json")),
            B64URL.encode(payload)
        );
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", B64URL.encode(sig))
    }
}

/// The JWK of a raw Ed25519 public key (RFC 8037), `kid` its RFC 7638 thumbprint.
pub fn public_jwk(public_key: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": B64URL.encode(public_key),
        "kid": jwk_thumbprint(public_key),
        "alg": "EdDSA",
        "use": "sig",
    })
}

/// RFC 7638 thumbprint of an Ed25519 OKP key: base64url(sha256 of the required members in
/// lexicographic order, no whitespace).
pub fn jwk_thumbprint(public_key: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        B64URL.encode(public_key)
    );
    B64URL.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

/// A compact JWS taken apart, its signature checked against a set of keys.
#[derive(Debug, Clone)]
pub struct VerifiedJws {
    pub header: serde_json::Value,
    pub payload: Vec<u8>,
    /// The `kid` of the key that verified it.
    pub kid: String,
}

/// Check a compact JWS against `keys` (JWKs): exactly three base64url parts, a protected header
/// with `alg: EdDSA` and a `kid` found among `keys` (an Ed25519 OKP key), and a valid
/// signature. `Err` names what failed.
pub fn verify_jws(compact: &str, keys: &[serde_json::Value]) -> Result<VerifiedJws, String> {
    let compact = compact.trim();
    let parts: Vec<&str> = compact.split('.').collect();
    if parts.len() != 3 {
        return Err(format!(
            "not a JWS in compact serialization: {} part(s) separated by '.', a JWS has 3 (header.payload.signature); truncated or not a certificate?",
            parts.len()
        ));
    }
    let decode = |what: &str, s: &str| {
        B64URL
            .decode(s)
            .map_err(|e| format!("the {what} is not base64url: {e}"))
    };
    let header: serde_json::Value = serde_json::from_slice(&decode("header", parts[0])?)
        .map_err(|e| format!("the header is not JSON: {e}"))?;
    let payload = decode("payload", parts[1])?;
    let sig = decode("signature", parts[2])?;
    if header["alg"] != "EdDSA" {
        return Err(format!(
            "the header's alg is {}, not EdDSA: lethe signs with Ed25519 only",
            header["alg"]
        ));
    }
    if header.get("crit").is_some() {
        return Err("the header has a crit member lethe does not understand".into());
    }
    let kid = header["kid"]
        .as_str()
        .ok_or("the header has no kid (key id)")?
        .to_string();
    let jwk = keys
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| {
            format!("unknown kid {kid}: no key of that id in the JWKS (signed by another key, or pass the issuer's JWKS with --jwks)")
        })?;
    if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" {
        return Err(format!("key {kid} is not an Ed25519 OKP key"));
    }
    let x = B64URL
        .decode(jwk["x"].as_str().unwrap_or(""))
        .map_err(|e| format!("key {kid}: x is not base64url: {e}"))?;
    if jwk_thumbprint(&x) != kid {
        return Err(format!("key {kid}: its kid is not the thumbprint of its x"));
    }
    let input = format!("{}.{}", parts[0], parts[1]);
    if !verify(&x, input.as_bytes(), &sig) {
        return Err(format!(
            "bad signature: the certificate was changed after it was signed, or key {kid} did not sign it"
        ));
    }
    Ok(VerifiedJws {
        header,
        payload,
        kid,
    })
}

/// File of the retired signing keys' public halves, beside the signing key.
pub const KEY_HISTORY_FILE: &str = "signing-keys.json";
const KEY_HISTORY_FORMAT: &str = "lethe-signing-keys/1";

fn next_path(path: &Path) -> PathBuf {
    path.with_extension("next.pk8")
}

/// A signing key that was replaced by `lethe keys rotate`: its public half and when it signed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RetiredKey {
    /// RFC 7638 thumbprint (the `kid` of its JWS and JWK).
    pub kid: String,
    /// `ed25519:…` (the `key_id` of the checkpoints it signed).
    pub key_id: String,
    /// base64url of the raw public key.
    pub x: String,
    /// When it became the signing key (`None`: before lethe kept a history).
    pub valid_from: Option<String>,
    /// When it was retired.
    pub valid_until: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct KeyHistory {
    format: String,
    /// When the current key became the signing key (`None`: it was the first).
    current_since: Option<String>,
    retired: Vec<RetiredKey>,
}

fn history_path(signing_key: &Path) -> PathBuf {
    signing_key.with_file_name(KEY_HISTORY_FILE)
}

fn read_history(signing_key: &Path) -> Result<KeyHistory, SignError> {
    let p = history_path(signing_key);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| SignError::Garbled {
            path: p,
            message: format!("not a signing-key history: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyHistory::default()),
        Err(source) => Err(SignError::Read { path: p, source }),
    }
}

/// Every public key that has signed for this installation: the current one and the retired ones.
#[derive(Debug, Clone)]
pub struct PublicKeys {
    current: [u8; 32],
    current_since: Option<String>,
    retired: Vec<RetiredKey>,
}

impl PublicKeys {
    /// Only `key` (no history).
    pub fn only(key: &[u8; 32]) -> PublicKeys {
        PublicKeys {
            current: *key,
            current_since: None,
            retired: Vec::new(),
        }
    }

    /// Every Ed25519 key of a JWK list (the first as the current one); `None` when it has none.
    pub fn from_jwks(keys: &[serde_json::Value]) -> Option<PublicKeys> {
        let raw: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519")
            .filter_map(|k| B64URL.decode(k["x"].as_str()?).ok())
            .filter(|x| x.len() == 32)
            .collect();
        let (first, rest) = raw.split_first()?;
        Some(PublicKeys {
            current: first.as_slice().try_into().ok()?,
            current_since: None,
            retired: rest
                .iter()
                .map(|x| RetiredKey {
                    kid: jwk_thumbprint(x),
                    key_id: key_id_of(x),
                    x: B64URL.encode(x),
                    valid_from: None,
                    valid_until: String::new(),
                })
                .collect(),
        })
    }

    /// The signing key's public half and the retired keys recorded beside it.
    pub fn of(signer: &SigningKey) -> Result<PublicKeys, SignError> {
        let h = read_history(signer.path())?;
        Ok(PublicKeys {
            current: signer.public_key(),
            current_since: h.current_since,
            retired: h.retired,
        })
    }

    /// The public key whose checkpoint key id is `key_id`.
    pub fn by_key_id(&self, key_id: &str) -> Option<Vec<u8>> {
        if key_id_of(&self.current) == key_id {
            return Some(self.current.to_vec());
        }
        self.retired
            .iter()
            .find(|k| k.key_id == key_id)
            .and_then(|k| B64URL.decode(&k.x).ok())
    }

    /// A JWK Set of every key, the current first; the validity of each under
    /// `lethe_validity` (JOSE libraries ignore the extra member).
    pub fn jwks(&self) -> serde_json::Value {
        let mut keys = vec![public_jwk(&self.current)];
        let mut validity = vec![serde_json::json!({
            "kid": jwk_thumbprint(&self.current),
            "valid_from": self.current_since,
            "valid_until": null,
        })];
        for k in self.retired.iter().rev() {
            if let Ok(x) = B64URL.decode(&k.x) {
                keys.push(public_jwk(&x));
                validity.push(serde_json::json!({
                    "kid": k.kid, "valid_from": k.valid_from, "valid_until": k.valid_until,
                }));
            }
        }
        serde_json::json!({"keys": keys, "lethe_validity": validity})
    }

    /// Every key as a JWK.
    pub fn jwk_list(&self) -> Vec<serde_json::Value> {
        self.jwks()["keys"].as_array().cloned().unwrap_or_default()
    }
}

/// Replace the signing key at `path` with a new one (`lethe keys rotate`). The old key's public
/// half goes into the history beside it (so checkpoints and certificates it signed keep
/// verifying); its private key is moved to `signing-ed25519.retired-<kid>.pk8` for the operator
/// to destroy. Steps, each safe to stop after: new key written as `….next.pk8`; history
/// written; old key moved aside; new key moved in (a stop before that is finished by the next
/// load). Returns (old, new).
pub fn rotate(
    path: &Path,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(SigningKey, SigningKey), SignError> {
    // One rotation at a time: two at once could move each other's keys aside.
    let lock = path.with_extension("rotate.lock");
    let _held = RotationLock::take(&lock)?;
    let old = SigningKey::load_or_create(path, false)?;
    let next = next_path(path);
    // With the current key in place, a `.next` key is one a stopped rotation never installed.
    let _ = std::fs::remove_file(&next);
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| SignError::Rng)?;
    write_new_private(&next, pkcs8.as_ref())?;
    let mut h = read_history(path)?;
    let at = crate::util::rfc3339(now);
    if !h.retired.iter().any(|k| k.key_id == old.key_id()) {
        h.retired.push(RetiredKey {
            kid: old.thumbprint(),
            key_id: old.key_id(),
            x: B64URL.encode(old.public_key()),
            valid_from: h.current_since.clone(),
            valid_until: at.clone(),
        });
    }
    h.format = KEY_HISTORY_FORMAT.into();
    h.current_since = Some(at);
    let hp = history_path(path);
    let tmp = hp.with_extension("json.tmp");
    let werr = |source| SignError::Write {
        path: hp.clone(),
        source,
    };
    std::fs::write(&tmp, serde_json::to_vec_pretty(&h).expect("json")).map_err(werr)?;
    std::fs::rename(&tmp, &hp).map_err(werr)?;
    let retired = path.with_file_name(format!(
        "signing-ed25519.retired-{}.pk8",
        &old.thumbprint()[..16]
    ));
    std::fs::rename(path, &retired).map_err(|source| SignError::Write {
        path: retired.clone(),
        source,
    })?;
    std::fs::rename(&next, path).map_err(|source| SignError::Write {
        path: path.into(),
        source,
    })?;
    let new = SigningKey::load_or_create(path, false)?;
    Ok((
        SigningKey {
            pair: old.pair,
            path: retired,
        },
        new,
    ))
}

/// The file that marks a rotation in progress; removed when the rotation returns.
struct RotationLock(PathBuf);

impl RotationLock {
    fn take(path: &Path) -> Result<RotationLock, SignError> {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => Ok(RotationLock(path.into())),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(SignError::Busy { path: path.into() })
            }
            Err(source) => Err(SignError::Write {
                path: path.into(),
                source,
            }),
        }
    }
}

impl Drop for RotationLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether `sig` is a valid Ed25519 signature of `msg` by `public_key` (32 raw bytes).
pub fn verify(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(msg, sig)
        .is_ok()
}

/// Write `bytes` to a new file `path` with mode 0600; `Ok(false)` if `path` already exists.
/// The content is complete and synced before the name appears (temp file, fsync, hard link).
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<bool, SignError> {
    let err = |source| SignError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {
                if let Some(dir) = dir {
                    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_round_trip_and_any_flipped_byte_fails() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("k.pk8"), true).unwrap();
        let msg = b"checkpoint 42";
        let sig = key.sign(msg);
        assert_eq!(sig.len(), 64);
        assert!(verify(&key.public_key(), msg, &sig));
        assert!(!verify(&key.public_key(), b"checkpoint 43", &sig));
        for i in 0..sig.len() {
            let mut bad = sig.clone();
            bad[i] ^= 1;
            assert!(!verify(&key.public_key(), msg, &bad), "flipped byte {i}");
        }
        let other = SigningKey::load_or_create(&dir.path().join("other.pk8"), true).unwrap();
        assert!(!verify(&other.public_key(), msg, &sig));
    }

    #[test]
    fn key_file_is_private_and_reloads_to_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().join("keys/keyring.json");
        let path = signing_key_path(&keyring);
        assert_eq!(path, dir.path().join("keys/signing-ed25519.pk8"));
        let e = SigningKey::load_or_create(&path, false).unwrap_err();
        assert!(matches!(e, SignError::Missing { .. }), "{e}");
        let a = SigningKey::load_or_create(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = SigningKey::load_or_create(&path, false).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert!(a.key_id().starts_with("ed25519:") && a.key_id().len() == 8 + 16);
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SIGNING_KEY_FILE)]);
    }

    #[test]
    fn existing_key_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pk8");
        let a = SigningKey::load_or_create(&path, true).unwrap();
        let before = std::fs::read(&path).unwrap();
        let b = SigningKey::load_or_create(&path, true).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // The low-level writer refuses too.
        assert!(!write_new_private(&path, b"other").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn garbled_key_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pk8");
        std::fs::write(&path, b"not a key").unwrap();
        let e = SigningKey::load_or_create(&path, true).unwrap_err();
        assert!(matches!(e, SignError::Garbled { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("fix:"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"not a key");
    }

    #[test]
    fn pem_pkcs8_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let der = dir.path().join("k.pk8");
        let a = SigningKey::load_or_create(&der, true).unwrap();
        let body = B64.encode(std::fs::read(&der).unwrap());
        let pem = dir.path().join("k.pem");
        std::fs::write(
            &pem,
            format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        let b = SigningKey::load_or_create(&pem, false).unwrap();
        assert_eq!(a.public_key(), b.public_key());
    }

    #[test]
    fn public_jwk_is_rfc8037() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("k.pk8"), true).unwrap();
        let jwk = key.public_jwk();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["kid"], key.thumbprint());
        let x = B64URL.decode(jwk["x"].as_str().unwrap()).unwrap();
        assert_eq!(x, key.public_key());
        assert!(!format!("{key:?}").contains(jwk["x"].as_str().unwrap()));
    }

    #[test]
    fn a_rotation_keeps_the_old_public_key_and_a_stopped_one_is_finished_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SIGNING_KEY_FILE);
        let first = SigningKey::load_or_create(&path, true).unwrap();
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let (old, new) = rotate(&path, t).unwrap();
        assert_eq!(old.public_key(), first.public_key());
        assert_ne!(new.public_key(), first.public_key());
        let keys = PublicKeys::of(&new).unwrap();
        assert_eq!(keys.by_key_id(&first.key_id()).unwrap(), first.public_key());
        assert_eq!(keys.by_key_id(&new.key_id()).unwrap(), new.public_key());
        assert_eq!(keys.jwk_list().len(), 2);
        // A rotation in progress (its lock held) refuses a second one, and changes nothing.
        let lock = RotationLock::take(&path.with_extension("rotate.lock")).unwrap();
        assert!(matches!(rotate(&path, t), Err(SignError::Busy { .. })));
        assert_eq!(
            SigningKey::load_or_create(&path, false)
                .unwrap()
                .public_key(),
            new.public_key()
        );
        drop(lock);
        // Stopped after the old key was moved aside, before the new one was moved in.
        let third = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        std::fs::rename(&path, dir.path().join("moved.pk8")).unwrap();
        write_new_private(&next_path(&path), third.as_ref()).unwrap();
        let loaded = SigningKey::load_or_create(&path, false).unwrap();
        let want = Ed25519KeyPair::from_pkcs8(third.as_ref()).unwrap();
        assert_eq!(loaded.public_key().as_slice(), want.public_key().as_ref());
        assert!(!next_path(&path).exists());
    }

    /// RFC 8037 appendix A: the example key's thumbprint (A.3) and its signature (A.4).
    #[test]
    fn rfc_8037_examples() {
        let x = B64URL
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            jwk_thumbprint(&x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        let jws = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        let (input, sig) = jws.rsplit_once('.').unwrap();
        assert!(verify(&x, input.as_bytes(), &B64URL.decode(sig).unwrap()));
    }

    #[test]
    fn a_jws_verifies_with_its_key_and_fails_on_any_flipped_byte_or_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("k.pk8"), true).unwrap();
        let other = SigningKey::load_or_create(&dir.path().join("o.pk8"), true).unwrap();
        let jws = key.jws("test", br#"{"a":1}"#);
        let keys = [key.public_jwk()];
        let v = verify_jws(&jws, &keys).unwrap();
        assert_eq!(v.payload, br#"{"a":1}"#);
        assert_eq!(v.header["alg"], "EdDSA");
        for i in 0..jws.len() {
            let mut b = jws.clone().into_bytes();
            if b[i] == b'.' {
                continue;
            }
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let flipped = String::from_utf8(b).unwrap();
            if flipped == jws {
                continue;
            }
            assert!(
                verify_jws(&flipped, &keys).is_err(),
                "byte {i} flipped still verifies"
            );
        }
        let e = verify_jws(&jws, &[other.public_jwk()]).unwrap_err();
        assert!(e.contains("unknown kid"), "{e}");
        let e = verify_jws(&jws[..jws.len() / 2], &keys).unwrap_err();
        assert!(!e.is_empty());
        let e = verify_jws("hello", &keys).unwrap_err();
        assert!(e.contains("not a JWS"), "{e}");
    }
}
