//! Planning: `plan(inventory, policy, now) → RetentionPlan`, a pure function.
//!
//! Planning happens in two halves around one database read. [`selections`] turns the policy,
//! the data map, the tenants and the legal holds into the exact row sets that are due at `now`
//! (a [`Selection`] per tenant × table × category: an anchor column and its cutoff, or every
//! row for a terminated tenant). The inventory answers each selection with counts and ranges
//! (`retention::db`). [`plan`] then recomputes the selections, checks the inventory answered
//! exactly those, and decides — holds, exceptions, backups, the brake — without any I/O, so it
//! is tested on hand-written inventories (golden files under `tests/golden/`).
//!
//! What wins, in order: a legal hold (never deleted, reported with its reason and who placed
//! it); a statutory exception (a terminated tenant's billing records stay for their own
//! retention); a per-tenant override; the category's retention.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::RetentionSection;
use crate::datamap::{DataMap, Table};
use crate::policy::{Action, LegalHold, Policy, Retain};
use crate::util::{rfc3339, sha256_hex};

/// The category name of a terminated tenant's blanket deletion.
pub const TERMINATION: &str = "termination";

/// Uncommitted runs younger than this may still be writing; older ones are abandoned.
pub const ABANDONED_AFTER_HOURS: i64 = 24;

/// What happens to the selected rows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Delete,
    /// Listed columns set to NULL (or a keyed hash); only rows with one of them still set.
    Anonymize {
        columns: Vec<String>,
        hash: bool,
    },
    /// The flag column set to `now`; only rows not flagged yet.
    Flag {
        column: String,
    },
}

impl Change {
    pub fn verb(&self) -> &'static str {
        match self {
            Change::Delete => "delete",
            Change::Anonymize { .. } => "anonymize",
            Change::Flag { .. } => "flag",
        }
    }
}

/// Exactly which rows of one tenant's table a unit acts on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Selection {
    pub table: String,
    /// The anchor column and the cutoff: rows with `anchor <= cutoff` (a NULL anchor never
    /// expires: an unresolved ticket, a never-deleted account). `None`: every row.
    pub anchor: Option<String>,
    pub cutoff: Option<DateTime<Utc>>,
    pub change: Change,
    /// Subjects under a legal hold whose rows are excluded (plaintext: for the SQL only,
    /// never printed or logged; the plan shows keyed hashes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_subjects: Vec<String>,
    /// Erasure: only the rows holding one of a person's identifiers (plaintext, for the SQL
    /// only: never serialized, printed or logged).
    #[serde(skip)]
    pub erase: Option<SubjectMatch>,
}

/// A person's normalized identifiers by kind, matched against the data map's identifier
/// columns in their normal form (see [`crate::erasure::resolve`]).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SubjectMatch {
    pub by_kind: std::collections::BTreeMap<String, Vec<String>>,
    pub phone_country: Option<String>,
}

impl std::fmt::Debug for SubjectMatch {
    /// Counts only: the identifiers are personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, v)| format!("{k}×{}", v.len()))
            .collect();
        write!(f, "SubjectMatch({})", kinds.join(", "))
    }
}

/// Identifies a unit: one tenant's rows of one table under one category.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnitKey {
    pub tenant: String,
    pub table: String,
    pub category: String,
}

/// The inventory's answer for one selection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub rows: u64,
    /// Oldest and newest anchor among the rows, as the database prints them.
    pub oldest: Option<String>,
    pub newest: Option<String>,
    /// Primary-key range of the rows (to walk it in batches); not printed in plans.
    #[serde(default)]
    pub min_pk: Option<String>,
    #[serde(default)]
    pub max_pk: Option<String>,
    /// Rows that reference a blob.
    pub blobs: u64,
    /// Rows that would be due but belong to a subject under a legal hold.
    pub held_by_subject: u64,
}

/// A snapshot run in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub tenant: String,
    pub run_id: String,
    pub created_at: DateTime<Utc>,
    pub committed: bool,
}

/// A pinned run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinInfo {
    pub tenant: String,
    pub run_id: String,
    pub reason: String,
}

