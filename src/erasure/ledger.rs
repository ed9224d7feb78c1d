//! The erasure ledger: `ledger/tenant=<t>/<request-id>.json`, one create-only entry per erased
//! subject, holding the keyed hashes (`hmac:…` of `<kind>:<normalized identifier>` under the
//! keyring's subject key) of every identifier of the person and the erasure time. A restore
//! drops every row of a run taken before that time that holds one of them: an erased person
//! never comes back from a backup. No plaintext identifier is ever written here.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use crate::store::Store;

pub const FORMAT: &str = "lethe-ledger/1";
pub const PREFIX: &str = "ledger";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub format: String,
    pub tenant: String,
    pub request: String,
    /// When the primary phase started deleting: rows of runs taken before it may hold the person.
    pub erased_at: String,
    /// Keyed hashes of every identifier of the person.
    pub subjects: Vec<String>,
    /// Their subject-index tags (keyed SipHash, hex), to find them in snapshot runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index_tags: Vec<String>,
    /// Tables whose rows of the person were kept (legal hold, statutory exception): their
    /// rows are kept in backups and restores too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_tables: Vec<String>,
}

pub fn key(tenant: &str, request: &str) -> ObjPath {
    ObjPath::from(format!("{PREFIX}/tenant={tenant}/{request}.json"))
}

/// Write the entry of `request`, unless one is there: the first one was written before any
/// row went, so it holds every identifier (a re-run after a crash may resolve fewer).
pub async fn record(
    store: &Store,
    tenant: &str,
    request: &str,
    erased_at: DateTime<Utc>,
    mut subjects: Vec<String>,
    mut index_tags: Vec<String>,
) -> crate::Result<()> {
    let k = key(tenant, request);
    index_tags.sort();
    index_tags.dedup();
    if store.head(&k).await?.is_some() {
        return Ok(());
    }
    subjects.sort();
    subjects.dedup();
    let e = Entry {
        format: FORMAT.into(),
        tenant: tenant.into(),
        request: request.into(),
        erased_at: crate::util::rfc3339(erased_at),
        subjects,
        index_tags,
        kept_tables: Vec::new(),
    };
    let bytes = Bytes::from(serde_json::to_vec_pretty(&e).expect("serializable"));
    if !store.put_create(&k, bytes).await? {
        // Written by an earlier attempt between our HEAD and PUT: that one stands.
        tracing::debug!(tenant, request, "ledger entry exists already");
    }
    Ok(())
}

/// When the primary phase is verified: the entry gets the completion time (runs taken before it
/// may hold the person), the union of the identifiers known at the start and now, and the
/// tables whose rows were kept. Written over the first entry (under the destructive lease).
pub async fn complete(
    store: &Store,
    tenant: &str,
    request: &str,
    done: DateTime<Utc>,
    subjects: Vec<String>,
    index_tags: Vec<String>,
    kept: &[crate::erasure::request::KeptRows],
) -> crate::Result<()> {
    let mut e = entry(store, tenant, request).await?.unwrap_or(Entry {
        format: FORMAT.into(),
        tenant: tenant.into(),
        request: request.into(),
        erased_at: String::new(),
        subjects: Vec::new(),
        index_tags: Vec::new(),
        kept_tables: Vec::new(),
    });
    e.erased_at = crate::util::rfc3339(done);
    e.subjects.extend(subjects);
    e.subjects.sort();
    e.subjects.dedup();
    e.index_tags.extend(index_tags);
    e.index_tags.sort();
    e.index_tags.dedup();
    e.kept_tables = kept.iter().map(|k| k.table.clone()).collect();
    let bytes = Bytes::from(serde_json::to_vec_pretty(&e).expect("serializable"));
    store.put(&key(tenant, request), bytes).await?;
    Ok(())
}

/// The entry of one request, if written.
pub async fn entry(store: &Store, tenant: &str, request: &str) -> crate::Result<Option<Entry>> {
    let Some(b) = store.get_opt(&key(tenant, request)).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&b).map(Some).map_err(|e| {
        crate::Error::Failed(format!(
            "erasure ledger entry of request {request} of tenant {tenant} is not readable: {e}"
        ))
    })
}

/// The ledger of `tenant`: each erased subject hash with the latest time it was erased and
/// the tables its rows were kept in.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub erased: BTreeMap<String, (DateTime<Utc>, BTreeSet<String>)>,
}

impl Ledger {
    /// Subjects erased at or after `taken` (a run taken then may still hold them; run times
    /// have whole seconds, so the same second counts as after), with their kept tables.
    pub fn after(&self, taken: DateTime<Utc>) -> BTreeMap<String, BTreeSet<String>> {
        self.erased
            .iter()
            .filter(|(_, (t, _))| *t >= taken)
            .map(|(s, (_, kept))| (s.clone(), kept.clone()))
            .collect()
    }
    pub fn is_empty(&self) -> bool {
        self.erased.is_empty()
    }
}

