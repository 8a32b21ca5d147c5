//! The `openrelay` command as a user and an operator run it: keys, a signed directory,
//! relay processes from TOML configs, the client process, and curl. Also checks what the
//! relays leave behind: their logs hold no address, and they write nothing to disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_openrelay");

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("openrelay-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "openrelay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A free port below the ephemeral range (32768 and up), so that no other socket's port 0
/// takes it between this check and the relay binding it.
fn free_udp_port() -> u16 {
    loop {
        let port = 20_000 + (rand::random::<u16>() % 12_000);
        let udp = UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
}

/// A child process whose stderr is collected in the background.
struct Proc {
    child: Child,
    stderr: mpsc::Receiver<String>,
    stdout: Option<mpsc::Receiver<String>>,
}

/// A test that fails must not leave its relays and issuers running.
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("OPENRELAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = mpsc::channel();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stderr,
            stdout: Some(stdout),
        }
    }

    /// The first stdout line containing `needle`; on timeout the panic shows what the
    /// process printed instead (stdout and stderr).
    fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        let rx = self.stdout.as_ref().unwrap();
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        panic!(
            "no line with {needle:?} within {timeout:?}\nstdout:\n{}\nstderr:\n{stderr}",
            seen.join("\n")
        );
    }

    /// SIGTERM, then the whole stderr.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default()
    }

    /// Bytes this process has caused to be written to storage, from /proc.
    fn storage_writes(&self) -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.child.id())).unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Regular files the process holds open (relays should hold none).
    fn open_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|p| {
                p.is_absolute()
                    && p.starts_with("/")
                    && !p.starts_with("/dev")
                    && Path::new(p).is_file()
            })
            .collect()
    }

    /// The process's UDP sockets as `ss` shows them: local address, receive and send
    /// buffer (what the kernel reports: twice what was set).
    fn udp_sockets(&self) -> Vec<(String, u64, u64)> {
        let out = Command::new("ss")
            .args(["-H", "-u", "-a", "-n", "-m", "-p"])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let owner = format!("pid={},", self.child.id());
        let mut lines = text.lines();
        let mut sockets = Vec::new();
        while let Some(line) = lines.next() {
            let memory = lines.next().unwrap_or_default();
            if !line.contains(&owner) {
                continue;
            }
            let field = |name: &str| -> u64 {
                let at = memory.find(name).expect("skmem names rb and tb") + name.len();
                let digits: String = memory[at..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().unwrap()
            };
            let local = line.split_whitespace().nth(3).unwrap_or_default();
            sockets.push((local.to_string(), field(",rb"), field(",tb")));
        }
        sockets
    }
}

/// The sim measurement of the `openrelay` executable: what relays started from it report.
fn measurement() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(BIN).unwrap()))
}

/// Makes the sim vendor key `sim-vendor.key` in `dir` (once) and returns its public half.
fn sim_vendor(dir: &Path) -> String {
    let key = dir.join("sim-vendor.key");
    let public = dir.join("sim-vendor.pub");
    if let Ok(p) = std::fs::read_to_string(&public) {
        return p;
    }
    let p = ok(&["directory", "keygen", "--output", key.to_str().unwrap()])
        .trim()
        .to_string();
    std::fs::write(public, &p).unwrap();
    p
}

/// Relay config lines for the sim TEE of `sim-vendor.key` in `dir`.
fn sim_tee(dir: &Path) -> String {
    sim_vendor(dir);
    format!(
        "tee = \"sim\"\nsim_vendor_key_file = \"{}\"\n",
        dir.join("sim-vendor.key").display()
    )
}

/// Writes a directory body with one ingress (operator a) and one egress (operator b) on
/// loopback, approving the sim image of this `openrelay` executable, and signs it with
/// `signing.key` in `dir` into `output`.
fn sign_directory(
    dir: &Path,
    ingress_key: &str,
    ingress_port: u16,
    egress_key: &str,
    egress_port: u16,
    output: &str,
) {
    sign_directory_with(
        dir,
        ingress_key,
        ingress_port,
        egress_key,
        egress_port,
        output,
        "",
    );
}

