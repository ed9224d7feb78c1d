//! A fault-injecting HTTP proxy in front of a test server (moto): every request goes through
//! it on its own connection, and rules decide per request whether it is forwarded untouched,
//! answered with an error status, forwarded and its response cut mid-body, or dropped.
//! Requests are logged (method, path, what was done) so tests can count attempts.
//!
//! Plain threads, HTTP/1.1 with `Connection: close` towards the server; good enough for the
//! S3 clients lethe uses (object_store and the AWS SDK reconnect after a close).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What to do to a request a rule matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Answer with this status (an S3-style XML error body), without forwarding.
    Status(u16),
    /// Forward, then send the response's head and half its body, and close.
    CutResponse,
    /// Start a 404 and cut the connection inside its headers: a connection lost while a 404
    /// was on its way.
    Cut404,
    /// Close the connection without an answer.
    Drop,
    /// Forward after waiting this many milliseconds.
    Delay(u64),
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// `None`: any method.
    pub method: Option<&'static str>,
    /// The request path (and query) must contain this.
    pub path_contains: String,
    pub fault: Fault,
    /// Share of the matching requests it applies to (1.0: all).
    pub probability: f64,
    /// Applies to at most this many requests (`None`: no limit).
    pub times: Option<u64>,
}

impl Rule {
    pub fn always(method: Option<&'static str>, path_contains: &str, fault: Fault) -> Rule {
        Rule {
            method,
            path_contains: path_contains.into(),
            fault,
            probability: 1.0,
            times: None,
        }
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// `None`: forwarded untouched.
    pub fault: Option<Fault>,
}

pub struct FaultProxy {
    pub port: u16,
    rules: Arc<Mutex<Vec<Rule>>>,
    pub log: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream_port`; `seed` makes the random
    /// faults replay.
    pub fn start(upstream_port: u16, seed: u64) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let rng = Arc::new(AtomicU64::new(seed.max(1)));
        let (r, lg, st) = (rules.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (r, lg, rng) = (r.clone(), lg.clone(), rng.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream_port, &r, &lg, &rng);
                });
            }
        });
        FaultProxy {
            port,
            rules,
            log,
            stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replace the rules.
    pub fn set(&self, rules: Vec<Rule>) {
        *self.rules.lock().unwrap() = rules;
    }

    /// Requests seen whose path contains `part` (and, if given, with `method`).
    pub fn count(&self, method: Option<&str>, part: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| method.is_none_or(|m| s.method == m) && s.path.contains(part))
            .count()
    }

    pub fn faults(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.fault.is_some())
            .count()
    }
}

fn next_random(rng: &AtomicU64) -> f64 {
    let mut x = rng.load(Ordering::SeqCst);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng.store(x, Ordering::SeqCst);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Read one HTTP message head (up to the blank line) and whatever body bytes came with it.
fn read_head(s: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            return Ok(Some((head, buf[i + 4..].to_vec())));
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The rest of a request body: by Content-Length, or chunked until the last chunk.
fn read_body(s: &mut TcpStream, head: &str, mut body: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut tmp = [0u8; 65536];
    if header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
            let n = s.read(&mut tmp)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&tmp[..n]);
        }
        return Ok(body);
    }
    let len: usize = header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let n = s.read(&mut tmp)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Ok(body)
}

fn serve(
    mut client: TcpStream,
    upstream: u16,
    rules: &Mutex<Vec<Rule>>,
    log: &Mutex<Vec<Seen>>,
    rng: &AtomicU64,
) -> std::io::Result<()> {
    // One request per client connection: answers say `Connection: close`.
    let Some((head, first)) = read_head(&mut client)? else {
        return Ok(());
    };
    let body = read_body(&mut client, &head, first)?;
    let mut parts = head.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let fault = {
        let mut rules = rules.lock().unwrap();
        let mut chosen = None;
        for r in rules.iter_mut() {
            if r.method.is_some_and(|m| m != method) || !path.contains(&r.path_contains) {
                continue;
            }
            if r.times == Some(0) {
                continue;
            }
            if r.probability < 1.0 && next_random(rng) >= r.probability {
                continue;
            }
            if let Some(t) = &mut r.times {
                *t -= 1;
            }
            chosen = Some(r.fault);
            break;
        }
        chosen
    };
    log.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        fault,
    });
    match fault {
        Some(Fault::Status(code)) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>injected by the test proxy</Message></Error>",
                if code == 503 {
                    "SlowDown"
                } else {
                    "InternalError"
                }
            );
            write!(
                client,
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
        Some(Fault::Drop) => return Ok(()),
        Some(Fault::Delay(ms)) => std::thread::sleep(Duration::from_millis(ms)),
        Some(Fault::Cut404) => {
            // The status line and part of the headers, then nothing.
            write!(client, "HTTP/1.1 404 Not Found\r\nContent-Type: appl")?;
            client.flush()?;
            return Ok(());
        }
        _ => {}
    }
    // Forward with `Connection: close`, read the whole answer.
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut out = String::new();
    for line in head.split("\r\n") {
        if line.is_empty() {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("keep-alive:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    if fault == Some(Fault::CutResponse) {
        let head_end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |i| i + 4);
        let cut = head_end + (answer.len() - head_end) / 2;
        client.write_all(&answer[..cut])?;
        client.flush()?;
        return Ok(());
    }
    client.write_all(&answer)?;
    client.flush()
}
