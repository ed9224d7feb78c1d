//! The local keyring: one master key and one data key (DEK) per tenant, wrapped by the master key.
//!
//! - The master key is 32 random bytes, referenced from lethe.toml (`file:PATH` holding hex,
//!   created with mode 0600 on first use, or `env:VAR`). It never appears in the store.
//! - `keyring.json` (mode 0600) holds per tenant `{key_id, wrapped_dek}` where `wrapped_dek` is
//!   base64(nonce(12) ‖ AES-256-GCM(master, dek) ‖ tag) with AAD = the master key id.
//! - The master key id is derived from the key itself, so a wrong master key is recognised
//!   before any unwrap is tried, and the error says which key the keyring expects.
//! - Parquet key metadata is the standard "key tools" key material (PKMT1 JSON carrying the
//!   wrapped DEK), so pyarrow's `CryptoFactory` and Spark can decrypt lethe snapshots with a
//!   KMS client that undoes this wrapping (see the README).
//!
//! Danger: the keyring is the only place a tenant's DEK exists. Losing it, or overwriting the
//! master key, makes every snapshot unreadable; deleting one tenant's entry is crypto-shredding.
//! This module therefore never creates a master key when a keyring already exists, and writes
//! the keyring atomically (temp file, fsync, rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::SecretRef;
use crate::util::{hex, rfc3339, sha256_hex, unhex};

const FORMAT: &str = "lethe-keyring/1";

#[derive(Debug, Error)]
pub enum KeyError {
    #[error(
        "cannot read keyring {path}: {source}\n  fix: check keys.keyring in lethe.toml and the file's permissions"
    )]
    ReadKeyring {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "keyring {path} is unreadable: {message}\n  fix: restore the keyring from its backup; do not edit it by hand"
    )]
    BadKeyring { path: PathBuf, message: String },
    #[error(
        "keyring {path} does not exist\n  fix: if this installation has made snapshots before, restore the keyring and master key from your backup (a new keyring cannot read them) or point keys.keyring at them; on a new installation `lethe run snapshot` creates them"
    )]
    NoKeyring { path: PathBuf },
    #[error("master key {reference} is missing: {message}\n  fix: {fix}")]
    MasterKeyMissing {
        reference: String,
        message: String,
        fix: String,
    },
    #[error(
        "master key {reference} is malformed: {message}\n  fix: the master key is 64 hex characters (32 bytes)"
    )]
    BadMasterKey { reference: String, message: String },
    #[error(
        "wrong master key: keyring {keyring} was made with master key {expected}, but {reference} holds {actual}\n  fix: point keys.master_key at the master key this keyring was created with"
    )]
    WrongMasterKey {
        keyring: PathBuf,
        reference: String,
        expected: String,
        actual: String,
    },
    #[error(
        "the data key {key_id} of tenant {tenant} failed to unwrap (keyring {keyring} altered?)\n  fix: restore the keyring from its backup"
    )]
    UnwrapFailed {
        keyring: PathBuf,
        tenant: String,
        key_id: String,
    },
    #[error(
        "tenant {tenant} has no data key in keyring {keyring}\n  fix: the tenant was never snapshotted, or its key was destroyed (crypto-shredded)"
    )]
    NoKey { keyring: PathBuf, tenant: String },
    #[error("cannot write keyring {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system random number generator failed")]
    Rng,
}

