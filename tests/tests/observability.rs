//! What operators watch: the alert rules pass `promtool`'s check and their
//! own unit tests (each alert fires on series that should raise it and stays
//! quiet on its neighbour's); the dashboard, the alerts and the autoscaler
//! example name only metrics a running gateway exports; and logs in JSON
//! carry each request's id, in the gateway and in the worker.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use e2e::*;
use serde_json::json;
use serde_json::Value;

fn config_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(name)
}

fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(config_file(""))
        .output()
        .expect("promtool is installed (scripts/setup.sh, Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_fire_when_they_should() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a test and a runbook entry.
    let rules = std::fs::read_to_string(config_file("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(config_file("alerts.test.yml")).unwrap();
    let runbook = std::fs::read_to_string(config_file("../docs/runbook.md")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} untested"
        );
        assert!(
            runbook.contains(&format!("## {alert}")),
            "{alert} not in the runbook"
        );
    }
}

/// Every `llmgw_…` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("llmgw_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The series names a scrape holds, with a histogram's `_bucket`, `_sum`
/// and `_count`.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(typed) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = typed.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboards_alerts_and_scalers_name_only_exported_metrics() {
    let etcd = EtcdServer::start().await;
    let nats = NatsServer::start().await;
    let opts = WorkerOpts {
        etcd: Some(etcd.url.clone()),
        nats: Some(nats.url.clone()),
        ..WorkerOpts::default()
    };
    let _w1 = spawn_worker("w1", "a", opts).await;
    let extra = format!(
        "[etcd]\nendpoints = [\"{}\"]\n[bus]\nnats_url = \"{}\"\n",
        etcd.url, nats.url
    );
    let gw = spawn_gateway("a", &[], &extra).await;
    eventually(
        Duration::from_secs(10),
        "the worker is routable",
        || async { worker_status(&gw, "w1").await["health"] == "healthy" },
    )
    .await;
    // One answer of each kind, so the latency histograms have a sample.
    served_by(&gw.api, &chat("streamed", true, 4)).await;
    served_by(&gw.api, &chat("whole", false, 4)).await;
    let scrape = metrics_text(&gw).await;
    let exported = exported(&scrape);

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(config_file("grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queries = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push_str(target["expr"].as_str().unwrap());
            queries.push('\n');
        }
    }
    for file in ["alerts.yml", "keda-scaledobject.yaml"] {
        queries.push_str(&std::fs::read_to_string(config_file(file)).unwrap());
    }
    let named = names_in(&queries);
    assert!(named.len() >= 20, "{named:?}");
    let missing: Vec<_> = named.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named but not exported: {missing:?}\n{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_request_id_in_gateway_and_worker() {
    let dir = temp_dir();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let mut worker = tokio::process::Command::new(bin("worker"));
    worker
        .args([
            "--id",
            "w1",
            "--pool",
            POOL,
            "--model",
            MODEL,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "debug")
        .stderr(Stdio::from(log("worker.log")));
    let (_worker, found) = Proc::spawn_logging(worker, &["listening on "]).await;
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n[logs]\nformat = \"json\"\n\
             [[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\n[[pools.workers]]\nid = \"w1\"\nurl = \"{}\"\n",
            found[0]
        ),
    )
    .unwrap();
    let mut gateway = tokio::process::Command::new(bin("gateway"));
    gateway
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::from(log("gateway.log")));
    let (_gateway, found) =
        Proc::spawn_logging(gateway, &["api listening on ", "admin listening on "]).await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", found[0]))
        .header("x-request-id", "req-observed-1")
        .json(&chat("follow me", false, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for (file, message) in [("gateway.log", "routed"), ("worker.log", "generate")] {
        let mut lines = Vec::new();
        eventually(Duration::from_secs(5), "the request is logged", || {
            lines = std::fs::read_to_string(dir.join(file))
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l)
                        .unwrap_or_else(|e| panic!("{file}: not JSON ({e}): {l}"))
                })
                .collect();
            let found = lines
                .iter()
                .any(|l| l["message"] == message && l["span"]["request_id"] == "req-observed-1");
            async move { found }
        })
        .await;
        for line in &lines {
            for key in ["timestamp", "level", "target"] {
                assert!(line.get(key).is_some(), "{file}: no {key}: {line}");
            }
        }
    }
}

