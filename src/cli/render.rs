//! What people read: run summaries, plans and outcomes as text.

use std::process::ExitCode;

/// Print what each step of a run did (and, for a job, the run record's summary).
pub(super) fn print_job_run(run: &crate::pipeline::JobRun) {
    let job = !run.record.job.is_empty();
    for step in &run.record.steps {
        if job {
            println!("== {} ({})", step.step, step.outcome);
        }
        match step.step {
            "retention" => {
                if let Some(r) = &run.retention {
                    print_retention(r);
                }
            }
            "snapshot" => {
                if let Some(s) = &run.snapshot {
                    print_snapshot_summary(s);
                }
            }
            "erasure" => {
                if let Some(e) = &run.erasure {
                    print_erasure_run(e);
                }
            }
            "analytics" => {
                if let Some(a) = &run.analytics {
                    println!(
                        "analytics: {} partition(s) written, {} already published (frozen), {} cell(s) below k published as null",
                        a.written.len(),
                        a.frozen,
                        a.suppressed
                    );
                    if a.replaced > 0 {
                        println!(
                            "analytics: {} published partition(s) replaced (--rebuild)",
                            a.replaced
                        );
                    }
                }
            }
            _ => {}
        }
        if job && let Some(e) = &step.error {
            println!("failed: {}", e.lines().next().unwrap_or_default());
        }
    }
    if job {
        println!(
            "\njob {} run {}: {} (recorded as runs/{}/{}.json)",
            run.record.job,
            run.record.run_id,
            run.record.outcome,
            run.record.job,
            run.record.run_id
        );
    }
}

/// The run's exit: the failed step's error (printed by main), else 1 for failed tenants.
pub(super) fn finish(run: crate::pipeline::JobRun) -> crate::Result<ExitCode> {
    let code = run.exit_code();
    match run.error {
        Some(e) => Err(e),
        None => Ok(ExitCode::from(code)),
    }
}

pub(super) fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

pub(super) fn print_snapshot_summary(run: &crate::pipeline::SnapshotRun) {
    println!(
        "{:<20} {:>6} {:>10} {:>11} {:>8}  run",
        "tenant", "tables", "rows", "bytes", "seconds"
    );
    let (mut rows, mut bytes) = (0u64, 0u64);
    for t in &run.done {
        let m = &t.manifest;
        rows += m.rows();
        bytes += m.bytes();
        println!(
            "{:<20} {:>6} {:>10} {:>11} {:>8.2}  {}",
            t.tenant,
            m.tables.len(),
            m.rows(),
            human_bytes(m.bytes()),
            t.seconds,
            m.run_id
        );
    }
    println!(
        "{:<20} {:>6} {:>10} {:>11}",
        format!("total ({} tenants)", run.done.len()),
        "",
        rows,
        human_bytes(bytes)
    );
    for (t, e) in &run.failed {
        println!("{t:<20} FAILED: {e}");
    }
}

