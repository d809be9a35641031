//! `bench control`: how fast the etcd control plane moves traffic. A real
//! etcd, two sim workers (`worker` processes) registered on leases, and a
//! gateway following etcd. Two figures:
//! - from the put of a routing config (a blue-green flip) to the first
//!   response served under it, against the put's own round trip;
//! - from a worker's SIGKILL to its removal from the gateway, against the
//!   lease TTL that bounds it.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::{gatewayctl, plugins_dir, spawn_worker, EtcdServer, WorkerOpts, MODEL, POOL};
use etcd_client::Client;
use http_body_util::{BodyExt, Full};
use serde_json::json;

use crate::load::{self, HttpClient};
use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Blue-green flips measured.
    #[arg(long, default_value_t = 100)]
    flips: usize,
    /// Workers killed, one after another.
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Lease TTL of the killed workers, seconds (the workers' default is 10).
    #[arg(long, default_value_t = 10)]
    lease_ttl_s: u64,
}

pub async fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await;
    let fast = |labels| WorkerOpts {
        etcd: Some(etcd.url.clone()),
        decode_step_us: 0,
        prefill_us_per_token: 0,
        labels,
        ..WorkerOpts::default()
    };
    let _blue = spawn_worker("blue", "a", fast(vec![("colour", "blue")])).await;
    let _green = spawn_worker("green", "a", fast(vec![("colour", "green")])).await;
    let gateway = gateway::start(gateway::Config::from_toml(&format!(
        "zone = \"a\"\n[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [etcd]\nendpoints = [\"{}\"]\n[[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\n",
        etcd.url
    ))?)
    .await?;
    let api = format!("http://{}/v1/chat/completions", gateway.api_addr());
    let status = format!("http://{}/status", gateway.admin_addr());
    let component = plugins_dir().join("blue-green");
    let component = std::fs::read_dir(&component)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "wasm"))
        .ok_or_else(|| anyhow::anyhow!("no blue-green component: run scripts/build-plugins.sh"))?;
    let (ok, _, err) = gatewayctl(
        &etcd.url,
        &[
            "plugin",
            "put",
            "blue-green",
            "1.0.0",
            component.to_str().unwrap(),
        ],
    )
    .await;
    anyhow::ensure!(ok, "publishing the plugin failed: {err}");

    let client = load::client();
    let mut etcd_client = Client::connect([etcd.url.as_str()], None).await?;
    let doc = |colour: &str| {
        format!(
            "[[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\n\
             policy = {{ plugin = \"blue-green\", config = {{ active = \"{colour}\" }} }}\n"
        )
    };
    etcd_client.put("/llmgw/config", doc("blue"), None).await?;
    wait_for(&client, &api, "blue").await?;

    let (mut puts, mut routed) = (Vec::new(), Vec::new());
    for i in 0..args.flips {
        let colour = if i % 2 == 0 { "green" } else { "blue" };
        let started = Instant::now();
        etcd_client.put("/llmgw/config", doc(colour), None).await?;
        puts.push(started.elapsed());
        wait_for(&client, &api, colour).await?;
        routed.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut removals = Vec::new();
    for i in 0..args.kills {
        let id = format!("victim{i}");
        let mut victim = spawn_worker(
            &id,
            "a",
            WorkerOpts {
                lease_ttl_s: args.lease_ttl_s,
                ..fast(vec![("colour", "none")])
            },
        )
        .await;
        while !listed(&client, &status, &id).await? {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let killed = Instant::now();
        victim.proc.sigkill().await;
        while listed(&client, &status, &id).await? {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        removals.push(killed.elapsed());
    }
    gateway.shutdown().await;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |v: &[Duration], p: f64| {
        let mut sorted = v.to_vec();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    };
    let rows = vec![
        vec![
            "etcd put round trip (baseline)".into(),
            format!("{:.1} ms", ms(pct(&puts, 0.5))),
            format!("{:.1} ms", ms(pct(&puts, 0.99))),
        ],
        vec![
            "**put to first request routed by it**".into(),
            format!("**{:.1} ms**", ms(pct(&routed, 0.5))),
            format!("**{:.1} ms**", ms(pct(&routed, 0.99))),
        ],
        vec![
            format!("SIGKILL to removal (lease TTL {} s)", args.lease_ttl_s),
            format!("{:.2} s", pct(&removals, 0.5).as_secs_f64()),
            format!("{:.2} s (max)", pct(&removals, 1.0).as_secs_f64()),
        ],
    ];
    println!(
        "## bench control\n\n{} blue-green flips written to etcd while one client polls the gateway; \
         {} workers killed with SIGKILL\n\n{}",
        args.flips,
        args.kills,
        report::table(&["", "p50", "p99"], &rows)
    );
    let figures = json!({
        "flips": args.flips,
        "put_p50_ms": ms(pct(&puts, 0.5)),
        "put_p99_ms": ms(pct(&puts, 0.99)),
        "routed_p50_ms": ms(pct(&routed, 0.5)),
        "routed_p99_ms": ms(pct(&routed, 0.99)),
        "lease_ttl_s": args.lease_ttl_s,
        "removal_s": removals.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
    });
    report::write_json(&out.join("control.json"), &figures)?;
    report::bar_chart(
        &out.join("control.png"),
        "etcd put to first request routed by it",
        "ms",
        &["p50", "p99"],
        &[
            ("etcd put", vec![ms(pct(&puts, 0.5)), ms(pct(&puts, 0.99))]),
            (
                "routed",
                vec![ms(pct(&routed, 0.5)), ms(pct(&routed, 0.99))],
            ),
        ],
    )?;
    Ok(())
}

/// Sends requests one after another until `worker` serves one.
async fn wait_for(client: &HttpClient, api: &str, worker: &str) -> anyhow::Result<()> {
    let body = Bytes::from(
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
            .to_string(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let req = http::Request::post(api)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))?;
        let resp = client.request(req).await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "the gateway answered {}",
            resp.status()
        );
        let served = resp.headers().get("x-worker-id").cloned();
        resp.into_body().collect().await?;
        if served.is_some_and(|id| id == worker) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{worker} never served");
    }
}

/// Whether the gateway's `/status` lists worker `id`.
async fn listed(client: &HttpClient, status: &str, id: &str) -> anyhow::Result<bool> {
    let req = http::Request::get(status).body(Full::new(Bytes::new()))?;
    let body = client
        .request(req)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(status["pools"][0]["workers"]
        .as_array()
        .is_some_and(|w| w.iter().any(|w| w["id"] == id)))
}
