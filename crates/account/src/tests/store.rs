//! The store on a real file system: round trips, wrong keys, damage, crashes mid-save,
//! and a child process killed with SIGKILL while it saves in a loop.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use std::{env, fs, io, thread};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::flow::{Wire, PASSWORD};
use crate::client::{ClientRegistration, ExpectAccountCreated};
use crate::server::{Limits, Server, SourceId};
use crate::store::{DurableError, DurableServer, SealingKey, Store, StoreError};
use crate::wire::{RefuseReason, Response};
use crate::AccountNumber;

const KEY: [u8; 32] = [0x11; 32];

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = env::temp_dir().join(format!(
            "openrelay-account-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("accounts.store")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path) -> Store {
    Store::open(path, SealingKey::from_bytes(KEY)).expect("open")
}

/// An issuer with one registered account holding `credit`.
fn issuer_with_account(credit: u64) -> (Wire, AccountNumber) {
    let mut wire = Wire::new();
    let mut rng = StdRng::seed_from_u64(3);
    let account = wire.register(&mut rng, SourceId(1), PASSWORD);
    wire.server.credit(account, credit).expect("credit");
    (wire, account)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn nothing_saved_loads_as_none_and_load_or_create_persists() {
    let dir = TempDir::new();
    let store = open(&dir.file());
    assert!(store.load().expect("load").is_none());
    let created = store
        .load_or_create(&mut StdRng::seed_from_u64(1))
        .expect("create");
    let loaded = store.load().expect("load").expect("saved at creation");
    assert_eq!(loaded.public_key(), created.public_key());
    // A second call loads instead of generating a new key.
    let again = store
        .load_or_create(&mut StdRng::seed_from_u64(2))
        .expect("load");
    assert_eq!(again.public_key(), created.public_key());
}

#[test]
fn state_round_trips_and_still_logs_users_in() {
    let dir = TempDir::new();
    let (wire, account) = issuer_with_account(42);
    let store = open(&dir.file());
    store.save(wire.server.state()).expect("save");

    let loaded = open(&dir.file()).load().expect("load").expect("state");
    assert_eq!(loaded.account_count(), 1);
    assert_eq!(loaded.public_key(), wire.server.state().public_key());
    assert_eq!(loaded.encode(), wire.server.state().encode());

    // The reloaded issuer has the same key, OPRF seed and record: the password works.
    let mut restarted = Wire::with_server(Server::new(loaded, [9; 32]));
    assert_eq!(restarted.server.balance(account), Some(42));
    let mut rng = StdRng::seed_from_u64(4);
    let logged_in = restarted
        .login(&mut rng, SourceId(5), account, PASSWORD)
        .expect("login after reload");
    assert_eq!(logged_in.credit, 42);
}

#[test]
fn wrong_key_cannot_decrypt() {
    let dir = TempDir::new();
    let (wire, _) = issuer_with_account(1);
    open(&dir.file()).save(wire.server.state()).expect("save");
    let other = Store::open(dir.file(), SealingKey::from_bytes([0x22; 32])).expect("open");
    let err = other.load().err().expect("wrong key");
    assert!(matches!(err, StoreError::Undecryptable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("wrong sealing key or the file is corrupted"),
        "{message}"
    );
}

#[test]
fn any_flipped_byte_is_detected() {
    let dir = TempDir::new();
    let (wire, _) = issuer_with_account(1);
    open(&dir.file()).save(wire.server.state()).expect("save");
    let good = fs::read(dir.file()).expect("read");
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        fs::write(dir.file(), &bad).expect("write");
        let err = open(&dir.file())
            .load()
            .err()
            .unwrap_or_else(|| panic!("byte {at} flipped"));
        match at {
            0..=3 => assert!(matches!(err, StoreError::NotAStore { .. }), "{at}: {err:?}"),
            4 => assert!(
                matches!(err, StoreError::UnsupportedVersion { got: 0, .. }),
                "{at}: {err:?}"
            ),
            _ => assert!(
                matches!(err, StoreError::Undecryptable { .. }),
                "{at}: {err:?}"
            ),
        }
    }
    for len in [0, 10, 29, 44, good.len() - 1] {
        fs::write(dir.file(), &good[..len]).expect("write");
        assert!(open(&dir.file()).load().is_err(), "truncated to {len}");
    }
    fs::write(dir.file(), &good).expect("write");
    assert!(open(&dir.file()).load().is_ok());
}

#[test]
fn no_password_on_disk_even_decrypted() {
    let dir = TempDir::new();
    let (wire, _) = issuer_with_account(1);
    let store = open(&dir.file());
    store.save(wire.server.state()).expect("save");
    let sealed = fs::read(dir.file()).expect("read");
    let plaintext = store.unseal(&sealed).expect("decrypt");
    assert!(plaintext.len() > 128 + 192, "holds the setup and a record");
    for bytes in [&sealed, &plaintext] {
        for piece in PASSWORD.windows(8) {
            assert!(!contains(bytes, piece), "{piece:?} stored");
        }
    }
}

#[test]
fn a_leftover_tmp_from_a_crash_is_ignored() {
    let dir = TempDir::new();
    let (wire, account) = issuer_with_account(7);
    open(&dir.file()).save(wire.server.state()).expect("save");
    // A crash after writing part of the next save, before the rename.
    let tmp = dir.0.join("accounts.store.tmp");
    fs::write(&tmp, b"ORAS\x01 half-written garbage").expect("write tmp");
    let store = open(&dir.file());
    assert!(!tmp.exists(), "open removes the leftover");
    let state = store.load().expect("load").expect("state");
    assert_eq!(Server::new(state, [0; 32]).balance(account), Some(7));
}

#[test]
fn durable_server_saves_before_acknowledging() {
    let dir = TempDir::new();
    let mut rng = StdRng::seed_from_u64(5);
    let mut durable =
        DurableServer::open(open(&dir.file()), Limits::default(), &mut rng).expect("open");
    let source = SourceId(1);
    let (expect, request) = ExpectAccountCreated::start();
    let account = expect
        .finish(durable.handle(0, source, request).expect("handled"))
        .expect("created");
    let (registration, request) =
        ClientRegistration::start_cheap(&mut rng, account, PASSWORD).expect("start");
    let response = durable.handle(0, source, request).expect("handled");
    let (expect, request) = registration.finish(&mut rng, response).expect("finish");
    let response = durable.handle(0, source, request).expect("saved");
    expect.finish(response).expect("registered");
    // Acknowledged means on disk.
    let on_disk =
        |path: &Path| Server::new(open(path).load().expect("load").expect("state"), [0; 32]);
    assert_eq!(on_disk(&dir.file()).balance(account), Some(0));
    assert_eq!(durable.credit(account, 5).expect("credit"), 5);
    assert_eq!(on_disk(&dir.file()).balance(account), Some(5));
    assert_eq!(durable.spend(account, 2).expect("spend"), 3);
    assert_eq!(on_disk(&dir.file()).balance(account), Some(3));
    assert!(matches!(
        durable.spend(account, 4),
        Err(DurableError::Credit(_))
    ));
    assert_eq!(on_disk(&dir.file()).balance(account), Some(3));
}

#[test]
fn a_failed_save_is_undone_and_not_acknowledged() {
    let dir = TempDir::new();
    let mut rng = StdRng::seed_from_u64(6);
    let mut durable =
        DurableServer::open(open(&dir.file()), Limits::default(), &mut rng).expect("open");
    let source = SourceId(1);
    let (_, request) = ExpectAccountCreated::start();
    let Ok(Response::AccountCreated { account }) = durable.handle(0, source, request) else {
        panic!("created")
    };
    let (registration, request) =
        ClientRegistration::start_cheap(&mut rng, account, PASSWORD).expect("start");
    let response = durable.handle(0, source, request).expect("handled");
    let (_, request) = registration.finish(&mut rng, response).expect("finish");

    // Make the next save fail: the temp file's name is taken by a directory.
    let tmp = dir.0.join("accounts.store.tmp");
    fs::create_dir(&tmp).expect("block tmp");
    let (bytes, err) = durable.handle_bytes(0, source, &request.encode());
    assert!(matches!(err, Some(StoreError::Io { .. })), "{err:?}");
    assert_eq!(
        Response::decode(&bytes),
        Ok(Response::refused(RefuseReason::Unavailable))
    );
    assert_eq!(
        durable.server().balance(account),
        None,
        "registration undone"
    );

    fs::remove_dir(&tmp).expect("unblock");
    let (_, request) = ExpectAccountCreated::start();
    let Ok(Response::AccountCreated { account }) = durable.handle(0, SourceId(2), request) else {
        panic!("created")
    };
    let (registration, request) =
        ClientRegistration::start_cheap(&mut rng, account, PASSWORD).expect("start");
    let response = durable.handle(0, SourceId(2), request).expect("handled");
    let (_, request) = registration.finish(&mut rng, response).expect("finish");
    assert_eq!(
        durable.handle(0, SourceId(2), request).expect("saved"),
        Response::Registered
    );
    durable.credit(account, 10).expect("credit");

    fs::create_dir(&tmp).expect("block tmp");
    assert!(matches!(
        durable.credit(account, 5),
        Err(DurableError::Store(_))
    ));
    assert!(matches!(
        durable.spend(account, 5),
        Err(DurableError::Store(_))
    ));
    assert_eq!(durable.server().balance(account), Some(10), "credit undone");
}

const CHILD_DIR: &str = "OPENRELAY_ACCOUNT_KILL_TEST_DIR";
const CHILD_ACCOUNT: &str = "OPENRELAY_ACCOUNT_KILL_TEST_ACCOUNT";

/// Not a test on its own: run by [`kill_9_mid_save_loses_nothing_acknowledged`] in a
/// child process, where it credits one unit at a time, durably, and prints `ack <balance>`
/// after each save returned.
#[test]
fn kill_child() {
    let (Ok(dir), Ok(account)) = (env::var(CHILD_DIR), env::var(CHILD_ACCOUNT)) else {
        return;
    };
    let account = AccountNumber::parse(&account).expect("account");
    let store = open(&PathBuf::from(dir).join("accounts.store"));
    let mut durable =
        DurableServer::open(store, Limits::default(), &mut rand::rng()).expect("open");
    let mut stdout = io::stdout().lock();
    loop {
        let balance = durable.credit(account, 1).expect("credit");
        writeln!(stdout, "ack {balance}").expect("stdout");
        stdout.flush().expect("stdout");
    }
}

#[test]
fn kill_9_mid_save_loses_nothing_acknowledged() {
    let dir = TempDir::new();
    let (wire, account) = issuer_with_account(0);
    open(&dir.file()).save(wire.server.state()).expect("save");
    let exe = env::current_exe().expect("test binary");
    let mut rng = rand::rng();
    let mut previous = 0;
    for round in 0..20 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "tests::store::kill_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, &dir.0)
            .env(CHILD_ACCOUNT, account.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped");
        let (acks, acked) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(balance) = line.strip_prefix("ack ") {
                    let _ = acks.send(balance.parse::<u64>().expect("balance"));
                }
            }
        });
        let first = acked
            .recv_timeout(Duration::from_secs(30))
            .expect("child acknowledged a save");
        thread::sleep(Duration::from_micros(rng.random_range(0..10_000)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        reader.join().expect("reader");
        let last_acked = acked.try_iter().fold(first, u64::max);

        let state = open(&dir.file())
            .load()
            .expect("load after kill")
            .expect("state");
        let balance = Server::new(state, [0; 32])
            .balance(account)
            .expect("account");
        assert!(
            (last_acked..=last_acked + 1).contains(&balance),
            "round {round}: acknowledged {last_acked}, stored {balance}"
        );
        assert!(balance > previous, "round {round}: the child saved nothing");
        previous = balance;
    }
}
