//! Trying a policy before it acts. A version in shadow decides for a
//! sample of live requests, off the request path, and the gateway counts
//! how it agrees; a shadow that loops costs the live path nothing;
//! `gatewayctl plugin promote` makes it live through the checks of any
//! change. The decision log records what policies were asked, and
//! `gatewayctl plugin replay` runs another policy over it.

use std::path::PathBuf;
use std::time::Duration;

use e2e::*;
use serde_json::Value;

async fn ctl_ok(etcd: &EtcdServer, args: &[&str]) -> String {
    let (ok, out, err) = gatewayctl(&etcd.url, args).await;
    assert!(ok, "gatewayctl {args:?} failed:\n{out}\n{err}");
    out
}

async fn put_doc(etcd: &EtcdServer, policy: &str) -> String {
    let path = temp_dir().join("routing.toml");
    let text = format!("[[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\n{policy}\n");
    std::fs::write(&path, text).unwrap();
    ctl_ok(etcd, &["config", "put", path.to_str().unwrap()]).await
}

async fn shadow_status(gw: &GatewayProc) -> Value {
    status(gw).await["pools"][0]["shadow"].clone()
}

#[tokio::test]
async fn a_shadow_decides_aside_and_is_promoted() {
    let etcd = EtcdServer::start().await;
    let gw = spawn_gateway(
        "a",
        &[],
        &format!("[etcd]\nendpoints = [\"{}\"]\n", etcd.url),
    )
    .await;
    let mut workers = Vec::new();
    for colour in ["blue", "green"] {
        let opts = WorkerOpts {
            etcd: Some(etcd.url.clone()),
            labels: vec![("colour", colour)],
            ..WorkerOpts::default()
        };
        workers.push(spawn_worker(colour, "a", opts).await);
    }
    // The same component as two versions, and the hostile one as a third.
    let blue_green = plugin_file("blue-green");
    for version in ["1.0.0", "1.1.0"] {
        ctl_ok(
            &etcd,
            &[
                "plugin",
                "put",
                "blue-green",
                version,
                blue_green.to_str().unwrap(),
            ],
        )
        .await;
    }
    let hostile = plugin_file("hostile");
    ctl_ok(
        &etcd,
        &[
            "plugin",
            "put",
            "blue-green",
            "6.6.6",
            hostile.to_str().unwrap(),
        ],
    )
    .await;

    // Live: blue. In shadow, for every request: green.
    put_doc(
        &etcd,
        "policy = { plugin = \"blue-green\", version = \"1.0.0\", config = { active = \"blue\" }, \
         shadow = { version = \"1.1.0\", sample = 1.0, config = { active = \"green\" } } }",
    )
    .await;
    eventually(Duration::from_secs(10), "the shadow loaded", || async {
        shadow_status(&gw).await["policy"]["version"] == "1.1.0"
    })
    .await;
    for _ in 0..20 {
        assert_eq!(served_by(&gw.api, &chat("x", false, 2)).await, "blue");
    }
    eventually(Duration::from_secs(5), "20 compared", || async {
        shadow_status(&gw).await["stats"]["compared"] == 20
    })
    .await;
    let shadow = shadow_status(&gw).await;
    assert_eq!(shadow["stats"]["other_worker"], 20, "{shadow}");
    assert_eq!(shadow["agreement"], 0.0);
    assert!(
        metric(
            &gw,
            "llmgw_shadow_decisions_total{pool=\"sim\",outcome=\"other_worker\"}"
        )
        .await
            >= 20.0
    );

    // A shadow that spins on live traffic: live answers are untouched.
    put_doc(
        &etcd,
        "policy = { plugin = \"blue-green\", version = \"1.0.0\", config = { active = \"blue\" }, \
         shadow = { version = \"6.6.6\", sample = 1.0, config = { mode = \"loop\", on_model = \"sim-llama\" } } }",
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the hostile shadow loaded",
        || async { shadow_status(&gw).await["policy"]["version"] == "6.6.6" },
    )
    .await;
    let load = Load::start(&gw.api, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failures) = load.stop().await;
    assert!(ok > 20 && failures.is_empty(), "{ok} {failures:?}");
    let shadow = shadow_status(&gw).await;
    assert!(
        shadow["stats"]["errors"]["timeout"].as_u64().unwrap() > 0,
        "{shadow}"
    );
    assert_eq!(shadow["stats"]["compared"], 0, "{shadow}");

    // A shadow that cannot load is refused by gatewayctl, as any version is.
    let (ok, _, err) = gatewayctl(&etcd.url, &["plugin", "shadow", POOL, "9.9.9"]).await;
    assert!(!ok && err.contains("9.9.9"), "{err}");

    // Back to 1.1.0 in shadow (its config kept), then promoted: green serves.
    let set = ctl_ok(
        &etcd,
        &["plugin", "shadow", POOL, "6.6.6", "--sample", "0.5"],
    )
    .await;
    assert!(set.contains("sample"), "{set}");
    put_doc(
        &etcd,
        "policy = { plugin = \"blue-green\", version = \"1.0.0\", config = { active = \"blue\" }, \
         shadow = { version = \"1.1.0\", sample = 0.5, config = { active = \"green\" } } }",
    )
    .await;
    let promoted = ctl_ok(&etcd, &["plugin", "promote", POOL]).await;
    assert!(promoted.contains("1.1.0"), "{promoted}");
    eventually(Duration::from_secs(10), "green serves", || async {
        served_by(&gw.api, &chat("x", false, 2)).await == "green"
    })
    .await;
    assert!(shadow_status(&gw).await.is_null());
    let (ok, _, err) = gatewayctl(&etcd.url, &["plugin", "promote", POOL]).await;
    assert!(!ok && err.contains("no shadow"), "{err}");
}

