//! `bench fairness`: what a noisy tenant does to the others. A quiet tenant
//! streams at a steady rate, alone and then while a noisy tenant floods the
//! same pool at ten times its rate with the same priority; then a
//! high-priority tenant, alone and under the same flood. Each is run twice
//! in one invocation: with shedding only (no gateway queue: the flood
//! fills the worker's own first-come queue) and with the gateway's fair
//! queue (`admission.max_in_flight_per_worker` just under the worker's
//! batch). The figure is each tenant's p90 time to first token under the
//! flood against its own solo p90.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::tenancy::keys::{KeyRecord, KeysFile, Priority};
use http_body_util::{BodyExt, Full};
use rand::Rng;
use serde_json::json;
use tokio::sync::Mutex;

use crate::load::{self, HttpClient};
use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds each phase sends for.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// The quiet and high-priority tenants' rate; the flood sends ten times it.
    #[arg(long, default_value_t = 6.0)]
    rate: f64,
    /// Tokens each answer generates.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// The worker's batch: sequences it decodes at once (more wait in its queue).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// The sim worker's decode step, and its growth per sequence in the batch.
    #[arg(long, default_value_t = 8000)]
    decode_step_us: u64,
    #[arg(long, default_value_t = 50)]
    decode_us_per_seq: u64,
}

/// One tenant's requests of a phase.
#[derive(Default)]
struct Outcome {
    ttfts: Vec<Duration>,
    refused: usize,
}

impl Outcome {
    fn p90_ms(&self) -> f64 {
        if self.ttfts.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.ttfts.clone();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * 0.9).round() as usize].as_secs_f64() * 1e3
    }
}

pub async fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let mut worker_config =
        workers::WorkerConfig::sim("fair-w1", ([127, 0, 0, 1], 0).into(), "sim-llama", "a");
    worker_config.engine.max_running = args.batch;
    worker_config.engine.sim.decode_step_us = args.decode_step_us;
    worker_config.engine.sim.decode_us_per_seq = args.decode_us_per_seq;
    worker_config.engine.sim.prefill_us_per_token = 20;
    let worker = workers::start(worker_config).await?;

    let dir = e2e::temp_dir();
    let keys_path = dir.join("keys.toml");
    let mut keys = KeysFile::default();
    let mut secret = |tenant: &str, priority: Priority| {
        let (mut record, secret) = KeyRecord::generate(tenant);
        record.priority = priority;
        keys.keys.push(record);
        secret
    };
    let quiet = secret("quiet", Priority::Normal);
    let noisy = secret("noisy", Priority::Normal);
    let vip = secret("vip", Priority::High);
    keys.write(&keys_path)?;

    // Two slots under the worker's batch: room for tenants under their share.
    let cap = args.batch.saturating_sub(2).max(1);
    let modes = [
        ("shedding only", String::new()),
        (
            "fair queue",
            format!("[admission]\nmax_in_flight_per_worker = {cap}\nmax_queue_wait_ms = 2000\n"),
        ),
    ];
    let client = load::client();
    let mut rows = Vec::new();
    let mut figures = Vec::new();
    for (mode, admission) in &modes {
        let gateway = gateway::start(gateway::Config::from_toml(&format!(
            "zone = \"a\"\n[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [auth]\nkeys_file = {keys_path:?}\n{admission}\
             [[pools]]\nname = \"fair\"\nmodels = [\"sim-llama\"]\n\
             [[pools.workers]]\nid = \"fair-w1\"\nurl = \"{}\"\nzone = \"a\"\n",
            worker.url()
        ))?)
        .await?;
        let url = format!("http://{}/v1/chat/completions", gateway.api_addr());
        for (name, key) in [("quiet (normal)", &quiet), ("high priority", &vip)] {
            let key: &str = key;
            let solo = send_phase(&client, &url, vec![(key, args.rate)], &args)
                .await
                .remove(0);
            let flood = vec![(key, args.rate), (noisy.as_str(), args.rate * 10.0)];
            let mut flood = send_phase(&client, &url, flood, &args).await;
            let noise = flood.remove(1);
            let under = flood.remove(0);
            let ratio = under.p90_ms() / solo.p90_ms();
            eprintln!(
                "{mode}, {name}: solo p90 {:.1} ms, under the flood {:.1} ms ({ratio:.2}x); noisy served {} refused {}",
                solo.p90_ms(),
                under.p90_ms(),
                noise.ttfts.len(),
                noise.refused
            );
            rows.push(vec![
                mode.to_string(),
                name.to_string(),
                format!("{:.1}", solo.p90_ms()),
                format!("{:.1}", under.p90_ms()),
                format!("{ratio:.2}x"),
                under.refused.to_string(),
                format!("{} / {}", noise.ttfts.len(), noise.refused),
                format!("{:.0}", noise.p90_ms()),
            ]);
            figures.push(json!({
                "mode": mode, "tenant": name, "solo_p90_ms": solo.p90_ms(),
                "flood_p90_ms": under.p90_ms(), "ratio": ratio, "refused": under.refused,
                "noisy_served": noise.ttfts.len(), "noisy_refused": noise.refused,
                "noisy_p90_ms": noise.p90_ms(),
            }));
        }
        gateway.shutdown().await;
    }
    worker.shutdown(Duration::from_secs(1)).await;
    println!(
        "## bench fairness\n\nOne sim worker (batch {}, decode step {} µs + {} µs per sequence), {} tokens per answer; \
         the quiet and high-priority tenants send {} requests/s, the flood {} requests/s, {} s per phase; \
         fair queue: `max_in_flight_per_worker = {cap}`\n\n{}",
        args.batch,
        args.decode_step_us,
        args.decode_us_per_seq,
        args.max_tokens,
        args.rate,
        args.rate * 10.0,
        args.seconds,
        report::table(
            &[
                "admission",
                "tenant",
                "solo p90 TTFT (ms)",
                "under flood p90 TTFT (ms)",
                "flood / solo",
                "tenant refused",
                "flood served / refused",
                "flood p90 TTFT (ms)",
            ],
            &rows
        )
    );
    report::write_json(&out.join("fairness.json"), &json!({ "runs": figures }))?;
    Ok(())
}

