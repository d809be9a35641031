//! The chaos suite: a whole fleet (a 3-member etcd cluster, a 3-node NATS
//! cluster, four sim workers in two zones registered in etcd, two gateways
//! following etcd behind nginx) under a steady load of streaming and
//! non-streaming clients, while one fault at a time strikes and is repaired.
//! Every answer is checked against the unbroken greedy answer to its prompt.
//! `bench chaos` runs it long and prints the table; `tests/tests/chaos.rs`
//! runs it short with hard assertions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::{
    client, eventually, free_port, gatewayctl, nginx, spawn_gateway, spawn_worker, status,
    temp_dir, EtcdServer, GatewayProc, NatsServer, Nginx, Streamed, WorkerOpts, WorkerProc, MODEL,
};

/// One fault, struck once the load is steady and repaired after a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: the baseline.
    None,
    WorkerKill,
    WorkerStop,
    WorkerDrain,
    EtcdLeaderKill,
    NatsNodeKill,
    NatsDown,
    ZoneShift,
    GatewayDrain,
    GatewayKill,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::None,
        Fault::WorkerKill,
        Fault::WorkerStop,
        Fault::WorkerDrain,
        Fault::EtcdLeaderKill,
        Fault::NatsNodeKill,
        Fault::NatsDown,
        Fault::ZoneShift,
        Fault::GatewayDrain,
        Fault::GatewayKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::WorkerKill => "worker SIGKILL",
            Fault::WorkerStop => "worker SIGSTOP",
            Fault::WorkerDrain => "worker SIGTERM (drain)",
            Fault::EtcdLeaderKill => "etcd leader killed",
            Fault::NatsNodeKill => "a NATS node killed",
            Fault::NatsDown => "NATS down",
            Fault::ZoneShift => "zone a shifted",
            Fault::GatewayDrain => "a gateway drained",
            Fault::GatewayKill => "a gateway killed",
        }
    }
}

/// How long each phase of a scenario lasts.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Load before the fault.
    pub warm: Duration,
    /// The fault, before its repair.
    pub during: Duration,
    /// Load after the repair.
    pub settle: Duration,
}

/// What one scenario did to the clients.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    pub fault: Fault,
    pub requests: usize,
    pub failed_before_first_byte: usize,
    pub broken_mid_stream: usize,
    /// Answers that arrived whole but differ from the unbroken answer.
    pub differs: usize,
    /// Of the failures, those of requests sent after the fault struck.
    pub failed_after_fault: usize,
    /// Streams in flight when the fault struck, an upper bound on what a
    /// killed gateway may lose.
    pub streams_at_fault: usize,
    /// Streams the gateways continued on another worker.
    pub continued: u64,
    /// p99 time to first token of the streams started during the fault.
    pub p99_ttft_ms: f64,
    /// A few of the failures, for the reader.
    pub examples: Vec<String>,
}

impl Tally {
    pub fn lost(&self) -> usize {
        self.failed_before_first_byte + self.broken_mid_stream + self.differs
    }
}

/// The workers, by zone: two in `a` (the gateways' own), two in `b`.
const WORKERS: [(&str, &str); 4] = [("w1", "a"), ("w2", "a"), ("w3", "b"), ("w4", "b")];

/// The prompts the clients ask, each with a known greedy answer.
const PROMPTS: usize = 8;
const MAX_TOKENS: u32 = 32;

pub struct Fleet {
    pub etcd: Vec<EtcdServer>,
    pub nats: Vec<NatsServer>,
    workers: Vec<(WorkerProc, WorkerOpts)>,
    gateways: Vec<(Option<GatewayProc>, u16)>,
    gateway_extra: String,
    pub lb: Nginx,
    /// The unbroken answer to each prompt.
    answers: Vec<String>,
    /// The worker the last worker fault struck.
    struck: usize,
}