/// A tenant as the planner needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantInfo {
    pub id: String,
    /// The status column's value; only `cancelled` (or `canceled`) with a cancellation time
    /// counts as cancelled — a reactivated tenant keeps its data whatever `cancelled_at` says.
    #[serde(default = "active")]
    pub status: String,
    pub cancelled_at: Option<DateTime<Utc>>,
}

fn active() -> String {
    "active".into()
}

/// The status of the stand-in tenant that orphan rows get under `orphans = "delete"`: its rows
/// go as a terminated tenant's, its backups (if any) are left to the unknown-tenant rule.
pub const ORPHAN_STATUS: &str = "lethe:orphan";

impl TenantInfo {
    /// When the tenant was cancelled, if it is cancelled now.
    pub fn cancelled(&self) -> Option<DateTime<Utc>> {
        let s = self.status.trim().to_ascii_lowercase();
        self.cancelled_at
            .filter(|_| s == "cancelled" || s == "canceled" || s == ORPHAN_STATUS)
    }

    /// The stand-in for orphan rows of `id` (`orphans = "delete"`).
    pub fn orphan(id: &str) -> TenantInfo {
        TenantInfo {
            id: id.into(),
            status: ORPHAN_STATUS.into(),
            cancelled_at: Some(DateTime::<Utc>::UNIX_EPOCH),
        }
    }

    pub fn is_orphan(&self) -> bool {
        self.status == ORPHAN_STATUS
    }
}

/// Everything the planner knows about the world, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub tenants: Vec<TenantInfo>,
    /// Legal holds read from the source's legal-holds table (the policy file's are in the policy).
    pub source_holds: Vec<LegalHold>,
    /// Rows per (tenant, table), for the brake's share.
    pub table_rows: BTreeMap<String, BTreeMap<String, u64>>,
    /// The answer for each unit, with the selection it answers.
    pub units: Vec<(UnitKey, Selection, Stats)>,
    /// Blob deletions left pending by an interrupted run.
    pub pending_blobs: u64,
    pub runs: Vec<RunInfo>,
    pub pins: Vec<PinInfo>,
    /// Tenants that still have a data key in the keyring.
    pub keyed_tenants: Vec<String>,
    /// Tenants with a run whose time cannot be read: such runs are kept, and so is the key.
    #[serde(default)]
    pub undated_runs: Vec<String>,
    /// Rows whose tenant the tenants table does not list (see `policy.orphans`).
    #[serde(default)]
    pub orphans: Vec<crate::preflight::OrphanRows>,
    /// Tenants of the tenants table whose id is not a slug, as shown to people: left alone.
    #[serde(default)]
    pub bad_tenants: Vec<String>,
}

/// One unit to execute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowAction {
    pub tenant: String,
    pub table: String,
    pub category: String,
    pub action: &'static str,
    /// Why: the rule that made these rows due.
    pub rule: String,
    pub anchor: Option<String>,
    /// Rows with `anchor <= bound` are due (RFC 3339, microseconds when needed).
    pub bound: Option<String>,
    pub rows: u64,
    pub oldest: Option<String>,
    pub newest: Option<String>,
    /// Blobs (photos, recordings) deleted with the rows.
    pub blobs: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub rows_held_by_subject: u64,
    #[serde(skip)]
    pub selection: Selection,
    #[serde(skip)]
    pub stats: Stats,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Something that would be due but is kept, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldBack {
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Rows kept (0 for runs).
    pub rows: u64,
    /// `legal_hold`, `exception`, `pinned`, `newest_committed`, `minimum_keep`, `tenant_record`,
    /// `unknown_tenant`.
    pub kind: &'static str,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placed_by: Option<String>,
    /// Keyed hash of the held subject (never the subject itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A snapshot run to purge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunPurge {
    pub tenant: String,
    pub run_id: String,
    pub created_at: String,
    pub committed: bool,
    pub rule: String,
}

/// A table the run would change more of than the brake allows without confirmation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrakeTrip {
    /// The table, or `*` for the run's total.
    pub table: String,
    pub rows: u64,
    pub of_rows: u64,
    pub limit: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub rows_deleted: u64,
    pub rows_anonymized: u64,
    pub rows_flagged: u64,
    pub blobs: u64,
    pub runs_purged: u64,
    pub rows_held: u64,
}

