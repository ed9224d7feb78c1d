//! What retention has left, measured: per tenant, table and category, the oldest surviving
//! anchor and the rows that outlived their rule; per tenant, the snapshot runs that did. This is
//! the evidence a retention attestation rests on (`lethe attest`), taken from the live database
//! and store — never from configuration alone.
//!
//! A row has *outlived its rule* at instant `at` when the plan as of `at − grace` would have
//! made it due (the same selections, legal holds and tenant terminations as a retention run),
//! and it is still there. `grace` is the time a due row may wait for the next nightly run
//! (`[certificates] attestation_grace`, default one day); rows due for less than that are
//! counted as `awaiting_next_run`, not as violations. Retention runs record a measurement with
//! no grace right after they delete (audit step `measure`).
//!
//! Counts, table and category names, tenant ids and anchor times only: no cell value.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::check::Checked;
use crate::policy::Retain;
use crate::retention::db::{self, Db};
use crate::retention::plan::{
    self, Inventory, RunInfo, Selection, Stats, TERMINATION, TenantInfo, UnitKey, bound_text,
};
use crate::span::Span;
use crate::store::Store;

/// One tenant's rows of one table under one category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryMeasure {
    pub table: String,
    pub category: String,
    /// The rule, as the plan states it (`selfies retained 90d from captured_at`).
    pub rule: String,
    /// Rows older than this (by `anchor`) had outlived the rule at the measurement; `None` for
    /// categories kept forever or by statute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<String>,
    /// Rows the category still applies to: with an anchor (a NULL anchor never expires), and
    /// for anonymize/flag rules not yet anonymized or flagged.
    pub rows: u64,
    /// The oldest surviving anchor among them, as the database prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<String>,
    /// Rows past the bound by more than the grace, not held: broken promises.
    pub past_rule: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_past_rule: Option<String>,
    /// Rows past the bound by less than the grace: due, waiting for the next run.
    #[serde(default)]
    pub awaiting_next_run: u64,
    /// Rows past the bound that a legal hold keeps.
    #[serde(default)]
    pub held: u64,
    /// The legal hold's reason (a category or table hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
}

/// One tenant's snapshot runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupMeasure {
    pub rule: String,
    pub committed_runs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_run: Option<String>,
    /// Runs the backup rule made due (more than the grace ago) that are still stored and not
    /// held or pinned.
    pub past_rule: u64,
    /// Runs past the rule kept by a legal hold or a pin.
    #[serde(default)]
    pub held: u64,
}

/// One tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantMeasure {
    pub categories: Vec<CategoryMeasure>,
    pub backups: BackupMeasure,
}

impl TenantMeasure {
    /// What broke a promise, in words (no identifiers).
    pub fn violations(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .categories
            .iter()
            .filter(|c| c.past_rule > 0)
            .map(|c| {
                format!(
                    "{} rows of {} ({}) outlived their rule ({}; oldest {})",
                    c.past_rule,
                    c.table,
                    c.category,
                    c.rule,
                    c.oldest_past_rule.as_deref().unwrap_or("?")
                )
            })
            .collect();
        if self.backups.past_rule > 0 {
            v.push(format!(
                "{} snapshot runs outlived the backup rule ({})",
                self.backups.past_rule, self.backups.rule
            ));
        }
        v
    }
}

/// A measurement of every (or one) tenant at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub at: String,
    /// `none`, or the grace given to rows due for less than it.
    pub grace: String,
    pub tenants: BTreeMap<String, TenantMeasure>,
}

