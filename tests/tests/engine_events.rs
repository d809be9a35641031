//! KV events from vLLM and SGLang engines over ZeroMQ. Neither engine runs
//! without a GPU, so their publishers are played by `tests/python/
//! kv_publisher.py`, which writes their wire format with pyzmq and msgspec:
//! one as SGLang does (structs as arrays, integer hashes), one as newer vLLM
//! does (structs as maps, 32-byte hashes). The gateway follows both, and
//! prompts go where their blocks are, as with our own workers' events; a
//! sequence gap is filled from the replay socket, blocks under a LoRA or
//! extra keys are kept apart, a foreign block size is refused, and a gap the
//! replay cannot fill rebuilds the worker.

use std::process::Stdio;
use std::time::Duration;

use e2e::*;
use protocol::openai::ChatMessage;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const BLOCK: usize = 16;

struct Publisher {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    endpoint: String,
    replay: String,
    /// The next engine block hash to hand out.
    next_hash: u64,
}

impl Publisher {
    async fn start(encoding: &str, hash_bytes: bool) -> Publisher {
        let endpoint = format!("tcp://127.0.0.1:{}", free_port());
        let replay = format!("tcp://127.0.0.1:{}", free_port());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/kv_publisher.py");
        let mut cmd = Command::new("python3");
        cmd.args([script, "--endpoint", &endpoint, "--replay", &replay])
            .args(["--encoding", encoding])
            .args(hash_bytes.then_some("--hash-bytes"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("python3 runs the publisher");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = stdout
            .next_line()
            .await
            .unwrap()
            .expect("publisher started");
        assert!(first.starts_with("publishing on"), "{first}");
        Publisher {
            _child: child,
            stdin,
            stdout,
            endpoint,
            replay,
            next_hash: 1000,
        }
    }

    /// Publishes one batch of `events`; `drop` as the script takes it.
    async fn send(&mut self, events: Vec<Value>, drop: Value) {
        let line = json!({"events": events, "drop": drop}).to_string() + "\n";
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let answer = self.stdout.next_line().await.unwrap().unwrap();
        assert!(answer.starts_with("published"), "{answer}");
    }

    /// `BlockStored` events for the full blocks of `tokens` in `block_size`,
    /// split in two chained events; `extra` fields go into both.
    fn store(&mut self, tokens: &[u32], block_size: usize, extra: Value) -> Vec<Value> {
        let blocks: Vec<&[u32]> = tokens.chunks_exact(block_size).collect();
        let hashes: Vec<u64> = (0..blocks.len() as u64)
            .map(|i| self.next_hash + i)
            .collect();
        self.next_hash += blocks.len() as u64;
        let split = blocks.len() / 2;
        [(0, split), (split, blocks.len())]
            .into_iter()
            .map(|(from, to)| {
                let mut event = json!({
                    "type": "BlockStored",
                    "block_hashes": hashes[from..to],
                    "parent_block_hash": from.checked_sub(1).map(|p| hashes[p]),
                    "token_ids": blocks[from..to].concat(),
                    "block_size": block_size,
                });
                for (k, v) in extra.as_object().unwrap() {
                    event[k] = v.clone();
                }
                event
            })
            .collect()
    }
}

/// A long prompt of its own: `tag` leads it, so no two share a block.
fn content(tag: &str) -> String {
    let body: String = (0..30)
        .map(|i| format!("clause {i} of the {tag} agreement. "))
        .collect();
    format!("{tag}: {body}")
}

/// A chat of `content` alone, so that its first block is its own too.
fn body(content: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 1})
}

/// The tokens the gateway (and so the engine) makes of `content` as a chat.
fn tokens(content: &str) -> Vec<u32> {
    let messages = [ChatMessage::new("user", content)];
    let tokenizer = prompt::Tokenizer::builtin().unwrap();
    prompt::chat_tokens(&messages, &tokenizer).unwrap()
}

fn blocks(content: &str) -> u64 {
    (tokens(content).len() / BLOCK) as u64
}

async fn cached_blocks(gw: &GatewayProc, worker: &str) -> u64 {
    worker_status(gw, worker).await["cached_blocks"]
        .as_u64()
        .unwrap()
}

async fn wait_cached(gw: &GatewayProc, worker: &str, n: u64) {
    eventually(
        Duration::from_secs(20),
        &format!("{worker} holds {n} blocks"),
        || async { cached_blocks(gw, worker).await == n },
    )
    .await;
}

