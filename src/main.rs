//! The `lethe` binary: parses arguments, sets up logging, calls the library, maps errors to
//! exit codes (0 success, 1 the job failed or found a violation, 2 bad usage or configuration).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lethe::keys::Keyring;
use lethe::snapshot::read::{self, RestoreFormat};
use lethe::store::Store;

/// lethe keeps a multi-tenant SaaS's personal data inside the promises its privacy policy makes:
/// encrypted per-tenant snapshots, retention, erasure with signed certificates, audit.
///
/// Start with `lethe demo`: it builds a synthetic multi-tenant database in ./lethe-demo, snapshots
/// it into encrypted Parquet and applies the retention policy. Then point --config at
/// ./lethe-demo/lethe.toml and try `plan`, `audit verify`, `snapshot ls`.
#[derive(Parser)]
#[command(name = "lethe", version, max_term_width = 100)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        default_value = "lethe.toml",
        env = "LETHE_CONFIG"
    )]
    config: PathBuf,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the embedded demo (synthetic tenants in SQLite, a local store) and run the nightly
    /// job on it: retention, then a snapshot.
    ///
    /// Safe to run again: the database, blobs and keyring are kept and a new snapshot run is added.
    Demo(DemoArgs),
    /// Validate lethe.toml, the data map (against the live database), the policy and the jobs.
    ///
    /// Prints every problem with its file, key or line, and a fix. Exit 2 if any.
    Check,
    /// Retention dry run: what would be deleted, anonymized or flagged, per tenant and
    /// category; what is held back and why; which backups would be purged; and the plan hash.
    ///
    /// Changes nothing anywhere (the database is opened read-only). To execute exactly this
    /// plan, pass its hash: `lethe run retention --now <the plan's now> --plan-hash <hash>`.
    Plan(PlanArgs),
    /// Run a job of jobs/*.toml now (`lethe run nightly`: what a CronJob or systemd timer
    /// calls), or a single step (`lethe run retention`, `lethe run snapshot`).
    ///
    /// A job's steps run in the order its file lists them; a failed step stops the steps after
    /// it; a tenant whose snapshot failed alone is reported and the run exits 1 at the end. A
    /// job run is recorded in the store as runs/<job>/<run-id>.json.
    Run(RunArgs),
    /// The audit log: verify the hash chain and the signed checkpoints.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Keys: the public key that verifies audit checkpoints (and certificates).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Snapshot runs in the store: list, verify, restore.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Args)]
struct DemoArgs {
    /// Directory to create (or reuse).
    #[arg(long, default_value = "lethe-demo")]
    dir: PathBuf,
    /// Number of tenants (a few of them cancelled).
    #[arg(long, default_value_t = 20)]
    tenants: usize,
    /// Days of history to generate, ending today (00:00 UTC).
    #[arg(long, default_value_t = 400)]
    days: u32,
    /// Seed of the generator: the same seed on the same day gives the same database.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Load the demo into this PostgreSQL database (`postgres://user@host:5432/db`, password
    /// in PGPASSWORD) and snapshot from there. Existing demo tables there are kept.
    #[arg(long)]
    source: Option<String>,
    /// Build and snapshot only; leave retention to `lethe run retention`.
    #[arg(long)]
    no_retention: bool,
}

#[derive(Args)]
struct PlanArgs {
    /// Print the plan as JSON (the hash covers exactly this document).
    #[arg(long)]
    json: bool,
    /// Plan as of this instant (RFC 3339) instead of the clock; never later than the clock.
    #[arg(long, value_parser = parse_instant)]
    now: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Args)]
