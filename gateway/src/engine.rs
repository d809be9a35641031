//! The engines a worker may run, and each one's conventions: where it says
//! it is up, what it says it serves, which of its Prometheus gauges tell
//! its load, and whether it publishes KV events over ZeroMQ. Gauge names are
//! those of each engine's source; names have moved between versions, so
//! every known variant is accepted. Pure.

use http::Uri;
use protocol::LoadReport;
use serde::{Deserialize, Serialize};

/// What a worker runs, and where the gateway reads it besides its URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Engine {
    pub kind: EngineKind,
    /// Where its Prometheus metrics are scraped for load, for the kinds
    /// whose metrics tell it.
    pub metrics_url: Option<Uri>,
    /// Where it publishes KV events over ZeroMQ (vLLM, SGLang).
    pub kv_events: Option<ZmqEvents>,
}

/// An engine's KV-event publisher (`tcp://host:port`), and its replay
/// socket if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ZmqEvents {
    pub endpoint: String,
    pub replay: Option<String>,
}

impl Engine {
    /// The engine of a worker at `url`, from what its config entry or
    /// registration says; `metrics_url` defaults to `{url}/metrics` for the
    /// kinds that scrape it. Errors name the field at fault.
    pub fn check(
        url: &Uri,
        kind: EngineKind,
        metrics_url: Option<&str>,
        kv_events: Option<&str>,
        kv_replay: Option<&str>,
    ) -> Result<Engine, (&'static str, String)> {
        let metrics_url = match (metrics_url, kind.scrapes_metrics()) {
            (Some(_), false) => {
                let reason = format!("engine `{}` has no metrics to scrape", kind.name());
                return Err(("metrics_url", reason));
            }
            (Some(url), true) => Some(http_url(url).map_err(|e| ("metrics_url", e))?),
            (None, true) => Some(
                format!(
                    "{}://{}/metrics",
                    url.scheme_str().unwrap_or("http"),
                    url.authority().map_or("", |a| a.as_str())
                )
                .parse()
                .map_err(|e| ("url", format!("{e}")))?,
            ),
            (None, false) => None,
        };
        let kv_events = match (kv_events, kv_replay) {
            (None, Some(_)) => return Err(("kv_replay", "needs kv_events".to_string())),
            (None, None) => None,
            (Some(_), _) if !kind.publishes_zmq_events() => {
                let reason = format!(
                    "engine `{}` publishes no KV events over ZeroMQ (vllm and sglang do)",
                    kind.name()
                );
                return Err(("kv_events", reason));
            }
            (Some(endpoint), replay) => Some(ZmqEvents {
                endpoint: zmq_endpoint(endpoint).map_err(|e| ("kv_events", e))?,
                replay: replay
                    .map(zmq_endpoint)
                    .transpose()
                    .map_err(|e| ("kv_replay", e))?,
            }),
        };
        Ok(Engine {
            kind,
            metrics_url,
            kv_events,
        })
    }
}

/// A metrics endpoint: `http://` or `https://`, a host, any path.
fn http_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!(
            "`{url}` must be an http:// or https:// URL with a host"
        )),
    }
}

