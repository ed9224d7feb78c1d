//! What the command line accepts: clap's derive structs, with the help text users read.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::snapshot::read::RestoreFormat;

/// lethe keeps a multi-tenant SaaS's personal data inside the promises its privacy policy makes:
/// encrypted per-tenant snapshots, retention, erasure with signed certificates, audit.
///
/// Start with `lethe demo`: it builds a synthetic multi-tenant database in ./lethe-demo, applies
/// the retention policy, erases a customer and an employee and offboards a tenant, and snapshots
/// it into encrypted Parquet. Then point --config at ./lethe-demo/lethe.toml and try `plan`,
/// `requests ls`, `audit verify`, `snapshot ls`.
#[derive(Parser)]
#[command(name = "lethe", version, max_term_width = 100)]
pub(super) struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        default_value = "lethe.toml",
        env = "LETHE_CONFIG"
    )]
    pub(super) config: PathBuf,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(super) verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub(super) quiet: bool,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Build the embedded demo (synthetic tenants in SQLite, a local store), receive three
    /// erasure requests (a customer, an employee with selfies, a tenant's offboarding) and run
    /// the nightly job on it: retention, erasure, then a snapshot.
    ///
    /// Safe to run again: the database, blobs and keyring are kept and a new snapshot run is added.
    Demo(DemoArgs),
    /// Validate lethe.toml, the data map (against the live database), the policy and the jobs.
    ///
    /// Prints every problem with its file, key or line, and a fix. Exit 2 if any.
    Check,
    /// Create lethe's own tables in the primary database: the intake table
    /// `lethe_erasure_requests` the product's app inserts erasure requests into, and the blob
    /// outbox `lethe_blob_outbox`. Safe to run again (existing tables are kept).
    ///
    /// The erasure step creates them too on its first run; this is for an app that wants to
    /// insert requests before lethe ever ran.
    InitDb,
    /// Dry run of retention and of the open erasure requests: what would be deleted,
    /// anonymized or flagged, per tenant and category; what is held back and why; which backups
    /// would be purged; per erasure request the rows per table, what is kept and why, and the
    /// runs that hold the person; and the two plan hashes.
    ///
    /// Changes nothing anywhere (the database is opened read-only). To execute exactly a plan,
    /// pass its hash: `lethe run retention --now <the plan's now> --plan-hash <hash>`, or
    /// `lethe run erasure --plan-hash <the erasure plan's hash>`.
    Plan(PlanArgs),
    /// Run a job of jobs/*.toml now (`lethe run nightly`: what a CronJob or systemd timer
    /// calls), or a single step (`lethe run retention`, `lethe run erasure`, `lethe run snapshot`).
    ///
    /// A job's steps run in the order its file lists them; a failed step stops the steps after
    /// it; a tenant whose snapshot failed alone is reported and the run exits 1 at the end. A
    /// job run is recorded in the store as runs/<job>/<run-id>.json.
    Run(RunArgs),
    /// The audit log: verify the hash chain and the signed checkpoints.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Keys: the public signing keys that verify audit checkpoints and deletion certificates
    /// (one JWK, or a JWK Set of every key ever used); rotate the signing key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Deletion certificates: verify one (signature, and with store access its audit anchor), or
    /// render it as Markdown or HTML for the controller's files.
    #[command(subcommand)]
    Certificate(CertificateCommand),
    /// A signed retention attestation for one tenant and month: per category the rule, the rows
    /// deleted (from the audit records of the month) and the oldest surviving anchor measured at
    /// the month's end (recorded by the last retention run in it); snapshot runs purged, keys
    /// destroyed, erasures finished, what legal holds kept. A month that has not ended is
    /// attested up to now and measured now, from the live database and store (rows due for
    /// less than `[certificates] attestation_grace` are waiting for the next run, not broken
    /// promises).
    ///
    /// Writes the JWS (same format and key as deletion certificates; check it with `lethe
    /// certificate verify`) to standard output or --out, keeps a copy in the store under
    /// attestations/tenant=<t>/<month>/, and prints a summary on standard error.
    ///
    /// Exit 0 every promise kept; 1 a violation (named), or no measurement covers the month
    /// (retention did not run in it); 2 bad usage.
    ///
    /// Example: lethe attest --tenant acme --period 2026-11 --out acme-2026-11.jws
    Attest(AttestArgs),
    /// Snapshot runs in the store: list, verify, restore.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Receive an erasure request: one person (`subject`) or a whole tenant (`tenant`).
    ///
    /// The request is validated (tenant, identifier kind, identifier), then stored create-only
    /// as requests/tenant=<t>/<id>.json with its due dates from the policy's [erasure]. The
    /// identifier is normalized (E.164 phones, lower-case emails) and stored only sealed under
    /// the tenant's data key, next to its keyed hash; it is never printed or logged. Bad input
    /// exits 2 and records nothing. This build receives and lists requests; the `erasure` step
    /// that executes them comes next.
    #[command(subcommand)]
    Erase(EraseCommand),
    /// Erasure requests: their phase and due dates.
    #[command(subcommand)]
    Requests(RequestsCommand),
    /// Right of access and portability: everything the primary database holds about a person
    /// (found by the same resolution as erasure) or a tenant, as JSON or CSV, with the photos and
    /// recordings its rows reference. Reads only; writes into a new directory (files 0600).
    #[command(subcommand)]
    Export(ExportCommand),
}