impl Fleet {
    pub async fn start() -> Fleet {
        let etcd = EtcdServer::cluster(3).await;
        let nats = NatsServer::cluster(3).await;
        let etcd_urls: Vec<&str> = etcd.iter().map(|m| m.url.as_str()).collect();
        let nats_urls: Vec<&str> = nats.iter().map(|n| n.url.as_str()).collect();
        let mut workers = Vec::new();
        for (id, zone) in WORKERS {
            let opts = WorkerOpts {
                listen: ([127, 0, 0, 1], free_port()).into(),
                decode_step_us: 10_000,
                etcd: Some(etcd_urls.join(",")),
                nats: Some(nats_urls.join(",")),
                ..WorkerOpts::default()
            };
            workers.push((spawn_worker(id, zone, opts.clone()).await, opts));
        }
        let quoted: Vec<String> = etcd_urls.iter().map(|u| format!("\"{u}\"")).collect();
        let gateway_extra = format!(
            "[etcd]\nendpoints = [{}]\n[bus]\nnats_url = \"{}\"\n\
             [retry]\nper_try_timeout_ms = 2000\nstream_stall_ms = 1000\n",
            quoted.join(", "),
            nats_urls.join(",")
        );
        let mut gateways = Vec::new();
        for _ in 0..2 {
            let port = free_port();
            gateways.push((Some(gateway_on(port, &gateway_extra).await), port));
        }
        let ports: Vec<u16> = gateways.iter().map(|g| g.1).collect();
        let lb = nginx(&temp_dir(), &ports).await;
        let mut fleet = Fleet {
            etcd,
            nats,
            workers,
            gateways,
            gateway_extra,
            lb,
            answers: Vec::new(),
            struck: 0,
        };
        fleet.all_serving().await;
        fleet.answers = fleet.learn_answers().await;
        fleet
    }

    /// Waits until both gateways route to every worker.
    async fn all_serving(&self) {
        for (gateway, _) in &self.gateways {
            let gateway = gateway.as_ref().expect("gateways are up between scenarios");
            eventually(
                Duration::from_secs(30),
                "every worker healthy in every gateway",
                || async {
                    let s = status(gateway).await;
                    let workers = s["pools"][0]["workers"].as_array().cloned();
                    workers.is_some_and(|w| {
                        w.len() == WORKERS.len() && w.iter().all(|w| w["health"] == "healthy")
                    })
                },
            )
            .await;
        }
    }

    /// The unbroken answer to each prompt, streamed and not (the same text).
    async fn learn_answers(&self) -> Vec<String> {
        let mut answers = Vec::new();
        for p in 0..PROMPTS {
            let serving = Serving::default();
            let streamed = ask(&self.lb.url, p, true, &serving).await;
            let whole = ask(&self.lb.url, p, false, &serving).await;
            let (Ok(streamed), Ok(whole)) = (streamed.result, whole.result) else {
                panic!("the fleet answers before any fault");
            };
            assert_eq!(
                streamed, whole,
                "prompt {p}: streamed and whole answers agree"
            );
            answers.push(streamed);
        }
        answers
    }

    /// Runs one scenario under `clients` clients (half of them streaming).
    pub async fn scenario(&mut self, fault: Fault, clients: usize, timing: Timing) -> Tally {
        let continued_before = self.continued().await;
        let load = Load::start(&self.lb.url, clients);
        tokio::time::sleep(timing.warm).await;
        let streams_at_fault = load.streams_in_flight();
        // A worker fault strikes the worker with the most streams under way.
        self.struck = load
            .busiest()
            .and_then(|id| WORKERS.iter().position(|(w, _)| *w == id))
            .unwrap_or(0);
        let struck = Instant::now();
        self.strike(fault).await;
        tokio::time::sleep(timing.during.saturating_sub(struck.elapsed())).await;
        let repaired = Instant::now();
        self.repair(fault).await;
        tokio::time::sleep(timing.settle).await;
        let records = load.stop().await;
        self.all_serving().await;
        let mut tally = self.tally(fault, &records, struck, repaired, streams_at_fault);
        // A gateway started again counts from 0: then this is a lower bound.
        tally.continued = self.continued().await.saturating_sub(continued_before);
        tally
    }