pub(super) fn print_plan(plan: &crate::retention::plan::RetentionPlan) {
    use std::collections::BTreeMap;
    println!(
        "retention plan as of {} (policy {} {})",
        plan.now, plan.policy_version, plan.policy_hash
    );
    // Per category and table, summed over tenants.
    let mut by: BTreeMap<(&str, &str, &str), (usize, u64, u64, Option<&str>)> = BTreeMap::new();
    for a in &plan.actions {
        let e = by
            .entry((a.category.as_str(), a.table.as_str(), a.action))
            .or_insert((0, 0, 0, a.bound.as_deref()));
        e.0 += 1;
        e.1 += a.rows;
        e.2 += a.blobs;
    }
    println!(
        "\n{:<20} {:<20} {:<10} {:>7} {:>10} {:>7}  due if anchor <=",
        "category", "table", "action", "tenants", "rows", "blobs"
    );
    for ((cat, table, action), (n, rows, blobs, bound)) in &by {
        println!(
            "{cat:<20} {table:<20} {action:<10} {n:>7} {rows:>10} {blobs:>7}  {}",
            bound.unwrap_or("(every row: tenant terminated)")
        );
    }
    if by.is_empty() {
        println!("(nothing is due)");
    }
    if plan.pending_blobs > 0 {
        println!(
            "blob deletions left pending by an interrupted run: {}",
            plan.pending_blobs
        );
    }
    if !plan.backups.is_empty() {
        println!("\nbackups to purge (every object; every version on versioned buckets):");
        for r in &plan.backups {
            println!("  {:<20} {:<24} {}", r.tenant, r.run_id, r.rule);
        }
    }
    for t in &plan.shred_keys {
        println!("crypto-shred: the data key of tenant {t} is destroyed");
    }
    if !plan.held_back.is_empty() {
        println!("\nheld back:");
        for h in &plan.held_back {
            let what = match (&h.table, &h.run_id) {
                (_, Some(r)) => format!("run {r}"),
                (Some(t), None) => format!(
                    "{t}{}{}",
                    h.category
                        .as_ref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default(),
                    if h.rows > 0 {
                        format!(": {} rows", h.rows)
                    } else {
                        String::new()
                    }
                ),
                _ => String::new(),
            };
            println!(
                "  {:<20} {what} — {}: {}{}{}",
                h.tenant,
                h.kind,
                h.reason,
                h.placed_by
                    .as_ref()
                    .map(|b| format!(" (placed by {b})"))
                    .unwrap_or_default(),
                h.subject
                    .as_ref()
                    .map(|s| format!(" subject {s}"))
                    .unwrap_or_default()
            );
        }
    }
    if !plan.orphans.is_empty() {
        let choice = plan.orphans_policy.unwrap_or_default();
        println!(
            "\nrows of tenants the tenants table does not list (policy orphans = {}):",
            serde_json::to_string(&choice).unwrap_or_default()
        );
        for o in &plan.orphans {
            println!("  {o}");
        }
        if choice == crate::policy::Orphans::Refuse {
            println!("  `run retention` refuses while there are any (exit 1)");
        }
    }
    let t = &plan.totals;
    println!(
        "\ntotal: {} rows deleted, {} anonymized, {} flagged, {} blobs, {} backup runs; {} rows held back",
        t.rows_deleted, t.rows_anonymized, t.rows_flagged, t.blobs, t.runs_purged, t.rows_held
    );
    for b in &plan.brake {
        println!(
            "BRAKE {}: {} of {} rows is over {}; `run retention` needs --plan-hash to confirm",
            b.table, b.rows, b.of_rows, b.limit
        );
    }
    println!("plan hash: {}", plan.hash);
    println!(
        "execute exactly this plan: lethe run retention --now {} --plan-hash {}",
        plan.now, plan.hash
    );
}

pub(super) fn print_retention(run: &crate::pipeline::RetentionRun) {
    use std::collections::BTreeMap;
    let o = &run.outcome;
    let mut by: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for u in &o.units {
        *by.entry((u.category.as_str(), u.table.as_str(), u.action))
            .or_default() += u.rows.values().sum::<u64>();
    }
    println!(
        "{:<20} {:<20} {:<10} {:>10}  verified",
        "category", "table", "action", "rows"
    );
    let mut left: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for u in &o.units {
        *left
            .entry((u.category.as_str(), u.table.as_str(), u.action))
            .or_default() += u.remaining;
    }
    for ((cat, table, action), rows) in &by {
        let l = left.get(&(*cat, *table, *action)).copied().unwrap_or(0);
        println!(
            "{cat:<20} {table:<20} {action:<10} {rows:>10}  re-query: {l} left{}",
            if l > 0 { " NOT VERIFIED" } else { "" }
        );
    }
    if o.blobs_pending > 0 {
        println!(
            "blobs left pending in the outbox: {}{} — retried by the next run",
            o.blobs_pending,
            o.blobs_stopped
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        );
    }
    println!(
        "blobs deleted: {} (each existed; HEAD now: not found){}; backup runs purged: {}; keys shredded: {}",
        o.blobs_deleted,
        if o.blobs_absent > 0 {
            format!(
                "; already absent before the delete: {} (not counted as deleted)",
                o.blobs_absent
            )
        } else {
            String::new()
        },
        o.runs.len(),
        o.shredded.len()
    );
    if !run.plan.held_back.is_empty() {
        println!("held back:");
        let mut kinds: BTreeMap<(&str, &str), (usize, u64)> = BTreeMap::new();
        for h in &run.plan.held_back {
            let e = kinds.entry((h.kind, h.reason.as_str())).or_default();
            e.0 += 1;
            e.1 += h.rows;
        }
        for ((kind, reason), (n, rows)) in kinds {
            println!(
                "  {kind}: {n} item(s){} — {reason}",
                if rows > 0 {
                    format!(", {rows} rows")
                } else {
                    String::new()
                }
            );
        }
    }
    println!("plan {} executed; audit records written", o.plan_hash);
}