/// Measure what retention left at `at`, for `only` one tenant or for every tenant of the
/// tenants table (plus `only` when the table no longer lists it). Reads only: one pass per
/// table, one listing of snapshot runs per tenant.
pub async fn measure(
    c: &Checked,
    db: &mut Db,
    store: &Store,
    only: Option<&str>,
    at: DateTime<Utc>,
    grace: Option<Span>,
) -> crate::Result<Measurement> {
    let dm = &c.data_map;
    let policy = &c.policy;
    let list = crate::source::Source::open(&c.config.source)?.tenants(dm)?;
    let mut tenants: Vec<TenantInfo> = list
        .valid
        .into_iter()
        .filter(|t| only.is_none_or(|o| o == t.id))
        .map(|t| TenantInfo {
            id: t.id,
            status: t.status,
            cancelled_at: t.cancelled_at,
        })
        .collect();
    if let Some(o) = only
        && tenants.is_empty()
    {
        // Offboarded, or never listed: its rows (if any) are measured against the rules of an
        // active tenant, its runs against the backup rule.
        tenants.push(TenantInfo {
            id: o.to_string(),
            status: "active".into(),
            cancelled_at: None,
        });
    }
    let source_holds = match &policy.legal_holds_source {
        Some(s) => db::source_holds(db, &s.table)?,
        None => vec![],
    };
    let holds = plan::holds_of(policy, &source_holds);
    let early = grace.and_then(|g| g.cutoff(at)).unwrap_or(at);
    let due_now = plan::selections(dm, policy, &tenants, &holds, at);
    let due_early = plan::selections(dm, policy, &tenants, &holds, early);

    // Every (tenant, table, category): the rows the category still applies to, any age (a
    // cutoff no anchor reaches: rows whose anchor is NULL never expire and are not counted).
    let never = chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .expect("a valid date")
        .and_utc();
    let mut surviving: Vec<(UnitKey, Selection)> = Vec::new();
    for t in &tenants {
        for table in &dm.tables {
            for cname in &table.config.categories {
                let Some(cat) = policy.categories.get(cname) else {
                    continue;
                };
                surviving.push((
                    UnitKey {
                        tenant: t.id.clone(),
                        table: table.name.clone(),
                        category: cname.clone(),
                    },
                    Selection {
                        table: table.name.clone(),
                        anchor: plan::anchor_of(cat.anchor.as_deref(), table).map(String::from),
                        cutoff: Some(never),
                        change: plan::change_of(&cat.action),
                        excluded_subjects: vec![],
                        erase: None,
                    },
                ));
            }
        }
    }

    // One pass per table answers all three kinds of selection.
    let mut answers: BTreeMap<(usize, UnitKey), Stats> = BTreeMap::new();
    for table in &dm.tables {
        let mut groups: BTreeMap<(usize, &Selection), Vec<&UnitKey>> = BTreeMap::new();
        for (kind, set) in [&surviving, &due_now, &due_early].into_iter().enumerate() {
            for (k, s) in set.iter().filter(|(_, s)| s.table == table.name) {
                groups.entry((kind, s)).or_default().push(k);
            }
        }
        if groups.is_empty() {
            continue;
        }
        let asked: Vec<(&Selection, Vec<String>)> = groups
            .iter()
            .map(|((_, s), keys)| (*s, keys.iter().map(|k| k.tenant.clone()).collect()))
            .collect();
        let (_, mut stats) = db::table_stats(db, table, &asked)?;
        for (((kind, _), keys), per_tenant) in groups.iter().zip(stats.iter_mut()) {
            for k in keys {
                let s = per_tenant.remove(&k.tenant).unwrap_or_default();
                answers.insert((*kind, (*k).clone()), s);
            }
        }
    }
    let get = |kind: usize, k: &UnitKey| answers.get(&(kind, k.clone())).cloned();

    let mut out = BTreeMap::new();
    for t in &tenants {
        let mut categories = Vec::new();
        let unit_keys = surviving
            .iter()
            .map(|(k, _)| k)
            .chain(due_now.iter().map(|(k, _)| k))
            .filter(|k| k.tenant == t.id);
        let mut seen = std::collections::BTreeSet::new();
        for k in unit_keys {
            if !seen.insert((k.table.clone(), k.category.clone())) {
                continue;
            }
            let table = dm.table(&k.table).expect("units come from the data map");
            let alive = get(0, k).unwrap_or_default();
            let now_due = get(1, k);
            let early_due = get(2, k);
            let hold = holds
                .iter()
                .find(|h| plan::hold_covers(h, &t.id, table, &k.category));
            let bound = due_now
                .iter()
                .find(|(x, _)| x == k)
                .and_then(|(_, s)| s.cutoff)
                .map(bound_text);
            let rule = rule_text(c, t, &k.category, table);
            let (mut past, mut awaiting, mut held, mut oldest_past) = (0, 0, 0, None);
            if let Some(n) = &now_due {
                if hold.is_some() {
                    held = n.rows + n.held_by_subject;
                } else {
                    let e = early_due.clone().unwrap_or_default();
                    past = e.rows;
                    oldest_past = e.oldest.clone();
                    awaiting = n.rows.saturating_sub(e.rows);
                    held = n.held_by_subject;
                }
            }
            if k.category == TERMINATION && past == 0 && awaiting == 0 && held == 0 {
                continue;
            }
            categories.push(CategoryMeasure {
                table: k.table.clone(),
                category: k.category.clone(),
                rule,
                bound,
                rows: if k.category == TERMINATION {
                    now_due.as_ref().map_or(0, |n| n.rows + n.held_by_subject)
                } else {
                    alive.rows
                },
                oldest: alive.oldest,
                past_rule: past,
                oldest_past_rule: oldest_past,
                awaiting_next_run: awaiting,
                held,
                hold: hold.filter(|_| held > 0).map(|h| h.reason.clone()),
            });
        }
        let backups = measure_backups(c, store, t, &source_holds, early).await?;
        out.insert(
            t.id.clone(),
            TenantMeasure {
                categories,
                backups,
            },
        );
    }
    Ok(Measurement {
        at: bound_text(at),
        grace: grace.map_or("none".into(), |g| g.to_string()),
        tenants: out,
    })
}

