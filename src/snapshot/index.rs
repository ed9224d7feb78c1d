//! The encrypted subject index of a snapshot run: for every identifier in the run (data map
//! `identifiers`), its tag — keyed SipHash-1-3 (128 bit) of `<kind>:<stored form>` under a key
//! derived from the keyring's subject key — with the files and row groups that hold it. The
//! ledger keeps the tags of every erased identifier beside their `hmac:` hashes, so erasure's
//! backups phase opens only the files the index names; a run without an index (or a ledger
//! entry without tags) is searched file by file. SipHash, not HMAC-SHA256: one tag per distinct
//! identifier of every row group of every snapshot, where HMAC cost a quarter of the snapshot.
//!
//! Parquet Bloom filters are not used for this: arrow-rs writes them unencrypted even under
//! modular encryption, as unkeyed hashes of the values. The index instead is sealed (AES-GCM)
//! under the tenant's data key and bound to its tenant and run, so a crypto-shred destroys it
//! with the data, and the hashes inside are keyed anyway.
//!
//! Object: `snapshots/tenant=<t>/run=<r>/_subjects-<generation>.idx`, listed in the manifest
//! (path, bytes, sha256) and so covered by its MAC. Format after opening: `lethe-index/2\n`,
//! the number of files (u32 LE), each file path (u32 LE length + UTF-8), then entries of 24
//! bytes: tag (16), file position (u32 LE), row group (u32 LE), sorted.

use std::collections::{BTreeSet, HashSet};

use arrow::array::{Array, AsArray};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::keys::DataKey;

const MAGIC: &[u8] = b"lethe-index/2\n";

/// What a manifest records of its run's index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IndexRef {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    pub entries: u64,
}

pub fn index_path(tenant: &str, run: &str, generation: usize) -> String {
    format!(
        "{}/tenant={tenant}/run={run}/_subjects-{generation}.idx",
        crate::snapshot::SNAPSHOTS
    )
}

/// The generation of an index path (`_subjects-<n>.idx`).
pub fn generation(path: &str) -> Option<usize> {
    path.rsplit('/')
        .next()?
        .strip_prefix("_subjects-")?
        .strip_suffix(".idx")?
        .parse()
        .ok()
}

/// The SipHash key of index tags, derived from the subject key.
pub fn tag_key(subject_key: &[u8; 32]) -> (u64, u64) {
    let d = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, subject_key),
        b"lethe/subject-index-tag/v1",
    );
    let b = d.as_ref();
    (
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
    )
}

/// The index tag of identifier `form` (already in its normal form) of `kind`.
pub fn tag(key: (u64, u64), kind: &str, form: &str) -> [u8; 16] {
    use std::hash::Hasher;
    let mut h = siphasher::sip128::SipHasher13::new_with_keys(key.0, key.1);
    h.write(kind.as_bytes());
    h.write(b":");
    h.write(form.as_bytes());
    siphasher::sip128::Hasher128::finish128(&h).as_bytes()
}

/// A tag written as 32 hex digits (as the ledger keeps it).
pub fn tag_hex(t: &[u8; 16]) -> String {
    crate::util::hex(t)
}

/// The tag of 32 hex digits.
pub fn tag_of(hex: &str) -> Option<[u8; 16]> {
    let hex = hex.strip_prefix("hmac:").unwrap_or(hex);
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Computes the tags of a table's identifiers ([`tag`] of each stored value's normal form), once
/// per distinct stored value of a batch.
#[derive(Clone)]
pub struct Tagger {
    key: (u64, u64),
    /// Per table of the data map (in scan order): (column, kind).
    tables: Vec<Vec<(String, String)>>,
    phone_country: Option<String>,
}

impl Tagger {
    pub fn new(
        subject_key: &[u8; 32],
        dm: &crate::datamap::DataMap,
        phone_country: Option<String>,
    ) -> Tagger {
        Tagger {
            key: tag_key(subject_key),
            tables: dm
                .tables
                .iter()
                .map(|t| {
                    t.config
                        .identifiers
                        .iter()
                        .map(|(c, k)| (c.clone(), k.clone()))
                        .collect()
                })
                .collect(),
            phone_country,
        }
    }

    pub fn has_identifiers(&self, table_no: usize) -> bool {
        self.tables.get(table_no).is_some_and(|c| !c.is_empty())
    }