pub(super) fn print_request_received(r: &crate::erasure::request::Request) {
    use crate::erasure::request::Scope;
    let what = match r.scope {
        Scope::Subject => format!(
            "erasure of subject {} ({} identifier) of tenant {}",
            r.subject.as_deref().unwrap_or("?"),
            r.kind.as_deref().unwrap_or("?"),
            r.tenant
        ),
        Scope::Tenant => format!("offboarding of tenant {}", r.tenant),
    };
    println!("request {} received: {what}", r.id);
    println!(
        "  due: primary data {}, backups {}{}",
        r.due_primary,
        r.due_backups,
        if r.immediate { " (immediate)" } else { "" }
    );
    println!("  stored as {}; see `lethe requests ls`", r.key());
}

/// Print requests; returns how many are overdue at `now`.
pub(super) fn print_requests(
    listed: &[crate::erasure::request::Listed],
    certificates: &std::collections::BTreeSet<String>,
    now: chrono::DateTime<chrono::Utc>,
    json: bool,
) -> usize {
    // The certificates stored for a request, by phase.
    let certs = |r: &crate::erasure::request::Request| -> Vec<String> {
        use crate::erasure::certificate::{Phase, key};
        [Phase::Primary, Phase::Final]
            .into_iter()
            .map(|p| key(&r.tenant, &r.id, p).to_string())
            .filter(|k| certificates.contains(k))
            .collect()
    };
    let overdue = listed
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_ok_and(|r| r.overdue(now).is_some() || !r.overdue_notices(now).is_empty())
        })
        .count();
    if json {
        let v: Vec<serde_json::Value> = listed
            .iter()
            .map(|l| match l {
                Ok(r) => serde_json::json!({
                    "tenant": r.tenant, "id": r.id, "scope": r.scope, "kind": r.kind,
                    "subject": r.subject, "ref": r.reference, "state": r.state,
                    "immediate": r.immediate, "received_at": r.received_at,
                    "due_primary": r.due_primary, "due_backups": r.due_backups,
                    "overdue": r.overdue(now),
                    "overdue_notices": r.overdue_notices(now),
                    "notices": r.notices.iter().map(|n| serde_json::json!({
                        "subprocessor": n.subprocessor, "status": n.outcome(now), "due": n.due,
                        "attempts": n.attempts, "http_status": n.http_status, "last_error": n.last_error,
                    })).collect::<Vec<_>>(),
                    "certificates": certs(r),
                }),
                Err((key, why)) => serde_json::json!({"key": key, "error": why}),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serializable")
        );
        return overdue;
    }
    println!(
        "{:<16} {:<30} {:<8} {:<12} {:<13} {:<21} {:<21} {:<8} certificates",
        "tenant", "request", "scope", "kind", "state", "due primary", "due backups", "overdue"
    );
    for l in listed {
        match l {
            Ok(r) => {
                let phases: Vec<String> = certs(r)
                    .iter()
                    .filter_map(|k| k.rsplit('/').next()?.strip_suffix(".jws"))
                    .map(String::from)
                    .collect();
                println!(
                    "{:<16} {:<30} {:<8} {:<12} {:<13} {:<21} {:<21} {:<8} {}",
                    r.tenant,
                    r.id,
                    r.scope.name(),
                    r.kind.as_deref().unwrap_or("-"),
                    r.state.name(),
                    r.due_primary,
                    r.due_backups,
                    {
                        let mut o: Vec<String> =
                            r.overdue(now).map(String::from).into_iter().collect();
                        o.extend(r.overdue_notices(now).iter().map(|n| format!("notice:{n}")));
                        if o.is_empty() {
                            "-".to_string()
                        } else {
                            o.join(",")
                        }
                    },
                    if phases.is_empty() {
                        "-".to_string()
                    } else {
                        phases.join(",")
                    }
                )
            }
            Err((key, why)) => println!("UNREADABLE {key}: {why}"),
        }
    }
    println!("{} request(s), {overdue} overdue", listed.len());
    overdue
}

pub(super) fn print_request_preview(
    r: &crate::erasure::request::Request,
    found: &crate::erasure::resolve::Resolution,
) {
    println!(
        "request {} of tenant {}: {} {}, state {}",
        r.id,
        r.tenant,
        match r.scope {
            crate::erasure::request::Scope::Subject => "subject",
            crate::erasure::request::Scope::Tenant => "tenant offboarding",
        },
        r.subject.as_deref().unwrap_or(""),
        r.state.name()
    );
    if r.scope == crate::erasure::request::Scope::Subject {
        let kinds: Vec<String> = found
            .kinds()
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        println!(
            "identifiers of the person (linked in {} round(s)): {}",
            found.rounds,
            kinds.join(", ")
        );
        println!("{:<24} {:>8}", "table", "rows");
        for (t, n) in &found.rows {
            println!("{t:<24} {n:>8}");
        }
        println!("{:<24} {:>8}", "total", found.rows.values().sum::<u64>());
    }
}

