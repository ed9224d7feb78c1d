//! `_manifest.json`: the commit record of a snapshot run. Readers trust only the files listed
//! here, and check each against its sha256 and row count.

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "lethe-manifest/2";
/// Manifests written before they were authenticated: readable, but `verify` reports them and
/// `restore` refuses them (anyone with write access to the store could have edited one).
pub const FORMAT_V1: &str = "lethe-manifest/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub run_id: String,
    pub tenant: String,
    /// When the run started (RFC 3339, UTC).
    pub created_at: String,
    /// When the manifest was written, i.e. the run committed.
    pub committed_at: String,
    pub tool_version: String,
    pub policy_version: String,
    /// `sha256:<hex>` of the retention policy in force.
    pub policy_hash: String,
    /// The tenant data key the files are encrypted under (the key itself is in the keyring).
    pub key_id: String,
    pub master_key_id: String,
    /// Per table, in data-map order.
    pub tables: Vec<TableEntry>,
    pub files: Vec<FileEntry>,
    /// The newest audit checkpoint when the run was taken (seq and record hash): anchors the
    /// audit log outside itself, so `audit verify` notices a log cut back before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<AuditHead>,
    /// The run's encrypted subject index (see [`crate::snapshot::index`]); absent in runs
    /// written before it existed, and in runs of data maps without identifier columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_index: Option<crate::snapshot::index::IndexRef>,
    /// sha256 of this manifest serialized with `checksum` and `mac` empty: catches a damaged
    /// manifest.
    #[serde(default)]
    pub checksum: String,
    /// `hmac-sha256:<hex>` of `checksum` under a key derived from the tenant's data key: an edit
    /// by anyone without the keyring (a path, a row count, a file's sha256) is detected.
    #[serde(default)]
    pub mac: String,
}

/// A record of the audit log as a manifest remembers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    pub seq: u64,
    pub record_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    pub table: String,
    pub rows: u64,
    /// sha256 over the Arrow schema (names, types, nullability).
    pub schema_fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub table: String,
    /// Object key relative to the store root.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    pub schema_fingerprint: String,
}

impl Manifest {
    fn digest(&self) -> String {
        let mut m = self.clone();
        m.checksum = String::new();
        m.mac = String::new();
        crate::util::sha256_hex(&serde_json::to_vec_pretty(&m).expect("serializable"))
    }

    fn mac_key(key: &crate::keys::DataKey) -> ring::hmac::Key {
        use ring::hmac;
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &key.key),
            b"lethe/manifest-mac/v1",
        );
        hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
    }

    fn mac_of(&self, key: &crate::keys::DataKey) -> String {
        let tag = ring::hmac::sign(&Self::mac_key(key), self.checksum.as_bytes());
        format!("hmac-sha256:{}", crate::util::hex(tag.as_ref()))
    }

    /// Serialize with the checksum and the MAC (under the tenant's data key) filled in.
    pub fn to_bytes(&mut self, key: &crate::keys::DataKey) -> Vec<u8> {
        self.format = FORMAT.into();
        self.checksum = self.digest();
        self.mac = self.mac_of(key);
        serde_json::to_vec_pretty(self).expect("serializable")
    }

    /// Serialize with the checksum but no MAC (test fixtures, tools without the keyring):
    /// `verify` reports such a manifest and `restore` refuses it.
    pub fn to_bytes_unauthenticated(&mut self) -> Vec<u8> {
        self.checksum = self.digest();
        self.mac = String::new();
        serde_json::to_vec_pretty(self).expect("serializable")
    }

    /// Parse and check the format, the checksum and every name in it (the MAC needs the
    /// tenant's key: [`Manifest::authenticate`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != FORMAT && m.format != FORMAT_V1 {
            return Err(format!("format {:?}, expected {FORMAT:?}", m.format));
        }
        if m.checksum != m.digest() {
            return Err("checksum mismatch: the manifest was edited or damaged".into());
        }
        m.check_names()?;
        Ok(m)
    }

    /// Every name in a manifest is checked as strictly as data-map names, and every path must
    /// be exactly where lethe writes that table's parts: a manifest can never make a reader
    /// touch anything outside its own run (or write outside a restore's `--out`).
    fn check_names(&self) -> Result<(), String> {
        use crate::util::is_safe_ident;
        for (what, v) in [("tenant", &self.tenant), ("run", &self.run_id)] {
            if !is_safe_ident(v) {
                return Err(format!("{what} id {v:?} is not a plain identifier"));
            }
        }
        for t in &self.tables {
            if !is_safe_ident(&t.table) {
                return Err(format!(
                    "table name {:?} is not a plain identifier",
                    t.table
                ));
            }
        }
        for f in &self.files {
            if !is_safe_ident(&f.table) {
                return Err(format!(
                    "table name {:?} is not a plain identifier",
                    f.table
                ));
            }
            let prefix = format!(
                "{}/tenant={}/run={}/{}/part-",
                super::SNAPSHOTS,
                self.tenant,
                self.run_id,
                f.table
            );
            let ok = f
                .path
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".parquet"))
                .is_some_and(|n| {
                    !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit())
                });
            if !ok {
                return Err(format!(
                    "file path {:?} is not a part of table {} in this run",
                    f.path, f.table
                ));
            }
        }
        if let Some(ix) = &self.subject_index {
            let ok = crate::snapshot::index::generation(&ix.path).is_some_and(|g| {
                crate::snapshot::index::index_path(&self.tenant, &self.run_id, g) == ix.path
            });
            if !ok {
                return Err(format!(
                    "subject index path {:?} is not this run's index",
                    ix.path
                ));
            }
        }
        Ok(())
    }

    /// `Err(why)` unless the MAC proves the manifest was written with the tenant's data key.
    pub fn authenticate(&self, key: &crate::keys::DataKey) -> Result<(), String> {
        if self.mac.is_empty() {
            return Err(format!(
                "the manifest is not authenticated ({}: written before lethe signed manifests with the tenant key); anyone with write access to the store could have edited it — take a new snapshot",
                self.format
            ));
        }
        if self.key_id != key.key_id {
            return Err(format!(
                "the manifest names data key {}, the keyring holds {}",
                self.key_id, key.key_id
            ));
        }
        let tag = self
            .mac
            .strip_prefix("hmac-sha256:")
            .and_then(crate::util::unhex)
            .unwrap_or_default();
        if ring::hmac::verify(&Self::mac_key(key), self.checksum.as_bytes(), &tag).is_err() {
            return Err(
                "MAC mismatch: the manifest was edited by someone without the tenant's key".into(),
            );
        }
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// A stable fingerprint of an Arrow schema.
pub fn schema_fingerprint(schema: &arrow::datatypes::Schema) -> String {
    let mut s = String::new();
    for f in schema.fields() {
        s.push_str(&format!(
            "{}:{}:{}\n",
            f.name(),
            f.data_type(),
            f.is_nullable()
        ));
    }
    format!("sha256:{}", crate::util::sha256_hex(s.as_bytes()))
}