    /// Streams continued elsewhere, by the gateways up now, since they started.
    async fn continued(&self) -> u64 {
        let mut total = 0;
        for gateway in self.gateways.iter().filter_map(|g| g.0.as_ref()) {
            total += crate::metrics_text(gateway)
                .await
                .lines()
                .filter(|l| l.starts_with("llmgw_migrations_total{"))
                .filter(|l| l.contains("outcome=\"continued\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64;
        }
        total
    }

    fn tally(
        &self,
        fault: Fault,
        records: &[Record],
        struck: Instant,
        repaired: Instant,
        streams_at_fault: usize,
    ) -> Tally {
        let mut tally = Tally {
            fault,
            requests: records.len(),
            failed_before_first_byte: 0,
            broken_mid_stream: 0,
            differs: 0,
            failed_after_fault: 0,
            streams_at_fault,
            continued: 0,
            p99_ttft_ms: 0.0,
            examples: Vec::new(),
        };
        let mut ttfts = Vec::new();
        for r in records {
            if r.stream && r.started >= struck && r.started < repaired {
                if let Some(ttft) = r.ttft {
                    ttfts.push(ttft.as_secs_f64() * 1000.0);
                }
            }
            let failure = match &r.result {
                Ok(text) if *text == self.answers[r.prompt] => continue,
                Ok(text) => {
                    tally.differs += 1;
                    format!("prompt {} answered {text:?}", r.prompt)
                }
                Err(Failure::BeforeFirstByte(e)) => {
                    tally.failed_before_first_byte += 1;
                    e.clone()
                }
                Err(Failure::MidStream(e)) => {
                    tally.broken_mid_stream += 1;
                    e.clone()
                }
            };
            if r.started >= struck {
                tally.failed_after_fault += 1;
            }
            if tally.examples.len() < 3 {
                tally.examples.push(failure);
            }
        }
        ttfts.sort_by(f64::total_cmp);
        if !ttfts.is_empty() {
            tally.p99_ttft_ms = ttfts[(ttfts.len() * 99 / 100).min(ttfts.len() - 1)];
        }
        tally
    }

    async fn strike(&mut self, fault: Fault) {
        match fault {
            Fault::None => {}
            Fault::WorkerKill => self.workers[self.struck].0.proc.sigkill().await,
            Fault::WorkerStop => self.workers[self.struck].0.proc.signal("STOP"),
            Fault::WorkerDrain => {
                let worker = &mut self.workers[self.struck].0.proc;
                worker.sigterm();
                worker.wait().await;
            }
            Fault::EtcdLeaderKill => {
                let leader = self.etcd_leader();
                self.etcd[leader].stop().await;
            }
            Fault::NatsNodeKill => self.nats[0].stop().await,
            Fault::NatsDown => {
                for node in &mut self.nats {
                    node.stop().await;
                }
            }
            Fault::ZoneShift => {
                self.gatewayctl(&["zone", "shift", "a", "--for", "10m"])
                    .await
            }
            Fault::GatewayDrain => {
                let mut gateway = self.gateways[0].0.take().expect("up");
                gateway.proc.sigterm();
                gateway.proc.wait().await;
            }
            Fault::GatewayKill => {
                let mut gateway = self.gateways[1].0.take().expect("up");
                gateway.proc.sigkill().await;
            }
        }
    }

    async fn repair(&mut self, fault: Fault) {
        match fault {
            Fault::None => {}
            Fault::WorkerKill | Fault::WorkerDrain => self.respawn_worker(self.struck).await,
            Fault::WorkerStop => self.workers[self.struck].0.proc.signal("CONT"),
            Fault::EtcdLeaderKill => {
                for member in &mut self.etcd {
                    if !member.is_running() {
                        member.restart().await;
                    }
                }
            }
            Fault::NatsNodeKill | Fault::NatsDown => {
                for node in &mut self.nats {
                    if !node.is_running() {
                        node.restart().await;
                    }
                }
            }
            Fault::ZoneShift => self.gatewayctl(&["zone", "unshift", "a"]).await,
            Fault::GatewayDrain | Fault::GatewayKill => {
                for (gateway, port) in &mut self.gateways {
                    if gateway.is_none() {
                        *gateway = Some(gateway_on(*port, &self.gateway_extra).await);
                    }
                }
                // nginx routes to the gateway started again only once its
                // fail timeout has run out (on a clock of whole seconds):
                // until then a fault on the other gateway would leave nginx
                // none to send to.
                tokio::time::sleep(crate::nginx::FAIL_TIMEOUT + Duration::from_secs(1)).await;
            }
        }
    }

    async fn respawn_worker(&mut self, i: usize) {
        let (id, zone) = WORKERS[i];
        let opts = self.workers[i].1.clone();
        self.workers[i].0 = spawn_worker(id, zone, opts).await;
    }

    async fn gatewayctl(&self, args: &[&str]) {
        let urls: Vec<&str> = self.etcd.iter().map(|m| m.url.as_str()).collect();
        let (ok, out, err) = gatewayctl(&urls.join(","), args).await;
        assert!(ok, "gatewayctl {args:?}: {out}{err}");
    }

    /// The index of the etcd member that leads, as the members say.
    fn etcd_leader(&self) -> usize {
        let members: Value = serde_json::from_str(&crate::etcdctl(
            &self.etcd[0],
            &["endpoint", "status", "--cluster", "-w", "json"],
        ))
        .expect("etcdctl prints JSON");
        let statuses = members.as_array().expect("a list of members");
        let leader = statuses[0]["Status"]["leader"].as_u64();
        let url = statuses
            .iter()
            .find(|s| s["Status"]["header"]["member_id"].as_u64() == leader)
            .and_then(|s| s["Endpoint"].as_str())
            .expect("the leader is a member");
        self.etcd
            .iter()
            .position(|m| m.url == url)
            .expect("the leader is ours")
    }
}

async fn gateway_on(port: u16, extra: &str) -> GatewayProc {
    let listeners = format!(
        "[listeners]\napi = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\ndrain_grace_ms = 10000\n"
    );
    spawn_gateway("a", &[], &format!("{listeners}{extra}")).await
}

/// Why a request failed.
#[derive(Debug, Clone)]
enum Failure {
    /// No answer: an error status or connection failure before any byte.
    BeforeFirstByte(String),
    /// A stream that ended without its `[DONE]`, or with an error event.
    MidStream(String),
}

/// One request of the load.
#[derive(Debug, Clone)]
struct Record {
    started: Instant,
    stream: bool,
    prompt: usize,
    ttft: Option<Duration>,
    result: Result<String, Failure>,
}

/// Streams under way, by the worker serving them (`x-worker-id`).
type Serving = Mutex<HashMap<String, usize>>;

/// Counts a stream under `worker` while it lives.
struct Streaming<'a>(&'a Serving, String);

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.0.lock().unwrap().get_mut(&self.1) {
            *n -= 1;
        }
    }
}

