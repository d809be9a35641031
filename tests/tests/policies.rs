//! Routing policies as WASM components, through the real gateway: each
//! example policy's decisions, a blue-green flip and versions swapped under
//! load without a failed request, and hostile plugins that cannot hurt it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

/// A plugin directory of this test's own, holding `plugin` as version `version`.
fn install(dir: &Path, plugin: &str, version: &str) {
    std::fs::create_dir_all(dir.join(plugin)).unwrap();
    std::fs::copy(
        plugins_dir().join(plugin).join("0.1.0.wasm"),
        dir.join(plugin).join(format!("{version}.wasm")),
    )
    .unwrap();
}

/// Starts a gateway in zone a whose pool runs `plugin` with `config` from `dir`.
async fn gateway(
    workers: &[(&WorkerProc, &str)],
    dir: &Path,
    plugin: &str,
    config: Value,
) -> GatewayProc {
    gateway_with(workers, dir, plugin, config, "").await
}

/// [`gateway`], with `limits` (`[plugins.limits.NAME]` tables) in its config.
async fn gateway_with(
    workers: &[(&WorkerProc, &str)],
    dir: &Path,
    plugin: &str,
    config: Value,
    limits: &str,
) -> GatewayProc {
    let mut text = format!(
        "zone = \"a\"\n[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 500\nunhealthy_threshold = 1\nhealthy_threshold = 1\n\
         [plugins]\ndir = {:?}\npoll_interval_ms = 50\n{limits}\
         [[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\npolicy = {{ plugin = \"{plugin}\", config = {} }}\n",
        dir.display().to_string(),
        toml_inline(&config),
    );
    for (w, labels) in workers {
        text.push_str(&format!(
            "[[pools.workers]]\nid = \"{}\"\nurl = \"{}\"\nzone = \"{}\"\nlabels = {{ {labels} }}\n",
            w.id, w.url, w.zone
        ));
    }
    spawn_gateway_from(&text).await
}

/// JSON object → TOML inline table (strings, numbers and booleans suffice here).
fn toml_inline(v: &Value) -> String {
    let fields: Vec<String> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

async fn route(gw: &GatewayProc, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", gw.api))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn policy_status(gw: &GatewayProc) -> Value {
    status(gw).await["pools"][0]["policy"].clone()
}

#[tokio::test]
async fn failover_policy_keeps_the_zone_and_fails_over_down_its_list() {
    let dir = temp_dir();
    install(&dir, "failover", "1.0.0");
    let mut wa = spawn_worker("wa", "a", WorkerOpts::default()).await;
    let wb = spawn_worker("wb", "b", WorkerOpts::default()).await;
    let gw = gateway(&[(&wa, ""), (&wb, "")], &dir, "failover", json!({})).await;
    assert_eq!(policy_status(&gw).await["policy"]["plugin"], "failover");
    for i in 0..5 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("q{i}"), false, 2)).await,
            "wa"
        );
    }
    wa.proc.sigkill().await;
    for i in 0..5 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("after {i}"), false, 2)).await,
            "wb"
        );
    }
}

#[tokio::test]
async fn canary_splits_by_session_and_sticks() {
    canary_splits("canary").await;
}

#[tokio::test]
async fn canary_in_python_splits_by_session_and_sticks() {
    canary_splits("canary-py").await;
}

#[tokio::test]
async fn canary_in_javascript_splits_by_session_and_sticks() {
    canary_splits("canary-js").await;
}

/// `plugin` (the canary example, or a port of it) splits users by session.
async fn canary_splits(plugin: &str) {
    let dir = temp_dir();
    install(&dir, plugin, "1.0.0");
    let stable1 = spawn_worker("s1", "a", WorkerOpts::default()).await;
    let stable2 = spawn_worker("s2", "a", WorkerOpts::default()).await;
    let canary = spawn_worker("c1", "a", WorkerOpts::default()).await;
    let config = json!({"stable": "v1", "canary": "v2", "canary_percent": 25});
    let workers = [
        (&stable1, "version = \"v1\""),
        (&stable2, "version = \"v1\""),
        (&canary, "version = \"v2\""),
    ];
    let gw = gateway(&workers, &dir, plugin, config).await;
    let st = policy_status(&gw).await;
    assert_eq!(st["policy"]["plugin"], plugin, "{st}");
    let mut side: HashMap<usize, HashSet<bool>> = HashMap::new();
    for round in 0..3 {
        for user in 0..40 {
            let mut body = chat(&format!("round {round}"), false, 2);
            body["user"] = json!(format!("user-{user}"));
            side.entry(user)
                .or_default()
                .insert(served_by(&gw.api, &body).await == "c1");
        }
    }
    assert!(
        side.values().all(|s| s.len() == 1),
        "every user stays on one side"
    );
    let on_canary = side.values().filter(|s| s.contains(&true)).count();
    assert!(
        (2..=20).contains(&on_canary),
        "about a quarter of 40 users on the canary: {on_canary}"
    );
}

