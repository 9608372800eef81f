//! What a principal's decrypt proof costs: `cargo bench -p qk-net --bench proof`
//! (results in docs/BENCHMARKS.md). The node that was called signs once per
//! decrypt; each holder asked verifies once (a session grant it has not seen
//! yet costs a certificate chain check and an ECDSA verification, once).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::Criterion;
use qk_net::{ClusterCa, GrantVerifier};
use qk_state::proof::{Intent, Signer};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let ca = ClusterCa::generate("bench").expect("ca");
    let alice = ca.issue_client("alice").expect("client certificate");
    let now = now_ms();
    let session = alice.session(now, 3_600_000).expect("session");
    let Signer::Session(grant) = session.signer.clone() else {
        panic!("a session credential");
    };
    let verifier = GrantVerifier::new(ca.cert()).expect("verifier");
    let ciphertext = vec![7u8; 180];
    let context: BTreeMap<String, String> = [("tenant".to_string(), "acme".to_string())].into();
    let intent = Intent {
        principal: "alice",
        ciphertext: &ciphertext,
        context: &context,
    };
    let proof = session.prove(&intent, 1, now).expect("sign");

    c.bench_function("proof/sign", |b| {
        b.iter(|| session.prove(black_box(&intent), 1, now).expect("sign"))
    });
    c.bench_function("proof/verify", |b| {
        b.iter(|| {
            proof
                .verify(&grant.session_key, black_box(&intent), 1, now)
                .expect("verifies")
        })
    });
    c.bench_function("proof/grant-cached", |b| {
        b.iter(|| verifier.verify(black_box(&grant), now).expect("valid"))
    });
    c.bench_function("proof/grant-first-time", |b| {
        b.iter(|| {
            GrantVerifier::new(ca.cert())
                .expect("verifier")
                .verify(black_box(&grant), now)
                .expect("valid")
        })
    });
    c.final_summary();
}