/// The plan: what a retention run would do at `now`, and what it keeps back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionPlan {
    pub format: &'static str,
    pub now: String,
    pub policy_version: String,
    pub policy_hash: String,
    pub actions: Vec<RowAction>,
    pub pending_blobs: u64,
    pub backups: Vec<RunPurge>,
    /// Tenants whose data keys are destroyed (crypto-shredding) once their runs are purged.
    pub shred_keys: Vec<String>,
    pub held_back: Vec<HeldBack>,
    pub brake: Vec<BrakeTrip>,
    pub totals: Totals,
    /// Rows of tenants the tenants table does not list; with `orphans = "refuse"` (the
    /// default) a run refuses while there are any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<crate::preflight::OrphanRows>,
    /// `refuse`, `delete` or `keep` (shown only when there are orphan rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphans_policy: Option<crate::policy::Orphans>,
    /// `sha256:<hex>` over everything above.
    pub hash: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error(
        "the inventory does not answer {0}: it was taken for another policy, data map or time; plan again"
    )]
    Stale(String),
}

/// The keyed hash shown for a held subject.
pub type SubjectHash<'a> = &'a dyn Fn(&str) -> String;

/// Holds from the policy file and from the source, in one list.
pub fn all_holds<'a>(policy: &'a Policy, inv: &'a Inventory) -> Vec<&'a LegalHold> {
    holds_of(policy, &inv.source_holds)
}

/// The policy file's holds and `source_holds` (from the legal-holds table), in one list.
pub fn holds_of<'a>(policy: &'a Policy, source_holds: &'a [LegalHold]) -> Vec<&'a LegalHold> {
    policy.legal_holds.iter().chain(source_holds).collect()
}

/// Does hold `h` keep the whole unit? A category hold covers every unit of a table that has
/// that category (a row of `accounts` may be both an inactive and a deleted account); a subject
/// hold covers whole units of tables where subjects cannot be told apart (no subject columns).
pub fn hold_covers(h: &LegalHold, tenant: &str, table: &Table, category: &str) -> bool {
    h.tenant == tenant
        && h.table.as_deref().is_none_or(|t| t == table.name)
        && h.category
            .as_deref()
            .is_none_or(|c| c == category || table.config.categories.iter().any(|x| x == c))
        && (h.subject.is_none() || table.config.subject_columns.is_empty())
}

/// Is `tenant` terminated at `now` (cancelled, and its primary-data deadline passed)?
pub fn terminated(policy: &Policy, t: &TenantInfo, now: DateTime<Utc>) -> bool {
    t.cancelled()
        .and_then(|c| policy.termination_after.after(c))
        .is_some_and(|deadline| deadline <= now)
}

/// The anchor a category measures from on `table`.
pub(crate) fn anchor_of<'a>(policy_anchor: Option<&'a str>, table: &'a Table) -> Option<&'a str> {
    policy_anchor.or(table.config.time_column.as_deref())
}

pub(crate) fn change_of(a: &Action) -> Change {
    match a {
        Action::Delete => Change::Delete,
        Action::Anonymize { columns, hash } => Change::Anonymize {
            columns: columns.clone(),
            hash: *hash,
        },
        Action::Flag { column } => Change::Flag {
            column: column.clone(),
        },
    }
}