#[tokio::test]
async fn blue_green_flip_moves_new_traffic_and_lets_streams_finish() {
    let dir = temp_dir();
    install(&dir, "blue-green", "1.0.0");
    let slow = WorkerOpts {
        decode_step_us: 3000,
        ..WorkerOpts::default()
    };
    let blue = spawn_worker("blue1", "a", slow.clone()).await;
    let green = spawn_worker("green1", "a", slow).await;
    let gw = gateway(
        &[(&blue, "colour = \"blue\""), (&green, "colour = \"green\"")],
        &dir,
        "blue-green",
        json!({"active": "blue"}),
    )
    .await;
    for i in 0..4 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("b{i}"), false, 2)).await,
            "blue1"
        );
    }
    // A long stream on blue, then the flip.
    let stream = route(&gw, &chat("a long story", true, 300)).await;
    assert_eq!(stream.headers()["x-worker-id"], "blue1");
    let stream = tokio::spawn(async move { stream.text().await.unwrap() });
    write_config(
        &dir.join("blue-green").join(format!("{POOL}.json")),
        json!({"active": "green"}),
    );
    eventually(Duration::from_secs(10), "the flip is in force", || async {
        served_by(&gw.api, &chat("probe", false, 2)).await == "green1"
    })
    .await;
    // `/status` says which config serves, and from where.
    let status = policy_status(&gw).await;
    assert_eq!(
        status["policy"]["config"],
        json!({"active": "green"}),
        "{status}"
    );
    assert!(
        status["config_source"]
            .as_str()
            .unwrap()
            .ends_with("blue-green/sim.json"),
        "{status}"
    );
    for i in 0..4 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("g{i}"), false, 2)).await,
            "green1",
            "all new traffic at once"
        );
    }
    let (events, done) = sse_events(&stream.await.unwrap());
    assert!(
        done && events.len() > 300,
        "the stream begun on blue finished there"
    );
}

#[tokio::test]
async fn zone_affinity_spills_past_its_threshold() {
    zone_affinity_spills("zone-affinity").await;
}

#[tokio::test]
async fn zone_affinity_in_python_spills_past_its_threshold() {
    zone_affinity_spills("zone-affinity-py").await;
}

#[tokio::test]
async fn zone_affinity_in_javascript_spills_past_its_threshold() {
    zone_affinity_spills("zone-affinity-js").await;
}

async fn zone_affinity_spills(plugin: &str) {
    let dir = temp_dir();
    install(&dir, plugin, "1.0.0");
    let slow = WorkerOpts {
        decode_step_us: 5000,
        ..WorkerOpts::default()
    };
    let wa = spawn_worker("wa", "a", slow).await;
    let wb = spawn_worker("wb", "b", WorkerOpts::default()).await;
    let gw = gateway(
        &[(&wa, ""), (&wb, "")],
        &dir,
        plugin,
        json!({"spill_in_flight": 1}),
    )
    .await;
    let st = policy_status(&gw).await;
    assert_eq!(st["policy"]["plugin"], plugin, "{st}");
    // A first probe that times out on a busy machine marks a worker down.
    eventually(Duration::from_secs(10), "both workers healthy", || async {
        worker_status(&gw, "wa").await["health"] == "healthy"
            && worker_status(&gw, "wb").await["health"] == "healthy"
    })
    .await;
    assert_eq!(served_by(&gw.api, &chat("hello", false, 2)).await, "wa");
    // The load wa reports lags its answers: a report taken while "hello"
    // ran would show it saturated.
    eventually(
        Duration::from_secs(10),
        "wa reports itself idle",
        || async { worker_status(&gw, "wa").await["load"]["running"] == 0 },
    )
    .await;
    let long = route(&gw, &chat("long", true, 2000)).await;
    assert_eq!(long.headers()["x-worker-id"], "wa");
    let mut body = long.bytes_stream();
    futures_util::StreamExt::next(&mut body)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served_by(&gw.api, &chat("spill", false, 2)).await, "wb");
}