/// Each tenant sends streamed requests at its rate (Poisson arrivals) for
/// `args.seconds`; the outcome per tenant, in order, once every answer ended.
async fn send_phase(
    client: &HttpClient,
    url: &str,
    tenants: Vec<(&str, f64)>,
    args: &Args,
) -> Vec<Outcome> {
    let outcomes: Vec<_> = tenants
        .iter()
        .map(|_| Arc::new(Mutex::new(Outcome::default())))
        .collect();
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let senders: Vec<_> = tenants
        .iter()
        .zip(&outcomes)
        .enumerate()
        .map(|(i, ((key, rate), outcome))| {
            let (client, url, outcome) = (client.clone(), url.to_string(), outcome.clone());
            let auth = format!("Bearer {key}");
            let rate = *rate;
            let body = Bytes::from(
                json!({"model": "sim-llama", "stream": true, "max_tokens": args.max_tokens,
                    "messages": [{"role": "user", "content": format!("tenant {i} asks something")}]})
                .to_string(),
            );
            tokio::spawn(async move {
                let mut requests = Vec::new();
                let mut next = Instant::now();
                while next < until {
                    tokio::time::sleep_until(next.into()).await;
                    let (client, url, auth, body, outcome) =
                        (client.clone(), url.clone(), auth.clone(), body.clone(), outcome.clone());
                    requests.push(tokio::spawn(async move {
                        let ttft = first_token(&client, &url, &auth, body).await;
                        let mut outcome = outcome.lock().await;
                        match ttft {
                            Some(ttft) => outcome.ttfts.push(ttft),
                            None => outcome.refused += 1,
                        }
                    }));
                    let gap: f64 = -rand::rng().random::<f64>().max(1e-12).ln() / rate;
                    next += Duration::from_secs_f64(gap);
                }
                for request in requests {
                    let _ = request.await;
                }
            })
        })
        .collect();
    for sender in senders {
        let _ = sender.await;
    }
    let mut done = Vec::new();
    for outcome in outcomes {
        done.push(std::mem::take(&mut *outcome.lock().await));
    }
    done
}

/// Whether an SSE frame carries generated text (not the empty role chunk).
fn has_text(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"content\":\"";
    data.windows(KEY.len() + 1)
        .any(|w| w.starts_with(KEY) && w[KEY.len()] != b'"')
}

/// Time to the first streamed content, reading the answer to its end; `None`
/// when refused or broken.
async fn first_token(client: &HttpClient, url: &str, auth: &str, body: Bytes) -> Option<Duration> {
    let started = Instant::now();
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", auth)
        .body(Full::new(body))
        .ok()?;
    let resp = client.request(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut body = resp.into_body();
    let mut ttft = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(data) = frame.data_ref() {
            if ttft.is_none() && has_text(data) {
                ttft = Some(started.elapsed());
            }
        }
    }
    ttft
}
