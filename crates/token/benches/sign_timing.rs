//! Does the issuer's signing time depend on the blinded message? The issuer signs
//! attacker-chosen values, so a private-key operation whose time leaks the input is the Marvin
//! attack class (RUSTSEC-2023-0071, `rsa` 0.9's variable-time big integers).
//!
//! Signs blinded messages of several input classes, interleaved in a random order each round,
//! and reports per class the median and a trimmed mean, the largest relative difference of
//! medians, and a Welch t-statistic of each class against uniformly random inputs, dudect
//! style: |t| < 4.5 is the usual "no leak detected" threshold. It never fails on speed.
//!
//! `cargo bench -p openrelay-token --bench sign_timing`; `SIGN_TIMING_ROUNDS` sets the number
//! of samples per class.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use blind_rsa_signatures::{Deterministic, Sha384, PSS};
use token::{Epoch, IssuerKey, TokenRequest, NK};

/// Samples per class: six classes at ~1.1 ms a signature (release, one core) take ~100 s.
const DEFAULT_ROUNDS: usize = 15_000;
const WARMUP: usize = 200;
/// The dudect threshold.
const T_THRESHOLD: f64 = 4.5;
/// dudect crops the slow tail (preemption, interrupts) before comparing: samples above this
/// percentile of the pair's pooled samples are dropped.
const CROP_PERCENTILE: f64 = 0.90;
/// Each side of the trimmed mean drops this fraction.
const TRIM: f64 = 0.10;

/// splitmix64: input values and the order of each round; not for secrets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

type Value = [u8; NK];

/// Uniform below the modulus (big-endian byte strings of equal length compare as integers).
fn random_below(rng: &mut Rng, n: &Value) -> Value {
    loop {
        let mut v = [0; NK];
        rng.fill(&mut v);
        if v < *n {
            return v;
        }
    }
}

fn small(k: u8) -> Value {
    let mut v = [0; NK];
    v[NK - 1] = k;
    v
}

fn minus(n: &Value, k: u8) -> Value {
    let mut v = *n;
    let mut borrow = k;
    for byte in v.iter_mut().rev() {
        let (d, b) = byte.overflowing_sub(borrow);
        *byte = d;
        borrow = u8::from(b);
        if borrow == 0 {
            break;
        }
    }
    v
}

/// One input class: a name and how to pick its `i`-th value.
struct Class {
    name: &'static str,
    pick: Box<dyn FnMut(usize) -> Value>,
}