/// A ZeroMQ endpoint to connect to: `tcp://host:port` (a publisher's
/// `tcp://*:port` names where it binds, not where to reach it).
fn zmq_endpoint(endpoint: &str) -> Result<String, String> {
    let valid = endpoint.strip_prefix("tcp://").and_then(|rest| {
        let (host, port) = rest.rsplit_once(':')?;
        let real_host = !host.is_empty() && host != "*" && !host.contains('/');
        (real_host && port.parse::<u16>().is_ok_and(|p| p > 0)).then_some(())
    });
    match valid {
        Some(()) => Ok(endpoint.to_string()),
        None => Err(format!("`{endpoint}` must be tcp://host:port")),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// This project's worker: `/health` answers a `HealthReport` with its
    /// model and load, and KV events come over the bus.
    #[default]
    Llmgw,
    /// vLLM's OpenAI server: `/health` answers 200 with an empty body.
    Vllm,
    /// SGLang's server: `/health` answers 200.
    Sglang,
    /// llama.cpp's `llama-server`: `/health` answers 503 while it loads the
    /// model; load needs `--metrics`.
    Llamacpp,
    /// Any OpenAI-compatible server: up while `/v1/models` answers.
    Openai,
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(name: &str) -> Result<EngineKind, String> {
        use EngineKind::*;
        [Llmgw, Vllm, Sglang, Llamacpp, Openai]
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                format!("unknown engine `{name}`: expected llmgw, vllm, sglang, llamacpp or openai")
            })
    }
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Llmgw => "llmgw",
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "sglang",
            EngineKind::Llamacpp => "llamacpp",
            EngineKind::Openai => "openai",
        }
    }

    /// The path whose 2xx answer says the server is up.
    pub fn health_path(self) -> &'static str {
        match self {
            EngineKind::Openai => "/v1/models",
            _ => "/health",
        }
    }

    /// Whether load comes from the engine's Prometheus metrics (ours reports
    /// its own in `/health` and on the bus; a plain OpenAI server has none).
    pub fn scrapes_metrics(self) -> bool {
        !self.gauges().running.is_empty()
    }

    /// Whether it can publish KV events over ZeroMQ.
    pub fn publishes_zmq_events(self) -> bool {
        matches!(self, EngineKind::Vllm | EngineKind::Sglang)
    }

    fn gauges(self) -> Gauges {
        match self {
            EngineKind::Vllm => Gauges {
                running: &["vllm:num_requests_running"],
                waiting: &["vllm:num_requests_waiting"],
            },
            EngineKind::Sglang => Gauges {
                // Some exporters rewrite the colon to an underscore.
                running: &["sglang:num_running_reqs", "sglang_num_running_reqs"],
                waiting: &["sglang:num_queue_reqs", "sglang_num_queue_reqs"],
            },
            EngineKind::Llamacpp => Gauges {
                running: &["llamacpp:requests_processing"],
                waiting: &["llamacpp:requests_deferred"],
            },
            EngineKind::Llmgw | EngineKind::Openai => Gauges {
                running: &[],
                waiting: &[],
            },
        }
    }
}

/// The gauge names, with their variants, of requests running and waiting.
struct Gauges {
    running: &'static [&'static str],
    waiting: &'static [&'static str],
}

/// The load a `kind` engine's Prometheus exposition `text` tells: each gauge
/// summed over its samples (one per model, engine or data-parallel rank).
/// `None` when the text does not parse or lacks a request gauge, so that such
/// a scrape counts as unknown load, never as idle. KV-cache figures are 0 of
/// 0 (unknown) where the engine does not tell them.
pub fn load_from_metrics(kind: EngineKind, text: &str) -> Option<LoadReport> {
    let gauges = kind.gauges();
    let (_, families) = nom_openmetrics::parser::prometheus(text).ok()?;
    let samples: Vec<Sample> = families.iter().flat_map(|f| &f.samples).collect();
    let (kv_blocks_used, kv_blocks_total) = kv_blocks(kind, &samples);
    Some(LoadReport {
        running: sum(&samples, gauges.running)?.round() as usize,
        waiting: sum(&samples, gauges.waiting)?.round() as usize,
        kv_blocks_used,
        kv_blocks_total,
        ..LoadReport::default()
    })
}

type Sample<'a> = &'a nom_openmetrics::Sample<'a>;

/// A gauge summed over its samples, under any of its `names`; `None` if absent.
fn sum(samples: &[Sample], names: &[&str]) -> Option<f64> {
    let values: Vec<f64> = samples
        .iter()
        .filter(|s| names.contains(&s.name()))
        .map(|s| s.number())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>().max(0.0))
}

/// KV-cache blocks used and in all, where the engine tells them.
fn kv_blocks(kind: EngineKind, samples: &[Sample]) -> (usize, usize) {
    match kind {
        // A usage fraction per engine core, and the core's blocks as a label
        // of its config info gauge.
        EngineKind::Vllm => {
            let core = |s: Sample| {
                let label = |name| s.labels().iter().find(|l| l.name == name);
                label("engine").map_or(String::new(), |l| l.value.clone())
            };
            let blocks: Vec<(String, f64)> = samples
                .iter()
                .filter(|s| s.name() == "vllm:cache_config_info")
                .filter_map(|s| {
                    let n = s.labels().iter().find(|l| l.name == "num_gpu_blocks")?;
                    Some((core(s), n.value.parse().ok()?))
                })
                .collect();
            let used: f64 = samples
                .iter()
                .filter(|s| {
                    matches!(
                        s.name(),
                        "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc"
                    )
                })
                .filter_map(|s| {
                    let (_, total) = blocks.iter().find(|(c, _)| *c == core(s))?;
                    Some(s.number().clamp(0.0, 1.0) * total)
                })
                .sum();
            let total: f64 = blocks.iter().map(|(_, n)| n).sum();
            (used.round() as usize, total.round() as usize)
        }
        // Tokens used and in all, counted here in pages.
        EngineKind::Sglang => {
            // One page size, repeated per data-parallel rank: not summed.
            let page = samples
                .iter()
                .filter(|s| s.name() == "sglang:page_size")
                .map(|s| s.number())
                .fold(1.0, f64::max);
            match (
                sum(samples, &["sglang:num_used_tokens"]),
                sum(samples, &["sglang:max_total_num_tokens"]),
            ) {
                (Some(used), Some(total)) => (
                    (used / page).round() as usize,
                    (total / page).round() as usize,
                ),
                _ => (0, 0),
            }
        }
        // llama.cpp's builds dropped their KV gauge; the rest tell none.
        EngineKind::Llmgw | EngineKind::Llamacpp | EngineKind::Openai => (0, 0),
    }
}