    /// Per table of the data map: does it have identifier columns?
    pub fn tables_with_identifiers(&self) -> Vec<bool> {
        self.tables.iter().map(|c| !c.is_empty()).collect()
    }

    /// The tags of every identifier in `batches` of table `table_no` (a value may repeat);
    /// `None` when a column cannot be read as text (the index would miss it: the run then
    /// gets no index, and a rewrite searches every file).
    pub fn tags(&self, table_no: usize, batches: &[RecordBatch]) -> Option<Vec<[u8; 16]>> {
        let mut out = Vec::new();
        let Some(cols) = self.tables.get(table_no) else {
            return Some(out);
        };
        for (col, kind) in cols {
            let mut texts = Vec::with_capacity(batches.len());
            for b in batches {
                if let Some(a) = b.column_by_name(col) {
                    texts.push(arrow::compute::cast(a, &arrow::datatypes::DataType::Utf8).ok()?);
                }
            }
            // Each distinct stored value once per row group.
            let mut seen: HashSet<&str, foldhash::fast::RandomState> = HashSet::default();
            let mut form = String::new();
            for s in &texts {
                let s = s.as_string::<i32>();
                for i in 0..s.len() {
                    if s.is_valid(i) && seen.insert(s.value(i)) {
                        crate::erasure::identify::stored_form_into(
                            kind,
                            s.value(i),
                            self.phone_country.as_deref(),
                            &mut form,
                        );
                        out.push(tag(self.key, kind, &form));
                    }
                }
            }
        }
        Some(out)
    }
}

/// A run's index being built or read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubjectIndex {
    pub files: Vec<String>,
    pub entries: Vec<([u8; 16], u32, u32)>,
    /// A column could not be indexed: the run is written without an index.
    pub incomplete: bool,
}

impl SubjectIndex {
    /// Record `tags` in row group `rg` of file `path`.
    pub fn add(&mut self, path: &str, rg: u32, tags: impl IntoIterator<Item = [u8; 16]>) {
        let f = match self.files.iter().position(|p| p == path) {
            Some(i) => i,
            None => {
                self.files.push(path.to_string());
                self.files.len() - 1
            }
        } as u32;
        self.entries.extend(tags.into_iter().map(|t| (t, f, rg)));
    }

    /// Files holding any of `tags`.
    pub fn files_holding(&self, tags: &[[u8; 16]]) -> BTreeSet<&str> {
        let want: HashSet<&[u8; 16]> = tags.iter().collect();
        self.entries
            .iter()
            .filter(|(t, _, _)| want.contains(t))
            .filter_map(|(_, f, _)| self.files.get(*f as usize).map(String::as_str))
            .collect()
    }

    /// The index after a rewrite: the erased tags gone, replaced files renamed.
    /// The index after a rewrite: the `erased` tags gone; each rewritten file (old path, new
    /// path, old row group → new row group) renamed and its row groups renumbered, entries of
    /// row groups that were dropped whole removed.
    pub fn rewritten(
        &self,
        erased: &[[u8; 16]],
        renamed: &[(String, String, Vec<Option<u32>>)],
    ) -> SubjectIndex {
        let gone: HashSet<&[u8; 16]> = erased.iter().collect();
        // Per file position: its row group map, when rewritten.
        let maps: Vec<Option<&Vec<Option<u32>>>> = self
            .files
            .iter()
            .map(|p| renamed.iter().find(|r| &r.0 == p).map(|r| &r.2))
            .collect();
        SubjectIndex {
            files: self
                .files
                .iter()
                .map(|p| {
                    renamed
                        .iter()
                        .find(|r| &r.0 == p)
                        .map_or_else(|| p.clone(), |r| r.1.clone())
                })
                .collect(),
            entries: self
                .entries
                .iter()
                .filter(|(t, _, _)| !gone.contains(t))
                .filter_map(|&(t, file, rg)| match maps.get(file as usize) {
                    Some(Some(map)) => map
                        .get(rg as usize)
                        .copied()
                        .flatten()
                        .map(|new| (t, file, new)),
                    _ => Some((t, file, rg)),
                })
                .collect(),
            incomplete: false,
        }
    }

