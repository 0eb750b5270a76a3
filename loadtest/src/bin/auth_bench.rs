//! What the authentication and policy layer costs a call: `Auth::admit` (read the bearer
//! token, verify its EdDSA signature and claims on its first call and by its digest after,
//! look the method up in the policy, check the roles) timed over many calls, against the same
//! loop with no layer (nothing to do: the peer's figure is zero work), plus a
//! certificate-authenticated unit's call and a refused anonymous one (a flood's cost per call).
//!
//!   cargo run --release -p cit-loadtest --bin auth-bench -- --calls 200000

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use hdrhistogram::Histogram;
use tonic::codegen::http;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 200_000)]
    calls: u64,
}

fn ns() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram")
}

fn line(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<44} p50 {:>7.2} us  p99 {:>7.2} us  mean {:>7.2} us",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.mean() / 1000.0
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("tmp");
    let (config, creds) = citd::credentials::private_server(dir.path()).expect("pki");
    let store = citd::server::open_store(&config, &Arc::new(citd::metrics::Metrics::new()))
        .await
        .expect("store");
    let app = citd::app::App::open(
        store,
        citd::clock::Clock::Wall,
        Arc::new(citd::metrics::Metrics::new()),
        None,
    )
    .await
    .expect("app");
    let auth = citd::auth::layer::Auth {
        policy: citd::auth::policy::Policy::default(),
        tokens: std::sync::RwLock::new(Arc::new(
            citd::auth::token::Verifier::load(&config.tokens).expect("keys"),
        )),
        app,
        insecure: false,
    };
    let token = creds.mint("DS-1", &["dispatcher"]).expect("token");
    let mut with_token = http::HeaderMap::new();
    with_token.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    let cert = rustls::pki_types::CertificateDer::from(
        rustls::pki_types::pem::PemObject::from_pem_file(
            dir.path().join("pki/gateway-scenario-gateway.pem"),
        )
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .expect("gateway certificate"),
    );
    let empty = http::HeaderMap::new();
    let path = "/cit.v1.Dispatch/GetRun";

    let (mut none, mut person, mut unit, mut refused) = (ns(), ns(), ns(), ns());
    let mut admitted = 0u64;
    for _ in 0..args.calls {
        // No layer: the request goes straight on (what the timing records without one).
        let t = Instant::now();
        std::hint::black_box(&with_token);
        let _ = none.record(t.elapsed().as_nanos().max(1) as u64);

        let t = Instant::now();
        admitted += u64::from(auth.admit(path, &with_token, None).is_ok());
        let _ = person.record(t.elapsed().as_nanos().max(1) as u64);

        let t = Instant::now();
        admitted += u64::from(
            auth.admit(
                "/cit.v1.Telemetry/StreamFixes",
                &empty,
                Some(std::slice::from_ref(&cert)),
            )
            .is_ok(),
        );
        let _ = unit.record(t.elapsed().as_nanos().max(1) as u64);

        let t = Instant::now();
        admitted += u64::from(auth.admit(path, &empty, None).is_ok());
        let _ = refused.record(t.elapsed().as_nanos().max(1) as u64);
    }
    assert_eq!(
        admitted,
        2 * args.calls,
        "tokens and certificates admitted, anonymous refused"
    );
    // A token's first call: its signature and claims checked (then remembered by its digest).
    let mut first = ns();
    for i in 0..(args.calls / 10).max(1) {
        let fresh = creds
            .mint(&format!("DS-{i}"), &["dispatcher"])
            .expect("token");
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {fresh}").parse().expect("header"),
        );
        let t = Instant::now();
        assert!(auth.admit(path, &h, None).is_ok());
        let _ = first.record(t.elapsed().as_nanos().max(1) as u64);
    }
    println!("auth-bench: {} calls each", args.calls);
    line("no layer (peer)", &none);
    line("person: a token's first call (EdDSA verify)", &first);
    line("person: the same token again + policy", &person);
    line("unit: client certificate SAN + policy", &unit);
    line("anonymous: refused", &refused);
    // Duress PINs: deciding ok or duress must take the same time (both hashes are always
    // computed); 1,000 check-ins of each, interleaved.
    let (ok_hash, duress_hash) = (
        citd::auth::pins::hash("2468").expect("hash"),
        citd::auth::pins::hash("1357").expect("hash"),
    );
    let (mut ok, mut duress) = (ns(), ns());
    for _ in 0..1000 {
        for (pin, h) in [("2468", &mut ok), ("1357", &mut duress)] {
            let t = Instant::now();
            std::hint::black_box(citd::auth::pins::decide(pin, &ok_hash, &duress_hash));
            let _ = h.record(t.elapsed().as_nanos().max(1) as u64);
        }
    }
    line("check-in PIN decided: ok (1,000)", &ok);
    line("check-in PIN decided: duress (1,000)", &duress);
    for q in [0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
        println!(
            "  quantile {q:<4}  ok {:>9.1} us   duress {:>9.1} us",
            ok.value_at_quantile(q) as f64 / 1000.0,
            duress.value_at_quantile(q) as f64 / 1000.0
        );
    }
    println!(
        "ratio (token call / no layer, p50): +{:.2} us per call",
        (person.value_at_quantile(0.5) as f64 - none.value_at_quantile(0.5) as f64) / 1000.0
    );
}
