//! `llmgw-demo`, the embedded demo: three workers (two in zone `a`, one in
//! `b`) and a gateway in front of them, in one process, with no external
//! service: the workers' KV events reach the gateway over an in-process bus.
//! A crate of its own, so the `gateway` binary links no inference engine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use gateway::Config;
use protocol::Bus;
use workers::WorkerConfig;

/// The model name clients ask for from sim workers.
const MODEL: &str = "sim-llama";
/// The workers' configuration when the demo serves the real model (its model name included).
const REAL_MODEL_CONFIG: &str = include_str!("../../config/worker-smollm2.toml");
const POOL: &str = "demo";
const POLICY: &str = "failover";

#[derive(Parser)]
#[command(
    version,
    about = "A gateway and three workers in one process, no external service"
)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// Plugin directory; the demo pool runs its `failover` policy from there.
    #[arg(long, default_value = "target/plugins")]
    plugins: PathBuf,
    /// A GGUF model the workers run on the CPU (scripts/fetch-model.sh
    /// fetches SmolLM2-135M-Instruct); without it, sim workers.
    #[arg(long)]
    model: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tracing = protocol::traces::TracingConfig::default();
    let _ = protocol::logs::init(
        "info",
        protocol::logs::LogFormat::Text,
        &tracing,
        "llmgw-demo",
    );
    let cli = Cli::parse();
    run(cli.api, cli.admin, &cli.plugins, cli.model.as_deref()).await
}

/// Starts the demo and serves until Ctrl-C or SIGTERM: sim workers, or with
/// `model` (a GGUF file) workers running that model on the CPU.
async fn run(
    api: SocketAddr,
    admin: SocketAddr,
    plugins: &Path,
    model: Option<&Path>,
) -> anyhow::Result<()> {
    // Workers publish KV events and load in process; the gateway mirrors them.
    let bus = Bus::local();
    let mut handles = Vec::new();
    let mut pool = String::new();
    let (base, tokenizer) = match model {
        Some(path) => {
            let file = Path::new("config/worker-smollm2.toml");
            let mut config = WorkerConfig::parse(REAL_MODEL_CONFIG, file)?;
            config.engine.model_path = Some(path.to_path_buf());
            (config, path.display().to_string())
        }
        None => (
            WorkerConfig::sim("", ([127, 0, 0, 1], 0).into(), MODEL, ""),
            "builtin".to_string(),
        ),
    };
    let model_name = base.model.clone();
    for (id, zone) in [("w1", "a"), ("w2", "a"), ("w3", "b")] {
        let mut config = base.clone();
        config.id = id.to_string();
        config.listen = ([127, 0, 0, 1], 0).into();
        config.zone = zone.to_string();
        config.pool = POOL.to_string();
        let worker = workers::start_on_bus(config, Some(bus.clone())).await?;
        pool.push_str(&format!(
            "[[pools.workers]]\nid = \"{id}\"\nurl = \"{}\"\nzone = \"{zone}\"\n",
            worker.url()
        ));
        handles.push(worker);
    }
    // The pool runs under the shipped `failover` policy when it is built
    // (scripts/build-plugins.sh), else under the built-in one.
    let policy = if plugins.join(POLICY).is_dir() {
        format!("[plugins]\ndir = {:?}\n", plugins.display().to_string())
    } else {
        eprintln!(
            "{} not built: serving with the built-in policy",
            plugins.join(POLICY).display()
        );
        String::new()
    };
    let binding = if policy.is_empty() {
        String::new()
    } else {
        format!("policy = {{ plugin = \"{POLICY}\" }}\n")
    };
    let config = Config::from_toml(&format!(
        "zone = \"a\"\n[listeners]\napi = \"{api}\"\nadmin = \"{admin}\"\ndrain_grace_ms = 5000\nworker_id_header = true\n{policy}\
         [[pools]]\nname = \"{POOL}\"\nmodels = [\"{model_name}\"]\ntokenizer = {tokenizer:?}\n{binding}{pool}"
    ))?;
    let gateway = gateway::start_on_bus(config, Some(bus)).await?;
    let api = gateway.api_addr();
    println!(
        "gateway  http://{api}   (admin http://{})",
        gateway.admin_addr()
    );
    for (worker, (id, zone)) in handles.iter().zip([("w1", "a"), ("w2", "a"), ("w3", "b")]) {
        println!("worker   {}   id {id}, zone {zone}", worker.url());
    }
    println!(
        "\nno API keys: the demo listens on this host only, and anyone on it may use it \
         (a gateway on another address needs auth.keys_file, or auth.mode = \"none\" said explicitly)"
    );
    println!(
        "\ntry:\n  curl -s http://{api}/v1/chat/completions -H 'content-type: application/json' \\\n    \
         -d '{{\"model\":\"{model_name}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'\n\nCtrl-C stops."
    );
    gateway::shutdown_signal().await;
    gateway.shutdown().await;
    for worker in handles {
        worker.shutdown(std::time::Duration::from_secs(5)).await;
    }
    Ok(())
}