impl KeyError {
    pub fn is_configuration(&self) -> bool {
        !matches!(
            self,
            KeyError::Write { .. }
                | KeyError::Rng
                | KeyError::UnwrapFailed { .. }
                | KeyError::NoKey { .. }
        )
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: String,
    master_key_id: String,
    tenants: BTreeMap<String, TenantKeyEntry>,
    /// `sha256:<hex>` of the id of every data key destroyed on purpose (crypto-shredding), so a
    /// key that was shredded is told apart from one that was lost; the tenant is not named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    shredded: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantKeyEntry {
    key_id: String,
    wrapped_dek: String,
    created_at: String,
}

/// A tenant's unwrapped data key and the Parquet key metadata that identifies it.
#[derive(Clone)]
pub struct DataKey {
    pub tenant: String,
    pub key_id: String,
    pub key: Vec<u8>,
    /// PKMT1 key material (JSON) for the Parquet footer.
    pub footer_key_metadata: Vec<u8>,
}

fn aead_key(key: &DataKey) -> Option<ring::aead::LessSafeKey> {
    let alg = if key.key.len() == 16 {
        &ring::aead::AES_128_GCM
    } else {
        &ring::aead::AES_256_GCM
    };
    Some(ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(alg, &key.key).ok()?,
    ))
}

/// AES-GCM under a tenant's data key: nonce ‖ ciphertext ‖ tag, bound to `aad`. For lethe's own
/// small objects (a request's identifier, a run's subject index): a crypto-shred of the key
/// makes them unreadable with the data.
pub fn seal_bytes(key: &DataKey, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let k = aead_key(key).expect("a data key has a valid length");
    let mut nonce = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .expect("system RNG");
    let mut buf = plain.to_vec();
    k.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        ring::aead::Aad::from(aad),
        &mut buf,
    )
    .expect("sealing cannot fail below 64 GiB");
    let mut out = nonce.to_vec();
    out.extend(buf);
    out
}

/// Open what [`seal_bytes`] sealed; `None` if the key, the `aad` or a byte differs.
pub fn open_bytes(key: &DataKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 + 16 {
        return None;
    }
    let (nonce, ct) = sealed.split_at(12);
    let k = aead_key(key)?;
    let mut buf = ct.to_vec();
    let plain = k
        .open_in_place(
            ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?,
            ring::aead::Aad::from(aad),
            &mut buf,
        )
        .ok()?;
    Some(plain.to_vec())
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("tenant", &self.tenant)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// An open keyring with its master key.
pub struct Keyring {
    path: PathBuf,
    master: LessSafeKey,
    master_key_id: String,
    subject_key: [u8; 32],
    file: KeyringFile,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("master_key_id", &self.master_key_id)
            .finish_non_exhaustive()
    }
}

fn reference_name(r: &SecretRef) -> String {
    match r {
        SecretRef::Env(v) => format!("env:{v}"),
        SecretRef::File(p) => format!("file:{}", p.display()),
    }
}

/// `lethe-master-<16 hex>`: a public fingerprint of the master key.
pub fn master_key_id(master: &[u8]) -> String {
    let mut input = b"lethe master key id\0".to_vec();
    input.extend_from_slice(master);
    format!("lethe-master-{}", &sha256_hex(&input)[..16])
}

fn read_master(reference: &SecretRef) -> Result<Option<Vec<u8>>, KeyError> {
    let name = reference_name(reference);
    let text = match reference {
        SecretRef::Env(var) => match std::env::var(var) {
            Ok(v) => v,
            Err(_) => {
                return Err(KeyError::MasterKeyMissing {
                    reference: name,
                    message: format!("environment variable {var} is not set"),
                    fix: format!("export {var}=<64 hex characters>"),
                });
            }
        },
        SecretRef::File(p) => match std::fs::read_to_string(p) {
            Ok(t) => {
                crate::util::warn_if_shared(p, "the master key");
                t
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(KeyError::MasterKeyMissing {
                    reference: name,
                    message: e.to_string(),
                    fix: "check the file's permissions".into(),
                });
            }
        },
    };
    let key = unhex(text.trim()).ok_or_else(|| KeyError::BadMasterKey {
        reference: name.clone(),
        message: "not hex".into(),
    })?;
    if key.len() != 32 {
        return Err(KeyError::BadMasterKey {
            reference: name,
            message: format!("{} bytes, expected 32", key.len()),
        });
    }
    Ok(Some(key))
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KeyError::Rng)?;
    Ok(b)
}

