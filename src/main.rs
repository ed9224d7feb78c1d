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
/// Start with `lethe demo`: it builds a synthetic multi-tenant database in ./lethe-demo and
/// snapshots it into encrypted Parquet. Then point --config at ./lethe-demo/lethe.toml.
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
    /// Build the embedded demo (synthetic tenants in SQLite, a local store) and snapshot it.
    ///
    /// Safe to run again: the database, blobs and keyring are kept and a new snapshot run is added.
    Demo(DemoArgs),
    /// Validate lethe.toml, the data map (against the live database), the policy and the jobs.
    ///
    /// Prints every problem with its file, key or line, and a fix. Exit 2 if any.
    Check,
    /// Run one step now (what a CronJob or systemd timer calls).
    Run(RunArgs),
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
}

#[derive(Args)]
struct RunArgs {
    /// The step: `snapshot` (retention, backup-purge, erasure and analytics arrive with their issues).
    step: String,
    /// Only these tenants (repeatable).
    #[arg(long = "tenant")]
    tenants: Vec<String>,
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
            let run = lethe::pipeline::run_snapshot(&config, &[]).await?;
            println!();
            print_snapshot_summary(&run);
            println!(
                "\nencrypted snapshots are in {}; try:",
                a.dir.join("store").display()
            );
            let c = config.display();
            println!("  lethe --config {c} snapshot ls");
            println!("  lethe --config {c} snapshot verify");
            println!(
                "  lethe --config {c} snapshot restore --tenant kopi-senja --out /tmp/kopi-senja --format csv"
            );
            Ok(if run.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Check => {
            let c = lethe::check::check(&cli.config)?;
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
        Command::Run(r) => match r.step.as_str() {
            "snapshot" => {
                let run = lethe::pipeline::run_snapshot(&cli.config, &r.tenants).await?;
                print_snapshot_summary(&run);
                Ok(if run.failed.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            other => Err(lethe::Error::Usage(format!(
                "unknown or not yet available step {other:?}; this build runs: snapshot"
            ))
            .into()),
        },
        Command::Snapshot(s) => {
            let config = lethe::config::Config::load(&cli.config)?;
            let store = Store::open(&config.store)?;
            match s {
                SnapshotCommand::Ls { tenant, json } => {
                    let tenants = match tenant {
                        Some(t) => vec![t],
                        None => read::tenants(&store).await?,
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
                            "{:<20} {:<24} {:<21} {:>6} {:>10} {:>11}",
                            "tenant", "run", "committed", "tables", "rows", "bytes"
                        );
                        for m in &all {
                            println!(
                                "{:<20} {:<24} {:<21} {:>6} {:>10} {:>11}",
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
            }
        }
    }
}