/// Every unit that is due at `now`, with its selection — including units a legal hold keeps
/// (the inventory counts them so the plan can say how much is held). Pure.
pub fn selections(
    dm: &DataMap,
    policy: &Policy,
    tenants: &[TenantInfo],
    holds: &[&LegalHold],
    now: DateTime<Utc>,
) -> Vec<(UnitKey, Selection)> {
    let mut out = Vec::new();
    for t in tenants {
        let gone = terminated(policy, t, now);
        for table in &dm.tables {
            let subjects: Vec<String> = if table.config.subject_columns.is_empty() {
                vec![]
            } else {
                let mut s: Vec<String> = holds
                    .iter()
                    .filter(|h| h.subject.is_some())
                    .filter(|h| {
                        h.tenant == t.id
                            && h.table.as_deref().is_none_or(|x| x == table.name)
                            && h.category
                                .as_deref()
                                .is_none_or(|c| table.config.categories.iter().any(|x| x == c))
                    })
                    .filter_map(|h| h.subject.clone())
                    .collect();
                s.sort();
                s.dedup();
                s
            };
            let exception = table.config.categories.iter().any(|c| {
                policy
                    .categories
                    .get(c)
                    .is_some_and(|c| c.exception.is_some())
            });
            if gone && !exception && table.name != dm.tenants.table {
                out.push((
                    UnitKey {
                        tenant: t.id.clone(),
                        table: table.name.clone(),
                        category: TERMINATION.into(),
                    },
                    Selection {
                        table: table.name.clone(),
                        anchor: None,
                        cutoff: None,
                        change: Change::Delete,
                        excluded_subjects: subjects.clone(),
                        erase: None,
                    },
                ));
                continue;
            }
            for cname in &table.config.categories {
                let Some(cat) = policy.categories.get(cname) else {
                    continue;
                };
                let Retain::For(span) = retain_of(policy, &t.id, cname, cat) else {
                    continue;
                };
                let Some(anchor) = anchor_of(cat.anchor.as_deref(), table) else {
                    continue;
                };
                let Some(cutoff) = span.cutoff(now) else {
                    continue;
                };
                out.push((
                    UnitKey {
                        tenant: t.id.clone(),
                        table: table.name.clone(),
                        category: cname.clone(),
                    },
                    Selection {
                        table: table.name.clone(),
                        anchor: Some(anchor.to_string()),
                        cutoff: Some(cutoff),
                        change: change_of(&cat.action),
                        excluded_subjects: subjects.clone(),
                        erase: None,
                    },
                ));
            }
        }
    }
    out.sort();
    out
}

/// How long `tenant` keeps `category` (`cat`): the tenant's override, except that a statutory
/// exception is never shortened by one.
pub(crate) fn retain_of(
    policy: &Policy,
    tenant: &str,
    category: &str,
    cat: &crate::policy::Category,
) -> Retain {
    policy
        .overrides
        .get(tenant)
        .and_then(|o| o.get(category))
        .copied()
        .filter(|r| cat.exception.is_none() || *r == Retain::Forever)
        .unwrap_or(cat.retain)
}

/// An instant as written in plans and SQL: RFC 3339, with microseconds only when needed.
pub fn bound_text(t: DateTime<Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        rfc3339(t)
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }
}