/// [`sign_directory`] with `extra` appended to the body (an `[issuer]` section).
fn sign_directory_with(
    dir: &Path,
    ingress_key: &str,
    ingress_port: u16,
    egress_key: &str,
    egress_port: u16,
    output: &str,
    extra: &str,
) {
    let relay = |name: &str, role: &str, key: &str, port: u16, op: &str| {
        format!("\n[[relay]]\nname = \"{name}\"\nrole = \"{role}\"\nwg_public_key = \"{key}\"\nendpoint = \"127.0.0.1:{port}\"\noperator = \"{op}\"\nbandwidth_mbps = 100\n")
    };
    let body = format!(
        "version = 1\nserial = 1\nsim_vendors = [\"{}\"]\n{}{}\n[[image]]\nplatform = \"sim\"\nmeasurement = \"{}\"\n\n{extra}",
        sim_vendor(dir),
        relay("in", "ingress", ingress_key, ingress_port, "a"),
        relay("out", "egress", egress_key, egress_port, "b"),
        measurement(),
    );
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    std::fs::write(p("relays.toml"), body).unwrap();
    ok(&[
        "directory",
        "sign",
        "--key",
        &p("signing.key"),
        "--input",
        &p("relays.toml"),
        "--output",
        &p(output),
    ]);
}

fn counter(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("counters:"))
        .expect("a counters line");
    let key = format!("{name}=");
    let at = line.find(&key).unwrap() + key.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn curl(proxy: &str, url: &str) -> std::process::Output {
    Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "30",
            "--socks5-hostname",
            proxy,
            url,
        ])
        .output()
        .expect("curl is installed")
}