/// Runs `gatewayctl ARGS…` needing no etcd: its stdout.
async fn ctl_local(args: &[&str]) -> String {
    let out = tokio::process::Command::new(bin("gatewayctl"))
        .args(args)
        .output()
        .await
        .expect("run gatewayctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "gatewayctl {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn decisions_are_logged_and_replayed_against_another_policy() {
    let blue = WorkerOpts {
        labels: vec![("colour", "blue")],
        ..WorkerOpts::default()
    };
    let green = WorkerOpts {
        labels: vec![("colour", "green")],
        ..WorkerOpts::default()
    };
    let (wb, wg) = (
        spawn_worker("blue", "a", blue).await,
        spawn_worker("green", "a", green).await,
    );
    let log = temp_dir().join("decisions.jsonl");
    let mut text = gateway_toml(
        "a",
        &[&wb, &wg],
        &format!(
            "[plugins]\ndir = {:?}\ndecision_log = {log:?}\ndecision_log_sample = 1.0\n",
            plugins_dir()
        ),
    );
    // The harness's pool, bound to blue-green with blue active; the labels
    // come from the file without etcd.
    text = text.replace(
        &format!("models = [\"{MODEL}\"]\n"),
        &format!("models = [\"{MODEL}\"]\npolicy = {{ plugin = \"blue-green\", config = {{ active = \"blue\" }} }}\n"),
    );
    text = text.replace(
        &format!("id = \"blue\"\nurl = \"{}\"\nzone = \"a\"\n", wb.url),
        &format!(
            "id = \"blue\"\nurl = \"{}\"\nzone = \"a\"\nlabels = {{ colour = \"blue\" }}\n",
            wb.url
        ),
    );
    text = text.replace(
        &format!("id = \"green\"\nurl = \"{}\"\nzone = \"a\"\n", wg.url),
        &format!(
            "id = \"green\"\nurl = \"{}\"\nzone = \"a\"\nlabels = {{ colour = \"green\" }}\n",
            wg.url
        ),
    );
    let gw = spawn_gateway_from(&text).await;
    for _ in 0..10 {
        assert_eq!(served_by(&gw.api, &chat("x", false, 2)).await, "blue");
    }
    eventually(Duration::from_secs(5), "ten decisions logged", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 10
    })
    .await;
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["policy"]["plugin"], "blue-green");
    assert_eq!(first["decision"]["route"][0], "blue");
    assert_eq!(first["candidates"].as_array().unwrap().len(), 2);
    assert!(
        !first.to_string().contains("\"x\""),
        "no prompt text: {first}"
    );

    let wasm = plugin_file("blue-green");
    let (wasm, log) = (wasm.to_str().unwrap(), log.to_str().unwrap());
    let same = ctl_local(&[
        "plugin",
        "replay",
        wasm,
        log,
        "--config",
        r#"{"active": "blue"}"#,
    ])
    .await;
    assert!(same.contains("10 decisions replayed: 10 agree"), "{same}");
    let flipped = ctl_local(&[
        "plugin",
        "replay",
        wasm,
        log,
        "--config",
        r#"{"active": "green"}"#,
    ])
    .await;
    assert!(
        flipped.contains(": 0 agree") && flipped.contains("other_worker 10"),
        "{flipped}"
    );
    assert!(
        flipped.contains("logged route blue, now route green"),
        "{flipped}"
    );
    let hostile = plugin_file("hostile");
    let json = ctl_local(&[
        "--json",
        "plugin",
        "replay",
        hostile.to_str().unwrap(),
        log,
        "--config",
        r#"{"mode": "trap", "on_model": "sim-llama"}"#,
    ])
    .await;
    let replayed: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(replayed["counts"]["error"], 10, "{replayed}");
}

/// `gatewayctl plugin new NAME --lang LANG` writes a policy that builds and
/// passes its own test: unit tests over a decision log in Rust, a build and
/// a replay of the log in Python and JavaScript.
#[tokio::test]
async fn a_new_policy_builds_and_passes_its_test_in_each_language() {
    let root = temp_dir();
    let ctl_dir = bin("gatewayctl").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        ctl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for lang in ["python", "js", "rust"] {
        let dir = root.join(format!("mine-{lang}"));
        let written = ctl_local(&[
            "plugin",
            "new",
            &format!("mine-{lang}"),
            "--lang",
            lang,
            "--dir",
            dir.to_str().unwrap(),
        ])
        .await;
        assert!(written.contains("next:"), "{written}");
        let mut test = match lang {
            "rust" => {
                let mut cargo = tokio::process::Command::new("cargo");
                // Kept between runs, outside the clone: the SDK's
                // dependencies build once.
                let cache = std::env::var("HOME").map_or(root.join("target"), |home| {
                    PathBuf::from(home).join(".cache/llmgw/policy-skeleton-target")
                });
                cargo.args(["test", "-q"]).env("CARGO_TARGET_DIR", cache);
                cargo
            }
            _ => tokio::process::Command::new(dir.join("test.sh")),
        };
        let out = test
            .current_dir(&dir)
            .env("PATH", &path)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{lang}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if lang != "rust" {
            assert!(
                stdout.contains("2 decisions replayed: 2 agree (100.0%)"),
                "{lang}: {stdout}"
            );
        }
    }
    // An existing folder is never written over.
    let again = tokio::process::Command::new(bin("gatewayctl"))
        .args(["plugin", "new", "again", "--dir", root.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
}