/// Write `bytes` to `path` atomically with mode 0600 (temp file in the same directory, fsync, rename).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

impl Keyring {
    /// Open the keyring. With `create`, a missing keyring (and, if it is a missing file, the
    /// master key) is created; a missing master key next to an existing keyring is an error.
    pub fn open(path: &Path, master_ref: &SecretRef, create: bool) -> Result<Keyring, KeyError> {
        let master = read_master(master_ref)?;
        let exists = path.exists();
        let master = match (master, exists) {
            (Some(m), _) => m,
            (None, false) if create => {
                let m = random::<32>()?.to_vec();
                if let SecretRef::File(p) = master_ref {
                    write_private(p, format!("{}\n", hex(&m)).as_bytes())?;
                }
                m
            }
            (None, _) => {
                return Err(KeyError::MasterKeyMissing {
                    reference: reference_name(master_ref),
                    message: "file not found".into(),
                    fix: if exists {
                        "restore the master key this keyring was created with; a new one cannot read existing snapshots".into()
                    } else {
                        "run `lethe run snapshot` (or `lethe demo`) to create a keyring".into()
                    },
                });
            }
        };
        let id = master_key_id(&master);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &master).expect("32-byte key"));
        let file = if exists {
            let text = std::fs::read_to_string(path).map_err(|source| KeyError::ReadKeyring {
                path: path.into(),
                source,
            })?;
            let file: KeyringFile =
                serde_json::from_str(&text).map_err(|e| KeyError::BadKeyring {
                    path: path.into(),
                    message: e.to_string(),
                })?;
            if file.format != FORMAT {
                return Err(KeyError::BadKeyring {
                    path: path.into(),
                    message: format!("format {:?}, expected {FORMAT:?}", file.format),
                });
            }
            if file.master_key_id != id {
                return Err(KeyError::WrongMasterKey {
                    keyring: path.into(),
                    reference: reference_name(master_ref),
                    expected: file.master_key_id,
                    actual: id,
                });
            }
            file
        } else if create {
            let file = KeyringFile {
                format: FORMAT.into(),
                master_key_id: id.clone(),
                tenants: BTreeMap::new(),
                shredded: Vec::new(),
            };
            write_private(
                path,
                serde_json::to_string_pretty(&file)
                    .expect("serializable")
                    .as_bytes(),
            )?;
            file
        } else {
            return Err(KeyError::NoKeyring { path: path.into() });
        };
        let subject_key = {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &master);
            let tag = ring::hmac::sign(&k, b"lethe/subject-hash/v1");
            let mut out = [0u8; 32];
            out.copy_from_slice(tag.as_ref());
            out
        };
        Ok(Keyring {
            path: path.to_path_buf(),
            master: key,
            master_key_id: id,
            subject_key,
            file,
        })
    }

    /// The key of keyed subject hashes (HMAC-SHA256), derived from the master key: plans,
    /// audit records and certificates name a data subject only by `hmac:<hex>` under this key.
    pub fn subject_key(&self) -> [u8; 32] {
        self.subject_key
    }

    /// `hmac:<first 32 hex chars>` of a subject under [`Keyring::subject_key`].
    pub fn subject_hash(&self, subject: &str) -> String {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.subject_key);
        let tag = ring::hmac::sign(&k, subject.as_bytes());
        format!("hmac:{}", &hex(tag.as_ref())[..32])
    }

    pub fn master_key_id(&self) -> &str {
        &self.master_key_id
    }

    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.file.tenants.keys().map(String::as_str)
    }

    /// The tenant's data key, unwrapped.
    pub fn data_key(&self, tenant: &str) -> Result<DataKey, KeyError> {
        let entry = self
            .file
            .tenants
            .get(tenant)
            .ok_or_else(|| KeyError::NoKey {
                keyring: self.path.clone(),
                tenant: tenant.into(),
            })?;
        let failed = || KeyError::UnwrapFailed {
            keyring: self.path.clone(),
            tenant: tenant.into(),
            key_id: entry.key_id.clone(),
        };
        let key = self.unwrap_dek(&entry.wrapped_dek).ok_or_else(failed)?;
        Ok(DataKey {
            tenant: tenant.into(),
            key_id: entry.key_id.clone(),
            key,
            footer_key_metadata: key_material(&self.master_key_id, &entry.wrapped_dek, true),
        })
    }

    /// The tenant's data key, created (and the keyring saved) if the tenant has none yet.
    pub fn data_key_or_create(&mut self, tenant: &str) -> Result<DataKey, KeyError> {
        if !self.file.tenants.contains_key(tenant) {
            let dek = random::<32>()?;
            let wrapped = self.wrap(&dek)?;
            let key_id = format!("dek-{tenant}-{}", &hex(&random::<4>()?));
            self.file.tenants.insert(
                tenant.into(),
                TenantKeyEntry {
                    key_id,
                    wrapped_dek: wrapped,
                    created_at: rfc3339(chrono::Utc::now()),
                },
            );
            write_private(
                &self.path,
                serde_json::to_string_pretty(&self.file)
                    .expect("serializable")
                    .as_bytes(),
            )?;
        }
        self.data_key(tenant)
    }

    /// Destroy the tenant's data key (crypto-shredding): every snapshot encrypted under it, on
    /// every copy and every object version, becomes unreadable. Irreversible, except from a
    /// backup of the keyring. The keyring is saved atomically before this returns; `false` if
    /// the tenant had no key.
    pub fn destroy_data_key(&mut self, tenant: &str) -> Result<bool, KeyError> {
        let Some(entry) = self.file.tenants.remove(tenant) else {
            return Ok(false);
        };
        let tomb = shredded_mark(&entry.key_id);
        let new_tomb = !self.file.shredded.contains(&tomb);
        if new_tomb {
            self.file.shredded.push(tomb.clone());
        }
        let saved = write_private(
            &self.path,
            serde_json::to_string_pretty(&self.file)
                .expect("serializable")
                .as_bytes(),
        );
        if let Err(e) = saved {
            // Memory and disk must agree: the key still exists on disk.
            self.file.tenants.insert(tenant.into(), entry);
            if new_tomb {
                self.file.shredded.retain(|t| t != &tomb);
            }
            return Err(e);
        }
        Ok(true)
    }

    /// THE deleter for keys: destroy `tenant`'s data key (crypto-shredding) between an audit
    /// `start` and an `end` record, verified by the keyring no longer holding it. Every snapshot
    /// of the tenant, on every copy and every object version, becomes unreadable; backups of the
    /// keyring still hold the key and are their owner's to destroy. `Ok(false)` if there was none.
    pub async fn shred(
        &mut self,
        tenant: &str,
        audit: &mut crate::audit::AuditLog,
        plan_hash: &str,
    ) -> crate::Result<bool> {
        #[derive(Serialize)]
        struct ShredStart<'a> {
            step: &'static str,
            phase: &'static str,
            plan_hash: &'a str,
            tenant: &'a str,
        }
        #[derive(Serialize)]
        struct ShredEnd<'a> {
            step: &'static str,
            phase: &'static str,
            plan_hash: &'a str,
            tenant: &'a str,
            destroyed: bool,
            verified: &'static str,
        }
        audit
            .record(&ShredStart {
                step: "crypto-shred",
                phase: "start",
                plan_hash,
                tenant,
            })
            .await?;
        tracing::info!(tenant, "crypto-shred: start");
        let destroyed = self.destroy_data_key(tenant)?;
        let gone = !self.has(tenant);
        tracing::info!(tenant, destroyed, "crypto-shred: end");
        audit
            .record(&ShredEnd {
                step: "crypto-shred",
                phase: "end",
                plan_hash,
                tenant,
                destroyed,
                verified: if gone {
                    "the keyring no longer holds the tenant's data key"
                } else {
                    "KEY STILL PRESENT"
                },
            })
            .await?;
        Ok(destroyed)
    }

    /// Does the keyring hold a key for `tenant`?
    pub fn has(&self, tenant: &str) -> bool {
        self.file.tenants.contains_key(tenant)
    }

    /// Was the data key `key_id` destroyed on purpose (crypto-shredded) by this keyring?
    pub fn was_shredded(&self, key_id: &str) -> bool {
        self.file.shredded.contains(&shredded_mark(key_id))
    }

    fn wrap(&self, dek: &[u8]) -> Result<String, KeyError> {
        let nonce = random::<12>()?;
        let mut buf = dek.to_vec();
        self.master
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.master_key_id.as_bytes()),
                &mut buf,
            )
            .map_err(|_| KeyError::Rng)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(B64.encode(out))
    }

    fn unwrap_dek(&self, wrapped: &str) -> Option<Vec<u8>> {
        let bytes = B64.decode(wrapped).ok()?;
        if bytes.len() < 12 + 16 {
            return None;
        }
        let (nonce, ct) = bytes.split_at(12);
        let mut ct = ct.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = self
            .master
            .open_in_place(nonce, Aad::from(self.master_key_id.as_bytes()), &mut ct)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn shredded_mark(key_id: &str) -> String {
    format!("sha256:{}", sha256_hex(key_id.as_bytes()))
}

/// The keys a store's contents were made under: what must exist before anything may write
/// there again. Read from the newest committed manifest of a tenant and the newest audit
/// checkpoint — a few GETs, whatever the store's size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreKeys {
    /// The master key id of a committed manifest, and the manifest's object key.
    pub master: Option<(String, String)>,
    /// The signing key id of the newest audit checkpoint, and the checkpoint's object key.
    pub signing: Option<(String, String)>,
}