#[tokio::test]
async fn versions_swap_under_load_without_a_failed_request() {
    let dir = temp_dir();
    install(&dir, "failover", "1.0.0");
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let w2 = spawn_worker("w2", "a", WorkerOpts::default()).await;
    let gw = gateway(&[(&w1, ""), (&w2, "")], &dir, "failover", json!({})).await;
    let load = Load::start(&gw.api, 4);
    for version in 2..=11 {
        let version = format!("{version}.0.0");
        install(&dir, "failover", &version);
        eventually(Duration::from_secs(20), "new version in force", || async {
            policy_status(&gw).await["policy"]["version"] == version.as_str()
        })
        .await;
    }
    let (ok, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "no request failed across 10 swaps: {failures:?}"
    );
    assert!(ok > 0);
    assert_eq!(policy_status(&gw).await["loads"], 11);
}

#[tokio::test]
async fn hostile_plugins_are_refused_or_contained() {
    let dir = temp_dir();
    install(&dir, "hostile", "1.0.0");
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let gw = gateway(&[(&w1, "")], &dir, "hostile", json!({"mode": "ok"})).await;
    assert_eq!(policy_status(&gw).await["policy"]["plugin"], "hostile");
    let load = Load::start(&gw.api, 2);
    let config_file = dir.join("hostile").join(format!("{POOL}.json"));

    // Misbehaving at load time (init or sample decisions): refused, "ok" keeps
    // serving. A timeout is retried after a while, so each step waits for a
    // new refusal of its own kind rather than for an exact count.
    for (mode, kind) in [
        ("loop", "timeout"),
        ("oom", "out_of_memory"),
        ("trap", "trap"),
        ("empty", "invalid_decision"),
        ("unknown", "invalid_decision"),
        ("duplicate", "invalid_decision"),
        ("bad_status", "invalid_decision"),
        ("init_fail", "init"),
        ("slow_init", "timeout"),
    ] {
        let before = policy_status(&gw).await["refusals"].as_u64().unwrap();
        write_config(&config_file, json!({"mode": mode}));
        eventually(
            Duration::from_secs(20),
            &format!("mode {mode} refused as {kind}"),
            || async {
                let status = policy_status(&gw).await;
                status["refusals"].as_u64().unwrap() > before
                    && status["last_refusal"]["kind"] == kind
            },
        )
        .await;
        let status = policy_status(&gw).await;
        assert_eq!(status["policy"]["plugin"], "hostile");
        if mode == "trap" {
            // The guest's panic message and where it trapped come out.
            let reason = status["last_refusal"]["reason"].as_str().unwrap();
            assert!(
                reason.contains("in `route`: panicked at")
                    && reason.contains("hostile: trap asked for"),
                "{reason}"
            );
        }
    }
    // Not a component at all, and a component of another world: refused too.
    std::fs::write(
        dir.join("hostile").join("2.0.0.wasm"),
        b"\0asm definitely not a component",
    )
    .unwrap();
    eventually(Duration::from_secs(20), "garbage refused", || async {
        policy_status(&gw).await["last_refusal"]["version"] == "2.0.0"
    })
    .await;
    std::fs::copy(wrong_world(), dir.join("hostile").join("3.0.0.wasm")).unwrap();
    eventually(Duration::from_secs(20), "wrong world refused", || async {
        let status = policy_status(&gw).await;
        status["last_refusal"]["version"] == "3.0.0"
            && status["last_refusal"]["kind"] == "wrong_world"
    })
    .await;
    assert_eq!(policy_status(&gw).await["policy"]["version"], "1.0.0");

    // Misbehaving only at call time: each request falls back to the built-in policy.
    std::fs::remove_file(dir.join("hostile").join("2.0.0.wasm")).unwrap();
    std::fs::remove_file(dir.join("hostile").join("3.0.0.wasm")).unwrap();
    for mode in ["loop", "trap", "oom", "unknown"] {
        write_config(&config_file, json!({"mode": mode, "on_model": MODEL}));
        eventually(
            Duration::from_secs(20),
            "call-time misbehaviour loaded",
            || async {
                let text = metrics_text(&gw).await;
                text.contains("llmgw_policy_errors_total{") && served_ok(&gw).await
            },
        )
        .await;
    }
    let (ok, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "no request failed because of a plugin: {failures:?}"
    );
    assert!(ok > 0);
    let metrics = metrics_text(&gw).await;
    for kind in ["timeout", "trap"] {
        assert!(
            metrics.contains(&format!("kind=\"{kind}\"")),
            "no {kind} counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn ports_refuse_a_bad_config_naming_every_problem() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    for plugin in [
        "canary-py",
        "canary-js",
        "zone-affinity-py",
        "zone-affinity-js",
    ] {
        let dir = temp_dir();
        install(&dir, plugin, "1.0.0");
        let (config, fields) = if plugin.starts_with("canary") {
            (
                json!({"stable": "v1", "canary": "v2", "canary_percent": 140, "colour": "x"}),
                ["canary_percent", "colour"],
            )
        } else {
            (
                json!({"spill_in_flight": 0, "spill": 3}),
                ["spill_in_flight", "spill"],
            )
        };
        let gw = gateway(&[(&w1, "")], &dir, plugin, config).await;
        let status = policy_status(&gw).await;
        assert!(status["policy"].is_null(), "{plugin}: {status}");
        assert_eq!(status["last_refusal"]["kind"], "init", "{plugin}: {status}");
        let reason = status["last_refusal"]["reason"].as_str().unwrap();
        for field in fields {
            assert!(reason.contains(field), "{plugin}: {reason}");
        }
        // The built-in policy serves meanwhile.
        assert_eq!(served_by(&gw.api, &chat("x", false, 2)).await, "w1");
    }
}

#[tokio::test]
async fn a_gateway_starts_on_the_highest_version_that_passes_its_checks() {
    let dir = temp_dir();
    install(&dir, "failover", "1.0.0");
    // A newer "version" whose init refuses the pool's config.
    std::fs::copy(
        plugins_dir().join("hostile").join("0.1.0.wasm"),
        dir.join("failover").join("2.0.0.wasm"),
    )
    .unwrap();
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let gw = gateway(&[(&w1, "")], &dir, "failover", json!({})).await;
    let status = policy_status(&gw).await;
    assert_eq!(status["policy"]["version"], "1.0.0", "{status}");
    assert_eq!(
        status["policy"]["config"],
        json!({}),
        "the config in force: {status}"
    );
    assert_eq!(status["config_source"], "binding", "{status}");
    assert_eq!(status["last_refusal"]["version"], "2.0.0", "{status}");
    assert_eq!(served_by(&gw.api, &chat("x", false, 2)).await, "w1");
}

/// `gateway check` loads the bound plugins as the gateway would.
#[tokio::test]
async fn gateway_check_loads_the_bound_plugins() {
    let dir = temp_dir();
    install(&dir, "failover", "1.0.0");
    let check = |plugin: &str, config: &str| {
        let text = format!(
            "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[plugins]\ndir = {:?}\n\
             [[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\npolicy = {{ plugin = \"{plugin}\", config = {config} }}\n\
             [[pools.workers]]\nid = \"w1\"\nurl = \"http://127.0.0.1:1\"\n",
            dir.display().to_string()
        );
        let path = temp_dir().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        async move {
            let out = tokio::process::Command::new(bin("gateway"))
                .args(["--config", path.to_str().unwrap(), "check"])
                .output()
                .await
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }
    };
    let (ok, text) = check("failover", "{}").await;
    assert!(ok && text.contains("policy failover 1.0.0 loads"), "{text}");
    let (ok, text) = check("failover", "{ max_workers = \"x\", colour = 1 }").await;
    assert!(
        !ok && text.contains("max_workers") && text.contains("colour"),
        "{text}"
    );
    let (ok, text) = check("nowhere", "{}").await;
    assert!(!ok && text.contains("pool sim: policy nowhere"), "{text}");
}

#[tokio::test]
async fn a_plugins_own_limits_apply_to_it_alone() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let dir = temp_dir();
    install(&dir, "canary-js", "1.0.0");
    // Its interpreter alone takes more than a megabyte.
    let limits = "[plugins.limits.canary-js]\nmemory_limit_bytes = 1048576\n";
    let config = json!({"stable": "v1", "canary": "v2", "canary_percent": 10});
    let gw = gateway_with(
        &[(&w1, "version = \"v1\"")],
        &dir,
        "canary-js",
        config,
        limits,
    )
    .await;
    let status = policy_status(&gw).await;
    assert_eq!(status["last_refusal"]["kind"], "out_of_memory", "{status}");
    assert!(
        status["last_refusal"]["reason"]
            .as_str()
            .unwrap()
            .contains("1048576"),
        "{status}"
    );
}

