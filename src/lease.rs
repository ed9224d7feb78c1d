//! Leases under `locks/`: at most one holder of a name at a time, across processes and
//! machines, with nothing but create-only puts (`PutMode::Create`, which S3, GCS, Azure and the
//! local directory all support).
//!
//! ```text
//! locks/<name>/<generation, 12 digits>.json   {"holder":…, "host":…, "pid":…, "acquired_at":…, "expires_at":…, "released":…}
//! ```
//!
//! The lease is the object of the highest generation. Acquiring writes generation n+1 when
//! generation n is expired or released (or absent); renewing writes n+1 with a later expiry;
//! releasing writes n+1 marked released. Because every write is create-only, two contenders
//! for the same generation cannot both win: the loser sees "already exists" and reports the
//! winner. A holder that cannot renew before its expiry has lost the lease; every destructive
//! step asks [`Lease::ensure`] first (the audit log does, before each record), so a run that lost
//! it stops before it deletes again.
//!
//! A holder killed with `kill -9` leaves a live lease until it expires; a contender on the same
//! host takes it over at once when the holder's process no longer exists (as restic does for its
//! stale locks), so a crash and an immediate re-run converge.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};
use crate::util::rfc3339;

pub const LOCKS: &str = "locks";

/// How long a lease lasts without renewal; renewed every third of it.
pub const TTL: Duration = Duration::from_secs(300);

/// One generation of a lease, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// A random id of the holding process (one per acquisition).
    pub holder: String,
    pub host: String,
    pub pid: u32,
    /// What holds it, e.g. `run retention`.
    pub purpose: String,
    pub acquired_at: String,
    pub expires_at: String,
    #[serde(default)]
    pub released: bool,
}

impl LeaseRecord {
    fn expires(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.expires_at)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Held by someone at `now`: not released, not expired, and — on this host — its process
    /// still exists.
    fn live(&self, now: DateTime<Utc>) -> bool {
        !self.released
            && self.expires().is_some_and(|e| e > now)
            && !(self.host == hostname() && !process_exists(self.pid))
    }
}

