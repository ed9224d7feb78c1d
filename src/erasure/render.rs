//! A deletion certificate for people: what a controller files (`lethe certificate render FILE
//! --format md|html`). Built from the verified payload only; one document model, two writers.
//! The HTML is one self-contained page (inline CSS, no scripts, no external assets) that
//! prints on A4/Letter. Every value is escaped; nothing in a certificate identifies the person.

use serde_json::Value;

/// One block of the document.
enum Block {
    Heading(u8, String),
    Pairs(Vec<(String, String)>),
    Table(Vec<String>, Vec<Vec<String>>),
    Para(String),
    Code(String),
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The document of a verified retention attestation `p`.
fn attestation(p: &Value, kid: &str, file: &str) -> Vec<Block> {
    let period = &p["period"];
    let mut out = vec![
        Block::Heading(
            1,
            format!(
                "Retention attestation — {} for {}",
                s(&p["tenant"]),
                s(&period["month"])
            ),
        ),
        Block::Pairs(vec![
            (
                "Outcome".into(),
                match p["outcome"].as_str() {
                    Some("kept") => "kept: nothing outlived its retention rule".into(),
                    Some("violations") => {
                        "violations: data outlived its retention rule (listed below)".into()
                    }
                    Some("unmeasured") => {
                        "unmeasured: no measurement covers the period (retention did not run in it)"
                            .into()
                    }
                    _ => s(&p["outcome"]),
                },
            ),
            ("Issued by (processor)".into(), s(&p["iss"])),
            ("Controller (tenant)".into(), s(&p["aud"])),
            (
                "Period".into(),
                format!(
                    "{} to {} ({})",
                    s(&period["from"]),
                    s(&period["to"]),
                    s(&period["note"])
                ),
            ),
            (
                "Policy".into(),
                format!(
                    "version {} ({})",
                    s(&p["policy"]["version"]),
                    s(&p["policy"]["hash"])
                ),
            ),
            (
                "Retention runs in the period".into(),
                s(&p["retention_runs"]),
            ),
            (
                "Measured".into(),
                format!(
                    "{} at {} (grace {})",
                    s(&p["measurement"]["kind"]),
                    s(&p["measurement"]["at"]),
                    s(&p["measurement"]["grace"])
                ),
            ),
        ]),
    ];
    let violations = p["violations"].as_array().cloned().unwrap_or_default();
    if !violations.is_empty() {
        out.push(Block::Heading(2, "Violations".into()));
        for v in violations {
            out.push(Block::Para(s(&v)));
        }
    }
    out.push(Block::Heading(2, "Per category".into()));
    out.push(Block::Table(
        [
            "Table",
            "Category",
            "Rule",
            "Deleted",
            "Anonymized",
            "Oldest surviving",
            "Past rule",
            "Held",
            "Status",
        ]
        .map(String::from)
        .to_vec(),
        p["categories"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let m = &c["measured"];
                vec![
                    s(&c["table"]),
                    s(&c["category"]),
                    s(&c["rule"]),
                    s(&c["rows_deleted"]),
                    s(&c["rows_anonymized"]),
                    s(&m["oldest_surviving_anchor"]),
                    s(&m["rows_past_rule"]),
                    match &m["hold"] {
                        Value::String(h) => format!("{} ({h})", s(&m["rows_held"])),
                        _ => s(&m["rows_held"]),
                    },
                    s(&c["status"]),
                ]
            })
            .collect(),
    ));
    let b = &p["backups"];
    out.push(Block::Heading(2, "Backups".into()));
    out.push(Block::Pairs(vec![
        ("Rule".into(), s(&b["measured"]["rule"])),
        (
            "Snapshot runs purged in the period".into(),
            s(&b["runs_purged"]),
        ),
        (
            "Committed runs kept".into(),
            s(&b["measured"]["committed_runs"]),
        ),
        ("Oldest kept run".into(), s(&b["measured"]["oldest_run"])),
        ("Runs past the rule".into(), s(&b["measured"]["past_rule"])),
        ("Status".into(), s(&b["status"])),
    ]));
    out.extend(evidence(p, kid, file));
    out
}

/// The evidence and how to verify: the same for certificates and attestations.
fn evidence(p: &Value, kid: &str, file: &str) -> Vec<Block> {
    let a = &p["anchor"];
    vec![
        Block::Heading(2, "Evidence".into()),
        Block::Pairs(vec![
            (
                "Audit record".into(),
                format!(
                    "#{} ({})",
                    s(&a["audit_record"]["seq"]),
                    s(&a["audit_record"]["hash"])
                ),
            ),
            (
                "Signed audit checkpoint".into(),
                format!(
                    "#{} at {} by {}",
                    s(&a["checkpoint"]["seq"]),
                    s(&a["checkpoint"]["at"]),
                    s(&a["checkpoint"]["key_id"])
                ),
            ),
            (
                "Signature".into(),
                format!("Ed25519 (JWS, alg EdDSA), verified with key {kid}"),
            ),
        ]),
        Block::Heading(2, "How to verify this document".into()),
        Block::Para(
            "The file is a JWS (RFC 7515) signed with Ed25519 (RFC 8037). Anyone can check it offline with any JOSE library and the processor's public keys, for example:".into(),
        ),
        Block::Code(format!(
            "lethe keys public --format jwks > issuer.jwks      # on the processor's side, once\nlethe certificate verify {file} --jwks issuer.jwks --offline"
        )),
    ]
}

