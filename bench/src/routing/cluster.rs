//! A fresh cluster per strategy, so none inherits another's warm caches: sim
//! workers in two zones on one in-process bus, and a gateway in front of them
//! for the strategies the gateway implements.

use std::time::Duration;

use gateway::config::RoutingConfig;
use protocol::Bus;
use workers::{WorkerConfig, WorkerHandle};

use super::workload::MODEL;
use super::zmq::Publishers;

pub const POOL: &str = "bench";
/// The gateway's zone; workers elsewhere are remote.
pub const LOCAL_ZONE: &str = "a";

/// The workers' engine: cache geometry, batching and the sim's timing model.
#[derive(Clone, serde::Serialize)]
pub struct Sizing {
    pub workers: usize,
    /// How many of `workers` sit in the other zone.
    pub remote_workers: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_running: usize,
    pub max_prefill_tokens_per_step: usize,
    pub max_model_len: usize,
    pub prefill_us_per_token: u64,
    pub decode_step_us: u64,
    pub decode_us_per_seq: u64,
}

pub struct Member {
    pub id: String,
    pub url: String,
    pub zone: String,
}

pub struct Cluster {
    pub members: Vec<Member>,
    handles: Vec<WorkerHandle>,
}

impl Cluster {
    /// The ids the workers of `sizing` get.
    pub fn ids(sizing: &Sizing) -> Vec<String> {
        (0..sizing.workers).map(|i| format!("w{i}")).collect()
    }

    /// Starts the workers, publishing on `bus`; subscribe to it first to see every event.
    pub async fn start(sizing: &Sizing, bus: &Bus) -> anyhow::Result<Cluster> {
        let (mut members, mut handles) = (Vec::new(), Vec::new());
        for (i, id) in Cluster::ids(sizing).into_iter().enumerate() {
            let zone = if i < sizing.workers - sizing.remote_workers {
                LOCAL_ZONE
            } else {
                "b"
            };
            let mut config = WorkerConfig::sim(&id, ([127, 0, 0, 1], 0).into(), MODEL, zone);
            config.pool = POOL.to_string();
            let e = &mut config.engine;
            e.block_size = sizing.block_size;
            e.num_blocks = sizing.num_blocks;
            e.max_running = sizing.max_running;
            e.max_prefill_tokens_per_step = sizing.max_prefill_tokens_per_step;
            e.max_model_len = sizing.max_model_len;
            e.sim.prefill_us_per_token = sizing.prefill_us_per_token;
            e.sim.decode_step_us = sizing.decode_step_us;
            e.sim.decode_us_per_seq = sizing.decode_us_per_seq;
            let handle = workers::start_on_bus(config, Some(bus.clone())).await?;
            members.push(Member {
                id,
                url: handle.url(),
                zone: zone.to_string(),
            });
            handles.push(handle);
        }
        Ok(Cluster { members, handles })
    }

    /// A gateway over the workers, mirroring their events from `bus`, or,
    /// given `zmq` publishers, taking the workers for vLLM engines whose
    /// events come from those (and no bus at all).
    pub async fn gateway(
        &self,
        sizing: &Sizing,
        routing: &RoutingConfig,
        bus: &Bus,
        zmq: Option<&Publishers>,
    ) -> anyhow::Result<gateway::Handle> {
        let mut toml = format!(
            "zone = \"{LOCAL_ZONE}\"\n[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
             [[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\nblock_size = {}\ntokenizer = \"builtin\"\n",
            sizing.block_size
        );
        if zmq.is_some() {
            toml.push_str("engine = \"vllm\"\n");
        }
        for m in &self.members {
            toml.push_str(&format!(
                "[[pools.workers]]\nid = \"{}\"\nurl = \"{}\"\nzone = \"{}\"\n",
                m.id, m.url, m.zone
            ));
            if let Some(e) = zmq.and_then(|z| z.endpoints.get(&m.id)) {
                toml.push_str(&format!(
                    "kv_events = \"{}\"\nkv_replay = \"{}\"\n",
                    e.events, e.replay
                ));
            }
        }
        let mut config = gateway::config::RawConfig::from_toml(&toml)?;
        config.routing = routing.clone();
        let bus = zmq.is_none().then(|| bus.clone());
        Ok(gateway::start_on_bus(config.check()?, bus).await?)
    }

    pub async fn shutdown(self) {
        for handle in self.handles {
            handle.shutdown(Duration::from_secs(1)).await;
        }
    }
}
