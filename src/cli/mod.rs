//! The command line: argument parsing (`args`), rendering for people (`render`), and the
//! dispatch from a parsed command to the library, mapping errors to exit codes (0 success, 1
//! the job failed or found a violation, 2 bad usage or configuration). `src/main.rs` only
//! calls [`main`].

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::keys::Keyring;
use crate::snapshot::read;
use crate::store::Store;
use clap::Parser;

mod args;
mod render;

use args::*;
use render::*;

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let level = if cli.quiet {
        "warn"
    } else {
        ["info", "debug", "trace"][cli.verbose.min(2) as usize]
    };
    let filter = EnvFilter::try_from_env("LETHE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("lethe={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.compact().without_time().init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

/// The whole command line: parse, log, run, map the outcome to an exit code.
pub fn main() -> ExitCode {
    // Die quietly on a closed pipe (`lethe snapshot ls | head`), as command-line tools do,
    // instead of panicking on the next println.
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(&cli);
    // SIGTERM and Ctrl-C are taken by one thread (blocked everywhere else, before any other
    // thread exists): a run stopped that way aborts the uploads it began before it exits.
    let stop = termination_signal();
    let uploads_of =
        matches!(cli.command, Command::Run(_) | Command::Demo(_)).then(|| cli.config.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(cli) => r,
            Ok(sig) = stop => {
                let name = if sig == libc::SIGTERM { "SIGTERM" } else { "SIGINT" };
                tracing::warn!(signal = name, "stopped by a signal; aborting this run's incomplete uploads");
                if let Some(config) = uploads_of
                    && let Ok(c) = crate::config::Config::load(&config)
                    && let Ok(store) = Store::open(&c.store)
                {
                    match crate::snapshot::uploads::abort(
                        &c.store,
                        &store,
                        crate::snapshot::uploads::Whose::Mine,
                    )
                    .await
                    {
                        Ok(n) => eprintln!("stopped by {name}: {n} incomplete upload(s) of this run aborted; run again to finish the work"),
                        Err(e) => eprintln!("stopped by {name}: could not abort this run's incomplete uploads ({e}); the next snapshot or retention run does"),
                    }
                } else {
                    eprintln!("stopped by {name}");
                }
                Ok(ExitCode::from(128 + sig as u8))
            }
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Block SIGTERM and SIGINT in this (the only) thread — every thread started later inherits
/// the mask — and wait for them on a thread of their own.
fn termination_signal() -> tokio::sync::oneshot::Receiver<i32> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // SAFETY: plain libc calls on a zeroed, then initialized, sigset_t; no other thread exists
    // yet, so the mask applies to every thread of the process.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            if libc::sigwait(&set, &mut sig) == 0 {
                let _ = tx.send(sig);
            }
        });
    }
    rx
}

/// The audit log's anchors kept outside it: the file beside the keyring, and the audit head
/// every committed manifest recorded (the newest manifest of each tenant).
async fn audit_anchors(
    config: &crate::config::Config,
    store: &Store,
) -> crate::Result<Vec<crate::audit::Anchor>> {
    let mut out = Vec::new();
    if let Some(a) = crate::audit::read_anchor(&crate::audit::anchor_path(&config.keyring)) {
        out.push(a);
    }
    for t in read::tenants(store).await? {
        if let Some(m) = read::newest_committed(store, &t).await?
            && let Some(h) = &m.audit_head
        {
            out.push(crate::audit::Anchor {
                seq: h.seq,
                record_hash: h.record_hash.clone(),
                source: crate::snapshot::manifest_key(&m.tenant, &m.run_id).to_string(),
            });
        }
    }
    Ok(out)
}