/// The document of a verified certificate `p`, signed by key `kid`.
fn document(p: &Value, kid: &str, file: &str) -> Vec<Block> {
    if p["format"] == crate::attest::FORMAT {
        return attestation(p, kid, file);
    }
    let r = &p["request"];
    let mut out = vec![
        Block::Heading(
            1,
            format!("Deletion certificate — {} phase", s(&p["phase"])),
        ),
        Block::Pairs(vec![
            ("Outcome".into(), outcome_text(&p["outcome"])),
            ("Issued by (processor)".into(), s(&p["iss"])),
            ("Controller (tenant)".into(), s(&p["aud"])),
            ("Certificate id".into(), s(&p["jti"])),
            (
                "Issued at".into(),
                p["iat"]
                    .as_i64()
                    .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                    .map_or("—".into(), crate::util::rfc3339),
            ),
            (
                "Tool".into(),
                format!("{} {}", s(&p["tool"]["name"]), s(&p["tool"]["version"])),
            ),
        ]),
        Block::Heading(2, "Request".into()),
        Block::Pairs(vec![
            ("Request id".into(), s(&r["id"])),
            ("Your reference".into(), s(&r["ref"])),
            ("Kind".into(), s(&r["kind"])),
            ("Legal basis".into(), s(&r["basis"])),
            ("Received".into(), s(&r["received_at"])),
            ("Due (database and files)".into(), s(&r["due_primary"])),
            ("Due (backups)".into(), s(&r["due_backups"])),
            ("Completed".into(), s(&r["completed_at"])),
            ("Policy version".into(), s(&p["policy"]["version"])),
        ]),
    ];
    if p["subject"].is_object() {
        out.push(Block::Heading(2, "Data subject".into()));
        out.push(Block::Para(format!(
            "Identified only by a keyed hash of their {} (the processor holds the key; the identifier itself appears nowhere in this certificate): {}",
            s(&p["subject"]["kind"]),
            s(&p["subject"]["hash"])
        )));
    }
    out.push(Block::Heading(
        2,
        "What was erased, and how it was verified".into(),
    ));
    let systems = p["systems"].as_array().cloned().unwrap_or_default();
    out.push(Block::Table(
        vec![
            "System".into(),
            "Method (NIST SP 800-88)".into(),
            "Status".into(),
            "Verification".into(),
        ],
        systems
            .iter()
            .map(|x| {
                vec![
                    s(&x["system"]).replace('_', " "),
                    match &x["method"] {
                        Value::Null => "—".into(),
                        m => s(m),
                    },
                    match x["status"].as_str() {
                        Some("pending") => format!("pending: by {}", s(&x["purge_by"])),
                        _ => s(&x["status"]),
                    },
                    s(&x["verification"]),
                ]
            })
            .collect(),
    ));
    if let Some(rows) = systems
        .iter()
        .find(|x| x["system"] == "primary_database")
        .and_then(|x| x["rows_deleted"].as_object())
    {
        out.push(Block::Heading(3, "Database rows deleted".into()));
        out.push(Block::Table(
            vec!["Table".into(), "Rows".into()],
            rows.iter().map(|(t, n)| vec![t.clone(), s(n)]).collect(),
        ));
    }
    if let Some(b) = systems.iter().find(|x| x["system"] == "blob_store") {
        out.push(Block::Para(format!(
            "Files (photos, recordings): {} deleted, {} already absent.",
            s(&b["objects_deleted"]),
            s(&b["objects_already_absent"])
        )));
    }
    if let Some(files) = systems
        .iter()
        .find(|x| x["system"] == "backups")
        .and_then(|x| x["files"].as_array())
        .filter(|f| !f.is_empty())
    {
        out.push(Block::Heading(3, "Backup files rewritten".into()));
        out.push(Block::Table(
            vec![
                "Snapshot run".into(),
                "Table".into(),
                "Rows removed".into(),
                "Old sha256".into(),
                "New sha256".into(),
            ],
            files
                .iter()
                .map(|f| {
                    vec![
                        s(&f["run"]),
                        s(&f["table"]),
                        s(&f["rows_dropped"]),
                        s(&f["old_sha256"]),
                        s(&f["new_sha256"]),
                    ]
                })
                .collect(),
        ));
    }
    out.push(Block::Heading(2, "Kept, and why".into()));
    let kept = p["exceptions"].as_array().cloned().unwrap_or_default();
    if kept.is_empty() {
        out.push(Block::Para("Nothing was kept.".into()));
    } else {
        out.push(Block::Table(
            vec![
                "Table".into(),
                "Rows".into(),
                "Reason".into(),
                "Legal basis".into(),
            ],
            kept.iter()
                .map(|k| {
                    vec![
                        s(&k["table"]),
                        s(&k["rows"]),
                        s(&k["reason"]),
                        s(&k["legal_basis"]),
                    ]
                })
                .collect(),
        ));
    }
    out.push(Block::Heading(2, "Sub-processors notified".into()));
    let subs = p["subprocessors"].as_array().cloned().unwrap_or_default();
    if subs.is_empty() {
        out.push(Block::Para("None configured.".into()));
    } else {
        out.push(Block::Table(
            vec!["Sub-processor".into(), "Answer".into()],
            subs.iter()
                .map(|x| vec![s(&x["name"]), s(&x["status"])])
                .collect(),
        ));
    }
    out.extend(evidence(p, kid, file));
    out
}