struct RunArgs {
    /// A job name from jobs/*.toml (e.g. `nightly`), or one step: `retention`, `snapshot`.
    #[arg(value_name = "JOB|STEP")]
    step: String,
    /// Only these tenants (repeatable; the snapshot step only, by hand).
    #[arg(long = "tenant")]
    tenants: Vec<String>,
    /// retention: execute only if the current plan has this hash (from `lethe plan`), which
    /// also confirms a plan the safety brake stopped.
    #[arg(long)]
    plan_hash: Option<String>,
    /// retention: run as of this instant (RFC 3339) instead of the clock; never later than the
    /// clock, so an override can only delete less.
    #[arg(long, value_parser = parse_instant)]
    now: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the chain: every record's hash link, sequence and signed checkpoints.
    ///
    /// Exit 1 naming each edited, removed, reordered or inserted record.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the Ed25519 public key (checkpoints, certificates).
    Public {
        #[arg(long, value_enum, default_value = "jwk")]
        format: KeyFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyFormat {
    Jwk,
    Hex,
}

fn parse_instant(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e}: write an RFC 3339 instant like 2026-11-01T00:00:00Z"))
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// List committed runs per tenant (uncommitted runs are not shown: `verify` reports them).
    Ls {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Check every file's sha256, decrypt every footer, compare row counts with the manifest.
    ///
    /// Exit 1 naming each file on a mismatch, a missing or unlisted file, or an uncommitted run.
    Verify {
        /// Only these tenants (repeatable).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
    },
    /// Write a tenant's run back to a local directory as plaintext Parquet or CSV.
    ///
    /// Each file's sha256 is checked before it is decrypted. Nothing existing is overwritten.
    /// The output is personal data in plaintext: restore only where such data may live.
    Restore {
        #[arg(long)]
        tenant: String,
        /// Run id (default: the newest committed run).
        #[arg(long)]
        run: Option<String>,
        /// Output directory (created; files inside must not exist yet).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "parquet")]
        format: RestoreFormat,
        /// Only these tables (repeatable).
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Keep a committed run from backup purge until it is unpinned.
    Pin {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        run: String,
        /// Why (a ticket or case number; never personal data).
        #[arg(long)]
        reason: String,
        /// Who pins it.
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
    /// Remove a pin.
    Unpin {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        run: String,
    },
}

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

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`lethe snapshot ls | head`), as command-line tools do,
    // instead of panicking on the next println.
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(&cli);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The audit log's anchors kept outside it: the file beside the keyring, and the audit head
/// every committed manifest recorded (the newest manifest of each tenant).
async fn audit_anchors(
    config: &lethe::config::Config,
    store: &Store,
) -> lethe::Result<Vec<lethe::audit::Anchor>> {
    let mut out = Vec::new();
    if let Some(a) = lethe::audit::read_anchor(&lethe::audit::anchor_path(&config.keyring)) {
        out.push(a);
    }
    for t in read::tenants(store).await? {
        if let Some(m) = read::newest_committed(store, &t).await?
            && let Some(h) = &m.audit_head
        {
            out.push(lethe::audit::Anchor {
                seq: h.seq,
                record_hash: h.record_hash.clone(),
                source: lethe::snapshot::manifest_key(&m.tenant, &m.run_id).to_string(),
            });
        }
    }
    Ok(out)
}

/// Print what each step of a run did (and, for a job, the run record's summary).
fn print_job_run(run: &lethe::pipeline::JobRun) {
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
fn finish(run: lethe::pipeline::JobRun) -> lethe::Result<ExitCode> {
    let code = run.exit_code();
    match run.error {
        Some(e) => Err(e),
        None => Ok(ExitCode::from(code)),
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn print_snapshot_summary(run: &lethe::pipeline::SnapshotRun) {
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

fn print_plan(plan: &lethe::retention::plan::RetentionPlan) {
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
        if choice == lethe::policy::Orphans::Refuse {
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

fn print_retention(run: &lethe::pipeline::RetentionRun) {
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
    for ((cat, table, action), rows) in &by {
        println!("{cat:<20} {table:<20} {action:<10} {rows:>10}  re-query: 0 left");
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

async fn run(cli: Cli) -> lethe::Result<ExitCode> {
    match cli.command {
        Command::Demo(a) => {
            let opts = lethe::demo::DemoOptions {
                dir: a.dir.clone(),
                source: a.source.clone(),
                tenants: a.tenants,
                days: a.days,
                seed: a.seed,
            };
            let (config, generated) = lethe::demo::prepare(&opts)?;
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
                let redacted = lethe::source::postgres::redact(url);
                match lethe::demo::load_into_postgres(&a.dir.join("source.db"), url).await {
                    Ok(Some(rows)) => println!("loaded {rows} rows into {redacted} (COPY FROM)"),
                    Ok(None) => println!("reusing the demo tables already in {redacted}"),
                    Err(e) => {
                        return Err(lethe::Error::Usage(format!(
                            "cannot load the demo into {redacted}: {e}"
                        )));
                    }
                }
            }
            // The nightly job, as a scheduler would run it: retention, then the snapshot.
            let checked = lethe::check::check(&config)?;
            let nightly = lethe::pipeline::job(&checked, "nightly")?;
            let mut steps = nightly.steps.clone();
            let mut opts = lethe::pipeline::RunOptions::default();
            if a.no_retention {
                steps.retain(|s| *s != lethe::jobs::Step::Retention);
                println!(
                    "retention skipped (--no-retention); see `lethe --config {} plan`",
                    config.display()
                );
            } else {
                let now = lethe::clock::as_of(&lethe::clock::SystemClock, None)?;
                let plan = lethe::pipeline::retention_plan(&checked, now).await?;
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
            let run = lethe::pipeline::run_steps(&checked, &steps, &opts, Some("nightly")).await?;
            println!();
            print_job_run(&run);
            let code = finish(run)?;
            println!(
                "\nencrypted snapshots are in {}; try:",
                a.dir.join("store").display()
            );
            let c = config.display();
            println!("  lethe --config {c} plan");
            println!("  lethe --config {c} audit verify");
            println!("  lethe --config {c} snapshot ls");
            println!("  lethe --config {c} snapshot verify");
            println!(
                "  lethe --config {c} snapshot restore --tenant kopi-senja --out /tmp/kopi-senja --format csv"
            );
            Ok(code)
        }
        Command::Check => {
            let c = lethe::check::check_all(&cli.config).await?;
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
            let c = lethe::check::check(&cli.config)?;
            let single = lethe::jobs::Step::parse(&r.step);
            let steps = match single {
                Some(step) if step.available() => vec![step],
                Some(lethe::jobs::Step::BackupPurge) => {
                    return Err(lethe::Error::Usage(
                        "backups are purged by the retention step in this build: run `lethe run retention` (see `lethe plan` for the runs it would purge)".into(),
                    ));
                }
                Some(step) => {
                    return Err(lethe::Error::Usage(format!(
                        "step {step} is not in this build; its steps are: {}",
                        lethe::jobs::Step::available_names()
                    )));
                }
                None => lethe::pipeline::job(&c, &r.step)?.steps.clone(),
            };
            let retention = steps.contains(&lethe::jobs::Step::Retention);
            let snapshot = steps.contains(&lethe::jobs::Step::Snapshot);
            if (r.plan_hash.is_some() || r.now.is_some()) && !retention {
                return Err(lethe::Error::Usage(
                    "--plan-hash and --now apply to retention only".into(),
                ));
            }
            if !r.tenants.is_empty() && (retention || single.is_none() || !snapshot) {
                return Err(lethe::Error::Usage(
                    "--tenant applies to `lethe run snapshot` only: retention always plans every tenant (a legal hold or override is what keeps a tenant's data)".into(),
                ));
            }
            let opts = lethe::pipeline::RunOptions {
                plan_hash: r.plan_hash,
                now: r.now,
                tenants: r.tenants,
                ..Default::default()
            };
            let record_as = single.is_none().then_some(r.step.as_str());
            let run = lethe::pipeline::run_steps(&c, &steps, &opts, record_as).await?;
            print_job_run(&run);
            finish(run)
        }
        Command::Plan(p) => {
            let c = lethe::check::check(&cli.config)?;
            let now = lethe::clock::as_of(&lethe::clock::SystemClock, p.now)?;
            let plan = lethe::pipeline::retention_plan(&c, now).await?;
            if p.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).expect("plan serializes")
                );
            } else {
                print_plan(&plan);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify { json }) => {
            let config = lethe::config::Config::load(&cli.config)?;
            let store = Store::open(&config.store)?;
            let key = lethe::sign::SigningKey::load_or_create(
                &lethe::sign::signing_key_path(&config.keyring),
                false,
            )?;
            let anchors = audit_anchors(&config, &store).await?;
            let r = lethe::audit::verify_anchored(&store, &key.public_key(), &anchors).await?;
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
        Command::Keys(KeysCommand::Public { format }) => {
            let config = lethe::config::Config::load(&cli.config)?;
            let key = lethe::sign::SigningKey::load_or_create(
                &lethe::sign::signing_key_path(&config.keyring),
                false,
            )?;
            match format {
                KeyFormat::Jwk => println!(
                    "{}",
                    serde_json::to_string_pretty(&key.public_jwk()).expect("jwk")
                ),
                KeyFormat::Hex => println!("{}", lethe::util::hex(&key.public_key())),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(s) => {
            let config = lethe::config::Config::load(&cli.config)?;
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
                    let r = read::verify(&store, &keyring, &tenants).await?;
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
                    if r.findings.is_empty() {
                        Ok(ExitCode::SUCCESS)
                    } else {
                        Err(
                            lethe::Error::Snapshot(lethe::snapshot::SnapshotError::VerifyFailed(
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
                    let o = read::restore(
                        &store,
                        &keyring,
                        &tenant,
                        run.as_deref(),
                        &out,
                        format,
                        &tables,
                    )
                    .await?;
                    for (table, path, rows) in &o.files {
                        println!("{table:<22} {rows:>10} rows  {}", path.display());
                    }
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
                    lethe::snapshot::purge::pin(
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
                    let was = lethe::snapshot::purge::unpin(&store, &tenant, &run).await?;
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