impl std::fmt::Display for LeaseRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {} on {}, since {}, until {} unless renewed)",
            self.purpose, self.pid, self.host, self.acquired_at, self.expires_at
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "another lethe run holds the lease {name}: {holder}\n  fix: wait for it to finish (a destructive run never overlaps another); if that process is gone on another machine, the lease expires at {expires}"
    )]
    Held {
        name: String,
        holder: LeaseRecord,
        expires: String,
    },
    #[error(
        "this run lost the lease {name} (it could not be renewed in time, or another run took it over): stopped before deleting anything more\n  fix: run again; the next run finishes what this one left"
    )]
    Lost { name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn gen_key(name: &str, generation: u64) -> ObjPath {
    ObjPath::from(format!("{LOCKS}/{name}/{generation:012}.json"))
}

/// The highest generation number of `name` (readable or not) and the newest readable record
/// (`None`: never taken). An unreadable generation (damaged, or planted) never blocks: the next
/// one is written after the highest number, and the holder is judged by the newest readable.
/// The live holder of lease `name` at `now`, if any (not released, not expired, and — on
/// this host — its process still exists).
pub async fn live_holder(
    store: &Store,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Option<LeaseRecord>, StoreError> {
    Ok(newest(store, name)
        .await?
        .map(|(_, r)| r)
        .filter(|r| r.live(now)))
}

impl LeaseRecord {
    /// When it was acquired.
    pub fn acquired(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.acquired_at)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

async fn newest(store: &Store, name: &str) -> Result<Option<(u64, LeaseRecord)>, StoreError> {
    let mut gens: Vec<u64> = store
        .list(&ObjPath::from(format!("{LOCKS}/{name}")))
        .await?
        .iter()
        .filter_map(|m| {
            let f = m.location.filename()?;
            let n = f.strip_suffix(".json")?;
            (n.len() == 12).then(|| n.parse().ok()).flatten()
        })
        .collect();
    gens.sort_unstable();
    let Some(&highest) = gens.last() else {
        return Ok(None);
    };
    for g in gens.into_iter().rev() {
        if let Some(b) = store.get_opt(&gen_key(name, g)).await?
            && let Ok(r) = serde_json::from_slice::<LeaseRecord>(&b)
        {
            return Ok(Some((highest, r)));
        }
    }
    // Nothing readable: as if released.
    Ok(Some((
        highest,
        LeaseRecord {
            holder: String::new(),
            host: String::new(),
            pid: 0,
            purpose: "an unreadable lease".into(),
            acquired_at: String::new(),
            expires_at: String::new(),
            released: true,
        },
    )))
}

/// Create-only put; `Ok(false)` when the generation exists already.
async fn put_new(store: &Store, key: &ObjPath, rec: &LeaseRecord) -> Result<bool, StoreError> {
    let bytes = Bytes::from(serde_json::to_vec_pretty(rec).expect("serializable"));
    store.put_create(key, bytes).await
}

struct Shared {
    store: Store,
    name: String,
    record: std::sync::Mutex<LeaseRecord>,
    /// The generation this holder acquired.
    first: u64,
    generation: AtomicU64,
    lost: AtomicBool,
}

impl Shared {
    /// Write the next generation with `f` applied; `false` (and the lease lost) when another
    /// writer took that generation.
    async fn advance(&self, f: impl FnOnce(&mut LeaseRecord)) -> Result<bool, StoreError> {
        let mut rec = self.record.lock().expect("lease record").clone();
        f(&mut rec);
        let next = self.generation.load(Ordering::SeqCst) + 1;
        if put_new(&self.store, &gen_key(&self.name, next), &rec).await? {
            self.generation.store(next, Ordering::SeqCst);
            *self.record.lock().expect("lease record") = rec;
            Ok(true)
        } else {
            self.lost.store(true, Ordering::SeqCst);
            Ok(false)
        }
    }
}

/// A held lease, renewed in the background until released or dropped.
pub struct Lease {
    shared: Arc<Shared>,
    renewer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.shared.name)
            .field("generation", &self.shared.generation.load(Ordering::SeqCst))
            .finish()
    }
}

impl Lease {
    /// Take the lease `name` for `purpose`, or fail naming the holder. Never waits.
    pub async fn acquire(store: &Store, name: &str, purpose: &str) -> Result<Lease, LeaseError> {
        Self::acquire_for(store, name, purpose, TTL).await
    }

    pub async fn acquire_for(
        store: &Store,
        name: &str,
        purpose: &str,
        ttl: Duration,
    ) -> Result<Lease, LeaseError> {
        let now = Utc::now();
        let current = newest(store, name).await?;
        if let Some((_, r)) = &current
            && r.live(now)
        {
            return Err(LeaseError::Held {
                name: name.into(),
                expires: r.expires_at.clone(),
                holder: r.clone(),
            });
        }
        let generation = current.as_ref().map_or(0, |(g, _)| g + 1);
        let mut id = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| LeaseError::Lost { name: name.into() })?;
        let rec = LeaseRecord {
            holder: crate::util::hex(&id),
            host: hostname(),
            pid: std::process::id(),
            purpose: purpose.into(),
            acquired_at: rfc3339(now),
            expires_at: rfc3339(now + ttl),
            released: false,
        };
        if !put_new(store, &gen_key(name, generation), &rec).await? {
            // Someone else took this generation between our read and our write.
            let holder = newest(store, name)
                .await?
                .map(|(_, r)| r)
                .unwrap_or(rec.clone());
            return Err(LeaseError::Held {
                name: name.into(),
                expires: holder.expires_at.clone(),
                holder,
            });
        }
        let shared = Arc::new(Shared {
            store: store.clone(),
            name: name.into(),
            record: std::sync::Mutex::new(rec),
            first: generation,
            generation: AtomicU64::new(generation),
            lost: AtomicBool::new(false),
        });
        let renewer = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let renewed = shared
                        .advance(|r| r.expires_at = rfc3339(Utc::now() + ttl))
                        .await;
                    match renewed {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(lease = %shared.name, error = %e, "lease renewal failed; retrying");
                            let expired = shared
                                .record
                                .lock()
                                .expect("lease record")
                                .expires()
                                .is_none_or(|e| e <= Utc::now());
                            if expired {
                                shared.lost.store(true, Ordering::SeqCst);
                                break;
                            }
                        }
                    }
                }
            })
        };
        tracing::debug!(lease = name, generation, "lease acquired");
        Ok(Lease { shared, renewer })
    }

    /// `Err(Lost)` once the lease may be someone else's: call before every destructive step.
    pub fn ensure(&self) -> Result<(), LeaseError> {
        let expired = self
            .shared
            .record
            .lock()
            .expect("lease record")
            .expires()
            .is_none_or(|e| e <= Utc::now());
        if self.shared.lost.load(Ordering::SeqCst) || expired {
            return Err(LeaseError::Lost {
                name: self.shared.name.clone(),
            });
        }
        Ok(())
    }

    /// Give the lease back (a next run need not wait for its expiry), marking it released and
    /// dropping the generations before it (they are history only).
    pub async fn release(self) -> Result<(), LeaseError> {
        self.renewer.abort();
        if self.shared.lost.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.shared
            .advance(|r| {
                r.released = true;
                r.expires_at = rfc3339(Utc::now());
            })
            .await?;
        let last = self.shared.generation.load(Ordering::SeqCst);
        for g in self.shared.first.saturating_sub(16)..last {
            let _ = self
                .shared
                .store
                .delete_object(&gen_key(&self.shared.name, g))
                .await;
        }
        Ok(())
    }

    /// Give the lease back leaving no trace, for a run that changed nothing (refused before it
    /// deleted anything): the generations this holder wrote are removed, so the lease is as the
    /// run found it.
    pub async fn release_untouched(self) -> Result<(), LeaseError> {
        self.renewer.abort();
        if self.shared.lost.load(Ordering::SeqCst) {
            return Ok(());
        }
        let last = self.shared.generation.load(Ordering::SeqCst);
        for g in (self.shared.first..=last).rev() {
            self.shared
                .store
                .delete_object(&gen_key(&self.shared.name, g))
                .await?;
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreSpec;

    fn store(dir: &std::path::Path) -> Store {
        Store::create(&StoreSpec::local(format!("file://{}", dir.display()))).unwrap()
    }

    #[tokio::test]
    async fn one_holder_at_a_time_then_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = Lease::acquire(&s, "retention", "run retention")
            .await
            .unwrap();
        let e = Lease::acquire(&s, "retention", "run retention")
            .await
            .unwrap_err();
        // Our own pid holds it: the second acquisition is refused and names the holder.
        assert!(
            matches!(&e, LeaseError::Held { holder, .. } if holder.pid == std::process::id()),
            "{e}"
        );
        assert!(e.to_string().contains("run retention"), "{e}");
        a.ensure().unwrap();
        a.release().await.unwrap();
        let b = Lease::acquire(&s, "retention", "run retention")
            .await
            .unwrap();
        b.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_dead_holder_on_this_host_or_an_expired_lease_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let now = Utc::now();
        let mut dead = LeaseRecord {
            holder: "x".into(),
            host: hostname(),
            pid: i32::MAX as u32, // no such process
            purpose: "run retention".into(),
            acquired_at: rfc3339(now),
            expires_at: rfc3339(now + chrono::TimeDelta::minutes(5)),
            released: false,
        };
        assert!(put_new(&s, &gen_key("r", 0), &dead).await.unwrap());
        let l = Lease::acquire(&s, "r", "run retention").await.unwrap();
        l.release().await.unwrap();

        // Another host's live lease is respected; once expired, it is taken over.
        dead.host = "elsewhere".into();
        assert!(put_new(&s, &gen_key("q", 0), &dead).await.unwrap());
        assert!(Lease::acquire(&s, "q", "x").await.is_err());
        dead.expires_at = rfc3339(now - chrono::TimeDelta::seconds(1));
        assert!(put_new(&s, &gen_key("q", 1), &dead).await.unwrap());
        Lease::acquire(&s, "q", "x")
            .await
            .unwrap()
            .release()
            .await
            .unwrap();

        // A garbled generation above the live one neither blocks nor hides the holder.
        s.put(&gen_key("g", 5), bytes::Bytes::from_static(b"not json"))
            .await
            .unwrap();
        let a = Lease::acquire(&s, "g", "x").await.unwrap();
        assert_eq!(a.shared.first, 6);
        assert!(Lease::acquire(&s, "g", "y").await.is_err(), "a is live");
        s.put(&gen_key("g", 9), bytes::Bytes::from_static(b"{"))
            .await
            .unwrap();
        let e = Lease::acquire(&s, "g", "y").await.unwrap_err();
        assert!(
            matches!(&e, LeaseError::Held { holder, .. } if holder.purpose == "x"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_lease_taken_over_is_lost_by_its_old_holder() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = Lease::acquire_for(&s, "r", "a", Duration::from_millis(300))
            .await
            .unwrap();
        // Someone writes the next generation (as a contender would after expiry).
        let g = a.shared.generation.load(Ordering::SeqCst);
        // (another holder: a record with exactly the holder's bytes would count as the
        // holder's own write, which create-only writes treat as written)
        let mut rec = a.shared.record.lock().unwrap().clone();
        rec.purpose = "contender".into();
        assert!(put_new(&s, &gen_key("r", g + 1), &rec).await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(matches!(a.ensure(), Err(LeaseError::Lost { .. })));
    }
}
