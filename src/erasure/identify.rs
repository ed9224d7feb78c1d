//! Identifiers as erasure matches them: normalized so that a difference a person would not notice
//! (spaces, dashes, a national trunk `0`, upper-case letters in an email) never makes a row slip
//! through. The data map declares which columns hold which kind (`identifiers = { customer_phone
//! = "phone" }`); the kinds `phone` and `email` have a normal form, every other kind (employee
//! numbers, account ids) is matched as written, without surrounding spaces.
//!
//! Errors describe the input's shape, never the input: an identifier is personal data.

use std::fmt;

/// Why an identifier was refused (no part of it is included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadIdentifier {
    pub kind: String,
    pub why: &'static str,
    pub fix: &'static str,
}

impl fmt::Display for BadIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} identifier {}\n  fix: {}",
            self.kind, self.why, self.fix
        )
    }
}

/// The normal form of identifier `value` of `kind`. `phone_country`: the country calling code
/// (digits, e.g. `62`) that numbers written in national form (`0812…`) belong to.
pub fn normalize(
    kind: &str,
    value: &str,
    phone_country: Option<&str>,
) -> Result<String, BadIdentifier> {
    let bad = |why, fix| BadIdentifier {
        kind: kind.to_string(),
        why,
        fix,
    };
    let v = value.trim();
    if v.is_empty() {
        return Err(bad("is empty", "pass the identifier with --id"));
    }
    if v.chars().any(char::is_control) {
        return Err(bad(
            "contains control characters",
            "pass the identifier as stored, on one line",
        ));
    }
    match kind {
        "phone" => phone(v, phone_country).map_err(|(why, fix)| bad(why, fix)),
        "email" => email(v).map_err(|(why, fix)| bad(why, fix)),
        _ => Ok(v.to_string()),
    }
}

/// E.164: `+` and 8–15 digits. Spaces, dots, dashes, slashes and parentheses are dropped; `00`
/// is the international prefix; a leading `0` is a national trunk prefix, replaced by the
/// country code.
fn phone(v: &str, country: Option<&str>) -> Result<String, (&'static str, &'static str)> {
    let mut digits = String::with_capacity(v.len());
    let mut plus = false;
    for (i, c) in v.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => plus = true,
            ' ' | '-' | '.' | '(' | ')' | '/' | '\u{a0}' => {}
            _ => {
                return Err((
                    "is not a phone number (only digits, a leading +, spaces, dots, dashes and parentheses)",
                    "pass the number as the person wrote it, e.g. +62 812-3456-7890",
                ));
            }
        }
    }
    let international = if plus {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_string()
    } else if let Some(rest) = digits.strip_prefix('0') {
        match country {
            Some(cc) => format!("{cc}{rest}"),
            None => {
                return Err((
                    "is in national form (leading 0) and no country code is configured",
                    "set [erasure] phone_country = \"62\" (your country calling code) in the policy, or pass the number with +",
                ));
            }
        }
    } else {
        // Digits with no prefix: already international without the `+` (how many apps store
        // them, e.g. WhatsApp ids).
        digits
    };
    if !(8..=15).contains(&international.len()) || international.starts_with('0') {
        return Err((
            "does not have the 8 to 15 digits of an international number",
            "check the number; pass it with its country code, e.g. +62 812-3456-7890",
        ));
    }
    Ok(format!("+{international}"))
}

/// Lower-case, trimmed, one `@` with something on both sides.
fn email(v: &str) -> Result<String, (&'static str, &'static str)> {
    // ASCII only, as SQLite's lower() and PostgreSQL's lower(… COLLATE "C") do: the SQL normal
    // form must agree with this one on every value.
    let lower = v.to_ascii_lowercase();
    match lower.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !lower.chars().any(char::is_whitespace) =>
        {
            Ok(lower)
        }
        _ => Err(("is not an email address", "pass the address as name@domain")),
    }
}

/// The same normal form as SQL, for matching stored values that were not normalized on write:
/// `Some(expression)` over `col` for kinds with a normal form a database can compute, `None`
/// when the stored value is compared as is. Phones: non-digits removed, then the trunk or
/// international prefix rewritten the same way as [`normalize`].
pub fn sql_normal_form(
    kind: &str,
    col: &str,
    phone_country: Option<&str>,
    postgres: bool,
) -> Option<String> {
    match kind {
        // ASCII-only lower case on both databases (SQLite's lower() is; PostgreSQL's is under
        // the C collation), as the Rust normal form.
        "email" if postgres => Some(format!("lower(trim({col}) COLLATE \"C\")")),
        "email" => Some(format!("lower(trim({col}))")),
        "phone" => {
            // Digits only (SQLite has no regexp_replace: nested replace of the separators).
            let mut e = format!("trim({col})");
            for sep in [" ", "\u{a0}", "-", ".", "(", ")", "/", "+"] {
                e = format!("replace({e}, '{sep}', '')");
            }
            let cc = phone_country.unwrap_or("");
            Some(format!(
                "'+' || CASE WHEN {e} LIKE '00%' THEN substr({e}, 3) \
                 WHEN {e} LIKE '0%' AND trim({col}) NOT LIKE '+%' THEN '{cc}' || substr({e}, 2) \
                 ELSE {e} END"
            ))
        }
        _ => None,
    }
}

/// What [`sql_normal_form`] (or `trim` for other kinds) computes for a stored value, in Rust:
/// restores and rewrites match rows of a snapshot with it exactly as the database matched them.
pub fn stored_form(kind: &str, raw: &str, phone_country: Option<&str>) -> String {
    let mut out = String::new();
    stored_form_into(kind, raw, phone_country, &mut out);
    out
}

