//! KV-cache-aware routing against a real nats-server: workers publish KV
//! events and load, the gateway mirrors them, and prompts go to the worker
//! holding their prefix; the gateway's hashes equal the workers'; a shared
//! prefix does not pin all traffic to one worker; a restarted worker is
//! forgotten; and a NATS outage falls back to approximations and recovers.

use std::time::Duration;

use e2e::*;
use serde_json::Value;

/// A long prompt of its own for `customer`: many blocks, no sharing with others.
fn long_prompt(customer: usize) -> String {
    (0..60)
        .map(|i| format!("customer {customer} clause {i} of the contract. "))
        .collect()
}

fn bus(nats: &NatsServer) -> String {
    format!("[bus]\nnats_url = \"{}\"\n", nats.url)
}

async fn kv_workers(nats: &NatsServer, n: usize, opts: WorkerOpts) -> Vec<WorkerProc> {
    let mut workers = Vec::new();
    for i in 0..n {
        let opts = WorkerOpts {
            nats: Some(nats.url.clone()),
            ..opts.clone()
        };
        workers.push(spawn_worker(&format!("w{i}"), "a", opts).await);
    }
    workers
}

/// Sends a chat request to `base` (a gateway or a worker); returns (worker id if any, cached tokens).
async fn ask(base: &str, content: &str) -> (Option<String>, u64) {
    let resp = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat(content, false, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let worker = resp
        .headers()
        .get("x-worker-id")
        .map(|v| v.to_str().unwrap().to_string());
    let v: Value = resp.json().await.unwrap();
    (
        worker,
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
    )
}

async fn all_followed(gw: &GatewayProc, n: usize) -> bool {
    let s = status(gw).await;
    s["bus"] == "connected"
        && s["pools"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["kv_events"] == true)
            .count()
            == n
}

/// Makes every worker publish once, so the gateway follows all of them.
async fn warm(workers: &[WorkerProc], gw: &GatewayProc) {
    for w in workers {
        ask(&w.url, "warm up").await;
    }
    eventually(
        Duration::from_secs(10),
        "gateway follows every worker's events",
        || all_followed(gw, workers.len()),
    )
    .await;
}

#[tokio::test]
async fn prompts_go_to_the_worker_holding_their_prefix() {
    let nats = NatsServer::start().await;
    let workers = kv_workers(&nats, 4, WorkerOpts::default()).await;
    let refs: Vec<&WorkerProc> = workers.iter().collect();
    let gw = spawn_gateway("a", &refs, &bus(&nats)).await;
    warm(&workers, &gw).await;

    // Prime each customer's prefix straight on a worker, behind the gateway's back:
    // only the workers' KV events can tell the gateway where those prefixes are.
    for (customer, worker) in workers
        .iter()
        .enumerate()
        .chain(workers.iter().enumerate().map(|(i, w)| (i + 4, w)))
    {
        ask(&worker.url, &long_prompt(customer)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for customer in 0..8 {
        let before = metric(&gw, "llmgw_prompt_blocks_cached_total").await;
        let follow_up = format!(
            "{} And a follow-up question {customer}?",
            long_prompt(customer)
        );
        let (worker, cached) = ask(&gw.api, &follow_up).await;
        assert_eq!(
            worker.as_deref(),
            Some(workers[customer % 4].id.as_str()),
            "customer {customer}"
        );
        assert!(
            cached >= 16 * 20,
            "the holder served most of the prompt from cache: {cached}"
        );
        // The gateway predicted exactly the blocks the worker found cached: same tokens, same hashes.
        let predicted = metric(&gw, "llmgw_prompt_blocks_cached_total").await - before;
        assert_eq!(predicted * 16.0, cached as f64, "customer {customer}");
    }
}

#[tokio::test]
async fn a_shared_prefix_does_not_pin_traffic_to_one_worker() {
    let nats = NatsServer::start().await;
    let slow = WorkerOpts {
        decode_step_us: 4000,
        ..WorkerOpts::default()
    };
    let workers = kv_workers(&nats, 3, slow).await;
    let refs: Vec<&WorkerProc> = workers.iter().collect();
    let extra = format!(
        "{}[routing]\nbalance_abs_threshold = 2\nbalance_rel_threshold = 1.5\n",
        bus(&nats)
    );
    let gw = spawn_gateway("a", &refs, &extra).await;
    warm(&workers, &gw).await;
    let system = long_prompt(99);
    ask(&gw.api, &system).await;

    let c = client();
    let requests = (0..12).map(|i| {
        let c = c.clone();
        let body = chat(&format!("{system} Question {i}?"), false, 60);
        let url = format!("{}/v1/chat/completions", gw.api);
        async move {
            let resp = c.post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.headers()["x-worker-id"].to_str().unwrap().to_string()
        }
    });
    let served: std::collections::HashSet<String> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .collect();
    assert!(served.len() >= 2, "a popular prefix spread over {served:?}");
}

#[tokio::test]
async fn a_restarted_worker_is_forgotten() {
    let nats = NatsServer::start().await;
    let port = free_port();
    let opts = WorkerOpts {
        listen: ([127, 0, 0, 1], port).into(),
        nats: Some(nats.url.clone()),
        ..WorkerOpts::default()
    };
    let mut w0 = spawn_worker("w0", "a", opts.clone()).await;
    let w1 = spawn_worker(
        "w1",
        "a",
        WorkerOpts {
            nats: Some(nats.url.clone()),
            ..WorkerOpts::default()
        },
    )
    .await;
    let gw = spawn_gateway("a", &[&w0, &w1], &bus(&nats)).await;
    warm(&[], &gw).await;
    let prompt = long_prompt(7);
    ask(&w0.url, &prompt).await;
    ask(&w1.url, "warm up").await;
    eventually(Duration::from_secs(10), "both followed", || {
        all_followed(&gw, 2)
    })
    .await;
    assert_eq!(
        ask(&gw.api, &format!("{prompt} again")).await.0.as_deref(),
        Some("w0")
    );

    // w0 dies and comes back empty; meanwhile w1 learns the prompt.
    w0.proc.sigkill().await;
    ask(&w1.url, &prompt).await;
    let _w0 = spawn_worker("w0", "a", opts).await;
    eventually(Duration::from_secs(10), "w0 healthy again", || async {
        worker_status(&gw, "w0").await["health"] == "healthy"
    })
    .await;
    let (worker, cached) = ask(&gw.api, &format!("{prompt} once more")).await;
    assert_eq!(
        worker.as_deref(),
        Some("w1"),
        "the prefix now lives on w1 only"
    );
    assert!(cached > 0);
}

#[tokio::test]
async fn nats_outage_falls_back_and_recovers() {
    let mut nats = NatsServer::start().await;
    let workers = kv_workers(&nats, 2, WorkerOpts::default()).await;
    let refs: Vec<&WorkerProc> = workers.iter().collect();
    let gw = spawn_gateway("a", &refs, &bus(&nats)).await;
    warm(&workers, &gw).await;

    nats.stop().await;
    eventually(
        Duration::from_secs(10),
        "gateway sees the bus down",
        || async { status(&gw).await["bus"] == "disconnected" },
    )
    .await;
    // Routing goes on with approximations and the gateway's own load figures.
    for i in 0..10 {
        let (worker, _) = ask(&gw.api, &format!("during the outage {i}")).await;
        assert!(worker.is_some());
    }
    // While the bus is down, w1 caches a prompt the gateway never saw.
    let prompt = long_prompt(3);
    ask(&workers[1].url, &prompt).await;

    nats.restart().await;
    eventually(
        Duration::from_secs(20),
        "bus back and every worker resynced",
        || all_followed(&gw, 2),
    )
    .await;
    // Reconnecting asks every followed worker for a snapshot; give the answers a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (worker, cached) = ask(&gw.api, &format!("{prompt} after the outage")).await;
    assert_eq!(
        worker.as_deref(),
        Some("w1"),
        "the resynced index knows w1 holds the prompt"
    );
    assert!(cached > 0);
}

#[tokio::test]
async fn a_worker_hashing_with_another_block_size_is_reported_and_ignored() {
    let nats = NatsServer::start().await;
    let opts = WorkerOpts {
        nats: Some(nats.url.clone()),
        block_size: 32,
        ..WorkerOpts::default()
    };
    let odd = spawn_worker("odd", "a", opts).await;
    let gw = spawn_gateway("a", &[&odd], &bus(&nats)).await;
    ask(&odd.url, &long_prompt(1)).await;
    eventually(Duration::from_secs(10), "mismatch reported", || async {
        metric(&gw, "llmgw_block_size_mismatches_total").await >= 1.0
    })
    .await;
    let w = worker_status(&gw, "odd").await;
    assert_eq!(w["block_size"], 32);
    assert_eq!(w["kv_events"], false, "its events are not mirrored");
    // It still serves: only its cache is invisible to routing.
    assert_eq!(ask(&gw.api, "still served").await.0.as_deref(), Some("odd"));
}

/// NATS as a cluster: gateway and workers are given every node, and nodes
/// killed under load (two of three, one after the other, so that whatever
/// was on them moves) lose no request, while KV events keep reaching the
/// gateway through the last (a prefix primed on a worker behind the
/// gateway's back is still found there).
#[tokio::test(flavor = "multi_thread")]
async fn nats_nodes_lost_under_load_lose_nothing() {
    let mut cluster = NatsServer::cluster(3).await;
    let urls: Vec<String> = cluster.iter().map(|n| n.url.clone()).collect();
    let all = urls.join(",");
    let opts = WorkerOpts {
        nats: Some(all.clone()),
        ..WorkerOpts::default()
    };
    let mut workers = Vec::new();
    for i in 0..2 {
        workers.push(spawn_worker(&format!("w{i}"), "a", opts.clone()).await);
    }
    let refs: Vec<&WorkerProc> = workers.iter().collect();
    let gw = spawn_gateway("a", &refs, &format!("[bus]\nnats_url = \"{all}\"\n")).await;
    warm(&workers, &gw).await;
    let load = Load::start(&gw.api, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    for node in &mut cluster[..2] {
        node.stop().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    eventually(
        Duration::from_secs(10),
        "still following every worker",
        || all_followed(&gw, 2),
    )
    .await;
    ask(&workers[1].url, &long_prompt(7)).await;
    eventually(
        Duration::from_secs(10),
        "the primed prefix found",
        || async {
            let follow_up = format!("{} And then?", long_prompt(7));
            let (worker, cached) = ask(&gw.api, &follow_up).await;
            worker.as_deref() == Some("w1") && cached >= 16 * 20
        },
    )
    .await;
    let (ok, failures) = load.stop().await;
    assert!(
        ok > 0 && failures.is_empty(),
        "{ok} ok, failed: {failures:?}"
    );
}