#[tokio::test]
async fn a_hostile_python_policy_is_contained_at_call_time() {
    hostile_port_contained("hostile-py").await;
}

#[tokio::test]
async fn a_hostile_javascript_policy_is_contained_at_call_time() {
    hostile_port_contained("hostile-js").await;
}

/// `plugin` looping, exhausting its memory or raising in `route`: each
/// request falls back to the built-in policy, and the failure is counted.
async fn hostile_port_contained(plugin: &str) {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let mut modes = vec![
        ("loop", "timeout"),
        ("oom", "out_of_memory"),
        ("trap", "trap"),
    ];
    if plugin.ends_with("-py") {
        // A wait would block inside the host, past any deadline: it traps.
        modes.push(("sleep", "trap"));
    }
    for (mode, kind) in modes {
        let dir = temp_dir();
        install(&dir, plugin, "1.0.0");
        let config = json!({"mode": mode, "on_model": MODEL});
        let gw = gateway(&[(&w1, "")], &dir, plugin, config).await;
        let st = policy_status(&gw).await;
        assert_eq!(st["policy"]["plugin"], plugin, "{st}");
        // Each request falls back to the built-in policy.
        for _ in 0..3 {
            assert_eq!(served_by(&gw.api, &chat("x", false, 2)).await, "w1");
        }
        let errors = format!("llmgw_policy_errors_total{{pool=\"{POOL}\",kind=\"{kind}\"}}");
        let counted = metric(&gw, &errors).await;
        assert!(counted >= 3.0, "{plugin} {mode}: {counted}");
    }
}