#[derive(Subcommand)]
pub(super) enum EraseCommand {
    /// Erase one person of a tenant, found from one identifier.
    Subject {
        #[arg(long)]
        tenant: String,
        /// The identifier's kind, as the data map declares it (`identifiers`): phone, email, …
        #[arg(long)]
        kind: String,
        /// The identifier (e.g. `+62 812-3456-7890`; any common way of writing it).
        #[arg(long)]
        id: String,
        /// Due now: the next run executes it in the database and rewrites every backup holding
        /// the person (the chat bot's `/forget`).
        #[arg(long)]
        immediate: bool,
        /// The controller's own reference (ticket or case number).
        #[arg(long = "ref")]
        reference: Option<String>,
    },
    /// Offboard a whole tenant.
    Tenant {
        #[arg(long)]
        tenant: String,
        /// Due now instead of by the policy's deadlines.
        #[arg(long)]
        immediate: bool,
        /// The controller's own reference.
        #[arg(long = "ref")]
        reference: Option<String>,
    },
}

#[derive(Subcommand)]
pub(super) enum RequestsCommand {
    /// What one request covers in the primary database now: the person's identifiers found by
    /// following the data map's links (counted by kind, never shown) and the rows per table.
    /// Reads only.
    Show {
        #[arg(long)]
        tenant: String,
        /// The request id (from `lethe requests ls`).
        id: String,
    },
    /// List requests: tenant, id, scope, state, due dates. Exit 1 if any is overdue.
    Ls {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(super) enum ExportCommand {
    /// One person: every row holding one of their identifiers, in every mapped table.
    Subject {
        #[arg(long)]
        tenant: String,
        /// Identifier kind, as the data map declares it (phone, email, employee_no, …).
        #[arg(long)]
        kind: String,
        /// The identifier as the person gave it (normalized before matching).
        #[arg(long)]
        id: String,
        #[arg(long, value_enum, default_value = "json")]
        format: crate::erasure::export::ExportFormat,
        /// A directory to create (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// A whole tenant (offboarding: the controller takes its data along).
    Tenant {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum, default_value = "csv")]
        format: crate::erasure::export::ExportFormat,
        /// A directory to create (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
pub(super) struct DemoArgs {
    /// Directory to create (or reuse).
    #[arg(long, default_value = "lethe-demo")]
    pub(super) dir: PathBuf,
    /// Number of tenants (a few of them cancelled).
    #[arg(long, default_value_t = 20)]
    pub(super) tenants: usize,
    /// Days of history to generate, ending today (00:00 UTC).
    #[arg(long, default_value_t = 400)]
    pub(super) days: u32,
    /// Seed of the generator: the same seed on the same day gives the same database.
    #[arg(long, default_value_t = 42)]
    pub(super) seed: u64,
    /// Load the demo into this PostgreSQL database (`postgres://user@host:5432/db`, password
    /// in PGPASSWORD) and snapshot from there. Existing demo tables there are kept.
    #[arg(long)]
    pub(super) source: Option<String>,
    /// Build and snapshot only; leave retention to `lethe run retention`.
    #[arg(long)]
    pub(super) no_retention: bool,
}

#[derive(Args)]
pub(super) struct PlanArgs {
    /// Print the plan as JSON (the hash covers exactly this document).
    #[arg(long)]
    pub(super) json: bool,
    /// Plan as of this instant (RFC 3339) instead of the clock; never later than the clock.
    #[arg(long, value_parser = parse_instant)]
    pub(super) now: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Args)]
pub(super) struct RunArgs {
    /// A job name from jobs/*.toml (e.g. `nightly`), or one step: `retention`, `erasure`,
    /// `snapshot`, `analytics`.
    #[arg(value_name = "JOB|STEP", value_parser = parse_target)]
    pub(super) target: Target,
    /// Only these tenants (repeatable; the snapshot step only, by hand).
    #[arg(long = "tenant")]
    pub(super) tenants: Vec<String>,
    /// retention (or `run erasure`): execute only if the current plan has this hash (from
    /// `lethe plan`), which also confirms a plan the safety brake stopped.
    #[arg(long)]
    pub(super) plan_hash: Option<String>,
    /// retention: run as of this instant (RFC 3339) instead of the clock; never later than the
    /// clock, so an override can only delete less.
    #[arg(long, value_parser = parse_instant)]
    pub(super) now: Option<chrono::DateTime<chrono::Utc>>,
    /// analytics: recompute every complete partition of this dataset (repeatable) from today's
    /// snapshots and replace the published ones. What it risks: a reader who kept the old
    /// release can difference the two and learn about the rows retention deleted and the people
    /// erased in between — which is why partitions are otherwise frozen. Use it after fixing a
    /// wrong dataset definition, not routinely.
    #[arg(long, value_name = "DATASET")]
    pub(super) rebuild: Vec<String>,
}

#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Verify the chain: every record's hash link, sequence and signed checkpoints.
    ///
    /// Exit 1 naming each edited, removed, reordered or inserted record.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(super) enum KeysCommand {
    /// Print the Ed25519 public key (checkpoints, certificates); `--format jwks` lists every key
    /// that ever signed, with its validity period.
    Public {
        #[arg(long, value_enum, default_value = "jwk")]
        format: KeyFormat,
    },
    /// Replace the signing key with a new one. The old key's public half is kept beside it, so
    /// audit checkpoints and certificates it signed keep verifying; publish the new JWKS.
    Rotate,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum KeyFormat {
    /// One JWK (RFC 8037, `kid` = RFC 7638 thumbprint).
    Jwk,
    /// A JWK Set (`{"keys": [...]}`): what a JOSE library or `certificate verify --jwks` takes.
    Jwks,
    /// The raw 32-byte public key in hex.
    Hex,
}

#[derive(Subcommand)]
pub(super) enum CertificateCommand {
    /// Verify a certificate: its Ed25519 signature (offline, with `--jwks` or this
    /// installation's public key) and, when the store is reachable (`--config`), that the
    /// audit record and signed checkpoint it is anchored to are in the audit chain.
    ///
    /// Exit 0 verified; 1 it does not verify (names what failed: not a JWS, truncated,
    /// unknown kid, bad signature, anchor missing); 2 the file cannot be read.
    ///
    /// Example: lethe certificate verify certificates/tenant=acme/<id>/final.jws --jwks issuer.jwks
    Verify {
        /// The certificate (`.jws`).
        file: std::path::PathBuf,
        /// A JWK Set (or one JWK) to verify with, e.g. from `lethe keys public --format jwks`.
        /// Without it: this installation's signing key.
        #[arg(long)]
        jwks: Option<std::path::PathBuf>,
        /// Check the signature only: do not open the store.
        #[arg(long)]
        offline: bool,
        /// Print the verified payload as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Render a certificate for people — what a controller files: who, what, when, how it was
    /// verified, what was kept and why, how to check the signature. The signature is verified
    /// first (as `verify --offline`); a certificate that does not verify is not rendered (exit 1).
    ///
    /// Example: lethe certificate render final.jws --format html --out final.html
    Render {
        /// The certificate (`.jws`).
        file: std::path::PathBuf,
        #[arg(long, value_enum, default_value = "md")]
        format: RenderFormat,
        /// A JWK Set (or one JWK) to verify with. Without it: this installation's signing key.
        #[arg(long)]
        jwks: Option<std::path::PathBuf>,
        /// Write here instead of standard output (created 0644; refuses to overwrite).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum RenderFormat {
    /// Markdown.
    Md,
    /// One self-contained HTML page that prints well.
    Html,
}

pub(super) fn parse_instant(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e}: write an RFC 3339 instant like 2026-11-01T00:00:00Z"))
}

#[derive(Subcommand)]
pub(super) enum SnapshotCommand {
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

/// What `lethe run` runs: one step this build has, or a job of jobs/*.toml by name.
#[derive(Debug, Clone)]
pub(super) enum Target {
    Step(crate::jobs::Step),
    Job(String),
}

/// A step's name is a step (refused here, exit 2, when this build does not have it); any other
/// name is a job, found (or refused, naming jobs/) when the configuration is read.
pub(super) fn parse_target(s: &str) -> Result<Target, String> {
    use crate::jobs::Step;
    match Step::parse(s) {
        Some(step) if step.available() => Ok(Target::Step(step)),
        Some(Step::BackupPurge) => Err(
            "backups are purged by the retention step in this build: run `lethe run retention` (see `lethe plan` for the runs it would purge)".into(),
        ),
        Some(step) => Err(format!(
            "step {step} is not in this build; its steps are: {}",
            Step::available_names()
        )),
        None => Ok(Target::Job(s.to_string())),
    }
}

#[derive(clap::Args)]
pub(super) struct AttestArgs {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The month, UTC: YYYY-MM.
    #[arg(long)]
    pub period: String,
    /// Write the JWS here instead of standard output (refuses to overwrite).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Print the payload as JSON on standard output (after the JWS, or alone with --out).
    #[arg(long)]
    pub json: bool,
}