fn outcome_text(o: &Value) -> String {
    match o.as_str() {
        Some("erased") => "erased: everything covered was erased".into(),
        Some("erased_with_exceptions") => {
            "erased with exceptions: some data is kept, for the reasons below".into()
        }
        Some("not_erased") => {
            "not erased: everything covered is kept, for the reasons below".into()
        }
        _ => s(o),
    }
}

fn md_cell(v: &str) -> String {
    v.replace('|', "\\|").replace('\n', " ")
}

/// The certificate as Markdown.
pub fn markdown(p: &Value, kid: &str, file: &str) -> String {
    let mut out = String::new();
    for b in document(p, kid, file) {
        match b {
            Block::Heading(n, t) => {
                out.push_str(&format!("{} {}\n\n", "#".repeat(n as usize), md_cell(&t)))
            }
            Block::Pairs(kv) => {
                for (k, v) in kv {
                    out.push_str(&format!("- **{}:** {}\n", md_cell(&k), md_cell(&v)));
                }
                out.push('\n');
            }
            Block::Table(h, rows) => {
                out.push_str(&format!(
                    "| {} |\n|{}\n",
                    h.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | "),
                    "---|".repeat(h.len())
                ));
                for r in rows {
                    out.push_str(&format!(
                        "| {} |\n",
                        r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ")
                    ));
                }
                out.push('\n');
            }
            Block::Para(t) => out.push_str(&format!("{}\n\n", md_cell(&t))),
            Block::Code(t) => out.push_str(&format!("```\n{t}\n```\n\n")),
        }
    }
    out
}

fn esc(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = "body{font:11pt/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#111;max-width:52em;margin:2em auto;padding:0 1em}\
h1{font-size:1.6em;border-bottom:2px solid #111;padding-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #bbb}\
h3{font-size:1em}table{border-collapse:collapse;width:100%;margin:.5em 0 1em}th,td{border:1px solid #bbb;padding:.3em .5em;text-align:left;vertical-align:top;word-break:break-all}\
th{background:#f0f0f0}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0;word-break:break-all}\
pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap;word-break:break-all}\
@media print{body{margin:0;max-width:none}h2{break-after:avoid}table,pre,dl{break-inside:avoid}}@page{margin:18mm}";

/// The certificate as one self-contained HTML page.
pub fn html(p: &Value, kid: &str, file: &str) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} {}</title><style>{CSS}</style></head><body>\n",
        if p["format"] == crate::attest::FORMAT {
            "Retention attestation"
        } else {
            "Deletion certificate"
        },
        esc(&s(&p["jti"]))
    );
    for b in document(p, kid, file) {
        match b {
            Block::Heading(n, t) => out.push_str(&format!("<h{n}>{}</h{n}>\n", esc(&t))),
            Block::Pairs(kv) => {
                out.push_str("<dl>");
                for (k, v) in kv {
                    out.push_str(&format!("<dt>{}</dt><dd>{}</dd>", esc(&k), esc(&v)));
                }
                out.push_str("</dl>\n");
            }
            Block::Table(h, rows) => {
                out.push_str("<table><thead><tr>");
                for c in h {
                    out.push_str(&format!("<th>{}</th>", esc(&c)));
                }
                out.push_str("</tr></thead><tbody>");
                for r in rows {
                    out.push_str("<tr>");
                    for c in r {
                        out.push_str(&format!("<td>{}</td>", esc(&c)));
                    }
                    out.push_str("</tr>");
                }
                out.push_str("</tbody></table>\n");
            }
            Block::Para(t) => out.push_str(&format!("<p>{}</p>\n", esc(&t))),
            Block::Code(t) => out.push_str(&format!("<pre>{}</pre>\n", esc(&t))),
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_in_html_and_markdown_tables() {
        let p = serde_json::json!({
            "phase": "primary", "outcome": "erased", "iss": "<script>alert(1)</script>",
            "aud": "a|b", "jti": "x", "iat": 0, "tool": {"name": "lethe", "version": "0"},
            "request": {}, "policy": {}, "systems": [], "exceptions": [], "subprocessors": [],
            "anchor": {"audit_record": {}, "checkpoint": {}},
        });
        let h = html(&p, "k", "f.jws");
        assert!(!h.contains("<script>") && h.contains("&lt;script&gt;"));
        assert!(
            !h.contains("http://") && !h.contains("https://"),
            "self-contained"
        );
        let m = markdown(&p, "k", "f.jws");
        assert!(m.contains("a\\|b"));
    }
}
