//! The embedded demo: three `sim` workers (two in zone `a`, one in `b`) and a
//! gateway in front of them, in one process, with no external service.

use std::net::SocketAddr;

use workers::WorkerConfig;

use crate::config::Config;

pub const MODEL: &str = "sim-llama";

/// Starts the demo and serves until Ctrl-C or SIGTERM.
pub async fn run(api: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    let mut pool = String::new();
    for (id, zone) in [("w1", "a"), ("w2", "a"), ("w3", "b")] {
        let worker = workers::start(WorkerConfig::sim(
            id,
            ([127, 0, 0, 1], 0).into(),
            MODEL,
            zone,
        ))
        .await?;
        pool.push_str(&format!(
            "[[pools.workers]]\nid = \"{id}\"\nurl = \"{}\"\nzone = \"{zone}\"\n",
            worker.url()
        ));
        handles.push(worker);
    }
    let config = Config::from_toml(&format!(
        "zone = \"a\"\n[listeners]\napi = \"{api}\"\nadmin = \"{admin}\"\ndrain_grace_ms = 5000\n\
         [[pools]]\nname = \"demo\"\nmodels = [\"{MODEL}\"]\n{pool}"
    ))?;
    let gateway = crate::start(config).await?;
    let api = gateway.api_addr();
    println!(
        "gateway  http://{api}   (admin http://{})",
        gateway.admin_addr()
    );
    for (worker, (id, zone)) in handles.iter().zip([("w1", "a"), ("w2", "a"), ("w3", "b")]) {
        println!("worker   {}   id {id}, zone {zone}", worker.url());
    }
    println!(
        "\ntry:\n  curl -s http://{api}/v1/chat/completions -H 'content-type: application/json' \\\n    \
         -d '{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'\n\nCtrl-C stops."
    );
    crate::shutdown_signal().await;
    gateway.shutdown().await;
    for worker in handles {
        worker.shutdown(std::time::Duration::from_secs(5)).await;
    }
    Ok(())
}
