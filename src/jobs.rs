//! Job definitions (`jobs/*.toml`, every file there except the retention policy): a name, a
//! 5-field cron schedule in an IANA time zone, the steps to run, what to do about missed runs,
//! and a deadline. The scheduler that fires them comes with `lethe daemon`; this module parses
//! and validates so that `lethe check` catches a broken schedule before the night it matters.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::problem::{Problem, Problems};
use crate::span::Span;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: String,
    /// Five fields, Kubernetes style: minute hour day-of-month month day-of-week.
    schedule: String,
    /// IANA time zone the schedule is read in, e.g. `Asia/Jakarta`.
    #[serde(default = "utc")]
    timezone: String,
    steps: Vec<String>,
    /// `skip` (default) or `run_once`: after downtime, run a missed occurrence once or not at all.
    #[serde(default = "skip")]
    missed_run: String,
    /// Longest a run may take before it is reported as failed, e.g. `4h`.
    #[serde(default)]
    deadline: Option<String>,
}
fn utc() -> String {
    "UTC".into()
}
fn skip() -> String {
    "skip".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Snapshot,
    Retention,
    BackupPurge,
    Erasure,
    Analytics,
}

impl Step {
    pub const ALL: [(&'static str, Step); 5] = [
        ("snapshot", Step::Snapshot),
        ("retention", Step::Retention),
        ("backup-purge", Step::BackupPurge),
        ("erasure", Step::Erasure),
        ("analytics", Step::Analytics),
    ];

    /// The steps this build runs, in the order a job should list them: retention and erasure
    /// before snapshot, so that a new backup never receives a row that was already due or a
    /// person who asked to be erased.
    pub const AVAILABLE: [Step; 4] = [
        Step::Retention,
        Step::Erasure,
        Step::Snapshot,
        Step::Analytics,
    ];

    pub fn parse(s: &str) -> Option<Step> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, st)| *st)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, st)| *st == self)
            .map(|(n, _)| *n)
            .expect("every step has a name")
    }

    pub fn available(self) -> bool {
        Self::AVAILABLE.contains(&self)
    }

    /// "retention, snapshot": the steps this build has, for messages.
    pub fn available_names() -> String {
        Self::AVAILABLE
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub file: PathBuf,
    pub name: String,
    pub schedule: String,
    pub timezone: chrono_tz::Tz,
    pub steps: Vec<Step>,
    pub run_missed: bool,
    pub deadline: Option<Span>,
}