/// Plan retention at `now`. Pure: everything it knows comes from its arguments.
pub fn plan(
    inv: &Inventory,
    dm: &DataMap,
    policy: &Policy,
    brake: &RetentionSection,
    now: DateTime<Utc>,
    subject_hash: SubjectHash<'_>,
) -> Result<RetentionPlan, PlanError> {
    let holds = all_holds(policy, inv);
    let wanted = selections(dm, policy, &inv.tenants, &holds, now);
    let answers: BTreeMap<&UnitKey, (&Selection, &Stats)> =
        inv.units.iter().map(|(k, s, st)| (k, (s, st))).collect();
    let mut actions = Vec::new();
    let mut held_back = Vec::new();
    for (key, sel) in &wanted {
        let Some((asked, stats)) = answers.get(key) else {
            return Err(PlanError::Stale(format!(
                "tenant {} table {} category {}",
                key.tenant, key.table, key.category
            )));
        };
        if *asked != sel {
            return Err(PlanError::Stale(format!(
                "tenant {} table {} category {} (asked with another cutoff or subjects)",
                key.tenant, key.table, key.category
            )));
        }
        let table = dm
            .table(&key.table)
            .expect("selections come from the data map");
        if let Some(h) = holds
            .iter()
            .find(|h| hold_covers(h, &key.tenant, table, &key.category))
        {
            if stats.rows + stats.held_by_subject > 0 {
                held_back.push(HeldBack {
                    tenant: key.tenant.clone(),
                    table: Some(key.table.clone()),
                    category: Some(key.category.clone()),
                    run_id: None,
                    rows: stats.rows + stats.held_by_subject,
                    kind: "legal_hold",
                    reason: h.reason.clone(),
                    placed_by: Some(h.placed_by.clone()),
                    subject: None,
                });
            }
            continue;
        }
        if stats.held_by_subject > 0 {
            for s in &sel.excluded_subjects {
                let h = holds
                    .iter()
                    .find(|h| h.tenant == key.tenant && h.subject.as_deref() == Some(s.as_str()))
                    .expect("excluded subjects come from holds");
                held_back.push(HeldBack {
                    tenant: key.tenant.clone(),
                    table: Some(key.table.clone()),
                    category: Some(key.category.clone()),
                    run_id: None,
                    rows: 0,
                    kind: "legal_hold",
                    reason: h.reason.clone(),
                    placed_by: Some(h.placed_by.clone()),
                    subject: Some(subject_hash(s)),
                });
            }
            // The count is per unit, not per subject: put it on the first entry.
            let first = held_back.len() - sel.excluded_subjects.len();
            held_back[first].rows = stats.held_by_subject;
        }
        if stats.rows == 0 {
            continue;
        }
        let rule = if key.category == TERMINATION {
            let t = inv
                .tenants
                .iter()
                .find(|t| t.id == key.tenant)
                .expect("tenant");
            if t.is_orphan() {
                "orphan rows: the tenants table does not list this tenant (policy orphans = \"delete\")".to_string()
            } else {
                format!(
                    "tenant cancelled {}; primary data goes {} after cancellation",
                    bound_text(t.cancelled().expect("terminated tenants are cancelled")),
                    policy.termination_after
                )
            }
        } else {
            let cat = &policy.categories[&key.category];
            let over = policy
                .overrides
                .get(&key.tenant)
                .and_then(|o| o.get(&key.category));
            let retain = match over.copied().unwrap_or(cat.retain) {
                Retain::For(s) => s.to_string(),
                Retain::Forever => "forever".into(),
            };
            format!(
                "{} retained {retain} from {}{}",
                key.category,
                sel.anchor.as_deref().unwrap_or("?"),
                if over.is_some() {
                    " (tenant override)"
                } else {
                    ""
                }
            )
        };
        actions.push(RowAction {
            tenant: key.tenant.clone(),
            table: key.table.clone(),
            category: key.category.clone(),
            action: sel.change.verb(),
            rule,
            anchor: sel.anchor.clone(),
            bound: sel.cutoff.map(bound_text),
            rows: stats.rows,
            oldest: stats.oldest.clone(),
            newest: stats.newest.clone(),
            blobs: if sel.change == Change::Delete {
                stats.blobs
            } else {
                0
            },
            rows_held_by_subject: stats.held_by_subject,
            selection: sel.clone(),
            stats: (*stats).clone(),
        });
    }

    if policy.orphans == crate::policy::Orphans::Keep {
        for o in &inv.orphans {
            held_back.push(HeldBack {
                tenant: o.tenant.clone().unwrap_or_else(|| "(NULL)".into()),
                table: Some(o.table.clone()),
                category: None,
                run_id: None,
                rows: o.rows,
                kind: "orphan",
                reason: "the tenants table does not list this tenant (policy orphans = \"keep\")"
                    .into(),
                placed_by: None,
                subject: None,
            });
        }
    } else if policy.orphans == crate::policy::Orphans::Delete {
        // Rows without any tenant cannot be selected by tenant: they stay, and say so.
        for o in inv.orphans.iter().filter(|o| o.tenant.is_none()) {
            held_back.push(HeldBack {
                tenant: "(NULL)".into(),
                table: Some(o.table.clone()),
                category: None,
                run_id: None,
                rows: o.rows,
                kind: "orphan",
                reason: "rows whose tenant column is NULL cannot be attributed; delete or fix them by hand".into(),
                placed_by: None,
                subject: None,
            });
        }
    }
    for b in &inv.bad_tenants {
        held_back.push(HeldBack {
            tenant: b.clone(),
            table: None,
            category: None,
            run_id: None,
            rows: 0,
            kind: "invalid_tenant_id",
            reason: "the tenant id is not a slug (letters, digits, - and _, at most 64); lethe leaves the tenant alone until it has one".into(),
            placed_by: None,
            subject: None,
        });
    }

    // A terminated tenant's tables kept by statute or as its record.
    for t in inv
        .tenants
        .iter()
        .filter(|t| terminated(policy, t, now) && !t.is_orphan())
    {
        for table in &dm.tables {
            let rows = inv
                .table_rows
                .get(&table.name)
                .and_then(|m| m.get(&t.id))
                .copied()
                .unwrap_or(0);
            if rows == 0 {
                continue;
            }
            let basis = table
                .config
                .categories
                .iter()
                .filter_map(|c| policy.categories.get(c))
                .find_map(|c| c.exception.clone());
            let (kind, reason) = if let Some(b) = basis {
                ("exception", b)
            } else if table.name == dm.tenants.table {
                (
                    "tenant_record",
                    "the tenant's own row records its cancellation, which the backup deadline is measured from".to_string(),
                )
            } else {
                continue;
            };
            held_back.push(HeldBack {
                tenant: t.id.clone(),
                table: Some(table.name.clone()),
                category: None,
                run_id: None,
                rows,
                kind,
                reason,
                placed_by: None,
                subject: None,
            });
        }
    }

    let (backups, shred_keys) = plan_backups(inv, policy, &holds, now, &mut held_back);
    let brake_trips = brake_check(&actions, inv, brake);

    let mut totals = Totals::default();
    for a in &actions {
        match a.selection.change {
            Change::Delete => totals.rows_deleted += a.rows,
            Change::Anonymize { .. } => totals.rows_anonymized += a.rows,
            Change::Flag { .. } => totals.rows_flagged += a.rows,
        }
        totals.blobs += a.blobs;
    }
    totals.blobs += inv.pending_blobs;
    totals.runs_purged = backups.len() as u64;
    totals.rows_held = held_back.iter().map(|h| h.rows).sum();

    let mut plan = RetentionPlan {
        format: "lethe-retention-plan/1",
        now: bound_text(now),
        policy_version: policy.version.clone(),
        policy_hash: policy.hash.clone(),
        actions,
        pending_blobs: inv.pending_blobs,
        backups,
        shred_keys,
        held_back,
        brake: brake_trips,
        totals,
        orphans: inv.orphans.clone(),
        orphans_policy: (!inv.orphans.is_empty()).then_some(policy.orphans),
        hash: String::new(),
    };
    plan.hash = format!(
        "sha256:{}",
        sha256_hex(&serde_json::to_vec(&plan).expect("serializable"))
    );
    Ok(plan)
}

