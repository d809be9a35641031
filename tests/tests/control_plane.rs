//! The etcd control plane end to end: real `etcd`, `nats-server`, workers
//! registering on leases, gateways following etcd, and `gatewayctl`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::{
    chat, etcdctl, etcdctl_with, eventually, gatewayctl, metric, plugin_file, post_chat, served_by,
    spawn_gateway, spawn_worker, status, temp_dir, EtcdServer, GatewayProc, Load, NatsServer,
    WorkerOpts, WorkerProc, MODEL, POOL,
};
use serde_json::Value;

/// A gateway whose pool `sim` has no static worker: etcd supplies them.
async fn etcd_gateway(etcd: &EtcdServer, extra: &str) -> GatewayProc {
    let extra = format!("[etcd]\nendpoints = [\"{}\"]\n{extra}", etcd.url);
    spawn_gateway("a", &[], &extra).await
}

/// A worker named for its `colour` label, registered in `etcd`.
async fn coloured_worker(colour: &'static str, etcd: &EtcdServer) -> WorkerProc {
    let opts = WorkerOpts {
        labels: vec![("colour", colour)],
        ..WorkerOpts::default()
    };
    registered_worker(colour, etcd, opts).await
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
    etcdctl_with(
        etcd,
        &["put", key],
        std::fs::File::open(&path).unwrap().into(),
    );
}

/// The value under `key`, and the lease it is on (0: none); `None` when absent.
fn etcd_get(etcd: &EtcdServer, key: &str) -> Option<(String, i64)> {
    let value = etcdctl(etcd, &["get", key, "--print-value-only"]);
    let listed: Value = serde_json::from_str(&etcdctl(etcd, &["get", key, "-w", "json"])).unwrap();
    let kv = listed["kvs"].get(0)?;
    // Fields at their zero value are left out of etcdctl's JSON.
    let lease = kv.get("lease").map_or(0, |l| l.as_i64().unwrap());
    Some((value.trim_end_matches('\n').to_string(), lease))
}

/// The revision `gatewayctl` says it wrote at.
fn written_at(out: &str) -> i64 {
    out.lines()
        .find_map(|l| l.strip_prefix("written at revision "))
        .unwrap_or_else(|| panic!("no revision in {out}"))
        .parse()
        .unwrap()
}