    fn encode(&mut self) -> Vec<u8> {
        self.entries.sort_unstable();
        self.entries.dedup();
        let mut out = MAGIC.to_vec();
        out.extend((self.files.len() as u32).to_le_bytes());
        for f in &self.files {
            out.extend((f.len() as u32).to_le_bytes());
            out.extend(f.as_bytes());
        }
        for (t, f, rg) in &self.entries {
            out.extend(t);
            out.extend(f.to_le_bytes());
            out.extend(rg.to_le_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<SubjectIndex> {
        let mut rest = b.strip_prefix(MAGIC)?;
        let u32_at = |r: &mut &[u8]| -> Option<u32> {
            let (h, t) = r.split_first_chunk::<4>()?;
            *r = t;
            Some(u32::from_le_bytes(*h))
        };
        let n = u32_at(&mut rest)? as usize;
        let mut files = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let len = u32_at(&mut rest)? as usize;
            if rest.len() < len {
                return None;
            }
            files.push(String::from_utf8(rest[..len].to_vec()).ok()?);
            rest = &rest[len..];
        }
        if !rest.len().is_multiple_of(24) {
            return None;
        }
        let entries = rest
            .chunks_exact(24)
            .map(|c| {
                let mut t = [0u8; 16];
                t.copy_from_slice(&c[..16]);
                (
                    t,
                    u32::from_le_bytes(c[16..20].try_into().expect("4 bytes")),
                    u32::from_le_bytes(c[20..24].try_into().expect("4 bytes")),
                )
            })
            .collect();
        Some(SubjectIndex {
            files,
            entries,
            incomplete: false,
        })
    }

    /// Sealed under the tenant's data key for run `run`.
    pub fn seal(&mut self, key: &DataKey, run: &str) -> Vec<u8> {
        let plain = self.encode();
        crate::keys::seal_bytes(key, &aad(&key.tenant, run), &plain)
    }

    /// Open what [`SubjectIndex::seal`] sealed; `None` if it does not open or parse.
    pub fn open(key: &DataKey, run: &str, sealed: &[u8]) -> Option<SubjectIndex> {
        let plain = crate::keys::open_bytes(key, &aad(&key.tenant, run), sealed)?;
        Self::decode(&plain)
    }
}

fn aad(tenant: &str, run: &str) -> Vec<u8> {
    format!("lethe/subject-index/v1\0{tenant}\0{run}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_round_trips_sealed_and_only_for_its_run() {
        let key = DataKey {
            tenant: "acme".into(),
            key_id: "k".into(),
            key: vec![3u8; 32],
            footer_key_metadata: vec![],
        };
        let mut ix = SubjectIndex::default();
        ix.add("a/part-0.parquet", 0, [[1u8; 16], [2u8; 16]]);
        ix.add("b/part-0.parquet", 1, [[2u8; 16]]);
        ix.add("a/part-0.parquet", 1, [[4u8; 16]]);
        ix.add("a/part-0.parquet", 2, [[5u8; 16]]);
        let sealed = ix.seal(&key, "r1");
        assert!(
            !sealed.windows(8).any(|w| w == b"part-0.p"),
            "paths are sealed"
        );
        let back = SubjectIndex::open(&key, "r1", &sealed).unwrap();
        assert_eq!(back, ix);
        assert_eq!(SubjectIndex::open(&key, "r2", &sealed), None);
        assert_eq!(
            back.files_holding(&[[2u8; 16]])
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["a/part-0.parquet", "b/part-0.parquet"]
        );
        let after = back.rewritten(
            &[[2u8; 16]],
            &[(
                "a/part-0.parquet".into(),
                "a/part-1.parquet".into(),
                vec![Some(0), None, Some(1)],
            )],
        );
        // Row group 1 was dropped whole; row group 2 is now row group 1.
        assert!(after.files_holding(&[[4u8; 16]]).is_empty());
        assert!(after.entries.contains(&([5u8; 16], 0, 1)));
        assert!(after.entries.contains(&([1u8; 16], 0, 0)));
        assert_eq!(
            after
                .files_holding(&[[1u8; 16]])
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["a/part-1.parquet"]
        );
        assert!(after.files_holding(&[[2u8; 16]]).is_empty());
        assert_eq!(
            tag_of("hmac:0102030405060708090a0b0c0d0e0f10").unwrap()[15],
            0x10
        );
    }
}
