//! The client's cost of the production Argon2id parameters: median time of
//! `ClientRegistration::finish` and `ClientLogin::finish`, each of which stretches the
//! password once (the OPAQUE group operations around it take well under a millisecond).
//!
//! `cargo bench -p openrelay-account --bench ksf`

use std::time::{Duration, Instant};

use account::suite::Argon2id;
use account::{ClientLogin, ClientRegistration, ExpectAccountCreated, Server, SourceId, State};
use rand::rngs::StdRng;
use rand::SeedableRng;

const RUNS: usize = 11;
const PASSWORD: &[u8] = b"benchmark password";

fn main() {
    let params = Argon2id::production();
    let params = params.params();
    println!(
        "Argon2id m={} KiB, t={}, p={}; {RUNS} runs each",
        params.m_cost(),
        params.t_cost(),
        params.p_cost()
    );
    let mut rng = StdRng::seed_from_u64(1);
    let mut server = Server::new(State::generate(&mut rng), [2; 32]);
    let mut now = 0;

    let mut registration = Vec::new();
    let mut account = None;
    for run in 0..RUNS {
        // A source per run keeps the per-source account-creation limit out of the way.
        let source = SourceId(run as u64);
        let (expect, request) = ExpectAccountCreated::start();
        let created = expect
            .finish(server.handle(now, source, request).response)
            .expect("account");
        let (client, request) =
            ClientRegistration::start(&mut rng, created, PASSWORD).expect("start");
        let response = server.handle(now, source, request).response;
        let started = Instant::now();
        let (expect, request) = client.finish(&mut rng, response).expect("finish");
        registration.push(started.elapsed());
        expect
            .finish(server.handle(now, source, request).response)
            .expect("registered");
        account = Some(created);
    }
    let account = account.expect("registered one");

    let mut login = Vec::new();
    for run in 0..RUNS {
        // Successful logins refund their attempt, but keep well inside the limits anyway.
        now += 600;
        let source = SourceId(1000 + run as u64);
        let (client, request) = ClientLogin::start(&mut rng, account, PASSWORD).expect("start");
        let response = server.handle(now, source, request).response;
        let started = Instant::now();
        let (expect, request) = client.finish(&mut rng, response).expect("finish");
        login.push(started.elapsed());
        expect
            .finish(server.handle(now, source, request).response)
            .expect("logged in");
    }

    report("ClientRegistration::finish", &mut registration);
    report("ClientLogin::finish", &mut login);
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let median = times[times.len() / 2];
    let (min, max) = (times[0], times[times.len() - 1]);
    println!(
        "{what}: median {:.1} ms (min {:.1}, max {:.1})",
        ms(median),
        ms(min),
        ms(max)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
