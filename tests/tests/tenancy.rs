//! The front door: API keys from a file or etcd, the admin listener's key,
//! rate limits with OpenAI's headers (and one budget across replicas over
//! NATS), priority queueing, usage accounting, and no client key reaching
//! a worker.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};

/// `gatewayctl ARGS…` on a keys file: its JSON output.
async fn ctl(file: &Path, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(bin("gatewayctl"))
        .arg("--json")
        .args(args)
        .arg("--file")
        .arg(file)
        .output()
        .await
        .expect("run gatewayctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gatewayctl {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or(Value::Null)
}

/// A new key in `file`: its secret.
async fn new_key(file: &Path, args: &[&str]) -> String {
    let mut all = vec!["key", "create"];
    all.extend(args);
    ctl(file, &all).await["secret"]
        .as_str()
        .expect("a secret")
        .to_string()
}

async fn post(api: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = client()
        .post(format!("{api}/v1/chat/completions"))
        .json(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    Some(resp.headers().get(name)?.to_str().ok()?.to_string())
}

fn number(resp: &reqwest::Response, name: &str) -> i64 {
    header(resp, name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// The gateway's `/metrics`, read with an admin key.
async fn admin_metrics(gw: &GatewayProc, key: &str) -> String {
    let resp = client()
        .get(format!("{}/metrics", gw.admin))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    resp.text().await.unwrap()
}

const LISTENERS: &str = "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n";

#[tokio::test]
async fn api_keys_guard_the_api_and_the_admin_listener() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let keys = temp_dir().join("keys.toml");
    let user = new_key(&keys, &["--tenant", "acme"]).await;
    let admin = new_key(&keys, &["--tenant", "ops", "--admin"]).await;
    let scoped = new_key(&keys, &["--tenant", "acme", "--models", "other"]).await;
    let expired = new_key(&keys, &["--tenant", "acme", "--expires", "2020-01-01"]).await;
    let extra = format!("{LISTENERS}[auth]\nkeys_file = {keys:?}\n");
    let gw = spawn_gateway("a", &[&w1], &extra).await;
    let body = chat("hello", false, 2);

    // No key, a wrong one, an expired one: 401 invalid_api_key.
    assert_eq!(
        error_code(post(&gw.api, None, &body).await).await,
        (401, "invalid_api_key".into())
    );
    let wrong = post(&gw.api, Some("sk-llmgw-nope"), &body).await;
    assert_eq!(error_code(wrong).await, (401, "invalid_api_key".into()));
    let old = post(&gw.api, Some(&expired), &body).await;
    assert_eq!(error_code(old).await, (401, "invalid_api_key".into()));

    // A good key, as a bearer or as `api-key`; its answer names no worker.
    let ok = post(&gw.api, Some(&user), &body).await;
    assert_eq!(ok.status(), 200);
    assert!(header(&ok, "x-worker-id").is_none(), "topology leaks");
    let azure = client()
        .post(format!("{}/v1/chat/completions", gw.api))
        .header("api-key", &user)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(azure.status(), 200);
    let by_admin = post(&gw.api, Some(&admin), &body).await;
    assert_eq!(header(&by_admin, "x-worker-id").as_deref(), Some("w1"));

    // A model outside the key's scope reads as one that does not exist.
    let (status, code) = error_code(post(&gw.api, Some(&scoped), &body).await).await;
    assert_eq!((status, code.as_str()), (404, "model_not_found"));
    let listed: Value = client()
        .get(format!("{}/v1/models", gw.api))
        .bearer_auth(&scoped)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]), "scopes do not leak model names");

    // The admin listener: probes open, the rest for admin keys only.
    let admin_get = |path: &str, key: Option<&str>| {
        let mut req = client().get(format!("{}{path}", gw.admin));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(admin_get("/live", None).await, 200);
    assert_eq!(admin_get("/ready", None).await, 200);
    assert_eq!(admin_get("/metrics", None).await, 401);
    assert_eq!(admin_get("/status", Some(&user)).await, 403);
    assert_eq!(admin_get("/metrics", Some(&admin)).await, 200);
    assert_eq!(admin_get("/status", Some(&admin)).await, 200);

    // The official client, with the key and with a wrong one.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/openai_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(format!("{}/v1", gw.api))
        .arg(MODEL)
        .arg(&user)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("all openai client checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Revoked in the file: refused within a second.
    let listed = ctl(&keys, &["key", "list"]).await;
    let user_id = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["tenant"] == "acme" && k["models"] == json!([]) && k["expires_at"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    ctl(&keys, &["key", "revoke", &user_id]).await;
    eventually(
        Duration::from_secs(1),
        "the revoked key refused",
        || async { post(&gw.api, Some(&user), &body).await.status() == 401 },
    )
    .await;

    // Rotated: the old secret stops, the new one works.
    let rotated = new_key(&keys, &["--tenant", "acme"]).await;
    eventually(Duration::from_secs(1), "the new key works", || async {
        post(&gw.api, Some(&rotated), &body).await.status() == 200
    })
    .await;
    let listed = ctl(&keys, &["key", "list"]).await;
    let newest = listed["keys"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let fresh = ctl(&keys, &["key", "rotate", &newest]).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(Duration::from_secs(1), "the old secret refused", || async {
        post(&gw.api, Some(&rotated), &body).await.status() == 401
    })
    .await;
    assert_eq!(post(&gw.api, Some(&fresh), &body).await.status(), 200);

    // A keys file that does not parse leaves the last good keys serving.
    std::fs::write(&keys, "[[keys]]\nid = 1\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(post(&gw.api, Some(&admin), &body).await.status(), 200);
    let metrics = admin_metrics(&gw, &admin).await;
    assert!(
        metrics.contains("llmgw_api_key_reloads_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("llmgw_auth_failures_total{reason=\"unknown\"}"));
}

#[tokio::test]
async fn a_gateway_beyond_loopback_without_keys_refuses_to_start() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let open = "[listeners]\napi = \"0.0.0.0:0\"\nadmin = \"127.0.0.1:0\"\n";
    let path = temp_dir().join("gateway.toml");
    std::fs::write(&path, gateway_toml("a", &[&w1], open)).unwrap();
    let out = tokio::process::Command::new(bin("gateway"))
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("auth.mode = \\\"none\\\"") || stderr.contains("auth.mode = \"none\""),
        "{stderr}"
    );
    // Said explicitly, it starts.
    let said = format!("{open}[auth]\nmode = \"none\"\n");
    let gw = spawn_gateway("a", &[&w1], &said).await;
    assert_eq!(
        post(&gw.api, None, &chat("hi", false, 2)).await.status(),
        200
    );
}

#[tokio::test]
async fn rate_limits_answer_with_openai_headers() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let keys = temp_dir().join("keys.toml");
    let rpm = new_key(&keys, &["--tenant", "a", "--rpm", "3"]).await;
    let tpm = new_key(&keys, &["--tenant", "b", "--tpm", "1000"]).await;
    let (shared_1, shared_2) = (
        new_key(&keys, &["--tenant", "c"]).await,
        new_key(&keys, &["--tenant", "c"]).await,
    );
    ctl(&keys, &["tenant", "set", "c", "--rpm", "2"]).await;
    let extra = format!("[auth]\nkeys_file = {keys:?}\n");
    let gw = spawn_gateway("a", &[&w1], &extra).await;
    let body = chat("hello", false, 2);

    for left in [2, 1, 0] {
        let ok = post(&gw.api, Some(&rpm), &body).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(number(&ok, "x-ratelimit-limit-requests"), 3);
        assert_eq!(number(&ok, "x-ratelimit-remaining-requests"), left);
        assert!(header(&ok, "x-ratelimit-reset-requests").is_some());
        assert!(
            header(&ok, "x-ratelimit-limit-tokens").is_none(),
            "no token limit"
        );
    }
    let refused = post(&gw.api, Some(&rpm), &body).await;
    assert_eq!(refused.status(), 429);
    assert!(number(&refused, "retry-after") >= 1);
    assert_eq!(number(&refused, "x-ratelimit-remaining-requests"), 0);
    let (_, code) = error_code(refused).await;
    assert_eq!(code, "rate_limit_exceeded");

    // Tokens: the prompt and max_tokens are reserved, the unused part given back.
    let body = chat("count the tokens of this prompt", false, 200);
    let first = post(&gw.api, Some(&tpm), &body).await;
    assert_eq!(number(&first, "x-ratelimit-limit-tokens"), 1000);
    let left_1 = number(&first, "x-ratelimit-remaining-tokens");
    let usage = first.json::<Value>().await.unwrap()["usage"].clone();
    let (prompt, total) = (
        usage["prompt_tokens"].as_i64().unwrap(),
        usage["total_tokens"].as_i64().unwrap(),
    );
    // A refill of 1000 a minute adds a token per 60 ms meanwhile.
    assert!(
        (0..=3).contains(&(left_1 - (1000 - prompt - 200))),
        "{left_1} {usage}"
    );
    let second = post(&gw.api, Some(&tpm), &body).await;
    let left_2 = number(&second, "x-ratelimit-remaining-tokens");
    // Between the two: what the first used in all (its reservation trued
    // up when it ended), less the refill meanwhile.
    assert!(
        (total - 3..=total + 1).contains(&(left_1 - left_2)),
        "{left_1} {left_2} {usage}"
    );
    let too_large = post(&gw.api, Some(&tpm), &chat("x", false, 5000)).await;
    assert_eq!(too_large.status(), 429);
    assert!(too_large.text().await.unwrap().contains("too large"));

    // A tenant's limit binds all its keys together.
    assert_eq!(
        post(&gw.api, Some(&shared_1), &chat("x", false, 2))
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&gw.api, Some(&shared_2), &chat("x", false, 2))
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&gw.api, Some(&shared_1), &chat("x", false, 2))
            .await
            .status(),
        429
    );
}

#[tokio::test]
async fn replicas_share_a_token_budget_over_nats() {
    let nats = NatsServer::start().await;
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let keys = temp_dir().join("keys.toml");
    const LIMIT: i64 = 3000;
    let key = new_key(&keys, &["--tenant", "a", "--tpm", &LIMIT.to_string()]).await;
    let extra = format!(
        "[auth]\nkeys_file = {keys:?}\n[bus]\nnats_url = \"{}\"\n[limits]\nexchange_ms = 100\n",
        nats.url
    );
    let gateways = [
        spawn_gateway("a", &[&w1], &extra).await,
        spawn_gateway("a", &[&w1], &extra).await,
    ];
    // Both hear each other before the budget is spent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = chat("share the budget", false, 50);
    let started = Instant::now();
    let (mut used, mut refused_in_a_row, mut served) = (0, 0, [0, 0]);
    let mut reservation = 0;
    for turn in 0.. {
        let g = turn % 2;
        let resp = post(&gateways[g].api, Some(&key), &body).await;
        if resp.status() == 429 {
            refused_in_a_row += 1;
            if refused_in_a_row == 6 {
                break;
            }
        } else {
            assert_eq!(resp.status(), 200);
            refused_in_a_row = 0;
            served[g] += 1;
            let usage = resp.json::<Value>().await.unwrap()["usage"].clone();
            used += usage["total_tokens"].as_i64().unwrap();
            reservation = usage["prompt_tokens"].as_i64().unwrap() + 50;
        }
        // About 30 requests a second between the two.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    // The documented bound: the budget, its refill while the test ran, and
    // what the other replica admits in one exchange interval (at this pace
    // at most two requests) plus one in flight.
    let refill = (LIMIT as f64 * secs / 60.0).ceil() as i64;
    let bound = LIMIT + refill + 3 * reservation;
    assert!(served[0] > 0 && served[1] > 0, "{served:?}");
    assert!(
        used <= bound,
        "used {used} tokens, bound {bound} ({secs:.1} s, {served:?})"
    );
    // Alone, each would have admitted the whole budget.
    assert!(used >= LIMIT * 8 / 10, "used only {used}");
}

#[tokio::test]
async fn a_key_revoked_in_etcd_stops_working_on_every_gateway_within_a_second() {
    let etcd = EtcdServer::start().await;
    let opts = WorkerOpts {
        etcd: Some(etcd.url.clone()),
        ..WorkerOpts::default()
    };
    let _w1 = spawn_worker("w1", "a", opts).await;
    let extra = format!(
        "[etcd]\nendpoints = [\"{}\"]\n[auth]\nmode = \"keys\"\n",
        etcd.url
    );
    let gateways = [
        spawn_gateway("a", &[], &extra).await,
        spawn_gateway("a", &[], &extra).await,
    ];
    let (ok, out, err) =
        gatewayctl(&etcd.url, &["--json", "key", "create", "--tenant", "acme"]).await;
    assert!(ok, "{out}{err}");
    let created: Value = serde_json::from_str(out.trim()).unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    for gw in &gateways {
        eventually(Duration::from_secs(10), "the key works", || async {
            post(&gw.api, Some(&secret), &chat("x", false, 2))
                .await
                .status()
                == 200
        })
        .await;
    }

    // A load on both gateways, noting when each first refuses the key.
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = gateways
        .iter()
        .map(|gw| {
            let (api, secret, stop) = (gw.api.clone(), secret.clone(), stop.clone());
            tokio::spawn(async move {
                let mut first_401 = None;
                let mut served_after = 0;
                while !stop.load(Ordering::Relaxed) {
                    let status = post(&api, Some(&secret), &chat("load", false, 2))
                        .await
                        .status();
                    match (status.as_u16(), first_401) {
                        (401, None) => first_401 = Some(Instant::now()),
                        (200, Some(_)) => served_after += 1,
                        (200 | 401, _) => {}
                        (other, _) => panic!("unexpected {other}"),
                    }
                }
                (first_401, served_after)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, out, err) = gatewayctl(&etcd.url, &["key", "revoke", &id]).await;
    assert!(ok, "{out}{err}");
    let revoked = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for load in loads {
        let (first_401, served_after) = load.await.unwrap();
        let first_401 = first_401.expect("the revoked key was refused");
        let after = first_401.saturating_duration_since(revoked);
        assert!(
            after < Duration::from_secs(1),
            "refused {after:?} after the revoke"
        );
        assert_eq!(served_after, 0, "served again after a refusal");
    }
}

#[tokio::test]
async fn the_clients_key_never_reaches_a_worker_the_pools_own_does() {
    let fake = e2e::fake::start(200, None).await;
    let keys = temp_dir().join("keys.toml");
    let user = new_key(&keys, &["--tenant", "acme"]).await;
    let config = format!(
        "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[auth]\nkeys_file = {keys:?}\n\
         [[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\nengine = \"vllm\"\n\
         upstream_key_env = \"LLMGW_TEST_ENGINE_KEY\"\n\
         [[pools.workers]]\nid = \"v1\"\nurl = \"{}\"\nmetrics_url = \"{}/health\"\n",
        fake.url, fake.url
    );
    let path = temp_dir().join("gateway.toml");
    std::fs::write(&path, &config).unwrap();
    let mut cmd = tokio::process::Command::new(bin("gateway"));
    cmd.arg("--config")
        .arg(&path)
        .env("LLMGW_TEST_ENGINE_KEY", "engine-secret");
    let (_proc, found) = Proc::spawn(cmd, &["api listening on "]).await;
    let api = &found[0];
    eventually(Duration::from_secs(10), "the worker routes", || async {
        post(api, Some(&user), &chat("x", false, 2)).await.status() == 200
    })
    .await;
    let azure = client()
        .post(format!("{api}/v1/chat/completions"))
        .header("api-key", &user)
        .json(&chat("x", false, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(azure.status(), 200);
    // Completions and probes alike (vLLM's key guards `/v1/models`).
    let seen = fake.credentials.lock().unwrap().clone();
    assert!(seen.len() >= 4, "{seen:?}");
    for (authorization, api_key) in seen {
        assert_eq!(authorization.as_deref(), Some("Bearer engine-secret"));
        assert_eq!(api_key, None);
    }
    // Without the variable, the config is refused by name.
    let out = tokio::process::Command::new(bin("gateway"))
        .arg("--config")
        .arg(&path)
        .env_remove("LLMGW_TEST_ENGINE_KEY")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upstream_key_env: the environment has no `LLMGW_TEST_ENGINE_KEY`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_saturated_pool_queues_by_priority_and_usage_is_logged() {
    // 20 tokens at 10 ms each: a request holds the worker ~200 ms.
    let slow = WorkerOpts {
        decode_step_us: 10_000,
        ..WorkerOpts::default()
    };
    let w1 = spawn_worker("w1", "a", slow).await;
    let dir = temp_dir();
    let keys = dir.join("keys.toml");
    let usage = dir.join("usage.jsonl");
    let low = new_key(&keys, &["--tenant", "batch", "--priority", "low"]).await;
    let high = new_key(&keys, &["--tenant", "chat", "--priority", "high"]).await;
    let admin = new_key(&keys, &["--tenant", "ops", "--admin"]).await;
    let extra = format!(
        "[auth]\nkeys_file = {keys:?}\n[admission]\nmax_in_flight_per_worker = 1\n[usage]\nlog = {usage:?}\n"
    );
    let gw = spawn_gateway("a", &[&w1], &extra).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let send = |key: String, who: &'static str| {
        let (api, tx) = (gw.api.clone(), tx.clone());
        tokio::spawn(async move {
            // The high one streams: its tokens are counted from the stream.
            let resp = post(&api, Some(&key), &chat(who, who == "high", 20)).await;
            assert_eq!(resp.status(), 200);
            let text = resp.text().await.unwrap();
            assert!(text.contains("[DONE]") || who == "low", "{text}");
            tx.send(who).unwrap();
        })
    };
    // One runs, three wait; then a high-priority request arrives last.
    for _ in 0..4 {
        send(low.clone(), "low");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send(high.clone(), "high");
    drop(tx);
    let mut order = Vec::new();
    while let Some(who) = rx.recv().await {
        order.push(who);
    }
    assert_eq!(order, ["low", "high", "low", "low", "low"]);
    let metrics = admin_metrics(&gw, &admin).await;
    assert!(
        metrics.contains("llmgw_queue_wait_seconds_count{pool=\"sim\",priority=\"low\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("llmgw_queue_length{pool=\"sim\",priority=\"low\"} 0"),
        "{metrics}"
    );
    let completion = |tenant: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("llmgw_tenant_tokens_total")
                    && l.contains(&format!("tenant=\"{tenant}\""))
                    && l.contains("kind=\"completion\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(completion("batch"), Some(80.0));
    assert_eq!(completion("chat"), Some(20.0));

    // The usage log: a line per request; `gatewayctl usage` sums it.
    eventually(Duration::from_secs(5), "five usage lines", || async {
        std::fs::read_to_string(&usage)
            .unwrap_or_default()
            .lines()
            .count()
            == 5
    })
    .await;
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&usage)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    for field in [
        "key",
        "tenant",
        "model",
        "worker",
        "prompt_tokens",
        "completion_tokens",
        "duration_ms",
        "status",
    ] {
        assert!(!line[field].is_null(), "{field} in {line}");
    }
    let out = tokio::process::Command::new(bin("gatewayctl"))
        .args(["--json", "usage", "--tenant", "batch", "--since", "1h"])
        .arg(&usage)
        .output()
        .await
        .unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["usage"][0]["requests"], 4);
    assert_eq!(summary["usage"][0]["completion_tokens"], 80);

    // Rotated as logrotate does (moved away): the next line starts a new file.
    let rotated = dir.join("usage.jsonl.1");
    std::fs::rename(&usage, &rotated).unwrap();
    let resp = post(&gw.api, Some(&high), &chat("after", false, 2)).await;
    assert_eq!(resp.status(), 200);
    eventually(Duration::from_secs(5), "a new usage log", || async {
        std::fs::read_to_string(&usage)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        5
    );
}