fn classes(n: Value, seed: u64) -> Vec<Class> {
    let mut random = Rng(seed);
    let mut sparse = Rng(seed ^ 0x5a5a);
    let repeated = random_below(&mut Rng(seed ^ 0xa5a5), &n);
    // All bits below the top one set: below any 2048-bit modulus.
    let mut dense = [0xff; NK];
    dense[0] = 0x7f;
    vec![
        Class {
            name: "random < n",
            pick: Box::new(move |_| random_below(&mut random, &n)),
        },
        Class {
            name: "small (1, 2, 3)",
            pick: Box::new(|i| small(1 + (i % 3) as u8)),
        },
        Class {
            name: "n-1, n-2, n-3",
            pick: Box::new(move |i| minus(&n, 1 + (i % 3) as u8)),
        },
        Class {
            name: "dense (0x7fff..ff, -1, -2)",
            pick: Box::new(move |i| minus(&dense, (i % 3) as u8)),
        },
        Class {
            name: "sparse (one bit set)",
            pick: Box::new(move |_| {
                let bit = 8 + sparse.below(NK * 8 - 16);
                let mut v = [0; NK];
                v[NK - 1 - bit / 8] = 1 << (bit % 8);
                v
            }),
        },
        Class {
            name: "one value, repeated",
            pick: Box::new(move |_| repeated),
        },
    ]
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn trimmed_mean(sorted: &[f64]) -> f64 {
    let cut = (sorted.len() as f64 * TRIM) as usize;
    let kept = &sorted[cut..sorted.len() - cut];
    kept.iter().sum::<f64>() / kept.len() as f64
}

fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

fn welch_t(a: &[f64], b: &[f64]) -> f64 {
    let (ma, va) = mean_var(a);
    let (mb, vb) = mean_var(b);
    (ma - mb) / (va / a.len() as f64 + vb / b.len() as f64).sqrt()
}

/// Welch's t after dropping both samples' values above the pooled crop percentile.
fn cropped_t(a: &[f64], b: &[f64]) -> f64 {
    let pooled = sorted(&[a, b].concat());
    let cut = percentile(&pooled, CROP_PERCENTILE);
    let keep = |xs: &[f64]| xs.iter().copied().filter(|x| *x <= cut).collect::<Vec<_>>();
    welch_t(&keep(a), &keep(b))
}

fn main() {
    let rounds = std::env::var("SIGN_TIMING_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let seed = 0x0e1a_7e57_u64;

    let key = IssuerKey::generate(Epoch(0)).expect("RSA-2048 key");
    let public = blind_rsa_signatures::PublicKey::<Sha384, PSS, Deterministic>::from_spki(
        key.public().spki(),
    )
    .expect("the issuer's SPKI");
    let n: Value = public
        .components()
        .n()
        .try_into()
        .expect("2048-bit modulus");
    let mut classes = classes(n, seed);
    let request = |blinded_msg: Value| TokenRequest {
        truncated_key_id: key.public().truncated_key_id(),
        blinded_msg,
    };

    // Every class's values must be valid inputs, or the comparison would time an early refusal.
    for class in &mut classes {
        for i in 0..3 {
            key.sign(&request((class.pick)(i)))
                .unwrap_or_else(|e| panic!("{}: {e}", class.name));
        }
    }
    for i in 0..WARMUP {
        black_box(
            key.sign(&request(random_below(&mut Rng(i as u64), &n)))
                .ok(),
        );
    }

    println!(
        "IssuerKey::sign (RSA-2048, blinded), {rounds} samples per class, {} classes interleaved in a random order each round",
        classes.len()
    );
    let mut order = Rng(seed ^ 0x0dde_0dde);
    let mut samples = vec![Vec::with_capacity(rounds); classes.len()];
    let mut idx: Vec<usize> = (0..classes.len()).collect();
    let started = Instant::now();
    for round in 0..rounds {
        for i in (1..idx.len()).rev() {
            idx.swap(i, order.below(i + 1));
        }
        for &c in &idx {
            let req = request((classes[c].pick)(round));
            let t0 = Instant::now();
            let resp = key.sign(black_box(&req));
            let dt = t0.elapsed();
            black_box(resp).expect("sign");
            samples[c].push(dt.as_nanos() as f64 / 1000.0);
        }
    }
    println!("measured in {:.1} s\n", started.elapsed().as_secs_f64());

    println!(
        "{:<28} {:>11} {:>14} {:>9} {:>9} {:>11} {:>14}",
        "class", "median µs", "trimmed µs", "p10 µs", "p90 µs", "t vs random", "t (cropped)"
    );
    let reference = &samples[0];
    let mut medians = Vec::new();
    let mut worst_t: (f64, &str) = (0.0, "");
    for (class, s) in classes.iter().zip(&samples) {
        let st = sorted(s);
        let median = percentile(&st, 0.5);
        medians.push(median);
        let (t, tc) = if std::ptr::eq(s, reference) {
            (f64::NAN, f64::NAN)
        } else {
            (welch_t(reference, s), cropped_t(reference, s))
        };
        // The worse of the raw and the cropped statistic.
        for t in [t, tc] {
            if t.abs() > worst_t.0 {
                worst_t = (t.abs(), class.name);
            }
        }
        println!(
            "{:<28} {:>11.1} {:>14.1} {:>9.1} {:>9.1} {:>11} {:>14}",
            class.name,
            median,
            trimmed_mean(&st),
            percentile(&st, 0.1),
            percentile(&st, 0.9),
            if t.is_nan() {
                "-".into()
            } else {
                format!("{t:+.2}")
            },
            if tc.is_nan() {
                "-".into()
            } else {
                format!("{tc:+.2}")
            },
        );
    }
    let max = medians.iter().copied().fold(f64::MIN, f64::max);
    let min = medians.iter().copied().fold(f64::MAX, f64::min);
    println!(
        "\nlargest relative difference of medians: {:.2} %",
        (max - min) / min * 100.0
    );
    // What this run could see: the difference of means that would reach the threshold,
    // given the spread of the (cropped) random class.
    let cut = percentile(&sorted(reference), CROP_PERCENTILE);
    let kept: Vec<f64> = reference.iter().copied().filter(|x| *x <= cut).collect();
    let (_, var) = mean_var(&kept);
    println!(
        "sensitivity: a difference of means of ~{:.2} µs between two classes would reach |t| = {T_THRESHOLD}",
        T_THRESHOLD * (2.0 * var / kept.len() as f64).sqrt()
    );
    if worst_t.0 < T_THRESHOLD {
        println!(
            "CONCLUSION: no input-dependent signing time detected (max |t| = {:.2} < {T_THRESHOLD}, class {:?}).",
            worst_t.0, worst_t.1
        );
    } else {
        println!(
            "CONCLUSION: POSSIBLE LEAK: |t| = {:.2} >= {T_THRESHOLD} for class {:?}; rerun on an idle machine before trusting it (noise also moves t).",
            worst_t.0, worst_t.1
        );
    }
}