/// Replaces a pool's config file whole, as an operator's deploy would: the
/// watcher never reads it half-written.
fn write_config(path: &Path, config: Value) {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, config.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn served_ok(gw: &GatewayProc) -> bool {
    route(gw, &chat("check", false, 2)).await.status() == 200
}

/// A component that is not of the `policy` world: the worker binary's own kind
/// of thing will not do (it is native), so a `wasi:cli/command` component.
fn wrong_world() -> PathBuf {
    plugins_dir().join("wrong-world.wasm")
}

/// Six distinct long system prompts, one after another, to an idle pool of
/// three workers in one zone: the workers `x-worker-id` named, in order.
async fn new_prefixes(gw: &GatewayProc) -> Vec<String> {
    let mut served = Vec::new();
    for i in 0..6 {
        let system = format!("Customer {i} of the weather service. ").repeat(40);
        let body = json!({"model": MODEL, "max_tokens": 2, "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "Any rain?"}]});
        served.push(served_by(&gw.api, &body).await);
    }
    served
}

#[tokio::test]
async fn new_prefixes_spread_over_the_pools_caches_with_or_without_a_plugin() {
    let workers = [
        spawn_worker("w1", "a", WorkerOpts::default()).await,
        spawn_worker("w2", "a", WorkerOpts::default()).await,
        spawn_worker("w3", "a", WorkerOpts::default()).await,
    ];
    let refs: Vec<&WorkerProc> = workers.iter().collect();
    // The built-in policy, on the gateway's own record of where it sent what.
    let builtin = spawn_gateway("a", &refs, "").await;
    let plain = new_prefixes(&builtin).await;
    // The shipped failover plugin sorts by the built-in score, stably: the
    // score's cache-room term spreads new prefixes, and candidates come in a
    // shuffled order so that its full ties are broken at random too.
    let dir = temp_dir().join("plugins");
    install(&dir, "failover", "0.1.0");
    let with_labels: Vec<(&WorkerProc, &str)> = workers.iter().map(|w| (w, "")).collect();
    let plugin = gateway(&with_labels, &dir, "failover", json!({})).await;
    let policy = new_prefixes(&plugin).await;
    for served in [&plain, &policy] {
        let distinct: HashSet<&String> = served.iter().collect();
        assert_eq!(
            distinct.len(),
            3,
            "every cache took new prefixes: {served:?}"
        );
        // The first three new prefixes go to three empty caches.
        let first: HashSet<&String> = served[..3].iter().collect();
        assert_eq!(first.len(), 3, "{served:?}");
    }
}
