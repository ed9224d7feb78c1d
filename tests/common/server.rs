//! A test server process on a free loopback port: started from a binary named by an
//! environment variable, skipped loudly when it is missing (or a failure under
//! `LETHE_REQUIRE_SERVICES=1`, set by `.ci/run`), waited for until it listens, killed on drop.
//! moto, Azurite and fake-gcs-server are each one of these.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub port: u16,
    /// The process's working directory (some servers write there).
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What to start and what to say when it cannot be.
pub struct Spec<'a> {
    /// Environment variable naming the binary, and the binary's name on PATH otherwise.
    pub env: &'a str,
    pub default_bin: &'a str,
    /// What kind of server it is, for messages ("S3 test server").
    pub what: &'a str,
    /// How to install it.
    pub install: &'a str,
}

impl Server {
    /// Start `spec`'s binary with the arguments `args(port)` returns, or `None` after a loud
    /// message when it cannot be started (a panic when services are required).
    pub fn start(test: &str, spec: &Spec, args: impl FnOnce(u16) -> Vec<String>) -> Option<Server> {
        let bin = std::env::var(spec.env).unwrap_or_else(|_| spec.default_bin.into());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = match Command::new(&bin)
            .args(args(port))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("LETHE_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                    panic!("{test}: LETHE_REQUIRE_SERVICES=1 but {bin} cannot start: {e}");
                }
                super::skipped(
                    test,
                    &format!(
                        "no {} ({bin}: {e}); {} and set {}",
                        spec.what, spec.install, spec.env
                    ),
                );
                return None;
            }
        };
        let mut server = Server {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{bin} exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{bin} did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }
}

/// Send one raw HTTP/1.1 `request` (with `Connection: close`) to the server on `port` until it
/// answers with `status` (e.g. "200"), retrying for ~10 s: a server may accept connections a
/// moment before it answers them. Panics naming `what` with the last answer.
pub fn request_until(port: u16, request: &str, status: &str, what: &str) {
    use std::io::{Read, Write};
    let mut last = String::new();
    for _ in 0..50 {
        let attempt = || -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.write_all(request.as_bytes())?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)?;
            Ok(resp)
        };
        match attempt() {
            Ok(r) if r.get(9..12) == Some(status) => return,
            Ok(r) => last = r,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: {last}");
}