/// The rule of `category` for tenant `t` on `table`, in the plan's words.
fn rule_text(c: &Checked, t: &TenantInfo, category: &str, table: &crate::datamap::Table) -> String {
    let policy = &c.policy;
    if category == TERMINATION {
        return format!(
            "tenant cancelled; primary data goes {} after cancellation",
            policy.termination_after
        );
    }
    let cat = &policy.categories[category];
    let anchor = plan::anchor_of(cat.anchor.as_deref(), table).unwrap_or("?");
    let over = policy
        .overrides
        .get(&t.id)
        .and_then(|o| o.get(category))
        .is_some();
    let retain = match plan::retain_of(policy, &t.id, category, cat) {
        Retain::For(s) => format!("{s} from {anchor}"),
        Retain::Forever => match &cat.exception {
            Some(basis) => format!("kept by statute: {basis}"),
            None => "kept for as long as the account exists".into(),
        },
    };
    format!(
        "{category} retained {retain}{}",
        if over { " (tenant override)" } else { "" }
    )
}

/// The tenant's snapshot runs against the backup rule, as of `early`.
async fn measure_backups(
    c: &Checked,
    store: &Store,
    t: &TenantInfo,
    source_holds: &[crate::policy::LegalHold],
    early: DateTime<Utc>,
) -> crate::Result<BackupMeasure> {
    let b = &c.policy.backups;
    let (runs, _) = crate::retention::run_infos(store, &t.id).await?;
    let pins = crate::snapshot::purge::pins(store, Some(&t.id))
        .await?
        .into_iter()
        .map(|p| plan::PinInfo {
            tenant: p.tenant,
            run_id: p.run_id,
            reason: p.reason,
        })
        .collect();
    let inv = Inventory {
        tenants: vec![t.clone()],
        source_holds: source_holds.to_vec(),
        runs: runs.clone(),
        pins,
        ..Default::default()
    };
    let holds = plan::all_holds(&c.policy, &inv);
    let mut held_back = Vec::new();
    let (due, _) = plan::plan_backups(&inv, &c.policy, &holds, early, &mut held_back);
    let committed: Vec<&RunInfo> = runs.iter().filter(|r| r.committed).collect();
    Ok(BackupMeasure {
        rule: format!(
            "backups retained {} from snapshot time (the newest {} kept); {} after cancellation",
            b.retain, b.min_keep, b.after_termination
        ),
        committed_runs: committed.len() as u64,
        oldest_run: committed.iter().map(|r| r.created_at).min().map(bound_text),
        past_rule: due.len() as u64,
        held: held_back
            .iter()
            .filter(|h| h.run_id.is_some() && matches!(h.kind, "legal_hold" | "pinned"))
            .count() as u64,
    })
}