/// Load every job file in `dir` except `policy`.
pub fn load_dir(dir: &Path, policy: &Path) -> Result<Vec<Job>, Problems> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Problems(vec![Problem::new(
            dir,
            "",
            format!("cannot read the jobs directory: {e}"),
            "set paths.jobs in lethe.toml",
        )])
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| !same_file(p, policy))
        // Dataset definitions live beside the jobs, but are not a job.
        .filter(|p| {
            p.file_name()
                .is_none_or(|n| n != crate::analytics::dataset::FILE)
        })
        .collect();
    files.sort();
    let mut jobs = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => match parse(&f, &text) {
                Ok(j) => jobs.push(j),
                Err(p) => problems.extend(p),
            },
            Err(e) => problems.push(Problem::new(
                &f,
                "",
                format!("cannot read: {e}"),
                "check the file's permissions",
            )),
        }
    }
    for (i, j) in jobs.iter().enumerate() {
        if jobs[..i].iter().any(|o| o.name == j.name) {
            problems.push(Problem::new(
                &j.file,
                "name",
                format!("job name {:?} used twice", j.name),
                "give every job its own name",
            ));
        }
    }
    if problems.is_empty() {
        Ok(jobs)
    } else {
        Err(Problems(problems))
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

pub fn parse(path: &Path, text: &str) -> Result<Job, Vec<Problem>> {
    let f: JobFile = toml::from_str(text).map_err(|e| {
        vec![Problem::new(
            path,
            "",
            e.to_string().trim_end().to_string(),
            "fix the TOML",
        )]
    })?;
    let mut problems = Vec::new();
    if !crate::util::is_safe_ident(&f.name) {
        problems.push(Problem::new(
            path,
            "name",
            format!("job name {:?} is not a plain name (letters, digits, - and _)", f.name),
            "name the job like \"nightly\" (it is the argument of `lethe run` and part of its run records' keys)",
        ));
    }
    if let Err(m) = check_cron(&f.schedule) {
        problems.push(Problem::new(
            path,
            "schedule",
            m,
            "write five fields: minute hour day-of-month month day-of-week, e.g. \"30 2 * * *\"",
        ));
    }
    let timezone = f.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
        problems.push(Problem::new(
            path,
            "timezone",
            format!("{:?} is not an IANA time zone", f.timezone),
            "use a name like \"Asia/Jakarta\" or \"UTC\"",
        ));
    });
    let mut steps = Vec::new();
    for s in &f.steps {
        match Step::parse(s) {
            Some(st) if st.available() => steps.push(st),
            Some(Step::BackupPurge) => problems.push(Problem::new(
                path,
                "steps",
                "step \"backup-purge\" is not a step of its own in this build: backups are purged by the retention step".to_string(),
                format!("remove it; this build's steps are: {}", Step::available_names()),
            )),
            Some(_) => problems.push(Problem::new(
                path,
                "steps",
                format!("step {s:?} is not in this build yet"),
                format!("remove it; this build's steps are: {}", Step::available_names()),
            )),
            None => problems.push(Problem::new(
                path,
                "steps",
                format!("unknown step {s:?}"),
                format!("this build's steps are: {}", Step::available_names()),
            )),
        }
    }
    let at = |st: Step| steps.iter().position(|x| *x == st);
    if let (Some(snap), Some(ret)) = (at(Step::Snapshot), at(Step::Retention))
        && snap < ret
    {
        problems.push(Problem::new(
            path,
            "steps",
            "snapshot runs before retention: the new backup would receive rows that were already due, and keep them for the backups' whole retention",
            "list retention first: steps = [\"retention\", \"snapshot\"]",
        ));
    }
    if let (Some(snap), Some(era)) = (at(Step::Snapshot), at(Step::Erasure))
        && snap < era
    {
        problems.push(Problem::new(
            path,
            "steps",
            "snapshot runs before erasure: the new backup would receive the rows of people who asked to be erased, and the backups phase would have to rewrite it",
            "list erasure before snapshot: steps = [\"retention\", \"erasure\", \"snapshot\"]",
        ));
    }
    if let (Some(snap), Some(ana)) = (at(Step::Snapshot), at(Step::Analytics))
        && ana < snap
    {
        problems.push(Problem::new(
            path,
            "steps",
            "analytics runs before snapshot: it would aggregate yesterday's backup instead of the day that just ended",
            "list analytics after snapshot: steps = [\"retention\", \"erasure\", \"snapshot\", \"analytics\"]",
        ));
    }
    for (i, st) in steps.iter().enumerate() {
        if steps[..i].contains(st) {
            problems.push(Problem::new(
                path,
                "steps",
                format!("step {st} is listed twice"),
                "list each step once",
            ));
        }
    }
    if f.steps.is_empty() {
        problems.push(Problem::new(
            path,
            "steps",
            "no steps",
            "list the steps, e.g. steps = [\"snapshot\", \"retention\"]",
        ));
    }
    let run_missed = match f.missed_run.as_str() {
        "skip" => false,
        "run_once" => true,
        m => {
            problems.push(Problem::new(
                path,
                "missed_run",
                format!("unknown value {m:?}"),
                "use \"skip\" or \"run_once\"",
            ));
            false
        }
    };
    let deadline = match &f.deadline {
        Some(d) => Span::parse(d)
            .map_err(|m| {
                problems.push(Problem::new(
                    path,
                    "deadline",
                    m,
                    "write a duration like 4h",
                ))
            })
            .ok(),
        None => None,
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Job {
        file: path.to_path_buf(),
        name: f.name,
        schedule: f.schedule,
        timezone: timezone.unwrap(),
        steps,
        run_missed,
        deadline,
    })
}

