//! Nothing acknowledged is ever lost: a real `citd` process takes a full-speed fix stream and is
//! killed with SIGKILL at random moments, `CIT_CRASH_CYCLES` times (default 20); after each
//! restart the unit resends what was not acked. At the end every fix is in the run's stream
//! exactly once, in order — acked ones included, nothing doubled.

mod common;

use std::collections::VecDeque;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cit_proto::v1 as pb;
use citd::runner::Clients;
use common::{departed_run, fix, recorded_seqs};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    // TLS and the token key of the test PKI in dir/pki, as flags.
    let config = common::config(dir, citd::config::ClockMode::Wall);
    let tls = config.tls.expect("tls");
    let key = &config.tokens.keys[0];
    Command::new(env!("CARGO_BIN_EXE_citd"))
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .arg("--tls-client-ca")
        .arg(tls.client_ca.as_ref().expect("client CA"))
        .arg("--token-key")
        .arg(format!("{}={}", key.kid, key.public_key.display()))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            "off",
            "--clock",
            "wall",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("CIT_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn citd")
}

async fn ready(endpoint: &str, dir: &std::path::Path) -> Clients {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Clients::connect(endpoint, common::creds(dir)).await
            && c.liaison
                .list_checkpoints(pb::ListCheckpointsRequest::default())
                .await
                .is_ok()
        {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "citd did not come up at {endpoint}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The unit: keeps every fix until an ack covers it.
struct Unit {
    next_seq: u64,
    unacked: VecDeque<pb::Fix>,
    acked: u64,
}

impl Unit {
    fn ack(&mut self, durable: u64) {
        assert!(
            durable >= self.acked,
            "durable seq went back from {} to {durable}",
            self.acked
        );
        self.acked = durable;
        while self.unacked.front().is_some_and(|f| f.seq <= durable) {
            self.unacked.pop_front();
        }
    }

    /// Streams until the connection breaks (or `until`), resending the unacked first.
    async fn stream(&mut self, c: &mut Clients, until: Option<u64>) {
        let Ok((tx, mut acks)) = c.fix_stream(2).await else {
            return;
        };
        let mut resend: Vec<pb::Fix> = self.unacked.iter().cloned().collect();
        loop {
            let batch: Vec<pb::Fix> = if !resend.is_empty() {
                resend.drain(..resend.len().min(200)).collect()
            } else {
                if until.is_some_and(|u| self.next_seq > u) {
                    return;
                }
                let fresh: Vec<pb::Fix> = (self.next_seq..self.next_seq + 200)
                    .map(|s| fix("V-1", s))
                    .collect();
                self.next_seq += 200;
                self.unacked.extend(fresh.iter().cloned());
                fresh
            };
            if tx
                .send(pb::FixBatch {
                    fixes: batch,
                    batch_id: 0,
                })
                .await
                .is_err()
            {
                return;
            }
            match acks.message().await {
                Ok(Some(ack)) => {
                    assert!(ack.rejected.is_empty(), "{:?}", ack.rejected);
                    self.ack(ack.acks[0].durable_seq);
                }
                _ => return,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_fixes_survive_kill_9_exactly_once() {
    let cycles: u32 = std::env::var("CIT_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("tmp");
    let mut port = free_port();
    let mut child = spawn(dir.path(), port);
    let mut c = ready(&format!("https://127.0.0.1:{port}"), dir.path()).await;
    departed_run(&mut c, "R-1", "V-1").await;
    let mut unit = Unit {
        next_seq: 1,
        unacked: VecDeque::new(),
        acked: 0,
    };
    // A fixed-seed LCG: kill moments vary but every run is the same.
    let mut seed: u64 = 0x5eed_cafe;
    for _ in 0..cycles {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let kill_after = Duration::from_millis(30 + (seed >> 33) % 300);
        let victim = Arc::new(Mutex::new(child));
        let killer = {
            let victim = victim.clone();
            std::thread::spawn(move || {
                std::thread::sleep(kill_after);
                // SIGKILL: no chance to flush or say goodbye.
                let _ = victim.lock().expect("child").kill();
            })
        };
        unit.stream(&mut c, None).await;
        killer.join().expect("killer");
        let _ = victim.lock().expect("child").wait();
        port = free_port();
        child = spawn(dir.path(), port);
        c = ready(&format!("https://127.0.0.1:{port}"), dir.path()).await;
    }
    // Drain: resend until everything sent is acked.
    let sent = unit.next_seq - 1;
    unit.stream(&mut c, Some(sent)).await;
    assert!(
        unit.unacked.is_empty(),
        "{} fixes still unacked",
        unit.unacked.len()
    );
    assert_eq!(unit.acked, sent);
    let seqs = recorded_seqs(&mut c, &format!("https://127.0.0.1:{port}"), "R-1").await;
    assert_eq!(seqs.len() as u64, sent, "every fix once");
    assert!(
        seqs.iter().copied().eq(1..=sent),
        "in order, nothing missing or doubled"
    );
    eprintln!("kill -9 cycles: {cycles}, fixes: {sent}");
    let _ = child.kill();
    let _ = child.wait();
}