/// Publishes the example plugin `name` as version 1.0.0.
async fn publish(etcd: &EtcdServer, name: &str) {
    let file = plugin_file(name);
    ctl_ok(
        etcd,
        &["plugin", "put", name, "1.0.0", file.to_str().unwrap()],
    )
    .await;
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
async fn a_worker_puts_back_its_deleted_registration_and_never_fights_another() {
    let etcd = EtcdServer::start().await;
    let gw = etcd_gateway(&etcd, "").await;
    // A keep-alive, and with it a check of the key, every second.
    let opts = WorkerOpts {
        lease_ttl_s: 3,
        ..WorkerOpts::default()
    };
    let _w1 = registered_worker("w1", &etcd, opts).await;
    eventually(Duration::from_secs(10), "w1 discovered", || {
        has_workers(&gw, &["w1"])
    })
    .await;
    let key = format!("/llmgw/workers/{POOL}/w1");
    let (registered, lease) = etcd_get(&etcd, &key).expect("w1 registered");
    assert_ne!(lease, 0);

    // Deleted behind its back, lease alive: put back within a few ticks.
    let deleted = Instant::now();
    etcdctl(&etcd, &["del", &key]);
    eventually(
        Duration::from_secs(5),
        "the registration put back",
        || async { etcd_get(&etcd, &key) == Some((registered.clone(), lease)) },
    )
    .await;
    println!("delete to registered again: {:?}", deleted.elapsed());
    eventually(Duration::from_secs(5), "w1 routed again", || {
        has_workers(&gw, &["w1"])
    })
    .await;

    // Another registration of the same id (here an operator's, on no
    // lease) is left alone: putting ours back would fight it every tick.
    let other = registered.replace("\"zone\":\"a\"", "\"zone\":\"b\"");
    assert_ne!(other, registered);
    etcdctl_put(&etcd, &key, other.as_bytes()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(etcd_get(&etcd, &key), Some((other, 0)));
    // Once the key is free again, it is this worker's again.
    etcdctl(&etcd, &["del", &key]);
    eventually(
        Duration::from_secs(5),
        "the registration taken back once free",
        || async { etcd_get(&etcd, &key) == Some((registered.clone(), lease)) },
    )
    .await;
}

#[tokio::test]
async fn registrations_that_cannot_route_are_listed_as_ignored() {
    let etcd = EtcdServer::start().await;
    let fixed = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let extra = format!("[etcd]\nendpoints = [\"{}\"]\n", etcd.url);
    let gw = spawn_gateway("a", &[&fixed], &extra).await;
    let _twin = registered_worker("w1", &etcd, WorkerOpts::default()).await;
    let big = WorkerOpts {
        block_size: 32,
        ..WorkerOpts::default()
    };
    let _big = registered_worker("big", &etcd, big).await;
    let _w2 = registered_worker("w2", &etcd, WorkerOpts::default()).await;
    eventually(
        Duration::from_secs(10),
        "w2 routed, the other two ignored",
        || async {
            let ignored = control(&gw).await["ignored_registrations"].clone();
            has_workers(&gw, &["w1", "w2"]).await && ignored.as_array().map(Vec::len) == Some(2)
        },
    )
    .await;
    let ignored = control(&gw).await["ignored_registrations"].to_string();
    assert!(
        ignored.contains("big: block size 32 differs from pool `sim`'s 16"),
        "{ignored}"
    );
    assert!(
        ignored.contains("w1: pool `sim` has a static worker `w1`"),
        "{ignored}"
    );
    let w1 = e2e::worker_status(&gw, "w1").await;
    assert_eq!(w1["url"].as_str().unwrap().trim_end_matches('/'), fixed.url);
    // gatewayctl shows it too, from the gateways' reports: a registration
    // shadowed by a static worker does not look routed.
    eventually(
        Duration::from_secs(5),
        "gatewayctl workers tells",
        || async {
            let out = ctl_ok(&etcd, &["workers"]).await;
            out.contains("ignored by gateways: pool `sim` has a static worker `w1`")
                && out.contains("ignored by gateways: block size 32 differs")
        },
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
    eventually(Duration::from_secs(5), "config get shows it", || async {
        ctl_ok(&etcd, &["config", "get"])
            .await
            .contains("round_robin")
    })
    .await;

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

    // A document under which every registration would be ignored (their
    // model is not the pool's) would leave the pool without a worker:
    // gatewayctl refuses to write it, and a gateway refuses it written
    // behind gatewayctl's back.
    let doc_other = doc("", "").replace(MODEL, "other-model");
    let (ok, _, err) = gatewayctl(
        &etcd.url,
        &["config", "put", write(&doc_other).to_str().unwrap()],
    )
    .await;
    assert!(
        !ok && err.contains("pool `sim` would have no worker; w1 (serves sim-llama)"),
        "{err}"
    );
    etcdctl_put(&etcd, "/llmgw/config", doc_other.as_bytes()).await;
    eventually(
        Duration::from_secs(5),
        "the model change refused",
        || async { control(&gw).await["refused"].as_u64() == Some(2) },
    )
    .await;
    let reason = control(&gw).await["last_refusal"]["reason"].to_string();
    assert!(reason.contains("pool `sim` has no worker"), "{reason}");
    assert_eq!(worker_ids(&gw).await, ["w1", "w2"]);
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

    let blue_green = "# the operator's note survives flips\n".to_string()
        + &doc(
        "",
        "policy = { plugin = \"blue-green\", version = \"1.0.0\", config = { active = \"blue\" } }",
    );
    let put = put_config(&etcd, &blue_green).await;
    assert!(
        put.contains("after this, pool `sim` routes to blue"),
        "{put}"
    );
    eventually(Duration::from_secs(10), "blue serves", || async {
        served_by(&gw.api, &chat("x", false, 2)).await == "blue"
    })
    .await;

    let load = Load::start(&gw.api, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flipped = ctl_ok(&etcd, &["flip", POOL, "green"]).await;
    assert!(
        flipped.contains("~ pools[sim].policy.config.active: \"blue\" -> \"green\"")
            && flipped.contains("after this, pool `sim` routes to green\n"),
        "{flipped}"
    );
    let stored = etcdctl(&etcd, &["get", "/llmgw/config", "--print-value-only"]);
    assert_eq!(
        stored.trim_end(),
        blue_green.replace("\"blue\" }", "\"green\" }").trim_end()
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
    // `canary` on a pool whose plugin takes no share says which plugin it is.
    let (ok, _, err) = gatewayctl(&etcd.url, &["canary", POOL, "20"]).await;
    assert!(
        !ok && err.contains("setting `canary_percent` of pool `sim`'s plugin blue-green")
            && err.contains("unknown field `canary_percent`"),
        "{err}"
    );
    // Unversioned, any later version would serve at once: refused unless forced.
    let file = write(&canary);
    let (ok, _, err) = gatewayctl(&etcd.url, &["config", "put", file.to_str().unwrap()]).await;
    assert!(
        !ok && err.contains("binds its plugin without a version"),
        "{err}"
    );
    ctl_ok(&etcd, &["config", "put", "--force", file.to_str().unwrap()]).await;
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

#[tokio::test]
async fn a_document_waiting_for_its_plugin_applies_once_it_is_published() {
    let etcd = EtcdServer::start().await;
    let gw = etcd_gateway(&etcd, "").await;
    let _wb = coloured_worker("blue", &etcd).await;
    let _wg = coloured_worker("green", &etcd).await;
    eventually(Duration::from_secs(10), "workers discovered", || {
        has_workers(&gw, &["blue", "green"])
    })
    .await;

    // Written before its plugin, as an operator running etcdctl in the
    // wrong order would: refused, and kept pending.
    let waiting = doc(
        "",
        "policy = { plugin = \"blue-green\", version = \"1.0.0\", config = { active = \"green\" } }",
    );
    etcdctl_put(&etcd, "/llmgw/config", waiting.as_bytes()).await;
    eventually(
        Duration::from_secs(10),
        "the document refused and pending",
        || async { control(&gw).await["pending_config_revision"].is_i64() },
    )
    .await;
    let c = control(&gw).await;
    let revision = c["pending_config_revision"].as_i64().unwrap();
    assert_eq!(
        c["last_refusal"]["revision"].as_i64(),
        Some(revision),
        "{c}"
    );
    assert!(
        c["last_refusal"]["reason"]
            .as_str()
            .unwrap()
            .contains("blue-green 1.0.0"),
        "{c}"
    );
    assert!(c["config_revision"].is_null(), "{c}");

    // Publishing the plugin is enough: the document is not written again.
    publish(&etcd, "blue-green").await;
    eventually(
        Duration::from_secs(10),
        "the pending document applied",
        || async { control(&gw).await["config_revision"].as_i64() == Some(revision) },
    )
    .await;
    let c = control(&gw).await;
    assert!(c["pending_config_revision"].is_null(), "{c}");
    assert_eq!(c["refused"], 1, "retries are not counted again: {c}");
    assert_eq!(served_by(&gw.api, &chat("x", false, 2)).await, "green");

    // A document that does not validate is not pending: a plugin change
    // does not try it again.
    etcdctl_put(&etcd, "/llmgw/config", b"[routing]\nstrategy = 7\n").await;
    eventually(
        Duration::from_secs(10),
        "the bad document refused",
        || async { control(&gw).await["refused"] == 2 },
    )
    .await;
    let put = ctl_ok(
        &etcd,
        &[
            "plugin",
            "put",
            "blue-green",
            "1.0.1",
            plugin_file("blue-green").to_str().unwrap(),
        ],
    )
    .await;
    let published = written_at(&put);
    eventually(
        Duration::from_secs(10),
        "the plugin change seen",
        || async { control(&gw).await["revision"].as_i64() >= Some(published) },
    )
    .await;
    let c = control(&gw).await;
    assert_eq!(c["refused"], 2, "{c}");
    assert!(c["pending_config_revision"].is_null(), "{c}");
    assert_eq!(c["config_revision"].as_i64(), Some(revision), "{c}");
}

#[tokio::test]
async fn publishing_one_version_twice_at_once_lets_one_win() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (plugin_file("blue-green"), plugin_file("canary"));
    let put = |file: &PathBuf| {
        let args = ["plugin", "put", "shared", "1.0.0", file.to_str().unwrap()].map(String::from);
        let url = etcd.url.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            gatewayctl(&url, &args).await
        }
    };
    let (put_a, put_b) = tokio::join!(put(&a), put(&b));
    assert!(
        put_a.0 != put_b.0,
        "exactly one publisher wins:\n{put_a:?}\n{put_b:?}"
    );
    let (winner, loser, lost) = if put_a.0 {
        (&a, &b, put_b)
    } else {
        (&b, &a, put_a)
    };
    assert!(
        lost.2.contains("already published") || lost.2.contains("published while"),
        "{lost:?}"
    );
    let published = |etcd: &EtcdServer| etcd_get(etcd, "/llmgw/plugins/shared/1.0.0/sha256");
    let sha = |file: &PathBuf| gateway_sha(&std::fs::read(file).unwrap());
    assert_eq!(published(&etcd), Some((sha(winner), 0)));

    // --force replaces what it read.
    let forced = ctl_ok(
        &etcd,
        &[
            "plugin",
            "put",
            "shared",
            "1.0.0",
            loser.to_str().unwrap(),
            "--force",
        ],
    )
    .await;
    assert!(forced.contains("+ plugin shared 1.0.0"), "{forced}");
    assert_eq!(published(&etcd), Some((sha(loser), 0)));
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
async fn a_gateway_on_a_member_without_a_leader_says_so() {
    let mut cluster = EtcdServer::cluster(3).await;
    let gw = etcd_gateway(&cluster[0], "").await;
    eventually(Duration::from_secs(10), "etcd followed", || async {
        control(&gw).await["etcd"] == "connected"
    })
    .await;
    // A quiet connection stays up: keep-alive pings more often than etcd
    // allows (5 s) would have it closed every few seconds.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(12) {
        assert_eq!(control(&gw).await["etcd"], "connected");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The member it talks to stays up, cut off from a quorum: it must not
    // look in sync.
    cluster[1].stop().await;
    cluster[2].stop().await;
    eventually(
        Duration::from_secs(30),
        "the member without a leader seen",
        || async { control(&gw).await["etcd"] == "disconnected" },
    )
    .await;
    cluster[1].restart().await;
    eventually(Duration::from_secs(20), "etcd followed again", || async {
        control(&gw).await["etcd"] == "connected"
    })
    .await;
    put_config(&cluster[0], &doc("strategy = \"round_robin\"", "")).await;
    eventually(
        Duration::from_secs(10),
        "a change after the quorum is back applies",
        || async { status(&gw).await["pools"][0]["strategy"] == "round_robin" },
    )
    .await;
}

#[tokio::test]
async fn a_gateway_follows_an_etcd_wiped_behind_its_back() {
    let mut etcd = EtcdServer::start().await;
    let gw = etcd_gateway(&etcd, "").await;
    let mut last = 0;
    for strategy in ["round_robin", "least_load", "round_robin"] {
        last =
            written_at(&put_config(&etcd, &doc(&format!("strategy = \"{strategy}\""), "")).await);
    }
    eventually(
        Duration::from_secs(10),
        "the last document applied",
        || async { control(&gw).await["config_revision"].as_i64() == Some(last) },
    )
    .await;

    etcd.wipe().await;
    eventually(Duration::from_secs(10), "etcd seen down", || async {
        control(&gw).await["etcd"] == "disconnected"
    })
    .await;
    etcd.restart().await;
    // Its revisions start again below the one the gateway followed: a
    // watch resumed there would wait for ever.
    let written = written_at(&put_config(&etcd, &doc("strategy = \"least_load\"", "")).await);
    assert!(written < last, "{written} < {last}");
    eventually(
        Duration::from_secs(10),
        "the new etcd's document applied",
        || async {
            let c = control(&gw).await;
            c["etcd"] == "connected" && c["config_revision"].as_i64() == Some(written)
        },
    )
    .await;
    assert_eq!(status(&gw).await["pools"][0]["strategy"], "least_load");
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

/// An operator's typo must not take a pool down: a flip to a colour no
/// worker carries, and a block size no registered worker has, are refused
/// by the gateways (the last good document keeps serving, under load, with
/// no failed request) and the refusal says why. When the pool then truly
/// cannot route (its workers gone), `/ready` turns 503 saying which pool.
#[tokio::test(flavor = "multi_thread")]
async fn a_document_that_would_break_a_pool_is_refused() {
    let etcd = EtcdServer::start().await;
    let gw = etcd_gateway(&etcd, "").await;
    let mut wb = coloured_worker("blue", &etcd).await;
    let mut wg = coloured_worker("green", &etcd).await;
    let file = plugin_file("blue-green");
    let (ok, _, err) = gatewayctl(
        &etcd.url,
        &[
            "plugin",
            "put",
            "blue-green",
            "not-a-version",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(
        !ok && err.contains("`not-a-version` is not a semantic version"),
        "{err}"
    );
    ctl_ok(
        &etcd,
        &[
            "plugin",
            "put",
            "blue-green",
            "1.0.0",
            file.to_str().unwrap(),
        ],
    )
    .await;
    let policy =
        "policy = { plugin = \"blue-green\", version = \"1.0.0\", config = { active = \"blue\" } }";
    put_config(&etcd, &doc("", policy)).await;
    eventually(Duration::from_secs(10), "blue serves", || async {
        has_workers(&gw, &["blue", "green"]).await
            && served_by(&gw.api, &chat("x", false, 2)).await == "blue"
    })
    .await;
    let refused = || async {
        let c = control(&gw).await;
        (
            c["refused"].as_u64().unwrap(),
            c["last_refusal"]["reason"].to_string(),
        )
    };

    let load = Load::start(&gw.api, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, _, err) = gatewayctl(&etcd.url, &["flip", POOL, "gren"]).await;
    assert!(
        !ok && err.contains("pool `sim`: its policy (blue-green 1.0.0) refuses a plain request")
            && err.contains("colour=gren"),
        "{err}"
    );
    let (before, _) = refused().await;
    let typo = doc("", &policy.replace("\"blue\"", "\"gren\""));
    etcdctl_put(&etcd, "/llmgw/config", typo.as_bytes()).await;
    eventually(Duration::from_secs(10), "the typo refused", || async {
        refused().await.0 > before
    })
    .await;
    let (_, reason) = refused().await;
    assert!(
        reason.contains("would break a pool that routes now")
            && reason.contains("no routable worker with colour=gren"),
        "{reason}"
    );
    // `config get` shows what serves, and apart why the latest does not.
    eventually(Duration::from_secs(5), "config get tells", || async {
        let (ok, out, err) = gatewayctl(&etcd.url, &["config", "get"]).await;
        ok && out.contains("active = \"blue\"")
            && err.contains("in force on 1 of 1 gateways")
            && err.contains("refused on 1")
            && err.contains("colour=gren")
    })
    .await;

    let big = doc("", &format!("block_size = 32\n{policy}"));
    let (ok, _, err) =
        gatewayctl(&etcd.url, &["config", "put", write(&big).to_str().unwrap()]).await;
    assert!(!ok && err.contains("blue (block size 16, not 32)"), "{err}");
    let (before, _) = refused().await;
    etcdctl_put(&etcd, "/llmgw/config", big.as_bytes()).await;
    eventually(
        Duration::from_secs(10),
        "the block size refused",
        || async { refused().await.0 > before },
    )
    .await;
    let (_, reason) = refused().await;
    assert!(reason.contains("pool `sim` has no worker"), "{reason}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures) = load.stop().await;
    assert!(
        ok > 0 && failures.is_empty(),
        "{ok} ok, failed: {failures:?}"
    );
    assert_eq!(served_by(&gw.api, &chat("x", false, 2)).await, "blue");
    let ready = e2e::client()
        .get(format!("{}/ready", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // A document that applies clears the refusal: its cause is gone.
    put_config(&etcd, &doc("", &policy.replace("\"blue\"", "\"green\""))).await;
    eventually(Duration::from_secs(10), "the refusal cleared", || async {
        control(&gw).await["last_refusal"].is_null()
    })
    .await;

    // Its workers gone, the pool cannot route: a load balancer should know.
    wb.proc.sigkill().await;
    wg.proc.sigkill().await;
    eventually(Duration::from_secs(10), "/ready turns 503", || async {
        let r = e2e::client()
            .get(format!("{}/ready", gw.admin))
            .send()
            .await
            .unwrap();
        r.status() == 503 && {
            let v: Value = r.json().await.unwrap();
            v["status"] == "pool_unroutable"
                && v["reason"]
                    .as_str()
                    .unwrap()
                    .contains("no worker of pool `sim` may take traffic")
        }
    })
    .await;
    assert!(status(&gw).await["pools"][0]["unroutable"].is_string());
}

/// etcd unreachable: one sentence naming the endpoint and the cause, not a
/// transport error's internals or a backtrace.
#[tokio::test]
async fn gatewayctl_says_plainly_when_etcd_is_unreachable() {
    let endpoint = format!("http://127.0.0.1:{}", e2e::free_port());
    let (ok, out, err) = gatewayctl(&endpoint, &["workers"]).await;
    assert!(!ok && out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("gatewayctl: cannot reach etcd at {endpoint}: "))
            && !err.contains("grpc"),
        "{err}"
    );
}

/// Maintenance without stopping a worker: cordoned, it gets no new request
/// while those in flight finish (no request fails under load), `drain`
/// returns once it runs nothing, and uncordoned it serves again. The last
/// worker in rotation is not cordoned without `--force`.
#[tokio::test(flavor = "multi_thread")]
async fn cordon_and_drain_a_worker_under_load() {
    let etcd = EtcdServer::start().await;
    let gw = etcd_gateway(&etcd, "[routing]\nstrategy = \"round_robin\"\n").await;
    let slow = WorkerOpts {
        decode_step_us: 20_000,
        ..WorkerOpts::default()
    };
    let _w1 = registered_worker("w1", &etcd, slow.clone()).await;
    let _w2 = registered_worker("w2", &etcd, slow).await;
    eventually(Duration::from_secs(10), "workers discovered", || {
        has_workers(&gw, &["w1", "w2"])
    })
    .await;
    let load = Load::start(&gw.api, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let out = ctl_ok(&etcd, &["worker", "drain", "w1", "--timeout-s", "30"]).await;
    assert!(
        out.contains("cordoned sim/w1") && out.contains("drained sim/w1"),
        "{out}"
    );
    assert_eq!(e2e::worker_status(&gw, "w1").await["cordoned"], true);
    for i in 0..6 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("during {i}"), false, 2)).await,
            "w2"
        );
    }
    let listed = ctl_ok(&etcd, &["workers", "--json"]).await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let w1 = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "w1")
        .unwrap();
    assert_eq!(w1["cordoned"], true);

    // The last worker in rotation: refused, unless forced.
    let (ok, _, err) = gatewayctl(&etcd.url, &["worker", "cordon", "w2"]).await;
    assert!(
        !ok && err.contains("leaves pool `sim` no registered worker in rotation"),
        "{err}"
    );

    let out = ctl_ok(&etcd, &["worker", "uncordon", "w1"]).await;
    assert!(out.contains("uncordoned sim/w1"), "{out}");
    eventually(Duration::from_secs(10), "w1 serves again", || async {
        served_by(&gw.api, &chat("after", false, 2)).await == "w1"
    })
    .await;
    let (ok, failures) = load.stop().await;
    assert!(
        ok > 0 && failures.is_empty(),
        "{ok} ok, failed: {failures:?}"
    );
}

/// Disaster recovery of the control plane: a backup of one etcd (the
/// routing document, comments and all, and the plugins) restored into an
/// empty one, with the workers registered there again, routes as before.
/// Prints the recovery time.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_restored_into_an_empty_etcd_serves_again() {
    let mut lost = EtcdServer::start().await;
    publish(&lost, "blue-green").await;
    let text = format!(
        "# the fleet's routing, kept by the operator\n{}",
        doc("", "policy = { plugin = \"blue-green\", version = \"1.0.0\", config = { active = \"green\" } }")
    );
    put_config(&lost, &text).await;
    let backup = temp_dir().join("fleet.backup.json");
    let out = ctl_ok(&lost, &["backup", backup.to_str().unwrap()]).await;
    assert!(
        out.contains("1 plugin version(s), the routing document"),
        "{out}"
    );
    lost.wipe().await;

    // Another region: an empty etcd, the gateway and workers pointed at it.
    let etcd = EtcdServer::start().await;
    let empty_at = Instant::now();
    let gw = etcd_gateway(&etcd, "").await;
    let _wb = coloured_worker("blue", &etcd).await;
    let _wg = coloured_worker("green", &etcd).await;
    eventually(Duration::from_secs(10), "workers registered again", || {
        has_workers(&gw, &["blue", "green"])
    })
    .await;
    let restore_at = Instant::now();
    let out = ctl_ok(&etcd, &["restore", backup.to_str().unwrap()]).await;
    assert!(
        out.contains("+ plugin blue-green 1.0.0") && out.contains("restored"),
        "{out}"
    );
    eventually(
        Duration::from_secs(10),
        "routed under the restored document",
        || async {
            status(&gw).await["pools"][0]["policy"]["policy"]["plugin"] == "blue-green"
                && served_by(&gw.api, &chat("x", false, 2)).await == "green"
        },
    )
    .await;
    eprintln!(
        "RTO: {} ms from the empty etcd (gateway and workers started against it), {} ms from the restore command",
        empty_at.elapsed().as_millis(),
        restore_at.elapsed().as_millis()
    );
    for i in 0..4 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("r{i}"), false, 2)).await,
            "green"
        );
    }
    assert_eq!(
        etcdctl(&etcd, &["get", "/llmgw/config", "--print-value-only"]).trim_end(),
        text.trim_end(),
        "the document comes back byte for byte"
    );
    let (ok, _, err) = gatewayctl(&etcd.url, &["restore", backup.to_str().unwrap()]).await;
    assert!(!ok && err.contains("restore into an empty one"), "{err}");
}

/// A gateway restarted during an etcd outage serves the fleet it last knew
/// (saved under `etcd.snapshot`): the registered workers and the document
/// in force, never its file's static worker; `/status` says so until etcd
/// answers again.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_restarted_while_etcd_is_down_serves_the_saved_fleet() {
    let mut etcd = EtcdServer::start().await;
    let stale = e2e::fake::start(200, None).await;
    let saved = temp_dir().join("etcd-state.json");
    let config = format!(
        "zone = \"a\"\n[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 500\nunhealthy_threshold = 1\nhealthy_threshold = 1\n\
         [etcd]\nendpoints = [\"{}\"]\nsnapshot = \"{}\"\n\
         [[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\n\
         [[pools.workers]]\nid = \"static\"\nurl = \"{}\"\nzone = \"a\"\n",
        etcd.url,
        saved.display(),
        stale.url
    );
    let mut gw = e2e::spawn_gateway_from(&config).await;
    let _wg = coloured_worker("green", &etcd).await;
    publish(&etcd, "blue-green").await;
    let policy = "policy = { plugin = \"blue-green\", version = \"1.0.0\", config = { active = \"green\" } }";
    put_config(&etcd, &doc("", policy)).await;
    eventually(
        Duration::from_secs(10),
        "green serves from etcd",
        || async {
            worker_ids(&gw).await == ["green"]
                && served_by(&gw.api, &chat("x", false, 2)).await == "green"
        },
    )
    .await;
    eventually(Duration::from_secs(5), "the state saved", || async {
        saved.exists()
    })
    .await;

    gw.proc.sigkill().await;
    etcd.stop().await;
    let gw = e2e::spawn_gateway_from(&config).await;
    let c = control(&gw).await;
    assert!(
        c["from_saved_state"]["revision"].as_i64().unwrap() > 0,
        "{c}"
    );
    assert_eq!(worker_ids(&gw).await, ["green"]);
    for i in 0..4 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("s{i}"), false, 2)).await,
            "green"
        );
    }
    assert_eq!(stale.hits.load(std::sync::atomic::Ordering::Relaxed), 0);

    etcd.restart().await;
    eventually(
        Duration::from_secs(15),
        "etcd's state replaces the saved one",
        || async { control(&gw).await["from_saved_state"].is_null() },
    )
    .await;
}

