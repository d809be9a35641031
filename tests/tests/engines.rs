//! Third-party engines behind the gateway, for real: two llama.cpp
//! `llama-server --metrics` processes serving the SmolLM2 GGUF, as a pool
//! with `engine = "llamacpp"`. Ignored by default: they need `llama-server`
//! (`scripts/llama-server.sh`, its path in `LLMGW_LLAMA_SERVER`) and the model
//! (`scripts/fetch-model.sh`, its path in `LLMGW_MODEL`); `scripts/test.sh`
//! provides both and runs them with `--ignored`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const MODEL_ALIAS: &str = "smollm2";

/// A file named by the environment variable `var`, which `scripts/test.sh`
/// sets from the script that made it.
fn from_env(var: &str, script: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} names the file {script} prints"));
    assert!(path.is_file(), "{} is absent; run {script}", path.display());
    path
}

fn llama_server() -> PathBuf {
    from_env("LLMGW_LLAMA_SERVER", "scripts/llama-server.sh")
}

fn model() -> PathBuf {
    from_env("LLMGW_MODEL", "scripts/fetch-model.sh")
}

/// A `llama-server` on a free port, killed when dropped.
struct LlamaServer {
    child: Child,
    url: String,
}

impl LlamaServer {
    async fn start(alias: &str) -> LlamaServer {
        let port = free_port();
        let child = Command::new(llama_server())
            .arg("-m")
            .arg(model())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            // Two slots of 1024 tokens, one thread: two servers share 2 cores.
            .args([
                "--metrics",
                "--alias",
                alias,
                "-c",
                "2048",
                "-np",
                "2",
                "-t",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("llama-server starts");
        let url = format!("http://127.0.0.1:{port}");
        let health = format!("{url}/health");
        eventually(Duration::from_secs(120), "llama-server loads the model", || {
            let health = health.clone();
            async move {
                matches!(client().get(&health).send().await, Ok(r) if r.status() == 200)
            }
        })
        .await;
        LlamaServer { child, url }
    }
}

fn worker<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["workers"].as_array().unwrap())
        .find(|w| w["id"] == id)
        .expect("worker listed")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs llama-server (scripts/llama-server.sh) and the model (scripts/fetch-model.sh)"]
async fn llama_cpp_servers_serve_behind_the_gateway() {
    let (s1, mut s2) = (
        LlamaServer::start(MODEL_ALIAS).await,
        LlamaServer::start(MODEL_ALIAS).await,
    );
    let model = model();
    // A second pool names a model the servers do not serve: its worker is
    // misconfigured, whatever its `/health` says.
    let text = format!(
        "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [health]\ninterval_ms = 200\ntimeout_ms = 2000\nunhealthy_threshold = 1\nhealthy_threshold = 1\n\
         canary_interval_ms = 1000\ncanary_timeout_ms = 3000\n\
         [[pools]]\nname = \"llama\"\nmodels = [\"{MODEL_ALIAS}\"]\nengine = \"llamacpp\"\ntokenizer = {model:?}\n\
         [[pools.workers]]\nid = \"l1\"\nurl = \"{}\"\n\
         [[pools.workers]]\nid = \"l2\"\nurl = \"{}\"\n\
         [[pools]]\nname = \"other\"\nmodels = [\"other-model\"]\nengine = \"llamacpp\"\n\
         [[pools.workers]]\nid = \"mis\"\nurl = \"{}\"\n",
        s1.url, s2.url, s1.url
    );
    let gw = spawn_gateway_from(&text).await;
    eventually(
        Duration::from_secs(30),
        "probes judge every server",
        || async {
            let s = status(&gw).await;
            worker(&s, "l1")["health"] == "healthy"
                && worker(&s, "l2")["health"] == "healthy"
                && worker(&s, "mis")["health"] == "unhealthy"
        },
    )
    .await;
    let s = status(&gw).await;
    let problem = worker(&s, "mis")["problem"].as_str().unwrap().to_string();
    assert!(
        problem.contains("misconfigured") && problem.contains("other-model"),
        "{problem}"
    );
    assert_eq!(worker(&s, "l1")["engine"], "llamacpp");
    assert!(worker(&s, "l1")["problem"].is_null());

    // The official client, as an application would use it.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/openai_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(format!("{}/v1", gw.api))
        .arg(MODEL_ALIAS)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all openai client checks passed"),
        "openai client script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Load comes from each server's `/metrics`: a long answer in flight shows.
    let long = json!({"model": MODEL_ALIAS, "max_tokens": 400, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]});
    let api = gw.api.clone();
    let busy = tokio::spawn(async move { served_with_answer(&api, &long).await });
    eventually(
        Duration::from_secs(30),
        "a server's metrics show it busy",
        || async {
            let s = status(&gw).await;
            ["l1", "l2"]
                .iter()
                .any(|id| worker(&s, id)["load"]["running"].as_u64() >= Some(1))
        },
    )
    .await;
    busy.await.unwrap();