pub(super) fn print_erasure_plan(p: &crate::erasure::run::ErasurePlan) {
    println!("\nerasure requests (plan {})", p.hash);
    if p.requests.is_empty() && p.unreadable.is_empty() {
        println!("  no open request");
        return;
    }
    for r in &p.requests {
        println!(
            "  {} {} {} ({} phase): {} rows to delete, {} kept; identifiers {}; {} snapshot run(s) for the backups phase{}",
            r.tenant,
            r.request,
            r.scope.name(),
            r.phase,
            r.rows(),
            r.kept(),
            if r.identifiers.is_empty() {
                "-".to_string()
            } else {
                r.identifiers
                    .iter()
                    .map(|(k, n)| format!("{k}×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            r.snapshot_runs,
            r.runs_holding
                .map(|n| format!(" ({n} hold the person, by their subject indexes)"))
                .unwrap_or_default()
        );
        for t in r.tables.iter().filter(|t| t.rows > 0) {
            match &t.kept {
                None => println!(
                    "    {:<22} {:>8} rows  {:>6} blobs  delete",
                    t.table, t.rows, t.blobs
                ),
                Some(why) => println!("    {:<22} {:>8} rows  kept: {why}", t.table, t.rows),
            }
        }
        if r.destroy_key {
            println!("    the tenant's data key is destroyed in this run (crypto-erase)");
        }
        if !r.purge_runs.is_empty() {
            println!(
                "    {} snapshot run(s) purged in this run",
                r.purge_runs.len()
            );
        }
        if let Some(w) = &r.waiting {
            println!("    waiting: {w}");
        }
        if let Some(why) = &r.stopped {
            println!("    NOT EXECUTED: {why}");
            if r.brake {
                println!(
                    "    to confirm exactly this plan: lethe run erasure --plan-hash {}",
                    p.hash
                );
            }
        }
    }
    for (key, why) in &p.unreadable {
        println!("  UNREADABLE {key}: {why}");
    }
}

pub(super) fn print_erasure_run(r: &crate::erasure::run::ErasureRun) {
    if r.done.is_empty() && r.stopped.is_empty() {
        println!("erasure: no open request to execute now");
    }
    for d in &r.done {
        let o = &d.outcome;
        let what = match d.scope {
            crate::erasure::request::Scope::Subject => "erased request",
            crate::erasure::request::Scope::Tenant => "offboarding request",
        };
        println!(
            "{what} {} of {}: {} rows, {} blobs deleted ({} already absent); now {}",
            d.request,
            d.tenant,
            o.rows.values().sum::<u64>(),
            o.blobs_deleted,
            o.blobs_already_absent,
            d.state.name()
        );
        if let Some(k) = &d.key_destroyed {
            println!(
                "    data key {} destroyed (crypto-erase): {}",
                k.key_id.as_deref().unwrap_or("-"),
                k.verified
            );
        }
        if !o.verified.is_empty() {
            println!("    verified: {}", o.verified);
        }
        for (t, n) in o.rows.iter().filter(|(_, n)| **n > 0) {
            println!("    {t:<22} {n:>8} rows deleted");
        }
        for k in &o.kept {
            if k.rows > 0 {
                println!("    {:<22} {:>8} rows kept: {}", k.table, k.rows, k.reason);
            }
        }
        if let Some(b) = &d.backups {
            println!(
                "    {} snapshot run(s) purged, every version: {}",
                b.runs_purged.len(),
                b.verified
            );
        }
        for w in &d.rewritten {
            println!(
                "    snapshot run {} rewritten without the person: {} file(s) replaced, {} rows dropped, {} old object(s) purged ({} file(s) searched)",
                w.run_id,
                w.files.len(),
                w.rows_dropped,
                w.objects_purged,
                w.files_opened
            );
        }
        for run in &d.runs_pinned {
            println!(
                "    snapshot run {run} is pinned and stays (unreadable: its key is destroyed); unpin it to finish"
            );
        }
    }
    for c in &r.certificates {
        println!(
            "{} certificate of request {} ({}): {}{}",
            c.phase.name(),
            c.request,
            c.tenant,
            c.key,
            if c.written {
                ""
            } else {
                " (a different certificate for this phase was already stored; it is kept)"
            }
        );
    }
    for (req, why) in &r.stopped {
        println!("NOT EXECUTED {req}: {why}");
    }
}
