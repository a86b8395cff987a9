//! Criterion benches for the trust primitives: verifying a solved challenge (goal ≤ 5 µs),
//! verifying and issuing a clearance, one proof-of-work attempt (the solver's unit of work),
//! solving the default difficulty natively, and checking a bundle signature.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use signalbox_policy::signing::{TrustedKeys, public_key_base64, sign, verify_envelope};
use signalbox_policy::trust::{
    Binding, ChallengeParams, HmacKeys, issue_challenge, issue_clearance, solve, verify_clearance,
    verify_solution, work_bits,
};

const NOW: u64 = 1_795_392_000;

fn benches(c: &mut Criterion) {
    let keys = HmacKeys::new(("k2", &[2; 32]), Some(("k1", &[1; 32]))).unwrap();
    let binding = Binding::of(
        "81.62.10.4".parse().ok(),
        b"Mozilla/5.0 (Macintosh) Chrome/131",
        "shop.example",
    );
    let params = |nonce: u8, difficulty: u8| ChallengeParams {
        binding,
        nonce: [nonce; 16],
        now: NOW,
        ttl_seconds: 300,
        difficulty,
        return_path: "/checkout?step=2",
    };
    let token = issue_challenge(&keys, &params(1, 16)).unwrap();
    let counter = solve(&token, 1 << 28).unwrap();
    let clearance = issue_clearance(&keys, &binding, NOW, 3600, 16);

    let mut g = c.benchmark_group("trust");
    g.bench_function("verify_solution_d16", |b| {
        b.iter(|| {
            verify_solution(&keys, black_box(token.as_bytes()), counter, &binding, NOW).unwrap()
        })
    });
    g.bench_function("verify_clearance", |b| {
        b.iter(|| verify_clearance(&keys, black_box(clearance.as_bytes()), &binding, NOW).unwrap())
    });
    g.bench_function("issue_clearance", |b| {
        b.iter(|| issue_clearance(&keys, black_box(&binding), NOW, 3600, 16))
    });
    g.bench_function("binding", |b| {
        b.iter(|| {
            Binding::of(
                black_box("81.62.10.4".parse().ok()),
                b"Mozilla/5.0 Chrome/131",
                "shop.example",
            )
        })
    });
    g.bench_function("pow_attempt", |b| {
        b.iter(|| work_bits(black_box(token.as_bytes()), black_box(123_456)))
    });
    g.finish();

    // Solving the default difficulty (16 bits): the expected number of attempts is 2^16, the
    // actual number varies by token, so solve several distinct tokens.
    let mut g = c.benchmark_group("solve");
    g.sample_size(20);
    let tokens: Vec<String> = (0..20u8)
        .map(|n| issue_challenge(&keys, &params(n, 16)).unwrap())
        .collect();
    let mut next = 0usize;
    g.bench_function("native_d16", |b| {
        b.iter(|| {
            next = (next + 1) % tokens.len();
            solve(&tokens[next], 1 << 28).unwrap()
        })
    });
    g.finish();

    let signer = SigningKey::from_bytes(&[7; 32]);
    let trusted = TrustedKeys::from_base64([("k", public_key_base64(&signer).as_str())]).unwrap();
    let payload = vec![b'x'; 64 * 1024];
    let envelope = sign(&payload, "k", &signer);
    c.bench_function("signature/verify_64KiB_envelope", |b| {
        b.iter(|| verify_envelope(black_box(&envelope), &trusted).unwrap())
    });
}

criterion_group!(trust, benches);
criterion_main!(trust);
