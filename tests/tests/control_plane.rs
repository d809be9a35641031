//! The etcd control plane end to end: real `etcd`, `nats-server`, workers
//! registering on leases, gateways following etcd, and `gatewayctl`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::{
    chat, eventually, gatewayctl, plugins_dir, served_by, spawn_gateway, spawn_worker, status,
    temp_dir, EtcdServer, GatewayProc, Load, NatsServer, WorkerOpts, WorkerProc, MODEL, POOL,
};
use serde_json::Value;

/// A gateway whose pool `sim` has no static worker: etcd supplies them.
async fn etcd_gateway(etcd: &EtcdServer, extra: &str) -> GatewayProc {
    let extra = format!("[etcd]\nendpoints = [\"{}\"]\n{extra}", etcd.url);
    spawn_gateway("a", &[], &extra).await
}

async fn registered_worker(id: &str, etcd: &EtcdServer, opts: WorkerOpts) -> WorkerProc {
    let opts = WorkerOpts {
        etcd: Some(etcd.url.clone()),
        ..opts
    };
    spawn_worker(id, "a", opts).await
}

/// The ids of the workers `gw` routes `sim` to, sorted.
async fn worker_ids(gw: &GatewayProc) -> Vec<String> {
    let s = status(gw).await;
    let mut ids: Vec<String> = s["pools"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn has_workers(gw: &GatewayProc, ids: &[&str]) -> bool {
    worker_ids(gw).await == ids
}

/// A routing document with the `sim` pool and `extra` lines (its policy, say).
fn doc(routing: &str, policy: &str) -> String {
    format!(
        "[routing]\n{routing}\n[[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\n{policy}\n"
    )
}

fn write(text: &str) -> PathBuf {
    let path = temp_dir().join("routing.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `gatewayctl config put` of `text`; its output.
async fn put_config(etcd: &EtcdServer, text: &str) -> String {
    ctl_ok(etcd, &["config", "put", write(text).to_str().unwrap()]).await
}

async fn ctl_ok(etcd: &EtcdServer, args: &[&str]) -> String {
    let (ok, out, err) = gatewayctl(&etcd.url, args).await;
    assert!(ok, "gatewayctl {args:?} failed:\n{out}\n{err}");
    out
}

async fn etcdctl_put(etcd: &EtcdServer, key: &str, value: &[u8]) {
    let path = temp_dir().join("value");
    std::fs::write(&path, value).unwrap();
    // `put KEY` reads the value from stdin when none is given: bytes pass unchanged.
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.url, "put", key])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .expect("etcdctl is installed (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The component `scripts/build-plugins.sh` built for `name`.
fn plugin_file(name: &str) -> PathBuf {
    let dir = plugins_dir().join(name);
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wasm"))
        .unwrap_or_else(|| panic!("no component in {}", dir.display()))
}

async fn control(gw: &GatewayProc) -> Value {
    status(gw).await["control"].clone()
}

#[tokio::test]
async fn workers_register_and_vanish_with_their_lease() {
    let etcd = EtcdServer::start().await;
    let gw = etcd_gateway(&etcd, "").await;
    let short = WorkerOpts {
        lease_ttl_s: 2,
        ..WorkerOpts::default()
    };
    let long = WorkerOpts {
        lease_ttl_s: 60,
        ..WorkerOpts::default()
    };
    let mut w1 = registered_worker("w1", &etcd, short).await;
    let w2 = registered_worker("w2", &etcd, long).await;
    eventually(Duration::from_secs(10), "both workers discovered", || {
        has_workers(&gw, &["w1", "w2"])
    })
    .await;
    let id = served_by(&gw.api, &chat("hello", false, 2)).await;
    assert!(id == "w1" || id == "w2");

    let listed: Value = serde_json::from_str(&ctl_ok(&etcd, &["workers", "--json"]).await).unwrap();
    let w1_row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "w1")
        .expect("w1 listed")
        .clone();
    assert_eq!(w1_row["health"], "ok");
    assert_eq!(w1_row["url"], w1.url);
    assert!(w1_row["load"]["kv_blocks_total"].as_u64().unwrap() > 0);

    // Killed: nothing deregisters it; its lease runs out.
    let killed = Instant::now();
    w1.proc.sigkill().await;
    eventually(
        Duration::from_secs(20),
        "w1 removed after its lease expired",
        || has_workers(&gw, &["w2"]),
    )
    .await;
    println!("SIGKILL to removal: {:?} (lease TTL 2 s)", killed.elapsed());
    assert_eq!(served_by(&gw.api, &chat("hello", false, 2)).await, "w2");

    // Stopped gracefully: deregistered at once, long before its 60 s lease.
    w2.proc.sigterm();
    eventually(
        Duration::from_secs(15),
        "w2 deregistered on SIGTERM",
        || has_workers(&gw, &[]),
    )
    .await;
}

#[tokio::test]
async fn routing_config_applies_live_and_bad_config_is_refused() {
    let etcd = EtcdServer::start().await;
    let gw = etcd_gateway(&etcd, "").await;
    let _w1 = registered_worker("w1", &etcd, WorkerOpts::default()).await;
    let _w2 = registered_worker("w2", &etcd, WorkerOpts::default()).await;
    eventually(Duration::from_secs(10), "workers discovered", || {
        has_workers(&gw, &["w1", "w2"])
    })
    .await;
    assert_eq!(status(&gw).await["pools"][0]["strategy"], "kv");

    let put = put_config(&etcd, &doc("strategy = \"round_robin\"", "")).await;
    assert!(put.contains("routing.strategy: \"round_robin\""), "{put}");
    eventually(Duration::from_secs(5), "round-robin in force", || async {
        status(&gw).await["pools"][0]["strategy"] == "round_robin"
    })
    .await;
    let applied = control(&gw).await["config_revision"].as_i64().unwrap();
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(served_by(&gw.api, &chat("same prompt", false, 2)).await);
    }
    served.sort();
    assert_eq!(served, ["w1", "w1", "w2", "w2"], "round-robin alternates");

    // gatewayctl refuses what does not validate, and writes nothing.
    let bad = write(&doc("strategy = \"fastest\"", ""));
    let (ok, _, err) = gatewayctl(&etcd.url, &["config", "validate", bad.to_str().unwrap()]).await;
    assert!(!ok && err.contains("strategy"), "{err}");
    let (ok, _, err) = gatewayctl(&etcd.url, &["config", "put", bad.to_str().unwrap()]).await;
    assert!(!ok, "{err}");
    assert!(ctl_ok(&etcd, &["config", "get"])
        .await
        .contains("round_robin"));

    // Written behind its back, the gateway refuses it and keeps serving the last good one.
    etcdctl_put(&etcd, "/llmgw/config", b"[routing]\nstrategy = 7\n").await;
    eventually(Duration::from_secs(5), "the refusal reported", || async {
        control(&gw).await["refused"].as_u64() == Some(1)
    })
    .await;
    let c = control(&gw).await;
    assert!(c["last_refusal"]["revision"].as_i64().unwrap() > applied);
    assert!(
        c["last_refusal"]["reason"]
            .as_str()
            .unwrap()
            .contains("strategy"),
        "{c}"
    );
    assert_eq!(c["config_revision"].as_i64(), Some(applied));
    assert_eq!(status(&gw).await["pools"][0]["strategy"], "round_robin");
    served_by(&gw.api, &chat("still serving", false, 2)).await;
    let metrics = e2e::metrics_text(&gw).await;
    assert!(
        metrics.contains("llmgw_control_changes_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );

    // A registration for a model the pool does not serve is ignored, and said so.
    let doc_other = doc("", "").replace(MODEL, "other-model");
    put_config(&etcd, &doc_other).await;
    eventually(Duration::from_secs(5), "w1 and w2 ignored", || async {
        control(&gw).await["ignored_registrations"]
            .as_array()
            .map(Vec::len)
            == Some(2)
    })
    .await;
    assert!(worker_ids(&gw).await.is_empty());
}

#[tokio::test]
async fn flip_and_canary_through_gatewayctl_under_load() {
    let etcd = EtcdServer::start().await;
    let gw = etcd_gateway(&etcd, "").await;
    let blue = WorkerOpts {
        labels: vec![("colour", "blue"), ("version", "v1")],
        ..WorkerOpts::default()
    };
    let green = WorkerOpts {
        labels: vec![("colour", "green"), ("version", "v2")],
        ..WorkerOpts::default()
    };
    let _wb = registered_worker("blue", &etcd, blue).await;
    let _wg = registered_worker("green", &etcd, green).await;
    eventually(Duration::from_secs(10), "workers discovered", || {
        has_workers(&gw, &["blue", "green"])
    })
    .await;

    // Publishing: the component is checked first; garbage is refused.
    let garbage = temp_dir().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm garbage").unwrap();
    let (ok, _, err) = gatewayctl(
        &etcd.url,
        &[
            "plugin",
            "put",
            "blue-green",
            "9.9.9",
            garbage.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok && err.contains("not a policy component"), "{err}");
    for name in ["blue-green", "canary"] {
        let out = ctl_ok(
            &etcd,
            &[
                "plugin",
                "put",
                name,
                "1.0.0",
                plugin_file(name).to_str().unwrap(),
            ],
        )
        .await;
        assert!(out.contains(&format!("+ plugin {name} 1.0.0")), "{out}");
    }
    let listed: Value =
        serde_json::from_str(&ctl_ok(&etcd, &["plugin", "list", "--json"]).await).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["sha256_ok"] == true));

    let blue_green = doc(
        "",
        "policy = { plugin = \"blue-green\", config = { active = \"blue\" } }",
    );
    put_config(&etcd, &blue_green).await;
    eventually(Duration::from_secs(10), "blue serves", || async {
        served_by(&gw.api, &chat("x", false, 2)).await == "blue"
    })
    .await;

    let load = Load::start(&gw.api, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flipped = ctl_ok(&etcd, &["flip", POOL, "green"]).await;
    assert!(
        flipped.contains("~ pools[sim].policy.config.active: \"blue\" -> \"green\""),
        "{flipped}"
    );
    eventually(Duration::from_secs(10), "green serves", || async {
        served_by(&gw.api, &chat("x", false, 2)).await == "green"
    })
    .await;
    for _ in 0..10 {
        assert_eq!(served_by(&gw.api, &chat("x", false, 2)).await, "green");
    }

    let canary = doc(
        "",
        "policy = { plugin = \"canary\", config = { stable = \"v1\", canary = \"v2\", canary_percent = 0 } }",
    );
    put_config(&etcd, &canary).await;
    eventually(
        Duration::from_secs(10),
        "the stable version serves",
        || async { served_by(&gw.api, &chat("x", false, 2)).await == "blue" },
    )
    .await;
    let raised = ctl_ok(&etcd, &["canary", POOL, "100"]).await;
    assert!(raised.contains("canary_percent: 0 -> 100"), "{raised}");
    eventually(
        Duration::from_secs(10),
        "the canary takes everyone",
        || async { served_by(&gw.api, &chat("x", false, 2)).await == "green" },
    )
    .await;
    let (ok, _, err) = gatewayctl(&etcd.url, &["canary", POOL, "140"]).await;
    assert!(!ok && err.contains("between 0 and 100"), "{err}");

    // A document is applied whole or not at all: one that changes the
    // strategy but binds a version that is not there is refused entirely.
    let partial = doc(
        "strategy = \"round_robin\"",
        "policy = { plugin = \"canary\", version = \"7.7.7\", config = { stable = \"v1\", canary = \"v2\", canary_percent = 0 } }",
    );
    etcdctl_put(&etcd, "/llmgw/config", partial.as_bytes()).await;
    eventually(
        Duration::from_secs(10),
        "the partial document refused",
        || async {
            let reason = control(&gw).await["last_refusal"]["reason"].clone();
            reason.as_str().is_some_and(|r| r.contains("7.7.7"))
        },
    )
    .await;
    assert_eq!(status(&gw).await["pools"][0]["strategy"], "kv");
    assert_eq!(served_by(&gw.api, &chat("x", false, 2)).await, "green");

    // A broken version written with etcdctl (bypassing gatewayctl's checks)
    // is refused by the gateway; the canary keeps serving.
    etcdctl_put(&etcd, "/llmgw/plugins/canary/2.0.0/wasm", b"\0asm garbage").await;
    let sha = gateway_sha(b"\0asm garbage");
    etcdctl_put(&etcd, "/llmgw/plugins/canary/2.0.0/sha256", sha.as_bytes()).await;
    eventually(
        Duration::from_secs(10),
        "the broken version refused",
        || async {
            let s = status(&gw).await;
            s["pools"][0]["policy"]["last_refusal"]["version"] == "2.0.0"
        },
    )
    .await;
    let policy = status(&gw).await["pools"][0]["policy"].clone();
    assert_eq!(policy["policy"]["version"], "1.0.0", "{policy}");
    assert_eq!(policy["last_refusal"]["kind"], "compile", "{policy}");
    assert_eq!(served_by(&gw.api, &chat("x", false, 2)).await, "green");

    let (ok, failures) = load.stop().await;
    assert!(ok > 0);
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}

/// The sha256 `gatewayctl` would publish, computed by `sha256sum`.
fn gateway_sha(bytes: &[u8]) -> String {
    let path = temp_dir().join("bytes");
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn two_gateways_converge() {
    let etcd = EtcdServer::start().await;
    let gw1 = etcd_gateway(&etcd, "").await;
    let gw2 = etcd_gateway(&etcd, "").await;
    let w1 = registered_worker("w1", &etcd, WorkerOpts::default()).await;
    let _w2 = registered_worker("w2", &etcd, WorkerOpts::default()).await;
    put_config(&etcd, &doc("strategy = \"least_load\"", "")).await;
    for gw in [&gw1, &gw2] {
        eventually(
            Duration::from_secs(10),
            "the same state on both",
            || async {
                let s = status(gw).await;
                has_workers(gw, &["w1", "w2"]).await && s["pools"][0]["strategy"] == "least_load"
            },
        )
        .await;
    }
    assert_eq!(
        control(&gw1).await["config_revision"],
        control(&gw2).await["config_revision"]
    );
    w1.proc.sigterm();
    for gw in [&gw1, &gw2] {
        eventually(Duration::from_secs(10), "w1 gone from both", || {
            has_workers(gw, &["w2"])
        })
        .await;
    }
}

#[tokio::test]
async fn etcd_and_nats_outages_lose_no_request() {
    let mut etcd = EtcdServer::start().await;
    let mut nats = NatsServer::start().await;
    let extra = format!("[bus]\nnats_url = \"{}\"\n", nats.url);
    let gw = etcd_gateway(&etcd, &extra).await;
    let opts = WorkerOpts {
        nats: Some(nats.url.clone()),
        ..WorkerOpts::default()
    };
    let _w1 = registered_worker("w1", &etcd, opts.clone()).await;
    let _w2 = registered_worker("w2", &etcd, opts).await;
    eventually(Duration::from_secs(10), "workers discovered", || {
        has_workers(&gw, &["w1", "w2"])
    })
    .await;
    let load = Load::start(&gw.api, 4);

    etcd.stop().await;
    eventually(Duration::from_secs(10), "etcd seen down", || async {
        control(&gw).await["etcd"] == "disconnected"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        has_workers(&gw, &["w1", "w2"]).await,
        "the last known workers keep serving"
    );
    let before = load.ok();
    etcd.restart().await;
    eventually(Duration::from_secs(20), "etcd followed again", || async {
        control(&gw).await["etcd"] == "connected"
    })
    .await;
    // Resynced: a change made now applies.
    put_config(&etcd, &doc("strategy = \"round_robin\"", "")).await;
    eventually(
        Duration::from_secs(10),
        "a change after the outage applies",
        || async { status(&gw).await["pools"][0]["strategy"] == "round_robin" },
    )
    .await;
    assert!(has_workers(&gw, &["w1", "w2"]).await);

    nats.stop().await;
    eventually(Duration::from_secs(10), "NATS seen down", || async {
        status(&gw).await["bus"] == "disconnected"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    nats.restart().await;
    eventually(Duration::from_secs(20), "NATS back", || async {
        status(&gw).await["bus"] == "connected"
    })
    .await;

    let (ok, failures) = load.stop().await;
    assert!(ok > before, "requests were served throughout");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}