/// Greedy request `prompt` through `api`, streamed or not.
async fn ask(api: &str, prompt: usize, stream: bool, serving: &Serving) -> Record {
    let started = Instant::now();
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("chaos prompt {prompt}: tell a story")}],
        "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    let mut record = Record {
        started,
        stream,
        prompt,
        ttft: None,
        result: Err(Failure::BeforeFirstByte(String::new())),
    };
    let resp = match client()
        .post(format!("{api}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
    {
        Ok(resp) if resp.status() == 200 => resp,
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            record.result = Err(Failure::BeforeFirstByte(format!("{status}: {text}")));
            return record;
        }
        Err(e) => {
            record.result = Err(Failure::BeforeFirstByte(e.to_string()));
            return record;
        }
    };
    if !stream {
        record.result = match resp.json::<Value>().await {
            Ok(answer) => Ok(answer["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()),
            Err(e) => Err(Failure::BeforeFirstByte(e.to_string())),
        };
        return record;
    }
    let worker = resp
        .headers()
        .get("x-worker-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    *serving.lock().unwrap().entry(worker.clone()).or_default() += 1;
    let _streaming = Streaming(serving, worker);
    let mut raw = String::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(bytes) => {
                record.ttft.get_or_insert_with(|| started.elapsed());
                raw.push_str(&String::from_utf8_lossy(&bytes));
            }
            Err(e) => {
                record.result = Err(Failure::MidStream(e.to_string()));
                return record;
            }
        }
    }
    let answer = Streamed::of(&raw);
    record.result = match answer.errors.first() {
        Some(error) => Err(Failure::MidStream(error.to_string())),
        None if answer.done => Ok(answer.text),
        None => Err(Failure::MidStream(format!(
            "no [DONE] after {:?}",
            answer.text
        ))),
    };
    record
}

/// Clients asking the prompts in turn until stopped, every other one streaming.
struct Load {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    serving: Arc<Serving>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(api: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let serving = Arc::new(Serving::default());
        let tasks = (0..clients)
            .map(|i| {
                let (stop, records, serving) = (stop.clone(), records.clone(), serving.clone());
                let api = api.to_string();
                tokio::spawn(async move {
                    let stream = i % 2 == 0;
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        let record = ask(&api, n % PROMPTS, stream, &serving).await;
                        records.lock().unwrap().push(record);
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            records,
            serving,
            tasks,
        }
    }

    fn streams_in_flight(&self) -> usize {
        self.serving.lock().unwrap().values().sum()
    }

    /// The worker serving the most streams now, if any is.
    fn busiest(&self) -> Option<String> {
        let serving = self.serving.lock().unwrap();
        serving
            .iter()
            .filter(|(_, &n)| n > 0)
            .max_by_key(|(_, &n)| n)
            .map(|(id, _)| id.clone())
    }

    async fn stop(self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a load client");
        }
        let records = self.records.lock().unwrap().clone();
        records
    }
}