    // Repeats of a long prefix stick to one server (the approximate index),
    // which then serves it from its prompt cache.
    let system = "You are a careful assistant for a harbour office. ".repeat(30);
    let ask = |i: usize| {
        json!({"model": MODEL_ALIAS, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": format!("Question {i}: when is high tide?")}]})
    };
    let (first, _) = served_with_answer(&gw.api, &ask(0)).await;
    let mut cached = 0;
    for i in 1..4 {
        let (served, body) = served_with_answer(&gw.api, &ask(i)).await;
        assert_eq!(
            served, first,
            "request {i} left the server holding its prefix"
        );
        cached = cached.max(
            body["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    assert!(
        cached >= 256,
        "the repeated prefix came from the cache: {cached} tokens"
    );

    // A server killed: requests fail over to the other, and probes notice.
    s2.child.kill().await.unwrap();
    for i in 0..6 {
        let body = json!({"model": MODEL_ALIAS, "max_tokens": 2,
            "messages": [{"role": "user", "content": format!("hello {i}")}]});
        assert_eq!(served_with_answer(&gw.api, &body).await.0, "l1");
    }
    eventually(
        Duration::from_secs(10),
        "the killed server is unhealthy",
        || async { worker(&status(&gw).await, "l2")["health"] == "unhealthy" },
    )
    .await;

    // A server stopped in its tracks (SIGSTOP) is caught within two canary
    // intervals plus the canary's timeout (its `/health` times out too).
    let pid = s1.child.id().unwrap().to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status();
    assert!(stopped.unwrap().success());
    eventually(
        Duration::from_secs(6),
        "the stopped server is unhealthy",
        || async { worker(&status(&gw).await, "l1")["health"] == "unhealthy" },
    )
    .await;
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("llmgw_canary_generations_total{pool=\"llama\",outcome=\"ok\"}"),
        "idle servers answered their canaries: {metrics}"
    );
    drop(s1);
}

/// A stream from a llama.cpp server killed mid-answer goes on on the other
/// server, which continues the assistant message from the text so far: the
/// client reads one stream (one id, one role chunk, no error) whose greedy
/// text is the unbroken answer's.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs llama-server (scripts/llama-server.sh) and the model (scripts/fetch-model.sh)"]
async fn a_llama_cpp_stream_goes_on_when_its_server_is_killed() {
    let servers = [
        LlamaServer::start(MODEL_ALIAS).await,
        LlamaServer::start(MODEL_ALIAS).await,
    ];
    let text = format!(
        "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [health]\ninterval_ms = 200\ntimeout_ms = 2000\nunhealthy_threshold = 1\nhealthy_threshold = 1\n\
         [[pools]]\nname = \"llama\"\nmodels = [\"{MODEL_ALIAS}\"]\nengine = \"llamacpp\"\ntokenizer = {:?}\n\
         [[pools.workers]]\nid = \"l0\"\nurl = \"{}\"\n\
         [[pools.workers]]\nid = \"l1\"\nurl = \"{}\"\n",
        model(),
        servers[0].url,
        servers[1].url
    );
    let gw = spawn_gateway_from(&text).await;
    let body = json!({"model": MODEL_ALIAS, "max_tokens": 64, "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]});
    let unbroken = Streamed::of(&stream_with_fault(&gw.api, &body, 0, |_| {}).await);
    assert!(unbroken.errors.is_empty() && unbroken.done, "{unbroken:?}");
    let raw = stream_with_fault(&gw.api, &body, 12, |id| {
        // Servers `l0` and `l1` are `servers[0]` and `servers[1]`.
        let server = &servers[id[1..].parse::<usize>().unwrap()];
        let pid = server.child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
        assert!(killed.unwrap().success());
    })
    .await;
    let broken = Streamed::of(&raw);
    assert!(broken.errors.is_empty() && broken.done, "{broken:?}");
    assert_eq!(broken.text, unbroken.text);
    assert_eq!(broken.roles, 1, "one role chunk");
    assert!(
        broken.ids.iter().all(|id| *id == broken.ids[0]),
        "{:?}",
        broken.ids
    );
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("llmgw_migrations_total{pool=\"llama\",")
            && metrics.contains("outcome=\"continued\"} 1"),
        "{metrics}"
    );
}