/// Shape check of a 5-field cron expression: numbers within each field's range, `*`, lists,
/// ranges and steps. (The scheduler parses it fully when it arrives.)
fn check_cron(expr: &str) -> Result<(), String> {
    const FIELDS: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day-of-month", 1, 31),
        ("month", 1, 12),
        ("day-of-week", 0, 7),
    ];
    let parts: Vec<&str> = expr.split_whitespace().collect();
    if parts.len() != 5 {
        return Err(format!("{expr:?} has {} fields, expected 5", parts.len()));
    }
    for (part, (name, lo, hi)) in parts.iter().zip(FIELDS) {
        for item in part.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (item, None),
            };
            if let Some(s) = step
                && s.parse::<u32>().map_or(true, |s| s == 0)
            {
                return Err(format!(
                    "{name} field {part:?}: step {s:?} must be a positive number"
                ));
            }
            if range == "*" {
                continue;
            }
            let bounds: Vec<&str> = range.split('-').collect();
            if bounds.is_empty() || bounds.len() > 2 {
                return Err(format!("{name} field {part:?} is not a number, range or *"));
            }
            for b in bounds {
                match b.parse::<u32>() {
                    Ok(v) if (lo..=hi).contains(&v) => {}
                    _ => return Err(format!("{name} field {part:?}: {b:?} is outside {lo}-{hi}")),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_shapes() {
        for ok in ["30 2 * * *", "*/15 * * * 1-5", "0 0 1,15 * 0"] {
            assert!(check_cron(ok).is_ok(), "{ok}");
        }
        for bad in [
            "30 3 * *",
            "61 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "a * * * *",
            "0 0 0 * *",
        ] {
            assert!(check_cron(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn job_with_bad_zone_and_step_reports_both() {
        let e = parse(Path::new("jobs/n.toml"), "name = \"n\"\nschedule = \"30 2 * * *\"\ntimezone = \"Mars/Olympus\"\nsteps = [\"snapshot\", \"shred\"]\n").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn steps_this_build_lacks_and_snapshot_before_retention_are_refused() {
        let job = |steps: &str| {
            parse(
                Path::new("jobs/n.toml"),
                &format!("name = \"n\"\nschedule = \"30 2 * * *\"\nsteps = {steps}\n"),
            )
        };
        let ok = job("[\"retention\", \"snapshot\"]").unwrap();
        assert_eq!(ok.steps, vec![Step::Retention, Step::Snapshot]);
        let ok = job("[\"retention\", \"erasure\", \"snapshot\"]").unwrap();
        assert_eq!(
            ok.steps,
            vec![Step::Retention, Step::Erasure, Step::Snapshot]
        );
        for (steps, needle) in [
            ("[\"snapshot\", \"retention\"]", "list retention first"),
            (
                "[\"retention\", \"snapshot\", \"erasure\"]",
                "list erasure before snapshot",
            ),
            (
                "[\"analytics\", \"snapshot\"]",
                "list analytics after snapshot",
            ),
            (
                "[\"retention\", \"backup-purge\"]",
                "purged by the retention step",
            ),
            ("[\"retention\", \"retention\"]", "twice"),
        ] {
            let e = job(steps).unwrap_err();
            let text = e.iter().map(|p| p.to_string()).collect::<String>();
            assert!(text.contains(needle), "{steps}: {text}");
            assert!(
                text.contains("retention, erasure, snapshot, analytics")
                    || needle != "purged by the retention step",
                "{text}"
            );
        }
    }
}