pub(crate) fn plan_backups(
    inv: &Inventory,
    policy: &Policy,
    holds: &[&LegalHold],
    now: DateTime<Utc>,
    held_back: &mut Vec<HeldBack>,
) -> (Vec<RunPurge>, Vec<String>) {
    let b = &policy.backups;
    let mut purge = Vec::new();
    let mut shred = Vec::new();
    let by_tenant: BTreeSet<&str> = inv.runs.iter().map(|r| r.tenant.as_str()).collect();
    for tenant in by_tenant {
        let mut runs: Vec<&RunInfo> = inv.runs.iter().filter(|r| r.tenant == tenant).collect();
        runs.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
        let kept = |r: &RunInfo, kind: &'static str, reason: String, by: Option<String>| HeldBack {
            tenant: tenant.to_string(),
            table: None,
            category: None,
            run_id: Some(r.run_id.clone()),
            rows: 0,
            kind,
            reason,
            placed_by: by,
            subject: None,
        };
        let Some(info) = inv
            .tenants
            .iter()
            .find(|t| t.id == tenant && !t.is_orphan())
        else {
            // A tenant the database no longer lists: nothing says when its backups may go.
            for r in runs.iter().filter(|r| r.committed) {
                if b.retain.after(r.created_at).is_some_and(|d| d <= now) {
                    held_back.push(kept(
                        r,
                        "unknown_tenant",
                        "the tenant is not in the tenants table; its backups are kept until it is (or an erasure request removes them)".into(),
                        None,
                    ));
                }
            }
            continue;
        };
        let hold = holds.iter().find(|h| h.tenant == tenant);
        let deadline = info
            .cancelled()
            .and_then(|c| b.after_termination.after(c))
            .filter(|d| *d <= now);
        let newest_committed: Vec<&str> = runs
            .iter()
            .rev()
            .filter(|r| r.committed)
            .take(b.min_keep as usize)
            .map(|r| r.run_id.as_str())
            .collect();
        for r in &runs {
            let due = if let Some(d) = deadline {
                Some(format!(
                    "tenant cancelled {}; backups go {} after cancellation ({})",
                    bound_text(info.cancelled().expect("cancelled")),
                    b.after_termination,
                    bound_text(d)
                ))
            } else if !r.committed {
                let abandoned = r.created_at + chrono::TimeDelta::hours(ABANDONED_AFTER_HOURS);
                let newer_committed = runs
                    .iter()
                    .any(|x| x.committed && x.created_at > r.created_at);
                (abandoned <= now && newer_committed).then(|| {
                    format!("never committed, abandoned more than {ABANDONED_AFTER_HOURS}h ago")
                })
            } else if b.retain.after(r.created_at).is_some_and(|d| d <= now) {
                Some(format!("backups retained {} from snapshot time", b.retain))
            } else {
                None
            };
            let Some(rule) = due else {
                continue;
            };
            if let Some(h) = hold {
                held_back.push(kept(
                    r,
                    "legal_hold",
                    h.reason.clone(),
                    Some(h.placed_by.clone()),
                ));
                continue;
            }
            if let Some(p) = inv
                .pins
                .iter()
                .find(|p| p.tenant == tenant && p.run_id == r.run_id)
            {
                held_back.push(kept(r, "pinned", p.reason.clone(), None));
                continue;
            }
            if deadline.is_none() && r.committed {
                if newest_committed.first() == Some(&r.run_id.as_str()) {
                    held_back.push(kept(
                        r,
                        "newest_committed",
                        "the newest committed snapshot is kept until the tenant's backup deadline"
                            .into(),
                        None,
                    ));
                    continue;
                }
                if newest_committed.contains(&r.run_id.as_str()) {
                    held_back.push(kept(
                        r,
                        "minimum_keep",
                        format!("backups.min_keep = {}", b.min_keep),
                        None,
                    ));
                    continue;
                }
            }
            purge.push(RunPurge {
                tenant: tenant.to_string(),
                run_id: r.run_id.clone(),
                created_at: bound_text(r.created_at),
                committed: r.committed,
                rule,
            });
        }
        let purged_all = deadline.is_some()
            && runs.iter().all(|r| {
                purge
                    .iter()
                    .any(|p| p.tenant == tenant && p.run_id == r.run_id)
            });
        if purged_all
            && b.crypto_shred_on_termination
            && inv.keyed_tenants.contains(&tenant.to_string())
            && !inv.undated_runs.iter().any(|t| t == tenant)
        {
            shred.push(tenant.to_string());
        }
    }
    // A terminated tenant whose runs are all gone already still has its key shredded.
    for t in inv.tenants.iter().filter(|t| !t.is_orphan()) {
        let past = t
            .cancelled()
            .and_then(|c| b.after_termination.after(c))
            .is_some_and(|d| d <= now);
        if past
            && b.crypto_shred_on_termination
            && !inv.runs.iter().any(|r| r.tenant == t.id)
            && !holds.iter().any(|h| h.tenant == t.id)
            && !shred.contains(&t.id)
            && inv.keyed_tenants.contains(&t.id)
            && !inv.undated_runs.contains(&t.id)
        {
            shred.push(t.id.clone());
        }
    }
    shred.sort();
    (purge, shred)
}

fn brake_check(actions: &[RowAction], inv: &Inventory, cfg: &RetentionSection) -> Vec<BrakeTrip> {
    let mut by_table: BTreeMap<&str, u64> = BTreeMap::new();
    for a in actions {
        *by_table.entry(a.table.as_str()).or_default() += a.rows;
    }
    let mut trips = Vec::new();
    let mut total = 0;
    let mut total_rows = 0;
    for (table, rows) in by_table {
        let of: u64 = inv
            .table_rows
            .get(table)
            .map(|m| m.values().sum())
            .unwrap_or(0);
        total += rows;
        total_rows += of;
        if rows >= cfg.brake_min_rows && of > 0 && rows as f64 > cfg.max_share * of as f64 {
            trips.push(BrakeTrip {
                table: table.to_string(),
                rows,
                of_rows: of,
                limit: format!("retention.max_share = {}", cfg.max_share),
            });
        }
    }
    if total > cfg.max_rows {
        trips.push(BrakeTrip {
            table: "*".into(),
            rows: total,
            of_rows: total_rows,
            limit: format!("retention.max_rows = {}", cfg.max_rows),
        });
    }
    trips
}