impl StoreKeys {
    pub async fn read(store: &crate::store::Store) -> Result<StoreKeys, crate::Error> {
        let mut out = StoreKeys::default();
        for tenant in crate::snapshot::read::tenants(store).await? {
            if let Some(m) = crate::snapshot::read::newest_committed(store, &tenant).await? {
                out.master = Some((
                    m.master_key_id.clone(),
                    crate::snapshot::manifest_key(&m.tenant, &m.run_id).to_string(),
                ));
                break;
            }
        }
        if let Some((key, cp)) = crate::audit::newest_checkpoint(store).await? {
            out.signing = Some((cp.key_id, key));
        }
        Ok(out)
    }
}

/// Why lethe will not create a key: the store already holds what was made under the old one.
#[derive(Debug, Error)]
#[error(
    "{what} {path} is missing, but the store already holds {evidence} made under {key_id}\n  fix: restore {path} from your backup of the key files (a new key cannot read or vouch for what exists; lethe never recreates it over existing data). If the store is really meant to start over, move its contents away first"
)]
pub struct KeyMissing {
    pub what: &'static str,
    pub path: String,
    pub evidence: String,
    pub key_id: String,
}

/// Refuse to create keys over a store made under other keys (issue: deleting `keys/` and
/// running a snapshot silently made every earlier snapshot unreadable). First use — an empty
/// store — may create them.
pub fn refuse_recreate(
    keyring: &Path,
    master: &SecretRef,
    signing_key: &Path,
    expected: &StoreKeys,
) -> Result<(), KeyMissing> {
    if let Some((id, at)) = &expected.master {
        if !keyring.exists() {
            return Err(KeyMissing {
                what: "keyring",
                path: keyring.display().to_string(),
                evidence: format!("snapshots ({at})"),
                key_id: format!("master key {id}"),
            });
        }
        if let SecretRef::File(p) = master
            && !p.exists()
        {
            return Err(KeyMissing {
                what: "master key",
                path: p.display().to_string(),
                evidence: format!("snapshots ({at})"),
                key_id: format!("master key {id}"),
            });
        }
    }
    if let Some((id, at)) = &expected.signing
        && !signing_key.exists()
    {
        return Err(KeyMissing {
            what: "audit signing key",
            path: signing_key.display().to_string(),
            evidence: format!("signed audit checkpoints ({at})"),
            key_id: format!("signing key {id}"),
        });
    }
    Ok(())
}