/// The spans of one trace, by name, each found once.
fn one<'a>(spans: &'a [otlp::Span], name: &str, service: &str) -> &'a otlp::Span {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && s.service == service)
        .collect();
    assert_eq!(found.len(), 1, "{name} of {service}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_is_one_trace_across_gateway_and_workers() {
    let receiver = otlp::Receiver::start().await;
    // Spans leave each process a tenth of a second after they end.
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let tracing = format!(
        "[tracing]\notlp_endpoint = \"{}\"\nprotocol = \"http/json\"\n",
        receiver.url
    );
    let opts = WorkerOpts {
        decode_step_us: 20_000,
        extra: tracing.clone(),
        ..WorkerOpts::default()
    };
    let workers = [
        spawn_worker("w1", "a", opts.clone()).await,
        spawn_worker("w2", "a", opts).await,
    ];
    // A WASM policy decides, so its decision is a span too.
    let mut text = gateway_toml("a", &workers.iter().collect::<Vec<_>>(), &tracing);
    text = text.replace(
        &format!("models = [\"{MODEL}\"]\n"),
        &format!("models = [\"{MODEL}\"]\npolicy = {{ plugin = \"failover\" }}\n"),
    );
    text.push_str(&format!(
        "[plugins]\ndir = {:?}\n",
        plugins_dir().display().to_string()
    ));
    let gw = spawn_gateway_from(&text).await;

    // A client's trace goes on through the gateway into the worker.
    let (client_trace, client_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.api))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&chat("a secret prompt", false, 4))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut spans = Vec::new();
    eventually(Duration::from_secs(10), "the worker's span arrives", || {
        spans = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == client_trace)
            .collect();
        let arrived = ["llmgw-worker", "llmgw-gateway"].iter().all(|service| {
            spans
                .iter()
                .any(|s| s.service == *service && s.name == "request")
        });
        async move { arrived }
    })
    .await;
    let request = one(&spans, "request", "llmgw-gateway");
    let attempt = one(&spans, "upstream attempt", "llmgw-gateway");
    let worker = one(&spans, "request", "llmgw-worker");
    let policy = one(&spans, "policy", "llmgw-gateway");
    assert_eq!(policy.parent_span_id, request.span_id);
    let attributes = policy.attributes.to_string();
    assert!(
        attributes.contains("failover") && attributes.contains("route"),
        "{attributes}"
    );
    assert_eq!(request.parent_span_id, client_span);
    assert_eq!(attempt.parent_span_id, request.span_id);
    assert_eq!(worker.parent_span_id, attempt.span_id);

    // A stream migrated mid-answer: the migration and the second attempt
    // belong to the request's trace, under its span.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "a long story"}],
        "stream": true, "max_tokens": 40, "temperature": 0});
    let mut killed = String::new();
    stream_with_fault(&gw.api, &body, 8, |id| {
        killed = id.to_string();
        let victim = workers.iter().find(|w| w.id == id).unwrap();
        victim.proc.signal("KILL");
    })
    .await;
    let survivor = if killed == "w1" { "w2" } else { "w1" };
    let mut trace = Vec::new();
    eventually(
        Duration::from_secs(10),
        "the migrated stream's spans arrive",
        || {
            let all = receiver.spans();
            trace = all
                .iter()
                .find(|s| s.name == "migration")
                .map(|m| {
                    all.iter()
                        .filter(|s| s.trace_id == m.trace_id)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let arrived = ["llmgw-worker", "llmgw-gateway"].iter().all(|service| {
                trace
                    .iter()
                    .any(|s| s.service == *service && s.name == "request")
            });
            async move { arrived }
        },
    )
    .await;
    let request = one(&trace, "request", "llmgw-gateway");
    let migration = one(&trace, "migration", "llmgw-gateway");
    assert_eq!(migration.parent_span_id, request.span_id);
    let attempts: Vec<_> = trace
        .iter()
        .filter(|s| s.name == "upstream attempt")
        .collect();
    assert_eq!(attempts.len(), 2, "{trace:#?}");
    assert!(attempts.iter().any(|a| a.parent_span_id == request.span_id));
    let second = attempts
        .iter()
        .find(|a| a.parent_span_id == migration.span_id)
        .expect("the continuation's attempt is the migration's");
    assert!(
        second.attributes.to_string().contains(survivor),
        "{second:?}"
    );
    // The killed worker's span went out only if it was exported in time.
    let served: Vec<_> = trace
        .iter()
        .filter(|s| s.service == "llmgw-worker" && s.name == "request")
        .collect();
    assert!(served.iter().any(|w| w.parent_span_id == second.span_id));
    assert!(served
        .iter()
        .all(|w| attempts.iter().any(|a| a.span_id == w.parent_span_id)));

    // The migrated request's trace, as received (run with --nocapture).
    for span in &trace {
        eprintln!(
            "{} {} span {} parent {}",
            span.service, span.name, span.span_id, span.parent_span_id
        );
    }

    // Prompt text never goes into a span.
    let exported = receiver.raw.lock().unwrap().join("\n");
    assert!(!exported.contains("a secret prompt") && !exported.contains("a long story"));
}