/// [`stored_form`] into `out` (cleared first), for loops over millions of values.
pub fn stored_form_into(kind: &str, raw: &str, phone_country: Option<&str>, out: &mut String) {
    out.clear();
    let t = raw.trim_matches(' ');
    match kind {
        "email" => {
            out.push_str(t);
            out.make_ascii_lowercase();
        }
        "phone" => {
            // Already the normal form (how most apps store numbers): as is.
            let b = t.as_bytes();
            if b.len() > 1
                && b[0] == b'+'
                && b[1..].iter().all(u8::is_ascii_digit)
                && !t[1..].starts_with("00")
            {
                out.push_str(t);
                return;
            }
            // `+` and the digits with separators removed, then the prefix: `00…` is
            // international, a leading `0` (not after a `+`) is national.
            out.push('+');
            out.extend(
                t.chars()
                    .filter(|c| !matches!(c, ' ' | '\u{a0}' | '-' | '.' | '(' | ')' | '/' | '+')),
            );
            if out[1..].starts_with("00") {
                out.replace_range(1..3, "");
            } else if out[1..].starts_with('0') && !t.starts_with('+') {
                out.replace_range(1..2, phone_country.unwrap_or(""));
            }
        }
        _ => out.push_str(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored form as it was first written (two allocations per value), kept to check the
    /// buffer-reusing one against.
    fn stored_form_reference(kind: &str, raw: &str, phone_country: Option<&str>) -> String {
        let t = raw.trim_matches(' ');
        match kind {
            "email" => t.to_ascii_lowercase(),
            "phone" => {
                let e: String = t
                    .chars()
                    .filter(|c| !matches!(c, ' ' | '\u{a0}' | '-' | '.' | '(' | ')' | '/' | '+'))
                    .collect();
                if let Some(rest) = e.strip_prefix("00") {
                    format!("+{rest}")
                } else if let Some(rest) = e.strip_prefix('0').filter(|_| !t.starts_with('+')) {
                    format!("+{}{rest}", phone_country.unwrap_or(""))
                } else {
                    format!("+{e}")
                }
            }
            _ => t.to_string(),
        }
    }

    #[test]
    fn the_buffered_stored_form_is_the_reference_one() {
        let inputs = [
            "",
            " ",
            "0",
            "00",
            "000",
            "+0",
            "+00",
            "+0812",
            "+6281234567890",
            "+0062812",
            "+62",
            "0812 3456 7890",
            "+62 812-3456-7890",
            "0062 812",
            "00 62",
            "(021) 555.1234",
            "+",
            "++62",
            " 0\u{a0}812 ",
            "Ä@B.cOm ",
            "user@Example.COM",
            "é0",
            "0é",
            "12345",
            " 42 ",
            "/0/",
        ];
        let mut buf = String::from("leftover");
        for kind in ["phone", "email", "employee_no"] {
            for pc in [None, Some("62"), Some("")] {
                for raw in inputs {
                    stored_form_into(kind, raw, pc, &mut buf);
                    assert_eq!(
                        buf,
                        stored_form_reference(kind, raw, pc),
                        "{kind} {raw:?} {pc:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_same_indonesian_number_written_three_ways_is_one_number() {
        for written in [
            "+62 812-3456-7890",
            "0812 3456 7890",
            "+6281234567890",
            "6281234567890",
            "0062 812 3456 7890",
            "(0812) 3456.7890",
            " +62\u{a0}812 3456 7890 ",
        ] {
            assert_eq!(
                normalize("phone", written, Some("62")).unwrap(),
                "+6281234567890",
                "{written:?}"
            );
        }
    }

    #[test]
    fn emails_match_whatever_their_case() {
        assert_eq!(
            normalize("email", "  Siti.Rahma@Example.CO.ID ", None).unwrap(),
            "siti.rahma@example.co.id"
        );
    }

    #[test]
    fn other_kinds_are_matched_as_written() {
        assert_eq!(
            normalize("employee_no", " EMP-00042 ", None).unwrap(),
            "EMP-00042"
        );
    }

    #[test]
    fn bad_identifiers_are_refused_without_repeating_them() {
        let cases = [
            ("phone", "", "empty"),
            ("phone", "   ", "empty"),
            ("phone", "0812 3456 7890", "national form"),
            ("phone", "+62 812 ABC", "not a phone number"),
            ("phone", "+62 1", "8 to 15 digits"),
            ("phone", "+62 8123 4567 8901 2345", "8 to 15 digits"),
            ("email", "siti.example.com", "not an email"),
            ("email", "@example.com", "not an email"),
            ("email", "a@b@c", "not an email"),
            ("email", "a b@c", "not an email"),
            ("employee_no", "EMP\n1", "control characters"),
        ];
        for (kind, v, want) in cases {
            let e = normalize(kind, v, None).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(want), "{kind} {v:?}: {text}");
            if v.trim().len() > 3 {
                assert!(
                    !text.contains(v.trim()),
                    "the error repeats the input: {text}"
                );
            }
        }
    }

    #[test]
    fn sql_and_rust_agree_on_phones() {
        // The SQL form, evaluated by SQLite, gives the same normal form as `normalize`.
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let expr = sql_normal_form("phone", "?1", Some("62"), false).unwrap();
        for written in [
            "+62 812-3456-7890",
            "0812 3456 7890",
            "6281234567890",
            "0062 812 3456 7890",
            "(0812) 3456.7890",
            "+62\u{a0}812\u{a0}3456\u{a0}7890",
        ] {
            let got: String = c
                .query_row(&format!("SELECT {expr}"), [written], |r| r.get(0))
                .unwrap();
            assert_eq!(
                got,
                normalize("phone", written, Some("62")).unwrap(),
                "{written:?}"
            );
        }
    }
}
