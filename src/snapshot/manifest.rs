//! `_manifest.json`: the commit record of a snapshot run. Readers trust only the files listed
//! here, and check each against its sha256 and row count.

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "lethe-manifest/1";

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
    /// sha256 of this manifest serialized with `checksum` empty: catches an edited or damaged
    /// manifest. (Not a signature: the audit chain anchors manifests against deliberate edits.)
    #[serde(default)]
    pub checksum: String,
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
        crate::util::sha256_hex(&serde_json::to_vec_pretty(&m).expect("serializable"))
    }

    /// Serialize with the checksum filled in.
    pub fn to_bytes(&mut self) -> Vec<u8> {
        self.checksum = self.digest();
        serde_json::to_vec_pretty(self).expect("serializable")
    }

    /// Parse and check the format and checksum.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT:?}", m.format));
        }
        if m.checksum != m.digest() {
            return Err("checksum mismatch: the manifest was edited or damaged".into());
        }
        Ok(m)
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
