//! Harness for the end-to-end tests: starts the real `worker` and `gateway`
//! binaries on free loopback ports with config files of their own, talks to
//! them over HTTP, and stops them (with SIGTERM or SIGKILL) when asked or dropped.

pub mod chaos;
pub mod fake;
mod nginx;
pub mod otlp;

pub use nginx::{nginx, Nginx};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const MODEL: &str = "sim-llama";
/// The pool test gateways put their workers in.
pub const POOL: &str = "sim";

/// A binary of this workspace, built next to the running executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> (a test) or target/<profile>/<bin> (the
    // bench) → target/<profile>/<name>
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The plugin directory `scripts/build-plugins.sh` fills.
pub fn plugins_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(
        dir.join("failover").is_dir(),
        "{} is empty: run scripts/build-plugins.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// A fresh directory for one test's files, under a root of this process's
/// own. Roots left by earlier test processes that have exited are deleted
/// The component `scripts/build-plugins.sh` built for plugin `name`.
pub fn plugin_file(name: &str) -> PathBuf {
    let dir = plugins_dir().join(name);
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wasm"))
        .unwrap_or_else(|| panic!("no component in {}", dir.display()))
}

/// first, so repeated runs do not fill the disk.
pub fn temp_dir() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    static N: AtomicU32 = AtomicU32::new(0);
    let root = ROOT.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix("llmgw-e2e-"));
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        tmp.join(format!("llmgw-e2e-{}", std::process::id()))
    });
    let dir = root.join(N.fetch_add(1, Ordering::Relaxed).to_string());
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A child process, killed when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `cmd` and reads its stdout until a line starting with each of
    /// `prefixes` appeared, returning the rest of those lines in order.
    pub async fn spawn(mut cmd: Command, prefixes: &[&str]) -> (Proc, Vec<String>) {
        if std::env::var_os("E2E_LOG").is_none() {
            cmd.stderr(Stdio::null());
        }
        Proc::spawn_logging(cmd, prefixes).await
    }

    /// Like [`spawn`](Self::spawn), leaving stderr (its logs) as `cmd` has it.
    pub async fn spawn_logging(mut cmd: Command, prefixes: &[&str]) -> (Proc, Vec<String>) {
        cmd.stdout(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn binary");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut found = Vec::new();
        for prefix in prefixes {
            let line = tokio::time::timeout(Duration::from_secs(60), async {
                loop {
                    match lines.next_line().await.expect("read stdout") {
                        Some(line) if line.starts_with(prefix) => {
                            return line[prefix.len()..].trim().to_string()
                        }
                        Some(_) => continue,
                        None => panic!("process exited before printing `{prefix}`"),
                    }
                }
            })
            .await
            .expect("process did not start in time");
            found.push(line);
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (Proc { child }, found)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process running")
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends the signal named `name` (`STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status();
        assert!(status.expect("run kill").success());
    }

    pub async fn sigkill(&mut self) {
        self.child.kill().await.expect("kill");
    }

    pub async fn wait(&mut self) -> ExitStatus {
        self.child.wait().await.expect("wait")
    }
}

/// Knobs of a test worker; the sim's timing is in microseconds.
#[derive(Clone)]
pub struct WorkerOpts {
    pub listen: SocketAddr,
    pub decode_step_us: u64,
    pub prefill_us_per_token: u64,
    /// Publish KV events and load to this NATS server.
    pub nats: Option<String>,
    /// Tokens per KV block; the test gateways' pools hash with 16.
    pub block_size: usize,
    /// Register in this etcd, on a lease of `lease_ttl_s`.
    pub etcd: Option<String>,
    pub lease_ttl_s: u64,
    /// Labels registered with the worker.
    pub labels: Vec<(&'static str, &'static str)>,
    /// More TOML sections for its config file.
    pub extra: String,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        WorkerOpts {
            listen: ([127, 0, 0, 1], 0).into(),
            decode_step_us: 500,
            prefill_us_per_token: 5,
            nats: None,
            block_size: 16,
            etcd: None,
            lease_ttl_s: 10,
            labels: Vec::new(),
            extra: String::new(),
        }
    }
}

pub struct WorkerProc {
    pub proc: Proc,
    pub id: String,
    pub zone: String,
    pub url: String,
}

pub async fn spawn_worker(id: &str, zone: &str, opts: WorkerOpts) -> WorkerProc {
    let dir = temp_dir();
    let config = dir.join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"{id}\"\nlisten = \"{}\"\nmodel = \"{MODEL}\"\nzone = \"{zone}\"\ndrain_grace_ms = 5000\n\
             [engine]\nkind = \"sim\"\nblock_size = {}\n[engine.sim]\nprefill_us_per_token = {}\ndecode_step_us = {}\ndecode_us_per_seq = 10\n\
             [etcd]\nlease_ttl_s = {}\n{}",
            opts.listen, opts.block_size, opts.prefill_us_per_token, opts.decode_step_us, opts.lease_ttl_s,
            opts.extra
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("worker"));
    cmd.args(["--pool", POOL]).arg("--config").arg(&config);
    if let Some(nats) = &opts.nats {
        cmd.args(["--nats", nats]);
    }
    if let Some(etcd) = &opts.etcd {
        cmd.args(["--etcd", etcd]);
    }
    for (key, value) in &opts.labels {
        cmd.arg("--label").arg(format!("{key}={value}"));
    }
    let (proc, found) = Proc::spawn(cmd, &["listening on "]).await;
    WorkerProc {
        proc,
        id: id.to_string(),
        zone: zone.to_string(),
        url: found[0].clone(),
    }
}

pub struct GatewayProc {
    pub proc: Proc,
    pub api: String,
    pub admin: String,
    pub config_path: PathBuf,
}

/// Starts a gateway in zone `zone` over `workers`, with `extra` TOML sections
/// (fast probes unless overridden).
pub async fn spawn_gateway(zone: &str, workers: &[&WorkerProc], extra: &str) -> GatewayProc {
    spawn_gateway_from(&gateway_toml(zone, workers, extra)).await
}

/// Starts a gateway from a whole config text.
pub async fn spawn_gateway_from(text: &str) -> GatewayProc {
    let config_path = temp_dir().join("gateway.toml");
    std::fs::write(&config_path, text).unwrap();
    let mut cmd = Command::new(bin("gateway"));
    cmd.arg("--config").arg(&config_path);
    let (proc, found) = Proc::spawn(cmd, &["api listening on ", "admin listening on "]).await;
    GatewayProc {
        proc,
        api: found[0].clone(),
        admin: found[1].clone(),
        config_path,
    }
}

pub fn gateway_toml(zone: &str, workers: &[&WorkerProc], extra: &str) -> String {
    let mut text = format!("zone = \"{zone}\"\n");
    if !extra.contains("[listeners]") {
        text.push_str(
            "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\ndrain_grace_ms = 10000\n",
        );
    }
    if !extra.contains("[health]") {
        text.push_str("[health]\ninterval_ms = 100\ntimeout_ms = 500\nunhealthy_threshold = 1\nhealthy_threshold = 1\n");
    }
    text.push_str(extra);
    text.push_str(&format!(
        "\n[[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\n"
    ));
    for w in workers {
        text.push_str(&format!(
            "[[pools.workers]]\nid = \"{}\"\nurl = \"{}\"\nzone = \"{}\"\n",
            w.id, w.url, w.zone
        ));
    }
    text
}

pub fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// rustls needs one process-wide provider; ring is the one this project builds.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn chat(content: &str, stream: bool, max_tokens: u32) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": content}],
        "stream": stream,
        "max_tokens": max_tokens,
    })
}

/// The JSON events of an SSE body, and whether it ended with `[DONE]`.
pub fn sse_events(body: &str) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(
                serde_json::from_str(data).unwrap_or_else(|e| panic!("bad SSE event {data}: {e}")),
            );
        }
    }
    (events, done)
}

/// A streamed answer as its client read it.
#[derive(Debug, PartialEq)]
pub struct Streamed {
    pub text: String,
    pub ids: Vec<String>,
    pub roles: usize,
    pub finish: Option<String>,
    pub usage: Value,
    pub errors: Vec<Value>,
    pub done: bool,
}

impl Streamed {
    pub fn of(raw: &str) -> Streamed {
        let (events, done) = sse_events(raw);
        let mut answer = Streamed {
            text: String::new(),
            ids: Vec::new(),
            roles: 0,
            finish: None,
            usage: Value::Null,
            errors: Vec::new(),
            done,
        };
        for event in events {
            if !event["error"].is_null() {
                answer.errors.push(event["error"].clone());
                continue;
            }
            answer.ids.push(event["id"].as_str().unwrap().to_string());
            if event["usage"].is_object() {
                answer.usage = event["usage"].clone();
            }
            let Some(choice) = event["choices"].get(0) else {
                continue;
            };
            let delta = &choice["delta"];
            answer.roles += usize::from(delta.get("role").is_some());
            answer
                .text
                .push_str(delta["content"].as_str().unwrap_or_default());
            if let Some(reason) = choice["finish_reason"].as_str() {
                answer.finish = Some(reason.to_string());
            }
        }
        answer
    }

    /// The same answer, read as one stream.
    pub fn assert_same_as(&self, unbroken: &Streamed) {
        assert!(self.errors.is_empty(), "{:?}", self.errors);
        assert!(self.done);
        assert_eq!(self.text, unbroken.text);
        assert_eq!(self.roles, 1);
        assert!(
            self.ids.iter().all(|id| *id == self.ids[0]),
            "{:?}",
            self.ids
        );
        assert_eq!(self.finish, unbroken.finish);
        // Cached prompt tokens are the serving worker's own.
        for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(self.usage[count], unbroken.usage[count], "{count}");
        }
    }
}

/// Streams `body` through `api`; once `after` text events arrived, runs
/// `fault` with the serving worker's id. Returns the raw body.
pub async fn stream_with_fault(
    api: &str,
    body: &Value,
    after: usize,
    fault: impl FnOnce(&str),
) -> String {
    use futures_util::StreamExt;

    let resp = post_chat(api, body).await;
    assert_eq!(resp.status(), 200);
    let worker = resp.headers()["x-worker-id"].to_str().unwrap().to_string();
    let mut fault = Some(fault);
    let mut raw = String::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), chunks.next())
        .await
        .expect("the stream goes on")
    {
        raw.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        let texts = raw.matches(r#""content":""#).count() - raw.matches(r#""content":"""#).count();
        if texts >= after {
            if let Some(fault) = fault.take() {
                fault(&worker);
            }
        }
    }
    assert!(fault.is_none(), "the stream ended before the fault: {raw}");
    raw
}

/// Polls `check` every 50 ms until it holds, failing after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway's `/metrics` text.
pub async fn metrics_text(gw: &GatewayProc) -> String {
    client()
        .get(format!("{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of the gateway's metric samples whose line starts with `prefix`
/// (a name, or a name with its labels).
pub async fn metric(gw: &GatewayProc, prefix: &str) -> f64 {
    metrics_text(gw)
        .await
        .lines()
        .filter(|l| l.starts_with(prefix) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends a chat request through `api`; asserts success and returns the serving worker's id.
pub async fn served_by(api: &str, body: &Value) -> String {
    answered(api, body).await.0
}

/// Like [`served_by`], with the (non-streamed) answer too.
pub async fn served_with_answer(api: &str, body: &Value) -> (String, Value) {
    let (worker, text) = answered(api, body).await;
    (worker, serde_json::from_str(&text).expect("a JSON answer"))
}

/// The response to a chat request through `api`.
pub async fn post_chat(api: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{api}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The serving worker's id and the body of a successful chat request.
async fn answered(api: &str, body: &Value) -> (String, String) {
    let resp = post_chat(api, body).await;
    let status = resp.status();
    let worker = resp
        .headers()
        .get("x-worker-id")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    (worker.expect("x-worker-id"), text)
}

/// The gateway's `/status`.
pub async fn status(gw: &GatewayProc) -> Value {
    client()
        .get(format!("{}/status", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A worker's entry in `/status`.
pub async fn worker_status(gw: &GatewayProc, id: &str) -> Value {
    let s = status(gw).await;
    s["pools"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .cloned()
        .expect("worker listed")
}

/// A free loopback port (the OS may hand it out again, but not at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd on free loopback ports with a data directory of its own;
/// alone, or one member of a cluster.
pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    name: String,
    peer_port: u16,
    /// `--initial-cluster`: every member's name and peer URL.
    cluster: String,
    pub port: u16,
    pub url: String,
}

impl EtcdServer {
    pub async fn start() -> EtcdServer {
        let mut server = EtcdServer::cluster(1).await;
        server.pop().expect("one member")
    }

    /// A cluster of `members` etcd processes, each with its own client URL.
    pub async fn cluster(members: usize) -> Vec<EtcdServer> {
        let peer_ports: Vec<u16> = (0..members).map(|_| free_port()).collect();
        let cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("e2e{i}=http://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<EtcdServer> = peer_ports
            .into_iter()
            .enumerate()
            .map(|(i, peer_port)| {
                let port = free_port();
                EtcdServer {
                    child: None,
                    dir: temp_dir().join("etcd"),
                    name: format!("e2e{i}"),
                    peer_port,
                    cluster: cluster.clone(),
                    port,
                    url: format!("http://127.0.0.1:{port}"),
                }
            })
            .collect();
        // All up before any is asked: a member is healthy only with a quorum.
        for server in &mut servers {
            server.spawn();
        }
        for server in &servers {
            server.healthy().await;
        }
        servers
    }

    /// Starts it again on the same ports and data, as after an outage.
    pub async fn restart(&mut self) {
        self.spawn();
        self.healthy().await;
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.display()))
            .arg(format!("--listen-client-urls={}", self.url))
            .arg(format!("--advertise-client-urls={}", self.url))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.cluster))
            .kill_on_drop(true);
        if std::env::var_os("E2E_LOG").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        self.child = Some(cmd.spawn().expect("etcd is installed (scripts/setup.sh)"));
    }

    /// Waits until it answers `/health` with a leader.
    async fn healthy(&self) {
        let health = format!("{}/health", self.url);
        let client = client();
        eventually(Duration::from_secs(20), "etcd is healthy", || async {
            match client.get(&health).send().await {
                Ok(resp) => resp.text().await.unwrap_or_default().contains("true"),
                Err(_) => false,
            }
        })
        .await;
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("stop etcd");
        }
    }

    /// Started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops it and deletes its data: the next [`restart`](Self::restart)
    /// is a new etcd, its revisions counting from 1 again.
    pub async fn wipe(&mut self) {
        self.stop().await;
        std::fs::remove_dir_all(&self.dir).expect("delete etcd's data");
    }
}

/// etcd preallocates 64 MB of log per data directory: delete it with the server.
impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `etcdctl ARGS…` against `etcd`; its output.
pub fn etcdctl(etcd: &EtcdServer, args: &[&str]) -> String {
    etcdctl_with(etcd, args, std::process::Stdio::null())
}

pub fn etcdctl_with(etcd: &EtcdServer, args: &[&str], stdin: std::process::Stdio) -> String {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.url])
        .args(args)
        .stdin(stdin)
        .output()
        .expect("etcdctl is installed (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `gatewayctl --etcd URL ARGS…`: (success, stdout, stderr).
pub async fn gatewayctl(etcd: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("gatewayctl"))
        .args(["--etcd", etcd])
        .args(args)
        .output()
        .await
        .expect("run gatewayctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real nats-server on a free loopback port, stopped when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    /// In a cluster: its own route port and the other members' routes.
    cluster: Option<(u16, String)>,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let port = free_port();
        let mut server = NatsServer {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            cluster: None,
        };
        server.restart().await;
        server
    }

    /// `members` servers routed to one another: one NATS cluster.
    pub async fn cluster(members: usize) -> Vec<NatsServer> {
        let ports: Vec<(u16, u16)> = (0..members).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect();
        let mut servers = Vec::new();
        for &(port, route) in &ports {
            let mut server = NatsServer {
                child: None,
                port,
                url: format!("nats://127.0.0.1:{port}"),
                cluster: Some((route, routes.join(","))),
            };
            server.restart().await;
            servers.push(server);
        }
        servers
    }

    /// Starts it again on the same port, as after an outage.
    pub async fn restart(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .kill_on_drop(true);
        if let Some((route, routes)) = &self.cluster {
            cmd.args(["--cluster_name", "llmgw"])
                .args(["--cluster", &format!("nats://127.0.0.1:{route}")])
                .args(["--routes", routes]);
        }
        if std::env::var_os("E2E_LOG").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        self.child = Some(
            cmd.spawn()
                .expect("nats-server is installed (scripts/setup.sh)"),
        );
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(
            Duration::from_secs(10),
            "nats-server accepts connections",
            || async { tokio::net::TcpStream::connect(&addr).await.is_ok() },
        )
        .await;
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("stop nats-server");
        }
    }

    /// Started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Clients sending chat requests through a gateway in a loop until stopped,
/// counting answers and keeping the first few failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU32>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(api: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU32::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|i| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let api = api.to_string();
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = c
                            .post(format!("{api}/v1/chat/completions"))
                            .json(&chat(&format!("load {i}"), false, 2))
                            .send()
                            .await;
                        let failure = match sent {
                            Ok(r) if r.status() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Ok(r) => {
                                format!("{}: {}", r.status(), r.text().await.unwrap_or_default())
                            }
                            Err(e) => e.to_string(),
                        };
                        failures.lock().unwrap().push(failure);
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    pub fn ok(&self) -> u32 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; returns the answers counted and the failures seen.
    pub async fn stop(self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load client");
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}