/// A zonal shift: new requests leave the gateway's own zone for the other
/// while it lasts (no request fails under load), come back when it is
/// ended, and come back by themselves when a short one expires.
#[tokio::test(flavor = "multi_thread")]
async fn a_zone_shift_moves_traffic_away_and_ends_by_itself() {
    let etcd = EtcdServer::start().await;
    let gw = etcd_gateway(&etcd, "").await;
    let registered = WorkerOpts {
        etcd: Some(etcd.url.clone()),
        ..WorkerOpts::default()
    };
    let _near = spawn_worker("near", "a", registered.clone()).await;
    let mut far = spawn_worker("far", "b", registered).await;
    eventually(Duration::from_secs(10), "workers discovered", || {
        has_workers(&gw, &["far", "near"])
    })
    .await;
    // Fresh prompts each time: one cached elsewhere would rightly go there.
    let asked = std::sync::atomic::AtomicU32::new(0);
    let by_zone = || async {
        let mut served = Vec::new();
        for _ in 0..6 {
            let n = asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            served.push(served_by(&gw.api, &chat(&format!("fresh prompt {n}"), false, 2)).await);
        }
        served
    };
    assert!(
        by_zone().await.iter().all(|w| w == "near"),
        "the local zone first"
    );

    let (ok, _, err) = gatewayctl(&etcd.url, &["zone", "shift", "c", "--for", "30s"]).await;
    assert!(
        !ok && err.contains("no registered worker is in zone `c`"),
        "{err}"
    );
    let out = ctl_ok(&etcd, &["zone", "shift", "a", "--for", "30s"]).await;
    assert!(out.contains("zone `a` shifted away for 30 s"), "{out}");
    eventually(Duration::from_secs(5), "traffic leaves zone a", || async {
        by_zone().await.iter().all(|w| w == "far")
    })
    .await;
    assert_eq!(e2e::worker_status(&gw, "near").await["zone_shifted"], true);
    let load = Load::start(&gw.api, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        by_zone().await.iter().all(|w| w == "far"),
        "nothing to the shifted zone"
    );
    let (ok, failures) = load.stop().await;
    assert!(
        ok > 0 && failures.is_empty(),
        "{ok} ok, failed: {failures:?}"
    );

    ctl_ok(&etcd, &["zone", "unshift", "a"]).await;
    eventually(Duration::from_secs(5), "traffic back in zone a", || async {
        by_zone().await.iter().all(|w| w == "near")
    })
    .await;

    ctl_ok(&etcd, &["zone", "shift", "a", "--for", "2s"]).await;
    eventually(Duration::from_secs(5), "shifted", || async {
        e2e::worker_status(&gw, "near").await["zone_shifted"] == true
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "the shift ends by itself",
        || async { e2e::worker_status(&gw, "near").await["zone_shifted"] == false },
    )
    .await;

    // A shifted zone still serves when nothing elsewhere can.
    ctl_ok(&etcd, &["zone", "shift", "a", "--for", "30s"]).await;
    far.proc.sigkill().await;
    eventually(
        Duration::from_secs(10),
        "the shifted zone serves alone",
        || async { by_zone().await.iter().all(|w| w == "near") },
    )
    .await;
}

/// etcd as a cluster: gateway, workers and gatewayctl are given every
/// member; the leader killed under load loses no request, and the control
/// plane works on through the others (a change written after the new
/// election applies).
#[tokio::test(flavor = "multi_thread")]
async fn the_etcd_leader_lost_under_load_loses_nothing() {
    let mut cluster = EtcdServer::cluster(3).await;
    let all: Vec<&str> = cluster.iter().map(|m| m.url.as_str()).collect();
    let all = all.join(",");
    let endpoints: Vec<String> = cluster.iter().map(|m| format!("\"{}\"", m.url)).collect();
    let gw = spawn_gateway(
        "a",
        &[],
        &format!("[etcd]\nendpoints = [{}]\n", endpoints.join(", ")),
    )
    .await;
    let opts = WorkerOpts {
        etcd: Some(all.clone()),
        ..WorkerOpts::default()
    };
    let _w1 = spawn_worker("w1", "a", opts.clone()).await;
    let _w2 = spawn_worker("w2", "a", opts).await;
    eventually(Duration::from_secs(10), "workers discovered", || {
        has_workers(&gw, &["w1", "w2"])
    })
    .await;
    let load = Load::start(&gw.api, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The leader, as the members say.
    let members: Value = serde_json::from_str(&etcdctl(
        &cluster[0],
        &["endpoint", "status", "--cluster", "-w", "json"],
    ))
    .unwrap();
    let statuses = members.as_array().unwrap();
    let leader_id = statuses[0]["Status"]["leader"].as_u64().unwrap();
    let leader = statuses
        .iter()
        .find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader_id))
        .map(|s| s["Endpoint"].as_str().unwrap().to_string())
        .unwrap();
    let killed = cluster.iter_mut().find(|m| m.url == leader).unwrap();
    killed.stop().await;

    // A write during the election is refused ("leader changed"); written again, it lands.
    let round_robin = write(&doc("strategy = \"round_robin\"", ""));
    eventually(Duration::from_secs(20), "the change written", || async {
        gatewayctl(&all, &["config", "put", round_robin.to_str().unwrap()])
            .await
            .0
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "a change after the election applies",
        || async { status(&gw).await["pools"][0]["strategy"] == "round_robin" },
    )
    .await;
    assert!(has_workers(&gw, &["w1", "w2"]).await, "registrations kept");
    let (ok, failures) = load.stop().await;
    assert!(
        ok > 0 && failures.is_empty(),
        "{ok} ok, failed: {failures:?}"
    );
}

/// A policy version that fails on live requests: its plugin's previous
/// version decides for it (it knows the workers the plugin keeps requests
/// off; the built-in policy would not), and a policy that declared itself
/// fail-closed, with no previous version, answers 503 rather than falling
/// back to the built-in policy.
#[tokio::test]
async fn a_failing_version_falls_back_to_the_previous_one_then_fails_closed() {
    let etcd = EtcdServer::start().await;
    let gw = etcd_gateway(&etcd, "").await;
    let _blue = coloured_worker("blue", &etcd).await;
    let _green = coloured_worker("green", &etcd).await;
    eventually(Duration::from_secs(10), "workers discovered", || {
        has_workers(&gw, &["blue", "green"])
    })
    .await;
    let (good, bad) = (plugin_file("blue-green"), plugin_file("hostile"));
    for (name, version, file) in [
        ("guard", "1.0.0", &good),
        ("guard", "2.0.0", &bad),
        ("strict", "1.0.0", &bad),
    ] {
        ctl_ok(
            &etcd,
            &["plugin", "put", name, version, file.to_str().unwrap()],
        )
        .await;
    }
    put_config(
        &etcd,
        &doc(
            "",
            "policy = { plugin = \"guard\", version = \"1.0.0\", config = { active = \"blue\" } }",
        ),
    )
    .await;
    eventually(Duration::from_secs(10), "1.0.0 serves", || async {
        status(&gw).await["pools"][0]["policy"]["policy"]["version"] == "1.0.0"
    })
    .await;
    // gatewayctl sees it fail on a plain request: forced, as a hasty operator would.
    let failing = doc(
        "",
        &format!("policy = {{ plugin = \"guard\", version = \"2.0.0\", config = {{ mode = \"trap\", on_model = \"{MODEL}\" }} }}"),
    );
    ctl_ok(
        &etcd,
        &[
            "config",
            "put",
            write(&failing).to_str().unwrap(),
            "--force",
        ],
    )
    .await;
    eventually(Duration::from_secs(10), "2.0.0 serves", || async {
        status(&gw).await["pools"][0]["policy"]["policy"]["version"] == "2.0.0"
    })
    .await;
    // Every request traps in 2.0.0; 1.0.0 (blue only) decides, never green.
    for i in 0..30 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("q{i}"), false, 2)).await,
            "blue"
        );
    }
    assert!(metric(&gw, "llmgw_policy_errors_total{pool=\"sim\",kind=\"trap\"}").await >= 30.0);

    let strict = doc(
        "",
        &format!("policy = {{ plugin = \"strict\", version = \"1.0.0\", config = {{ mode = \"trap\", on_model = \"{MODEL}\", fail_closed = true }} }}"),
    );
    ctl_ok(
        &etcd,
        &["config", "put", write(&strict).to_str().unwrap(), "--force"],
    )
    .await;
    eventually(Duration::from_secs(10), "strict serves", || async {
        let policy = &status(&gw).await["pools"][0]["policy"]["policy"];
        policy["plugin"] == "strict" && policy["fail_closed"] == true
    })
    .await;
    let resp = post_chat(&gw.api, &chat("x", false, 2)).await;
    assert_eq!(resp.status(), 503, "{}", resp.text().await.unwrap());
}