async fn first_served(gw: &GatewayProc, content: &str) -> String {
    served_by(&gw.api, &body(content)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn vllm_and_sglang_events_over_zmq_route_prompts() {
    let mut sglang = Publisher::start("array", false).await;
    let mut vllm = Publisher::start("map", true).await;
    let fakes = [
        fake::start(200, None).await,
        fake::start(200, None).await,
        fake::start(200, None).await,
    ];
    let config = format!(
        "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 500\nunhealthy_threshold = 1\nhealthy_threshold = 1\n\
         [[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\nengine = \"vllm\"\nblock_size = {BLOCK}\n\
         [[pools.workers]]\nid = \"w0\"\nurl = \"{}\"\nengine = \"sglang\"\nkv_events = \"{}\"\nkv_replay = \"{}\"\n\
         [[pools.workers]]\nid = \"w1\"\nurl = \"{}\"\nkv_events = \"{}\"\nkv_replay = \"{}\"\n\
         [[pools.workers]]\nid = \"w2\"\nurl = \"{}\"\n",
        fakes[0].url,
        sglang.endpoint,
        sglang.replay,
        fakes[1].url,
        vllm.endpoint,
        vllm.replay,
        fakes[2].url,
    );
    let gw = spawn_gateway_from(&config).await;
    eventually(Duration::from_secs(10), "workers healthy", || async {
        let s = status(&gw).await;
        s["pools"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["health"] == "healthy")
    })
    .await;

    // Published before the gateway's subscriber may have joined: it asks the
    // replay socket for the engine's history from the start.
    let a = content("alpha");
    let events = vllm.store(&tokens(&a), BLOCK, json!({}));
    vllm.send(events[..1].to_vec(), json!(false)).await;
    vllm.send(events[1..].to_vec(), json!(false)).await;
    wait_cached(&gw, "w1", blocks(&a)).await;
    assert_eq!(first_served(&gw, &a).await, "w1");

    // A batch the subscriber never got: the next one's sequence number
    // shows the gap, and the replay socket fills it. Without it, the second
    // halves would have no parent and match nothing.
    let bs: Vec<String> = (1..=3).map(|i| content(&format!("bravo{i}"))).collect();
    let (mut firsts, mut seconds) = (Vec::new(), Vec::new());
    for b in &bs {
        let events = sglang.store(&tokens(b), BLOCK, json!({}));
        firsts.push(events[0].clone());
        seconds.push(events[1].clone());
    }
    sglang.send(firsts, json!(true)).await;
    sglang.send(seconds, json!(false)).await;
    let b_blocks: u64 = bs.iter().map(|b| blocks(b)).sum();
    wait_cached(&gw, "w0", b_blocks).await;
    for b in &bs {
        assert_eq!(first_served(&gw, b).await, "w0", "{}", &b[..8]);
    }

    // The same tokens under a LoRA adapter (by name or by id) or with extra
    // keys (a cache salt) are other blocks: w1 holds only those, w0 the base
    // model's, so the prompts go to w0.
    let cs: Vec<String> = (1..=3).map(|i| content(&format!("charlie{i}"))).collect();
    let apart = [
        json!({"lora_name": "sql-adapter", "lora_id": 3}),
        json!({"lora_id": 4}),
        json!({"extra_keys": vec![json!(["tenant-a"]); 64]}),
    ];
    for (c, extra) in cs.iter().zip(apart) {
        let mut extra = extra;
        let n = blocks(c) as usize;
        if let Some(keys) = extra.get_mut("extra_keys") {
            keys.as_array_mut().unwrap().truncate(n / 2);
        }
        let events = vllm.store(&tokens(c), BLOCK, extra);
        vllm.send(events, json!(false)).await;
        let events = sglang.store(&tokens(c), BLOCK, json!({}));
        sglang.send(events, json!(false)).await;
    }
    let c_blocks: u64 = cs.iter().map(|c| blocks(c)).sum();
    wait_cached(&gw, "w1", blocks(&a) + c_blocks).await;
    wait_cached(&gw, "w0", b_blocks + c_blocks).await;
    for c in &cs {
        assert_eq!(first_served(&gw, c).await, "w0", "{}", &c[..9]);
    }

    // vLLM salts the first block of a request with `cache_salt`; the
    // gateway hashes such a prompt the same way: the salted request goes to
    // the engine holding the salted blocks, the plain one to the other.
    let d = content("delta");
    let mut salted = vllm.store(&tokens(&d), BLOCK, json!({}));
    let first = salted[0]["block_hashes"].as_array().unwrap().len();
    let mut keys = vec![Value::Null; first];
    keys[0] = json!(["tenant-b"]);
    salted[0]["extra_keys"] = json!(keys);
    vllm.send(salted, json!(false)).await;
    let events = sglang.store(&tokens(&d), BLOCK, json!({}));
    sglang.send(events, json!(false)).await;
    wait_cached(&gw, "w1", blocks(&a) + c_blocks + blocks(&d)).await;
    wait_cached(&gw, "w0", b_blocks + c_blocks + blocks(&d)).await;
    let mut salted_body = body(&d);
    salted_body["cache_salt"] = json!("tenant-b");
    assert_eq!(served_by(&gw.api, &salted_body).await, "w1");
    assert_eq!(first_served(&gw, &d).await, "w0");
    let c_blocks = c_blocks + blocks(&d);

    // Blocks of another size than the pool's are refused and reported.
    let e = content("echo");
    let events = sglang.store(&tokens(&e), 2 * BLOCK, json!({}));
    sglang.send(events, json!(false)).await;
    let events = vllm.store(&tokens(&e), BLOCK, json!({}));
    vllm.send(events, json!(false)).await;
    wait_cached(&gw, "w1", blocks(&a) + c_blocks + blocks(&e)).await;
    eventually(Duration::from_secs(10), "mismatch reported", || async {
        metric(
            &gw,
            "llmgw_block_size_mismatches_total{pool=\"sim\",worker=\"w0\"}",
        )
        .await
            >= 1.0
    })
    .await;
    assert_eq!(cached_blocks(&gw, "w0").await, b_blocks + c_blocks);
    assert_eq!(first_served(&gw, &e).await, "w1");

    // A batch lost for good (the replay buffer rolled over): the worker's
    // entries are dropped and rebuilt from what comes next.
    let f = content("foxtrot");
    let g = content("golf");
    let events = sglang.store(&tokens(&f), BLOCK, json!({}));
    sglang.send(events, json!("forget")).await;
    let events = sglang.store(&tokens(&g), BLOCK, json!({}));
    sglang.send(events, json!(false)).await;
    wait_cached(&gw, "w0", blocks(&g)).await;
    assert_eq!(first_served(&gw, &g).await, "w0");
    assert!(
        metric(
            &gw,
            "llmgw_kv_event_batches_total{pool=\"sim\",outcome=\"gap\"}"
        )
        .await
            >= 1.0
    );

    // An engine that clears its cache holds nothing.
    vllm.send(vec![json!({"type": "AllBlocksCleared"})], json!(false))
        .await;
    wait_cached(&gw, "w1", 0).await;
    assert_eq!(worker_status(&gw, "w1").await["kv_events"], true);
}

/// An engine that does not register itself (vLLM, here) is registered for
/// it, as an operator's sidecar would with etcdctl and a lease, naming its
/// kind and KV-event endpoints; one naming an unknown kind is ignored.
#[tokio::test(flavor = "multi_thread")]
async fn an_external_engine_registered_in_etcd_is_followed_and_routed() {
    let etcd = EtcdServer::start().await;
    let mut vllm = Publisher::start("map", true).await;
    let fake = fake::start(200, None).await;
    let gw = spawn_gateway(
        "a",
        &[],
        &format!("[etcd]\nendpoints = [\"{}\"]\n", etcd.url),
    )
    .await;
    let registration = |id: &str, kind: &str| {
        json!({
            "id": id, "pool": POOL, "url": fake.url, "zone": "a", "model": MODEL,
            "block_size": BLOCK, "engine": "vllm/cuda", "started_at_ms": 0,
            "engine_kind": kind, "kv_events": vllm.endpoint, "kv_replay": vllm.replay,
        })
        .to_string()
    };
    let lease = etcdctl(&etcd, &["lease", "grant", "30"]);
    let lease = lease.split_whitespace().nth(1).expect("lease id");
    for (id, kind) in [("v1", "vllm"), ("t1", "tgi")] {
        let key = format!("/llmgw/workers/{POOL}/{id}");
        etcdctl(
            &etcd,
            &["put", "--lease", lease, &key, &registration(id, kind)],
        );
    }
    eventually(
        Duration::from_secs(10),
        "v1 routed as a vLLM engine",
        || async {
            let s = status(&gw).await;
            let workers = s["pools"][0]["workers"].as_array().unwrap().clone();
            workers.len() == 1
                && workers[0]["engine"] == "vllm"
                && workers[0]["health"] == "healthy"
        },
    )
    .await;
    let ignored = status(&gw).await["control"]["ignored_registrations"].to_string();
    assert!(
        ignored.contains("engine_kind: unknown engine `tgi`"),
        "{ignored}"
    );

    let a = content("registered");
    let events = vllm.store(&tokens(&a), BLOCK, json!({}));
    vllm.send(events, json!(false)).await;
    wait_cached(&gw, "v1", blocks(&a)).await;
    assert_eq!(first_served(&gw, &a).await, "v1");
}
