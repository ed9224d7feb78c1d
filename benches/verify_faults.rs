//! `snapshot verify` of the demo store on an S3 test server (moto), clean and with 30 % of all
//! requests answered 503 by the fault-injecting proxy of the test harness — everything checked
//! one after another (as before this change) and as `snapshot verify` does now (4 tenants at
//! once, 8 files of a run at a time).
//!
//! Setup (not timed): the demo's data (20 tenants, 400 days, seed 42), one snapshot run into a
//! moto bucket through the proxy.
//!
//! usage: LETHE_TEST_MOTO=…/moto_server cargo bench --bench verify_faults

#[path = "../tests/common/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proxy::{Fault, FaultProxy, Rule};

fn main() {
    let moto_bin = std::env::var("LETHE_TEST_MOTO").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut moto = Command::new(&moto_bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (set LETHE_TEST_MOTO)");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: no other thread reads the environment yet (the proxy and runtime start below).
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let proxy = FaultProxy::start(port, 42);
    let dir = tempfile::tempdir().unwrap();
    let opts = lethe::demo::DemoOptions {
        dir: dir.path().join("demo"),
        source: None,
        tenants: 20,
        days: 400,
        seed: 42,
    };
    let (config, _) = lethe::demo::prepare(&opts).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[store]\nurl = \"store\"\n",
        &format!(
            "[store]\nurl = \"s3://bench/prod\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\npath_style = true\n",
            proxy.endpoint()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sdk = {
            let conf = aws_sdk_s3::config::Builder::new()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url(format!("http://127.0.0.1:{port}"))
                .force_path_style(true)
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    "test", "test", None, None, "test",
                ))
                .http_client(lethe::s3::S3Admin::http_client())
                .build();
            aws_sdk_s3::Client::from_conf(conf)
        };
        sdk.create_bucket().bucket("bench").send().await.unwrap();
        let s = lethe::pipeline::run_snapshot(&config, &[]).await.unwrap();
        assert!(s.failed.is_empty(), "{:?}", s.failed);
        let c = lethe::config::Config::load(&config).unwrap();
        let store = lethe::store::Store::open(&c.store).unwrap();
        let keyring = lethe::keys::Keyring::open(&c.keyring, &c.master_key, false).unwrap();
        for (label, share) in [("clean", 0.0), ("30% 503", 0.3)] {
            for concurrency in [1, 8] {
                proxy.set(vec![Rule {
                    probability: share,
                    ..Rule::always(None, "/", Fault::Status(503))
                }]);
                let before = proxy.faults();
                let t = Instant::now();
                let r = lethe::snapshot::read::verify_with(&store, &keyring, &[], concurrency)
                    .await
                    .unwrap();
                let secs = t.elapsed().as_secs_f64();
                assert!(r.findings.is_empty(), "{:?}", r.findings);
                println!(
                    "snapshot verify, {label}, {}: {secs:.2} s ({} runs, {} files; {} requests answered 503)",
                    if concurrency == 1 { "one file after another (before)" } else { "concurrent (now)" },
                    r.runs,
                    r.files,
                    proxy.faults() - before
                );
            }
        }
    });
    let _ = moto.kill();
    let _ = moto.wait();
}