/// Read every entry of `tenant`. An unreadable entry is an error: a restore that skipped it
/// could bring an erased person back.
pub async fn read(store: &Store, tenant: &str) -> crate::Result<Ledger> {
    let mut out = Ledger::default();
    for m in store
        .list(&ObjPath::from(format!("{PREFIX}/tenant={tenant}")))
        .await?
    {
        let bytes = store.get(&m.location).await?;
        let e: Entry = serde_json::from_slice(&bytes)
            .ok()
            .filter(|e: &Entry| e.format == FORMAT && e.tenant == tenant)
            .ok_or_else(|| {
                crate::Error::Failed(format!(
                    "erasure ledger entry {} is not readable; nothing is restored without the whole ledger\n  fix: restore the entry from the store's versions or backups",
                    m.location
                ))
            })?;
        let at = DateTime::parse_from_rfc3339(&e.erased_at)
            .map_err(|_| {
                crate::Error::Failed(format!(
                    "erasure ledger entry {} has no valid erased_at",
                    m.location
                ))
            })?
            .with_timezone(&Utc);
        for s in e.subjects {
            let (t, kept) = out.erased.entry(s).or_insert((at, BTreeSet::new()));
            if at > *t {
                *t = at;
            }
            kept.extend(e.kept_tables.iter().cloned());
        }
    }
    Ok(out)
}

/// Drops the rows of erased people from snapshot batches: a row goes when one of its identifier
/// columns (data map `identifiers`), in its stored normal form, hashes to a subject the ledger
/// lists as erased after the run was taken.
pub struct Scrub<'a> {
    /// Erased subject hashes, each with the tables its rows are kept in.
    pub subjects: BTreeMap<String, BTreeSet<String>>,
    /// Their subject-index tags, and whether some of their rows are kept (then they stay in
    /// the index). `None`: not known (search every file).
    pub index_tags: Option<Vec<([u8; 16], bool)>>,
    pub keyring: &'a crate::keys::Keyring,
    pub data_map: &'a crate::datamap::DataMap,
    pub phone_country: Option<String>,
}

/// What a [`Scrub`] has decided about identifier values it has seen, so that each distinct
/// stored value is normalized and hashed once per file rather than once per row. Bounded: it
/// forgets everything past [`ScrubCache::LIMIT`] values.
#[derive(Default)]
pub struct ScrubCache {
    /// Per identifier column of the table (data map order): stored value → erased.
    seen: Vec<std::collections::HashMap<Box<str>, bool, foldhash::fast::RandomState>>,
    /// The erased subjects' hashes as bytes, with whether their rows in this table are kept.
    subjects: Option<(String, std::collections::HashMap<[u8; 16], bool>)>,
}

impl ScrubCache {
    pub const LIMIT: usize = 1 << 20;
}

impl Scrub<'_> {
    /// `batch` of `table` without the rows of erased people, and how many were dropped;
    /// verdicts are remembered in `cache` (one cache per file of the table).
    pub fn filter_cached(
        &self,
        table: &str,
        batch: arrow::record_batch::RecordBatch,
        cache: &mut ScrubCache,
    ) -> Result<(arrow::record_batch::RecordBatch, u64), arrow::error::ArrowError> {
        use arrow::array::{Array, AsArray, BooleanArray};
        if self.subjects.is_empty() {
            return Ok((batch, 0));
        }
        let Some(t) = self.data_map.tables.iter().find(|t| t.name == table) else {
            return Ok((batch, 0));
        };
        if cache.subjects.as_ref().is_none_or(|(t, _)| t != table) {
            let decoded = self
                .subjects
                .iter()
                .filter_map(|(h, kept)| {
                    crate::snapshot::index::tag_of(h).map(|b| (b, kept.contains(table)))
                })
                .collect();
            cache.subjects = Some((table.to_string(), decoded));
            cache.seen.clear();
        }
        let (_, subjects) = cache.subjects.as_ref().expect("set above");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.keyring.subject_key());
        let mut keep = vec![true; batch.num_rows()];
        let (mut input, mut form) = (String::new(), String::new());
        for (c, (col, kind)) in t.config.identifiers.iter().enumerate() {
            let Some(a) = batch.column_by_name(col) else {
                continue;
            };
            let s = arrow::compute::cast(a, &arrow::datatypes::DataType::Utf8)?;
            let s = s.as_string::<i32>();
            if cache.seen.len() <= c {
                cache.seen.resize_with(c + 1, Default::default);
            }
            let seen = &mut cache.seen[c];
            if seen.len() > ScrubCache::LIMIT {
                seen.clear();
            }
            for (i, k) in keep.iter_mut().enumerate() {
                if !*k || !s.is_valid(i) {
                    continue;
                }
                let raw = s.value(i);
                let erased = match seen.get(raw) {
                    Some(v) => *v,
                    None => {
                        // The subject hash (`hmac:` + 32 hex digits) is the first 16 bytes of
                        // HMAC-SHA256 over `<kind>:<stored form>`.
                        crate::erasure::identify::stored_form_into(
                            kind,
                            raw,
                            self.phone_country.as_deref(),
                            &mut form,
                        );
                        input.clear();
                        input.push_str(kind);
                        input.push(':');
                        input.push_str(&form);
                        let tag = ring::hmac::sign(&key, input.as_bytes());
                        let h: [u8; 16] = tag.as_ref()[..16].try_into().expect("32 bytes");
                        let v = subjects.get(&h).is_some_and(|kept| !kept);
                        seen.insert(raw.into(), v);
                        v
                    }
                };
                if erased {
                    *k = false;
                }
            }
        }
        let dropped = keep.iter().filter(|k| !**k).count() as u64;
        if dropped == 0 {
            return Ok((batch, 0));
        }
        let mask = BooleanArray::from(keep);
        Ok((arrow::compute::filter_record_batch(&batch, &mask)?, dropped))
    }
}