/// PKMT1 key material as parquet-mr / pyarrow "key tools" write it (internal storage).
pub fn key_material(master_key_id: &str, wrapped_dek: &str, footer: bool) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("keyMaterialType".into(), "PKMT1".into());
    m.insert("internalStorage".into(), true.into());
    m.insert("isFooterKey".into(), footer.into());
    if footer {
        m.insert("kmsInstanceID".into(), "DEFAULT".into());
        m.insert("kmsInstanceURL".into(), "DEFAULT".into());
    }
    m.insert("masterKeyID".into(), master_key_id.into());
    m.insert("wrappedDEK".into(), wrapped_dek.into());
    m.insert("doubleWrapping".into(), false.into());
    serde_json::to_vec(&m).expect("serializable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_round_trip_and_wrong_master() {
        let dir = tempfile::tempdir().unwrap();
        let kr = dir.path().join("keys/keyring.json");
        let mk = SecretRef::File(dir.path().join("keys/master.key"));
        let mut ring = Keyring::open(&kr, &mk, true).unwrap();
        let a = ring.data_key_or_create("acme").unwrap();
        let b = ring.data_key_or_create("globex").unwrap();
        assert_ne!(a.key, b.key);
        assert_eq!(a.key.len(), 32);
        let mode = std::fs::metadata(&kr).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let again = Keyring::open(&kr, &mk, false).unwrap();
        assert_eq!(again.data_key("acme").unwrap().key, a.key);

        let other = dir.path().join("other.key");
        std::fs::write(&other, hex(&[7u8; 32])).unwrap();
        let e = Keyring::open(&kr, &SecretRef::File(other), false).unwrap_err();
        assert!(matches!(e, KeyError::WrongMasterKey { .. }), "{e}");
    }

    #[test]
    fn missing_master_next_to_keyring_is_not_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let kr = dir.path().join("keyring.json");
        let mk = dir.path().join("master.key");
        Keyring::open(&kr, &SecretRef::File(mk.clone()), true).unwrap();
        std::fs::remove_file(&mk).unwrap();
        let e = Keyring::open(&kr, &SecretRef::File(mk.clone()), true).unwrap_err();
        assert!(matches!(e, KeyError::MasterKeyMissing { .. }), "{e}");
        assert!(!mk.exists());
    }

    #[test]
    fn crypto_shred_destroys_one_tenants_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let kr = dir.path().join("keyring.json");
        let mk = SecretRef::File(dir.path().join("master.key"));
        let mut ring = Keyring::open(&kr, &mk, true).unwrap();
        ring.data_key_or_create("acme").unwrap();
        let globex = ring.data_key_or_create("globex").unwrap();

        assert!(ring.destroy_data_key("acme").unwrap());
        assert!(!ring.destroy_data_key("acme").unwrap());
        let e = ring.data_key("acme").unwrap_err();
        assert!(matches!(e, KeyError::NoKey { .. }), "{e}");
        assert_eq!(ring.data_key("globex").unwrap().key, globex.key);

        // Persisted: a fresh open agrees, and the file no longer names the tenant.
        let reopened = Keyring::open(&kr, &mk, false).unwrap();
        assert!(reopened.data_key("acme").is_err());
        assert_eq!(reopened.data_key("globex").unwrap().key, globex.key);
        let text = std::fs::read_to_string(&kr).unwrap();
        assert!(
            !text.contains("\"acme\"") && !text.contains("dek-acme"),
            "{text}"
        );
    }
}