#[test]
fn operator_and_user_workflow_with_separate_processes() {
    let dir = tempdir("workflow");
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();

    // Keys and the signed directory, as an operator makes them.
    let ingress_pub = ok(&["keygen", "--output", &p("ingress.key")])
        .trim()
        .to_string();
    let egress_pub = ok(&["keygen", "--output", &p("egress.key")])
        .trim()
        .to_string();
    let signer = ok(&["directory", "keygen", "--output", &p("signing.key")])
        .trim()
        .to_string();
    let (ingress_port, egress_port) = (free_udp_port(), free_udp_port());
    sign_directory(
        &dir,
        &ingress_pub,
        ingress_port,
        &egress_pub,
        egress_port,
        "directory.toml",
    );
    let shown = ok(&[
        "directory",
        "show",
        "--trust",
        &signer,
        &p("directory.toml"),
    ]);
    assert!(
        shown.contains("signature ok") && shown.contains("ingress") && shown.contains(&egress_pub),
        "{shown}"
    );

    // The destination.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let web: SocketAddr = rt.block_on(async {
        let (l, a) = openrelay::demo::http::bind().await.unwrap();
        tokio::spawn(openrelay::demo::http::serve(l));
        a
    });

    std::fs::write(
        p("egress.toml"),
        format!("private_key_file = \"{}\"\nlisten = \"127.0.0.1:{egress_port}\"\nreport_interval_secs = 3600\nallow_destinations = [\"127.0.0.1/32\"]\n{}", p("egress.key"), sim_tee(&dir)),
    )
    .unwrap();
    std::fs::write(
        p("ingress.toml"),
        format!(
            "private_key_file = \"{}\"\nlisten = \"127.0.0.1:{ingress_port}\"\nreport_interval_secs = 3600\nsocket_buffer_kib = 1536\ndirectory = \"{}\"\ndirectory_keys = [\"{signer}\"]\n{}",
            p("ingress.key"),
            p("directory.toml"),
            sim_tee(&dir)
        ),
    )
    .unwrap();
    let egress = Proc::spawn(&["relay", "egress", "--config", &p("egress.toml")]);
    let ingress = Proc::spawn(&["relay", "ingress", "--config", &p("ingress.toml")]);
    let socks_port = free_udp_port();
    let socks = format!("127.0.0.1:{socks_port}");
    let mut client = Proc::spawn(&[
        "client",
        "--directory",
        &p("directory.toml"),
        "--trust",
        &signer,
        "--socks",
        &socks,
    ]);
    client.wait_stdout("connected through in → out", Duration::from_secs(20));
    // Both hops' evidence, as the user sees it.
    for hop in ["in", "out"] {
        let line = client.wait_stdout(&format!("attested {hop}:"), Duration::from_secs(5));
        assert!(
            line.contains("Sim") && line.contains(&measurement()) && line.contains("verified at"),
            "{line}"
        );
    }

    let page = curl(&socks, &format!("http://{web}/"));
    assert!(
        page.status.success(),
        "{}",
        String::from_utf8_lossy(&page.stderr)
    );
    assert!(String::from_utf8_lossy(&page.stdout).contains(openrelay::demo::http::PAGE_MARKER));

    // Every UDP socket of the ingress, those on its port and the one that forwards the
    // client's session to the egress, has the buffers its config names (1,536 KiB; Linux
    // reports twice that). Without root the kernel caps them at net.core.rmem_max.
    if testbed::available() {
        let sockets = ingress.udp_sockets();
        let port = format!(":{ingress_port}");
        assert!(
            sockets.iter().any(|(local, ..)| local.ends_with(&port))
                && sockets.iter().any(|(local, ..)| !local.ends_with(&port)),
            "the ingress's port and a forwarding socket: {sockets:?}"
        );
        for (local, rb, tb) in &sockets {
            assert_eq!(
                (*rb, *tb),
                (3 << 20, 3 << 20),
                "the ingress's socket on {local}"
            );
        }
    }

    // Bad input to every relay port: random bytes, truncated and oversized datagrams, and a
    // replayed handshake initiation.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        vec![4; 3],
        vec![0xff; 2000],
        vec![1; 148],
        vec![4; 32],
        vec![0; 60_000],
    ];
    let mut x: u32 = 12345;
    for len in [17, 64, 200, 1500] {
        garbage.push(
            (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect(),
        );
    }
    // A handshake initiation for `key`, sent twice: the second is a replay.
    let init_for = |key: &str| {
        let mut s = tunnel::Session::initiator(
            Instant::now(),
            &tunnel::StaticSecret::generate(),
            tunnel::PublicKey::from_base64(key).unwrap(),
            tunnel::SessionConfig::default(),
        );
        let mut out = Vec::new();
        s.connect(Instant::now(), &mut out);
        out.into_iter()
            .find_map(|a| match a {
                tunnel::Action::Transmit(d) => Some(d),
                _ => None,
            })
            .unwrap()
    };
    for port in [ingress_port, egress_port] {
        for g in &garbage {
            junk.send_to(g, ("127.0.0.1", port)).unwrap();
        }
    }
    for (key, port) in [(&ingress_pub, ingress_port), (&egress_pub, egress_port)] {
        let init = init_for(key);
        junk.send_to(&init, ("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        junk.send_to(&init, ("127.0.0.1", port)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));

    // Still serving.
    let again = curl(&socks, &format!("http://{web}/"));
    assert!(
        again.status.success(),
        "a relay stopped serving after bad input"
    );

    // Nothing written to disk, no file held open.
    for relay in [&ingress, &egress] {
        assert_eq!(relay.storage_writes(), 0, "a relay wrote to storage");
        assert!(
            relay.open_files().is_empty(),
            "a relay holds files open: {:?}",
            relay.open_files()
        );
    }

    let client_log = client.stop();
    let ingress_log = ingress.stop();
    let egress_log = egress.stop();
    let n = garbage.len() as u64;
    assert!(counter(&ingress_log, "dropped") > n, "{ingress_log}");
    assert_eq!(counter(&ingress_log, "replay"), 1, "{ingress_log}");
    assert_eq!(counter(&egress_log, "replay"), 1, "{egress_log}");
    assert!(counter(&egress_log, "dropped") >= n, "{egress_log}");
    assert!(counter(&ingress_log, "forwarded") > 0);

    // The relays' logs name no address or port of the client, the relays or the destination.
    let web_port = web.port().to_string();
    for log in [&ingress_log, &egress_log] {
        assert!(log.contains("counters:"), "{log}");
        for forbidden in [
            "127.0.0.1",
            "::1",
            &format!(":{web_port}"),
            &format!(":{ingress_port}"),
            &format!(":{egress_port}"),
            &format!(":{socks_port}"),
        ] {
            assert!(
                !log.contains(forbidden),
                "relay log contains {forbidden:?}:\n{log}"
            );
        }
    }
    let _ = client_log;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tampered_directory_is_refused_with_a_clear_error() {
    let dir = tempdir("tamper");
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let signer = ok(&["directory", "keygen", "--output", &p("signing.key")])
        .trim()
        .to_string();
    let key = ok(&["keygen", "--output", &p("relay.key")])
        .trim()
        .to_string();
    let key2 = ok(&["keygen", "--output", &p("relay2.key")])
        .trim()
        .to_string();
    sign_directory(&dir, &key, 5000, &key2, 5001, "dir.toml");
    let text = std::fs::read_to_string(p("dir.toml")).unwrap();
    std::fs::write(
        p("bad.toml"),
        text.replace("127.0.0.1:5001", "127.0.0.1:6001"),
    )
    .unwrap();

    let out = run(&["directory", "show", "--trust", &signer, &p("bad.toml")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.to_lowercase().contains("signature"),
        "{err}"
    );

    let out = run(&[
        "client",
        "--directory",
        &p("bad.toml"),
        "--trust",
        &signer,
        "--socks",
        "127.0.0.1:0",
    ]);
    assert!(
        !out.status.success(),
        "the client accepted a tampered directory"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));

    let other = ok(&["directory", "keygen", "--output", &p("other.key")])
        .trim()
        .to_string();
    let out = run(&["directory", "show", "--trust", &other, &p("dir.toml")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--trust"),
        "the error says how to trust a signer"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_relay_config_names_the_problem() {
    let dir = tempdir("badconfig");
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    std::fs::write(
        p("c.toml"),
        "listen = \"127.0.0.1:0\"\nprivate_key = \"short\"\n",
    )
    .unwrap();
    let out = run(&["relay", "egress", "--config", &p("c.toml")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wg genkey"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(p("c.toml"), "listen = \"127.0.0.1:0\"\nlisten_port = 4\n").unwrap();
    let out = run(&["relay", "egress", "--config", &p("c.toml")]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listen_port"),
        "unknown fields are named"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_ends_with_the_success_line() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().last(), Some("demo: two-hop fetch ok"));
    assert!(stdout.contains("ingress saw: client"));
    assert!(stdout.contains("egress saw:  ingress"));
    // Both hops attested before the fetch.
    let attested: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  attested "))
        .collect();
    assert_eq!(attested.len(), 2, "{stdout}");
    assert!(attested[0].contains("ingress-north: Sim"), "{stdout}");
    assert!(attested[1].contains("egress-") && attested[1].contains("TCB UpToDate"));
    // What both hops proved is exactly what `openrelay image hash` says of the executable
    // the demo runs its relays in.
    let hash = ok(&["image", "hash", BIN]);
    let approved = hash
        .lines()
        .find_map(|l| l.strip_prefix("measurement = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    for line in &attested {
        assert!(line.contains(&format!("measurement {approved}")), "{line}");
    }
    // An account, credit and tokens: one token spent at each hop.
    assert!(stdout.contains("created with OPAQUE"), "{stdout}");
    assert!(stdout.contains("tokens spent: 2 "), "{stdout}");
}

#[test]
fn help_explains_every_command() {
    let top = ok(&["--help"]);
    for cmd in [
        "demo",
        "client",
        "relay",
        "directory",
        "account",
        "issuer",
        "attest",
        "keygen",
    ] {
        assert!(top.contains(cmd), "{top}");
    }
    for sub in [
        &["relay", "ingress", "--help"][..],
        &["relay", "egress", "--help"],
        &["client", "--help"],
        &["directory", "sign", "--help"],
        &["demo", "--help"],
        &["account", "create", "--help"],
        &["account", "tokens", "--help"],
        &["issuer", "run", "--help"],
        &["issuer", "keys", "--help"],
        &["attest", "verify", "--help"],
    ] {
        let h = ok(sub);
        assert!(h.len() > 200, "help for {sub:?} is too thin: {h}");
    }
}

#[test]
fn demo_keep_serves_the_users_own_curl() {
    let mut demo = Proc::spawn(&["demo", "--keep"]);
    let socks = demo
        .wait_stdout("socks5: ", Duration::from_secs(30))
        .trim_start_matches("socks5: ")
        .to_string();
    let web = demo
        .wait_stdout("web: ", Duration::from_secs(5))
        .trim_start_matches("web: ")
        .to_string();
    let page = curl(&socks, &web);
    assert!(
        page.status.success(),
        "{}",
        String::from_utf8_lossy(&page.stderr)
    );
    assert!(String::from_utf8_lossy(&page.stdout).contains(openrelay::demo::http::PAGE_MARKER));
    demo.stop();
}

#[test]
fn attest_verify_prints_claims_and_applies_the_advisory_policy() {
    let v = |f: &str| {
        format!(
            "{}/../../../shared/vectors/dcap/{f}",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let base = [
        "attest",
        "verify",
        "--evidence",
        &v("sgx_quote"),
        "--collateral",
        &v("sgx_quote_collateral.json"),
        "--at",
        "2025-06-25T00:00:00Z",
    ];
    let out = run(&base);
    assert!(!out.status.success(), "accepted without the advisories");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ConfigurationAndSwHardeningNeeded") && stdout.contains("INTEL-SA-00615"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not accepted"));
    let mut accepting = base.to_vec();
    accepting.extend([
        "--accept-advisory",
        "INTEL-SA-00289",
        "--accept-advisory",
        "INTEL-SA-00615",
    ]);
    let ok_out = ok(&accepting);
    assert!(ok_out.contains("verdict:      accepted"), "{ok_out}");
    // After the collateral expired: rejected.
    let out = run(&[
        "attest",
        "verify",
        "--evidence",
        &v("tdx_quote"),
        "--collateral",
        &v("tdx_quote_collateral.json"),
        "--at",
        "2025-08-01T00:00:00Z",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected"));
    let tdx = ok(&[
        "attest",
        "verify",
        "--evidence",
        &v("tdx_quote"),
        "--collateral",
        &v("tdx_quote_collateral.json"),
        "--at",
        "1750809600",
    ]);
    assert!(tdx.contains("Tdx") && tdx.contains("UpToDate"), "{tdx}");
    let snp = |f: &str| {
        format!(
            "{}/../../../shared/vectors/sev-snp/{f}",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let out = ok(&[
        "attest",
        "verify",
        "--evidence",
        &snp("report_milan.hex"),
        "--collateral",
        &snp("vcek_milan.der"),
    ]);
    assert!(out.contains("SevSnp") && out.contains("accepted"), "{out}");
    assert!(
        out.contains("SNP TCB:      bootloader 3, tee 0, snp 8, microcode 115"),
        "{out}"
    );
    // A firmware floor above the report's microcode: rejected, naming both versions.
    let snp_args = [
        "attest",
        "verify",
        "--evidence",
        &snp("report_milan.hex"),
        "--collateral",
        &snp("vcek_milan.der"),
    ];
    let mut strict = snp_args.to_vec();
    strict.extend(["--min-snp-tcb", "3,0,8,116"]);
    let out = run(&strict);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("below the minimum"), "{err}");
    let mut bad = snp_args.to_vec();
    bad.extend(["--min-snp-tcb", "3,0,8"]);
    let out = run(&bad);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected four"));
}

#[test]
fn client_stops_at_a_relay_without_evidence_and_says_which() {
    let dir = tempdir("unattested");
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let ingress_pub = ok(&["keygen", "--output", &p("ingress.key")])
        .trim()
        .to_string();
    let egress_pub = ok(&["keygen", "--output", &p("egress.key")])
        .trim()
        .to_string();
    let signer = ok(&["directory", "keygen", "--output", &p("signing.key")])
        .trim()
        .to_string();
    let (ingress_port, egress_port) = (free_udp_port(), free_udp_port());
    sign_directory(
        &dir,
        &ingress_pub,
        ingress_port,
        &egress_pub,
        egress_port,
        "directory.toml",
    );
    // The egress runs outside any TEE (no `tee`); the ingress is attested.
    std::fs::write(
        p("egress.toml"),
        format!("private_key_file = \"{}\"\nlisten = \"127.0.0.1:{egress_port}\"\nreport_interval_secs = 3600\nallow_destinations = [\"127.0.0.1/32\"]\n", p("egress.key")),
    )
    .unwrap();
    std::fs::write(
        p("ingress.toml"),
        format!(
            "private_key_file = \"{}\"\nlisten = \"127.0.0.1:{ingress_port}\"\nreport_interval_secs = 3600\ndirectory = \"{}\"\ndirectory_keys = [\"{signer}\"]\n{}",
            p("ingress.key"),
            p("directory.toml"),
            sim_tee(&dir)
        ),
    )
    .unwrap();
    let egress = Proc::spawn(&["relay", "egress", "--config", &p("egress.toml")]);
    let ingress = Proc::spawn(&["relay", "ingress", "--config", &p("ingress.toml")]);
    let out = Command::new(BIN)
        .args([
            "client",
            "--directory",
            &p("directory.toml"),
            "--trust",
            &signer,
            "--socks",
            &format!("127.0.0.1:{}", free_udp_port()),
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("egress failed attestation") && stdout.contains("without TEE evidence"),
        "{stdout}"
    );
    assert!(stderr.contains("--try-other-relays"), "{stderr}");
    let egress_log = egress.stop();
    let _ = ingress.stop();
    assert_eq!(counter(&egress_log, "admitted"), 0, "{egress_log}");
    assert_eq!(counter(&egress_log, "forwarded"), 0, "{egress_log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `openrelay ARGS` with `input` on standard input.
fn ok_with_stdin(args: &[&str], input: &str) -> String {
    let out = testbed::output_with_input(Command::new(BIN).args(args), input).unwrap();
    assert!(
        out.status.success(),
        "openrelay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_user_creates_an_account_buys_tokens_and_connects_with_separate_processes() {
    let dir = tempdir("accounts");
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let ingress_pub = ok(&["keygen", "--output", &p("ingress.key")])
        .trim()
        .to_string();
    let egress_pub = ok(&["keygen", "--output", &p("egress.key")])
        .trim()
        .to_string();
    ok(&["keygen", "--output", &p("issuer.key")]);
    ok(&["keygen", "--output", &p("sealing.key")]);
    let signer = ok(&["directory", "keygen", "--output", &p("signing.key")])
        .trim()
        .to_string();
    let (ingress_port, egress_port, issuer_port) =
        (free_udp_port(), free_udp_port(), free_udp_port());

    // The operator sets up the issuer and publishes its keys in the directory.
    std::fs::write(
        p("issuer.toml"),
        format!(
            "name = \"issuer.test\"\nprivate_key_file = \"{}\"\nlisten = \"127.0.0.1:{issuer_port}\"\nstate_dir = \"{}\"\nsealing_key_file = \"{}\"\n{}",
            p("issuer.key"),
            p("issuer-state"),
            p("sealing.key"),
            sim_tee(&dir)
        ),
    )
    .unwrap();
    let section = ok(&["issuer", "keys", "--config", &p("issuer.toml")]);
    assert!(section.contains("[[issuer.key]]"), "{section}");
    sign_directory_with(
        &dir,
        &ingress_pub,
        ingress_port,
        &egress_pub,
        egress_port,
        "directory.toml",
        &section,
    );
    let relay_config = |key: &str, port: u16, extra: &str| {
        format!(
            "private_key_file = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nreport_interval_secs = 3600\ndirectory = \"{}\"\ndirectory_keys = [\"{signer}\"]\n{extra}{}",
            p(key),
            p("directory.toml"),
            sim_tee(&dir)
        )
    };
    std::fs::write(
        p("egress.toml"),
        relay_config(
            "egress.key",
            egress_port,
            "allow_destinations = [\"127.0.0.1/32\"]\n",
        ),
    )
    .unwrap();
    std::fs::write(
        p("ingress.toml"),
        relay_config("ingress.key", ingress_port, ""),
    )
    .unwrap();
    let issuer = Proc::spawn(&["issuer", "run", "--config", &p("issuer.toml")]);
    let egress = Proc::spawn(&["relay", "egress", "--config", &p("egress.toml")]);
    let ingress = Proc::spawn(&["relay", "ingress", "--config", &p("ingress.toml")]);
    std::thread::sleep(Duration::from_millis(500));

    // The user creates an account; the password goes in on standard input.
    let password = "tr0ub4dor & 3 distinctive-password-7731";
    let common = [
        "--directory",
        &p("directory.toml"),
        "--trust",
        &signer,
        "--data-dir",
        &p("data"),
    ];
    let account = ok_with_stdin(
        &[&["account", "create"][..], &common].concat(),
        &format!("{password}\n"),
    )
    .trim()
    .to_string();
    assert_eq!(account.len(), 34, "{account}");

    // No credit yet: buying is refused with a clear reason.
    std::fs::write(p("password"), format!("{password}\n")).unwrap();
    let pw_file = p("password");
    let with_pw = [
        &common[..],
        &["--password-file", &pw_file, "--account", &account],
    ]
    .concat();
    let out = run(&[&["account", "tokens"][..], &with_pw].concat());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("insufficient credit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The operator credits it (with the issuer stopped: it holds the store).
    let issuer_log = issuer.stop();
    let credited = ok(&[
        "issuer",
        "credit",
        "--config",
        &p("issuer.toml"),
        &account,
        "10",
    ]);
    assert!(credited.contains("10 credit units"), "{credited}");
    let issuer = Proc::spawn(&["issuer", "run", "--config", &p("issuer.toml")]);
    std::thread::sleep(Duration::from_millis(500));

    // Six connections cost 12 units: two requests of two connections are paid, the third
    // is refused, and what was paid for is kept.
    let out = run(&[&["account", "tokens", "--connections", "6"][..], &with_pw].concat());
    let (bought, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{bought}");
    assert!(
        bought.contains("for 4 connections") && bought.contains("2 credit units left"),
        "{bought}"
    );
    assert!(
        err.contains("bought 4 of 6") && err.contains("insufficient credit"),
        "{err}"
    );
    let status = ok(&[&["account", "status"][..], &with_pw].concat());
    assert!(
        status.contains("2 credit units") && status.contains("for 4 connections"),
        "{status}"
    );

    // The client spends one connection's tickets and fetches a page.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let web: SocketAddr = rt.block_on(async {
        let (l, a) = openrelay::demo::http::bind().await.unwrap();
        tokio::spawn(openrelay::demo::http::serve(l));
        a
    });
    let socks = format!("127.0.0.1:{}", free_udp_port());
    let mut client = Proc::spawn(&[
        "client",
        "--directory",
        &p("directory.toml"),
        "--trust",
        &signer,
        "--data-dir",
        &p("data"),
        "--socks",
        &socks,
    ]);
    client.wait_stdout("connected through in → out", Duration::from_secs(20));
    let page = curl(&socks, &format!("http://{web}/"));
    assert!(
        page.status.success(),
        "{}",
        String::from_utf8_lossy(&page.stderr)
    );
    let stock = std::fs::read_to_string(dir.join("data/tokens.toml")).unwrap();
    assert_eq!(
        stock.matches("[[connection]]").count(),
        3,
        "three connections' tickets left"
    );

    let _ = client.stop();
    let ingress_log = ingress.stop();
    let egress_log = egress.stop();
    let issuer_log2 = issuer.stop();
    assert_eq!(counter(&ingress_log, "tokens"), 1, "{ingress_log}");
    assert_eq!(counter(&egress_log, "tokens"), 1, "{egress_log}");
    // The issuer never saw the password, and nobody logged an address or the account.
    for log in [&issuer_log, &issuer_log2, &ingress_log, &egress_log] {
        assert!(!log.contains(password));
        assert!(!log.contains(&account));
        assert!(!log.contains("127.0.0.1"), "{log}");
    }
    let state = std::fs::read_dir(dir.join("issuer-state")).unwrap();
    for f in state {
        let bytes = std::fs::read(f.unwrap().path()).unwrap_or_default();
        assert!(!bytes.windows(8).any(|w| w == &password.as_bytes()[..8]));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn image_hash_prints_the_measurement_clients_approve() {
    let out = ok(&["image", "hash", BIN]);
    let m = measurement();
    assert!(out.contains(&format!("sha256 {m}")), "{out}");
    assert!(out.contains(&format!("measurement = \"{m}\"")), "{out}");
    let missing = run(&["image", "hash", "/nonexistent/relay"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/relay"));
}

/// A relay started under the common soft limit of open files raises it to the hard limit:
/// an egress needs a socket per UDP flow.
#[test]
fn a_relay_raises_its_open_file_limit_to_the_hard_limit() {
    let dir = tempdir("nofile");
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    ok(&["keygen", "--output", &p("egress.key")]);
    std::fs::write(
        p("egress.toml"),
        format!(
            "private_key_file = \"{}\"\nlisten = \"127.0.0.1:0\"\nreport_interval_secs = 3600\n",
            p("egress.key")
        ),
    )
    .unwrap();
    let mut child = Command::new("bash")
        .args([
            "-c",
            "ulimit -Sn 256 && exec \"$0\" relay egress --config \"$1\"",
            BIN,
            &p("egress.toml"),
        ])
        .stdin(Stdio::null())
        .env("OPENRELAY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read once it listens: by then it has raised the limit, and bash is long gone.
    let err = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("egress listening") => break,
            Ok(line) => said.push(line),
            Err(_) => panic!("the relay did not start: {said:?}"),
        }
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    let (soft, hard) = (fields[0], fields[1]);
    let expected = if hard == "unlimited" {
        (1u64 << 20).to_string()
    } else {
        hard.to_string()
    };
    assert_eq!(soft, expected, "{line}; the relay said: {said:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