async fn run(cli: Cli) -> crate::Result<ExitCode> {
    match cli.command {
        Command::Demo(a) => {
            let opts = crate::demo::DemoOptions {
                dir: a.dir.clone(),
                source: a.source.clone(),
                tenants: a.tenants,
                days: a.days,
                seed: a.seed,
            };
            let (config, generated) = crate::demo::prepare(&opts)?;
            match &generated {
                Some(g) => {
                    let rows: u64 = g.rows.iter().map(|r| r.1).sum();
                    println!(
                        "created {} with {} tenants, {rows} rows in {} tables and {} blobs over {} days",
                        a.dir.join("source.db").display(),
                        a.tenants,
                        g.rows.len(),
                        g.blobs,
                        a.days
                    );
                }
                None => println!(
                    "reusing the existing demo database in {} (delete the directory to start over)",
                    a.dir.display()
                ),
            }
            if let Some(url) = &a.source {
                let redacted = crate::source::postgres::redact(url);
                match crate::demo::load_into_postgres(&a.dir.join("source.db"), url).await {
                    Ok(Some(rows)) => println!("loaded {rows} rows into {redacted} (COPY FROM)"),
                    Ok(None) => println!("reusing the demo tables already in {redacted}"),
                    Err(e) => {
                        return Err(crate::Error::Usage(format!(
                            "cannot load the demo into {redacted}: {e}"
                        )));
                    }
                }
            }
            let checked = crate::check::check(&config)?;
            // First run: two people ask to be erased (the nightly job's erasure step executes it).
            if generated.is_some() {
                let people = crate::demo::erasure_subjects(&a.dir.join("source.db"))
                    .map_err(|e| crate::Error::Usage(format!("demo database: {e}")))?;
                println!();
                for (what, tenant, kind, id) in people {
                    let ask = crate::erasure::SubjectRequest {
                        tenant: tenant.clone(),
                        kind,
                        id,
                        immediate: false,
                        reference: Some("demo".into()),
                    };
                    let r = crate::erasure::erase_subject(&checked, &ask, &crate::clock::system())
                        .await?;
                    println!(
                        "erasure request {} of {tenant}: {what}; subject {}",
                        r.id,
                        r.subject.as_deref().unwrap_or("-")
                    );
                }
                if let Some(t) = crate::demo::offboarded_tenant(&a.dir.join("source.db"))
                    .map_err(|e| crate::Error::Usage(format!("demo database: {e}")))?
                {
                    let r = crate::erasure::erase_tenant(
                        &checked,
                        &t,
                        true,
                        Some("demo".into()),
                        &crate::clock::system(),
                    )
                    .await?;
                    println!(
                        "offboarding request {} of {t} (--immediate): its rows, blobs, backups and data key go tonight (statutory records stay)",
                        r.id
                    );
                }
            }
            // The nightly job, as a scheduler would run it: retention, erasure, then the snapshot.
            let nightly = crate::pipeline::job(&checked, "nightly")?;
            let mut steps = nightly.steps.clone();
            let mut opts = crate::pipeline::RunOptions::default();
            if a.no_retention {
                steps.retain(|s| *s != crate::jobs::Step::Retention);
                println!(
                    "retention skipped (--no-retention); see `lethe --config {} plan`",
                    config.display()
                );
            } else {
                let now = crate::clock::as_of(&crate::clock::SystemClock, None)?;
                let plan = crate::pipeline::retention_plan(&checked, now).await?;
                println!("\nretention as of {} (plan {})", plan.now, plan.hash);
                if !plan.brake.is_empty() {
                    println!(
                        "the safety brake stops a first run over {} table(s) of old data; the demo confirms this exact plan by its hash",
                        plan.brake.len()
                    );
                }
                opts.now = Some(now);
                opts.plan_hash = Some(plan.hash.clone());
            }
            let run = crate::pipeline::run_steps(&checked, &steps, &opts, Some("nightly")).await?;
            println!();
            print_job_run(&run);
            let code = finish(run)?;
            // The certificates the erasure step signed, verified as a controller would (the
            // signature) and as an auditor would (their anchor in the audit chain).
            let store = Store::open(&checked.config.store)?;
            let signer = crate::sign::SigningKey::load_or_create(
                &crate::sign::signing_key_path(&checked.config.keyring),
                false,
            )?;
            let keys = crate::sign::PublicKeys::of(&signer)?;
            let certs =
                crate::erasure::certificate::verify_stored(&store, &keys.jwk_list(), &keys).await?;
            if !certs.is_empty() {
                println!(
                    "
deletion certificates (signed JWS, Ed25519):"
                );
            }
            for (key, v) in &certs {
                match v {
                    Ok(p) => println!(
                        "  {key}: signature and audit anchor verified; outcome {}",
                        p["outcome"].as_str().unwrap_or("?")
                    ),
                    Err(e) => println!("  {key}: NOT VERIFIED: {e}"),
                }
            }
            // A retention attestation of this month for one tenant: what retention enforced,
            // measured now.
            let month = chrono::Utc::now().format("%Y-%m").to_string();
            let period = crate::attest::Period::parse(&month).map_err(crate::Error::Usage)?;
            let at = crate::attest::attest(
                &checked,
                &store,
                &signer,
                "kopi-senja",
                period,
                chrono::Utc::now(),
            )
            .await?;
            println!(
                "\nretention attestation for kopi-senja, {month} up to now (signed JWS, {}): outcome {}",
                at.key, at.outcome
            );
            for c in at.payload["categories"].as_array().into_iter().flatten() {
                println!(
                    "  {:<20} {:<22} deleted {:>5}  oldest surviving {:<20} {}",
                    c["table"].as_str().unwrap_or("?"),
                    c["category"].as_str().unwrap_or("?"),
                    c["rows_deleted"].as_u64().unwrap_or(0),
                    c["measured"]["oldest_surviving_anchor"]
                        .as_str()
                        .unwrap_or("-"),
                    c["status"].as_str().unwrap_or("?"),
                );
            }
            for v in &at.violations {
                println!("  VIOLATION: {v}");
            }
            // The analytics the nightly job published: the newest partition of each dataset.
            let sets = crate::analytics::run::datasets(&checked)?;
            if !sets.is_empty() {
                let out = crate::analytics::run::output_store(&checked)?;
                println!(
                    "\nanalytics (anonymized aggregates; null = fewer than k people in the cell), newest partition of each dataset:"
                );
                for d in &sets {
                    match crate::analytics::run::preview(&out, d, 4).await? {
                        Some(text) => print!("{text}"),
                        None => println!("{}: nothing published yet", d.name),
                    }
                }
            }
            println!(
                "\nencrypted snapshots are in {}; try:",
                a.dir.join("store").display()
            );
            let c = config.display();
            println!("  lethe --config {c} plan");
            println!("  lethe --config {c} requests ls");
            println!("  lethe --config {c} audit verify");
            println!("  lethe --config {c} snapshot ls");
            println!("  lethe --config {c} snapshot verify");
            if let Some((key, _)) = certs.first() {
                println!(
                    "  lethe --config {c} certificate render {} --format html --out /tmp/certificate.html",
                    a.dir.join("store").join(key).display()
                );
            }
            println!("  lethe --config {c} attest --tenant kopi-senja --period {month}");
            println!(
                "  duckdb -c \"SELECT * FROM read_parquet('{}/analytics/messages_daily/**/*.parquet', hive_partitioning = true) LIMIT 10\"",
                a.dir.join("store").display()
            );
            println!(
                "  lethe --config {c} snapshot restore --tenant kopi-senja --out /tmp/kopi-senja --format csv"
            );
            Ok(code)
        }
        Command::Export(e) => {
            let c = crate::check::check(&cli.config)?;
            use crate::erasure::export::{Whom, export};
            let (tenant, whom, format, out) = match &e {
                ExportCommand::Subject {
                    tenant,
                    kind,
                    id,
                    format,
                    out,
                } => (tenant, Whom::Subject { kind, id }, *format, out),
                ExportCommand::Tenant {
                    tenant,
                    format,
                    out,
                } => (tenant, Whom::Tenant, *format, out),
            };
            let x = export(&c, tenant, whom, format, out).await?;
            for (t, n) in x.rows.iter().filter(|(_, n)| **n > 0) {
                println!("{t:<22} {n:>10} rows");
            }
            println!(
                "exported {} rows and {} blobs of tenant {tenant} into {} (plaintext personal data: hand it over securely, then delete it)",
                x.rows.values().sum::<u64>(),
                x.blobs,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::InitDb => {
            let config = crate::config::Config::load(&cli.config)?;
            let mut db = crate::retention::db::Db::open(&config.source, true, &config.retention)?;
            crate::erasure::intake::ensure(&mut db)
                .map_err(|e| e.on(crate::erasure::intake::TABLE))?;
            db.ensure_outbox()
                .map_err(|e| e.on(crate::retention::db::OUTBOX))?;
            println!(
                "ok: {} and {} exist in {}",
                crate::erasure::intake::TABLE,
                crate::retention::db::OUTBOX,
                match &config.source {
                    crate::config::SourceUrl::Sqlite(p) => p.display().to_string(),
                    crate::config::SourceUrl::Postgres(u) => crate::source::postgres::redact(u),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let c = crate::check::check_all(&cli.config).await?;
            println!(
                "ok: {} tables in the data map, {} policy categories (policy {} {}), {} job(s)",
                c.data_map.tables.len(),
                c.policy.categories.len(),
                c.policy.version,
                c.policy.hash,
                c.jobs.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(r) => {
            let c = crate::check::check(&cli.config)?;
            let (steps, job) = match &r.target {
                Target::Step(step) => (vec![*step], None),
                Target::Job(name) => (
                    crate::pipeline::job(&c, name)?.steps.clone(),
                    Some(name.as_str()),
                ),
            };
            let retention = steps.contains(&crate::jobs::Step::Retention);
            let snapshot = steps.contains(&crate::jobs::Step::Snapshot);
            let erasure_alone = steps == [crate::jobs::Step::Erasure];
            if r.now.is_some() && !retention {
                return Err(crate::Error::Usage(
                    "--now applies to retention only".into(),
                ));
            }
            if r.plan_hash.is_some() && !retention && !erasure_alone {
                return Err(crate::Error::Usage(
                    "--plan-hash applies to `lethe run retention`, `lethe run erasure` and jobs with retention (where it confirms the retention plan)".into(),
                ));
            }
            if !r.rebuild.is_empty() && !steps.contains(&crate::jobs::Step::Analytics) {
                return Err(crate::Error::Usage(
                    "--rebuild applies to `lethe run analytics` (or a job with the analytics step)"
                        .into(),
                ));
            }
            if !r.tenants.is_empty() && (retention || job.is_some() || !snapshot) {
                return Err(crate::Error::Usage(
                    "--tenant applies to `lethe run snapshot` only: retention always plans every tenant (a legal hold or override is what keeps a tenant's data)".into(),
                ));
            }
            let (plan_hash, erasure_plan_hash) = if erasure_alone {
                (None, r.plan_hash)
            } else {
                (r.plan_hash, None)
            };
            let opts = crate::pipeline::RunOptions {
                plan_hash,
                erasure_plan_hash,
                now: r.now,
                tenants: r.tenants,
                analytics: crate::analytics::run::Options { rebuild: r.rebuild },
                ..Default::default()
            };
            let run = crate::pipeline::run_steps(&c, &steps, &opts, job).await?;
            print_job_run(&run);
            finish(run)
        }
        Command::Plan(p) => {
            let c = crate::check::check(&cli.config)?;
            let now = crate::clock::as_of(&crate::clock::SystemClock, p.now)?;
            let plan = crate::pipeline::retention_plan(&c, now).await?;
            let erasure = crate::pipeline::erasure_plan(&c).await?;
            if p.json {
                let mut v = serde_json::to_value(&plan).expect("plan serializes");
                v["erasure"] = serde_json::to_value(&erasure).expect("plan serializes");
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                print_plan(&plan);
                print_erasure_plan(&erasure);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase(EraseCommand::Subject {
            tenant,
            kind,
            id,
            immediate,
            reference,
        }) => {
            let c = crate::check::check(&cli.config)?;
            let ask = crate::erasure::SubjectRequest {
                tenant,
                kind,
                id,
                immediate,
                reference,
            };
            let r = crate::erasure::erase_subject(&c, &ask, &crate::clock::system()).await?;
            print_request_received(&r);
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase(EraseCommand::Tenant {
            tenant,
            immediate,
            reference,
        }) => {
            let c = crate::check::check(&cli.config)?;
            let r = crate::erasure::erase_tenant(
                &c,
                &tenant,
                immediate,
                reference,
                &crate::clock::system(),
            )
            .await?;
            print_request_received(&r);
            Ok(ExitCode::SUCCESS)
        }
        Command::Requests(RequestsCommand::Show { tenant, id }) => {
            let c = crate::check::check(&cli.config)?;
            let (r, found) = crate::erasure::preview(&c, &tenant, &id).await?;
            print_request_preview(&r, &found);
            Ok(ExitCode::SUCCESS)
        }
        Command::Requests(RequestsCommand::Ls { tenant, json }) => {
            if let Some(t) = &tenant {
                crate::erasure::check_names(t, None)?;
            }
            let config = crate::config::Config::load(&cli.config)?;
            let (listed, certificates) = if Store::exists(&config.store) {
                let store = Store::open(&config.store)?;
                let certs: std::collections::BTreeSet<String> = store
                    .list(&object_store::path::Path::from(
                        crate::erasure::certificate::PREFIX,
                    ))
                    .await?
                    .into_iter()
                    .map(|m| m.location.to_string())
                    .collect();
                (
                    crate::erasure::request::list(&store, tenant.as_deref()).await?,
                    certs,
                )
            } else {
                (Vec::new(), Default::default())
            };
            let now = chrono::Utc::now();
            // An ERROR line per overdue request and phase, for whoever watches the logs (ids
            // and phases only, never an identifier).
            for r in listed.iter().flatten() {
                if let Some(phase) = r.overdue(now) {
                    tracing::error!(tenant = %r.tenant, request = %r.id, phase, due = if phase == "primary" { r.due_primary.as_str() } else { r.due_backups.as_str() }, "erasure request overdue");
                }
                for n in r.notices.iter().filter(|n| n.overdue(now)) {
                    tracing::error!(tenant = %r.tenant, request = %r.id, phase = "notice", subprocessor = %n.subprocessor, due = %n.due, attempts = n.attempts, "erasure notice to a sub-processor unanswered past its due date");
                }
            }
            let overdue = print_requests(&listed, &certificates, now, json);
            Ok(if overdue > 0 || listed.iter().any(|r| r.is_err()) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Audit(AuditCommand::Verify { json }) => {
            let config = crate::config::Config::load(&cli.config)?;
            let store = Store::open(&config.store)?;
            let key = crate::sign::SigningKey::load_or_create(
                &crate::sign::signing_key_path(&config.keyring),
                false,
            )?;
            let anchors = audit_anchors(&config, &store).await?;
            let keys = crate::sign::PublicKeys::of(&key)?;
            let r = crate::audit::verify_anchored(&store, &keys, &anchors).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("report serializes")
                );
            } else {
                for f in &r.findings {
                    println!("FAIL {}: {}", f.key, f.problem);
                }
                println!(
                    "{} records (seq {}..{}), {} checkpoints, {} not yet checkpointed; {} problem(s)",
                    r.records,
                    r.first_seq.map(|s| s.to_string()).unwrap_or("-".into()),
                    r.last_seq.map(|s| s.to_string()).unwrap_or("-".into()),
                    r.checkpoints,
                    r.unanchored,
                    r.findings.len()
                );
            }
            Ok(if r.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Keys(KeysCommand::Rotate) => {
            let config = crate::config::Config::load(&cli.config)?;
            let path = crate::sign::signing_key_path(&config.keyring);
            let (old, new) = crate::sign::rotate(&path, chrono::Utc::now())?;
            println!(
                "signing key rotated: new key {} signs from now on; key {} is retired (its checkpoints and certificates keep verifying: `lethe keys public --format jwks` lists both)",
                new.thumbprint(),
                old.thumbprint()
            );
            println!(
                "the retired private key was moved to {}: back it up or destroy it (nothing needs it to verify)",
                old.path().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Public { format }) => {
            let config = crate::config::Config::load(&cli.config)?;
            let key = crate::sign::SigningKey::load_or_create(
                &crate::sign::signing_key_path(&config.keyring),
                false,
            )?;
            match format {
                KeyFormat::Jwk => println!(
                    "{}",
                    serde_json::to_string_pretty(&key.public_jwk()).expect("jwk")
                ),
                KeyFormat::Jwks => println!(
                    "{}",
                    serde_json::to_string_pretty(&crate::sign::PublicKeys::of(&key)?.jwks())
                        .expect("jwks")
                ),
                KeyFormat::Hex => println!("{}", crate::util::hex(&key.public_key())),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Certificate(CertificateCommand::Verify {
            file,
            jwks,
            offline,
            json,
        }) => certificate_verify(&cli.config, &file, jwks.as_deref(), offline, json).await,
        Command::Certificate(CertificateCommand::Render {
            file,
            format,
            jwks,
            out,
        }) => certificate_render(&cli.config, &file, format, jwks.as_deref(), out.as_deref()).await,
        Command::Attest(a) => attest(&cli.config, a).await,
        Command::Snapshot(s) => {
            let config = crate::config::Config::load(&cli.config)?;
            let store = Store::open(&config.store)?;
            match s {
                SnapshotCommand::Ls { tenant, json } => {
                    let known = read::tenants(&store).await?;
                    let tenants = match tenant {
                        Some(t) => {
                            read::unknown_tenants(std::slice::from_ref(&t), &known)?;
                            vec![t]
                        }
                        None => known,
                    };
                    let mut all = Vec::new();
                    for t in &tenants {
                        all.extend(read::committed(&store, t).await?);
                    }
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&all).expect("manifests serialize")
                        );
                    } else {
                        println!(
                            "{:<20} {:<24} {:<27} {:>6} {:>10} {:>11}",
                            "tenant", "run", "committed", "tables", "rows", "bytes"
                        );
                        for m in &all {
                            println!(
                                "{:<20} {:<24} {:<27} {:>6} {:>10} {:>11}",
                                m.tenant,
                                m.run_id,
                                m.committed_at,
                                m.tables.len(),
                                m.rows(),
                                human_bytes(m.bytes())
                            );
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                SnapshotCommand::Verify { tenants } => {
                    let keyring = Keyring::open(&config.keyring, &config.master_key, false)?;
                    let mut r = read::verify(&store, &keyring, &tenants).await?;
                    // Incomplete multipart uploads no live snapshot run owns: leftovers of a
                    // crash (S3), aborted by the next snapshot or retention run.
                    if let Some((_, list)) =
                        crate::snapshot::uploads::incomplete(&config.store).await?
                    {
                        let live = crate::lease::live_holder(
                            &store,
                            crate::snapshot::uploads::SNAPSHOT_LEASE,
                            chrono::Utc::now(),
                        )
                        .await?;
                        for u in list {
                            if live.is_some() {
                                println!(
                                    "note: incomplete upload {} (a snapshot run is live; it may be its own)",
                                    u.key
                                );
                                continue;
                            }
                            r.findings.push(crate::snapshot::read::Finding {
                                tenant: String::new(),
                                run_id: String::new(),
                                key: u.key,
                                message: format!(
                                    "incomplete multipart upload {} begun {} and never finished (a crashed snapshot); the next snapshot or retention run aborts it",
                                    u.upload_id,
                                    u.initiated.map_or("?".into(), crate::util::rfc3339)
                                ),
                            });
                        }
                    }
                    for f in &r.findings {
                        println!("FAIL {}: {}", f.key, f.message);
                    }
                    println!(
                        "{} runs, {} files, {} rows, {} checked; {} problem(s)",
                        r.runs,
                        r.files,
                        r.rows,
                        human_bytes(r.bytes),
                        r.findings.len()
                    );
                    if r.crypto_erased > 0 {
                        println!(
                            "{} run(s) crypto-erased (their data key was destroyed on purpose): checksums checked, unreadable as intended, purged at their backup deadline",
                            r.crypto_erased
                        );
                    }
                    if r.findings.is_empty() {
                        Ok(ExitCode::SUCCESS)
                    } else {
                        Err(
                            crate::Error::Snapshot(crate::snapshot::SnapshotError::VerifyFailed(
                                r.findings.len(),
                            ))
                            .into(),
                        )
                    }
                }
                SnapshotCommand::Restore {
                    tenant,
                    run,
                    out,
                    format,
                    tables,
                } => {
                    let keyring = Keyring::open(&config.keyring, &config.master_key, false)?;
                    // The erasure ledger is applied with the data map's identifier columns.
                    let data_map = crate::datamap::DataMap::load_dir(&config.data_map)
                        .map_err(crate::Error::Check)?;
                    let policy =
                        crate::policy::Policy::load(&config.policy).map_err(crate::Error::Check)?;
                    let ledger = read::LedgerContext {
                        data_map: &data_map,
                        phone_country: policy.erasure.phone_country.clone(),
                    };
                    let o = read::restore(
                        &store,
                        &keyring,
                        &tenant,
                        run.as_deref(),
                        &out,
                        format,
                        &tables,
                        &ledger,
                    )
                    .await?;
                    for (table, path, rows) in &o.files {
                        println!("{table:<22} {rows:>10} rows  {}", path.display());
                    }
                    println!(
                        "erasure ledger: {} row(s) of {} person(s)' identifiers erased after this run was taken were dropped",
                        o.dropped, o.erased_subjects
                    );
                    println!(
                        "restored run {} of tenant {tenant} into {} (plaintext: handle as personal data)",
                        o.run_id,
                        out.display()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                SnapshotCommand::Pin {
                    tenant,
                    run,
                    reason,
                    by,
                } => {
                    crate::snapshot::purge::pin(
                        &store,
                        &tenant,
                        &run,
                        &reason,
                        &by,
                        chrono::Utc::now(),
                    )
                    .await?;
                    println!(
                        "pinned tenant {tenant} run {run}: backup purge keeps it until `lethe snapshot unpin`"
                    );
                    Ok(ExitCode::SUCCESS)
                }
                SnapshotCommand::Unpin { tenant, run } => {
                    let was = crate::snapshot::purge::unpin(&store, &tenant, &run).await?;
                    println!(
                        "{}",
                        if was {
                            format!("unpinned tenant {tenant} run {run}")
                        } else {
                            format!("tenant {tenant} run {run} was not pinned")
                        }
                    );
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}

/// `lethe certificate verify`.
async fn certificate_verify(
    config: &std::path::Path,
    file: &std::path::Path,
    jwks: Option<&std::path::Path>,
    offline: bool,
    json: bool,
) -> crate::Result<ExitCode> {
    let text = read_certificate(file)?;
    let keys = verifying_keys(config, jwks)?;
    // With store access, the anchor too (the audit key is the key that signed).
    let store = if offline {
        None
    } else {
        match crate::config::Config::load(config) {
            Ok(c) => Some(Store::open(&c.store)?),
            Err(_) if jwks.is_some() => None,
            Err(e) => return Err(e.into()),
        }
    };
    // The anchor's checkpoint may be signed by any of the keys (a rotation in between).
    let audit_keys = crate::sign::PublicKeys::from_jwks(&keys);
    // The signature, then (with the store) the anchor.
    let with_store = store.as_ref().zip(audit_keys.as_ref());
    let v = match crate::erasure::certificate::verify(&text, &keys, with_store).await {
        Ok(v) => v,
        Err(why) => {
            tracing::error!(file = %file.display(), "certificate does not verify");
            println!("NOT VERIFIED {}: {why}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    let anchor = v.anchor.clone();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "verified": anchor.as_ref().is_none_or(|a| a.is_ok()),
                "kid": v.kid,
                "anchor": match &anchor { None => serde_json::Value::Null, Some(Ok(())) => "verified".into(), Some(Err(e)) => e.clone().into() },
                "payload": v.payload,
            }))
            .expect("json")
        );
    } else {
        let p = &v.payload;
        if p["format"] == crate::attest::FORMAT {
            println!(
                "signature verified: retention attestation of tenant {} for {}, outcome {}, signed by key {}",
                p["tenant"].as_str().unwrap_or("?"),
                p["period"]["month"].as_str().unwrap_or("?"),
                p["outcome"].as_str().unwrap_or("?"),
                v.kid
            );
        } else {
            println!(
                "signature verified: {} certificate of request {} (tenant {}), outcome {}, signed by key {}",
                p["phase"].as_str().unwrap_or("?"),
                p["request"]["id"].as_str().unwrap_or("?"),
                p["aud"].as_str().unwrap_or("?"),
                p["outcome"].as_str().unwrap_or("?"),
                v.kid
            );
        }
        match &anchor {
            None => println!("anchor not checked (offline)"),
            Some(Ok(())) => println!(
                "anchor verified: audit record {} and signed checkpoint {} are in the audit chain",
                p["anchor"]["audit_record"]["seq"], p["anchor"]["checkpoint"]["seq"]
            ),
            Some(Err(e)) => println!("NOT VERIFIED anchor: {e}"),
        }
    }
    Ok(if anchor.is_some_and(|a| a.is_err()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A certificate file's text; an unreadable file is bad usage (exit 2).
fn read_certificate(file: &std::path::Path) -> crate::Result<String> {
    let text = std::fs::read(file).map_err(|e| {
        crate::Error::Usage(format!(
            "cannot read certificate {}: {e}\n  fix: pass the path of a .jws file",
            file.display()
        ))
    })?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// The keys certificates are verified with: `--jwks` (a JWK Set or one JWK), else this
/// installation's signing key.
fn verifying_keys(
    config: &std::path::Path,
    jwks: Option<&std::path::Path>,
) -> crate::Result<Vec<serde_json::Value>> {
    Ok(match jwks {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| {
                crate::Error::Usage(format!("cannot read JWKS {}: {e}", p.display()))
            })?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                crate::Error::Usage(format!(
                    "{} is not JSON: {e}\n  fix: pass the output of `lethe keys public --format jwks`",
                    p.display()
                ))
            })?;
            match v.get("keys").and_then(|k| k.as_array()) {
                Some(k) => k.clone(),
                None if v.get("kty").is_some() => vec![v],
                None => {
                    return Err(crate::Error::Usage(format!(
                        "{} is neither a JWK Set nor a JWK\n  fix: pass the output of `lethe keys public --format jwks`",
                        p.display()
                    )));
                }
            }
        }
        None => {
            let c = crate::config::Config::load(config)?;
            let key = crate::sign::SigningKey::load_or_create(
                &crate::sign::signing_key_path(&c.keyring),
                false,
            )?;
            crate::sign::PublicKeys::of(&key)?.jwk_list()
        }
    })
}

/// `lethe certificate render`.
async fn certificate_render(
    config: &std::path::Path,
    file: &std::path::Path,
    format: RenderFormat,
    jwks: Option<&std::path::Path>,
    out: Option<&std::path::Path>,
) -> crate::Result<ExitCode> {
    let text = read_certificate(file)?;
    let keys = verifying_keys(config, jwks)?;
    let v = match crate::erasure::certificate::verify(&text, &keys, None).await {
        Ok(v) => v,
        Err(why) => {
            println!("NOT VERIFIED {}: {why}; not rendered", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    let name = file.display().to_string();
    let doc = match format {
        RenderFormat::Md => crate::erasure::render::markdown(&v.payload, &v.kid, &name),
        RenderFormat::Html => crate::erasure::render::html(&v.payload, &v.kid, &name),
    };
    match out {
        None => print!("{doc}"),
        Some(p) => write_new(p, doc.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Write `bytes` to a file that must not exist yet (0644).
fn write_new(p: &std::path::Path, bytes: &[u8]) -> crate::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
        .map_err(|e| {
            crate::Error::Usage(format!(
                "cannot create {}: {e}\n  fix: name a file that does not exist yet",
                p.display()
            ))
        })?;
    f.write_all(bytes)
        .map_err(|e| crate::Error::Failed(format!("cannot write {}: {e}", p.display())))
}

/// `lethe attest`.
async fn attest(config: &std::path::Path, a: AttestArgs) -> crate::Result<ExitCode> {
    let period = crate::attest::Period::parse(&a.period).map_err(crate::Error::Usage)?;
    if !crate::util::is_safe_ident(&a.tenant) {
        return Err(crate::Error::Usage(format!(
            "--tenant {:?} is not a tenant id (letters, digits, - and _, at most 64)",
            a.tenant
        )));
    }
    let c = crate::check::check(config)?;
    let store = Store::open(&c.config.store)?;
    let signer = crate::sign::SigningKey::load_or_create(
        &crate::sign::signing_key_path(&c.config.keyring),
        false,
    )?;
    let now = crate::clock::as_of(&crate::clock::SystemClock, None)?;
    let at = crate::attest::attest(&c, &store, &signer, &a.tenant, period, now).await?;
    match &a.out {
        Some(p) => write_new(p, format!("{}\n", at.jws).as_bytes())?,
        None => println!("{}", at.jws),
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&at.payload).expect("json")
        );
    }
    let p = &at.payload;
    eprintln!(
        "retention attestation for tenant {} ({} {}): outcome {}; stored as {}",
        a.tenant,
        period.label(),
        if p["period"]["complete"] == true {
            "complete"
        } else {
            "up to now"
        },
        at.outcome,
        at.key
    );
    for v in &at.violations {
        eprintln!("  VIOLATION: {v}");
    }
    if at.outcome == "unmeasured" {
        eprintln!(
            "  no measurement covers the month: retention did not run in it (or its runs recorded none)"
        );
    }
    if at.outcome != "kept" {
        tracing::error!(tenant = %a.tenant, period = %period.label(), outcome = at.outcome, violations = at.violations.len(), "retention attestation: promises not shown kept");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