/// The model ids an OpenAI `/v1/models` answer lists.
pub fn served_models(body: &[u8]) -> Option<Vec<String>> {
    let list: serde_json::Value = serde_json::from_slice(body).ok()?;
    list.get("data")?
        .as_array()?
        .iter()
        .map(|m| Some(m.get("id")?.as_str()?.to_string()))
        .collect()
}

/// Why a server that answers does not serve `pool_models`, if it does not:
/// the gateway forwards the model a client names, so the server must list
/// every model of its pool.
pub fn model_problem(pool_models: &[String], served: &[String]) -> Option<String> {
    let missing: Vec<&str> = pool_models
        .iter()
        .filter(|m| !served.contains(m))
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "misconfigured: serves [{}], not the pool's [{}]",
            served.join(", "),
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // As the engines write them (labels, HELP and TYPE lines included).
    const VLLM: &str = "\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0
vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.5
vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.25
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size=\"16\",engine=\"0\",num_gpu_blocks=\"1000\"} 1.0
vllm:cache_config_info{block_size=\"16\",engine=\"1\",num_gpu_blocks=\"400\"} 1.0
";
    const SGLANG: &str = "\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name=\"m\",dp=\"0\"} 7.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name=\"m\",dp=\"0\"} 1.0
# TYPE sglang:num_used_tokens gauge
sglang:num_used_tokens{model_name=\"m\",dp=\"0\"} 320.0
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{model_name=\"m\",dp=\"0\"} 6400.0
# TYPE sglang:page_size gauge
sglang:page_size{model_name=\"m\",dp=\"0\"} 16.0
sglang:page_size{model_name=\"m\",dp=\"1\"} 16.0
";
    const LLAMACPP: &str = "\
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
";

    fn load(kind: EngineKind, text: &str) -> Option<(usize, usize)> {
        load_from_metrics(kind, text).map(|l| (l.running, l.waiting))
    }

    #[test]
    fn each_engine_reads_its_own_gauges_summed_over_samples() {
        assert_eq!(load(EngineKind::Vllm, VLLM), Some((5, 4)));
        assert_eq!(load(EngineKind::Sglang, SGLANG), Some((7, 1)));
        assert_eq!(
            load(EngineKind::Sglang, &SGLANG.replace("sglang:", "sglang_")),
            Some((7, 1))
        );
        assert_eq!(load(EngineKind::Llamacpp, LLAMACPP), Some((2, 0)));
    }

    #[test]
    fn kv_blocks_come_from_the_engines_that_tell_them() {
        let kv = |kind, text| {
            load_from_metrics(kind, text).map(|l| (l.kv_blocks_used, l.kv_blocks_total))
        };
        // 0.5 of engine 0's 1000 blocks and 0.25 of engine 1's 400.
        assert_eq!(kv(EngineKind::Vllm, VLLM), Some((600, 1400)));
        // 320 of 6400 tokens in pages of 16.
        assert_eq!(kv(EngineKind::Sglang, SGLANG), Some((20, 400)));
        assert_eq!(kv(EngineKind::Llamacpp, LLAMACPP), Some((0, 0)));
    }

    #[test]
    fn missing_gauges_are_unknown_load_not_idle() {
        assert_eq!(load(EngineKind::Vllm, LLAMACPP), None);
        assert_eq!(load(EngineKind::Llamacpp, ""), None);
        assert_eq!(load(EngineKind::Openai, VLLM), None);
        assert!(!EngineKind::Llmgw.scrapes_metrics() && !EngineKind::Openai.scrapes_metrics());
    }

    #[test]
    fn a_server_must_list_every_model_of_its_pool() {
        let body = br#"{"object":"list","data":[{"id":"a","object":"model"},{"id":"b"}]}"#;
        let served = served_models(body).unwrap();
        assert_eq!(served, ["a", "b"]);
        let pool = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(model_problem(&pool(&["a", "b"]), &served), None);
        let problem = model_problem(&pool(&["a", "c"]), &served).unwrap();
        assert!(problem.contains("[c]"), "{problem}");
        assert_eq!(served_models(b"not json"), None);
    }
}
