//! `gatewayctl workers` and `gatewayctl worker cordon|uncordon|drain`: the
//! registered workers as they report themselves, and taking one out of
//! rotation through etcd (`{prefix}/cordons/{pool}/{id}`), which every
//! gateway follows: a cordoned worker gets no new request, while those in
//! flight finish.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use etcd_client::Client;
use gateway::config::UpstreamConfig;
use gateway::probe::fetch_report;
use gateway::upstream::Upstream;
use protocol::control::{GatewayReport, Key, Keys, Registration};
use serde_json::{json, Value};

use super::get_prefix;

/// `gatewayctl workers`: every registered worker, cordoned or not, with
/// the health and load it reports itself.
pub async fn list(client: &mut Client, keys: &Keys, as_json: bool) -> anyhow::Result<()> {
    let registrations = registrations(client, keys).await?;
    let cordoned = cordoned(client, keys).await?;
    // What the gateways say they do not route to, by worker key.
    let mut ignored: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for report in gateway_reports(client, keys).await? {
        for line in report.ignored {
            if let Some((key, reason)) = line.split_once(": ") {
                let reasons = ignored.entry(key.to_string()).or_default();
                if !reasons.iter().any(|r| r == reason) {
                    reasons.push(reason.to_string());
                }
            }
        }
    }
    let upstream = Upstream::new(&UpstreamConfig::default())?;
    let probes = registrations.iter().map(|r| {
        let upstream = upstream.clone();
        async move {
            let url = r.url.parse().ok()?;
            tokio::time::timeout(Duration::from_secs(1), fetch_report(&upstream, &url))
                .await
                .ok()
                .flatten()
        }
    });
    let reports = futures_util::future::join_all(probes).await;
    let rows: Vec<Value> = registrations
        .iter()
        .zip(reports)
        .map(|(r, report)| {
            json!({
                "pool": r.pool,
                "id": r.id,
                "url": r.url,
                "zone": r.zone,
                "labels": r.labels,
                "model": r.model,
                "engine": r.engine,
                "block_size": r.block_size,
                "started_at_ms": r.started_at_ms,
                "health": report.as_ref().map_or("unreachable", |h| h.status.as_str()),
                "cordoned": cordoned.contains(&(r.pool.clone(), r.id.clone())),
                "ignored_by_gateways": ignored.get(&keys.worker(&r.pool, &r.id)),
                "load": report.as_ref().map(|h| h.load),
            })
        })
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<14} {:<26} {:<10} {:<11} {:<9} {:>7} {:>7} {:>6}  LABELS",
        "POOL", "ID", "URL", "ZONE", "HEALTH", "ROTATION", "RUNNING", "WAITING", "KV%"
    );
    for row in rows {
        let load = &row["load"];
        let kv = match (
            load["kv_blocks_used"].as_f64(),
            load["kv_blocks_total"].as_f64(),
        ) {
            (Some(used), Some(total)) if total > 0.0 => format!("{:.0}", 100.0 * used / total),
            _ => "-".to_string(),
        };
        let labels: Vec<String> = row["labels"]
            .as_object()
            .map(|l| {
                l.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<12} {:<14} {:<26} {:<10} {:<11} {:<9} {:>7} {:>7} {:>6}  {}",
            row["pool"].as_str().unwrap_or_default(),
            row["id"].as_str().unwrap_or_default(),
            row["url"].as_str().unwrap_or_default(),
            row["zone"].as_str().unwrap_or_default(),
            row["health"].as_str().unwrap_or_default(),
            if row["cordoned"] == true {
                "cordoned"
            } else {
                "in"
            },
            load["running"]
                .as_u64()
                .map_or("-".to_string(), |n| n.to_string()),
            load["waiting"]
                .as_u64()
                .map_or("-".to_string(), |n| n.to_string()),
            kv,
            labels.join(","),
        );
        // A registration the gateways do not route to must not look routed.
        if let Some(reasons) = row["ignored_by_gateways"].as_array() {
            for reason in reasons {
                println!(
                    "    ignored by gateways: {}",
                    reason.as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// What `worker` asks of one worker.
#[derive(Clone, Copy, PartialEq)]
pub enum Rotation {
    Cordon,
    Uncordon,
    /// Cordon, then wait until it runs nothing.
    Drain,
}

/// Cordons, uncordons or drains worker `id` (of `pool`, which may be left
/// out when its registration names it). Refuses, without `force`, to cordon
/// a pool's last registered worker in rotation.
pub async fn rotate(
    client: &mut Client,
    keys: &Keys,
    id: &str,
    pool: Option<&str>,
    rotation: Rotation,
    force: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let registrations = registrations(client, keys).await?;
    let named: Vec<&Registration> = registrations
        .iter()
        .filter(|r| r.id == id && pool.is_none_or(|p| r.pool == p))
        .collect();
    let (pool, registration) = match (named.as_slice(), pool) {
        ([one], _) => (one.pool.clone(), Some(*one)),
        // A static worker of the gateways' files: not in etcd, but cordons
        // name it all the same.
        ([], Some(pool)) => (pool.to_string(), None),
        ([], None) => {
            bail!("no registered worker `{id}`; name its pool with --pool for a static worker")
        }
        (_, _) => bail!("workers `{id}` are registered in several pools; name one with --pool"),
    };
    let key = keys.cordon(&pool, id);
    if rotation == Rotation::Uncordon {
        client.delete(key, None).await?;
        println!("uncordoned {pool}/{id}: it takes new requests again");
        return Ok(());
    }
    let cordoned = cordoned(client, keys).await?;
    let left = registrations
        .iter()
        .filter(|r| r.pool == pool && r.id != id)
        .filter(|r| !cordoned.contains(&(r.pool.clone(), r.id.clone())))
        .count();
    if left == 0 && registration.is_some() && !force {
        bail!(
            "cordoning {id} leaves pool `{pool}` no registered worker in rotation, so it would route nothing; --force to cordon it anyway"
        );
    }
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    client
        .put(key, json!({ "at_ms": at_ms }).to_string(), None)
        .await?;
    println!("cordoned {pool}/{id}: no new request goes to it, those in flight finish ({left} other registered worker(s) in rotation)");
    if rotation == Rotation::Drain {
        let Some(registration) = registration else {
            bail!("{id} is not registered: its load cannot be watched; it stays cordoned");
        };
        drain(registration, timeout).await?;
    }
    Ok(())
}

/// How long a worker must run nothing to count as drained: a gateway that
/// had not yet seen the cordon may still send it a request meanwhile.
const DRAINED_FOR: Duration = Duration::from_secs(1);

/// Waits until `registration`'s worker has reported nothing running or
/// waiting for [`DRAINED_FOR`].
async fn drain(registration: &Registration, timeout: Duration) -> anyhow::Result<()> {
    let upstream = Upstream::new(&UpstreamConfig::default())?;
    let url = registration.url.parse()?;
    let deadline = Instant::now() + timeout;
    let mut idle_since = None;
    loop {
        let report =
            tokio::time::timeout(Duration::from_secs(1), fetch_report(&upstream, &url)).await;
        match report.ok().flatten() {
            Some(r) if r.load.running + r.load.waiting == 0 => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= DRAINED_FOR {
                    println!(
                        "drained {}/{}: nothing running",
                        registration.pool, registration.id
                    );
                    return Ok(());
                }
            }
            Some(_) if Instant::now() < deadline => idle_since = None,
            Some(r) => bail!(
                "{} still runs {} request(s) after {} s; it stays cordoned",
                registration.id,
                r.load.running + r.load.waiting,
                timeout.as_secs()
            ),
            None => bail!(
                "{} does not answer its health probe; it stays cordoned",
                registration.id
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn gateway_reports(client: &mut Client, keys: &Keys) -> anyhow::Result<Vec<GatewayReport>> {
    Ok(get_prefix(client, &keys.gateways())
        .await?
        .values()
        .filter_map(|(value, _)| serde_json::from_slice(value).ok())
        .collect())
}

pub(super) async fn registrations(
    client: &mut Client,
    keys: &Keys,
) -> anyhow::Result<Vec<Registration>> {
    Ok(get_prefix(client, &keys.workers())
        .await?
        .values()
        .filter_map(|(value, _)| serde_json::from_slice(value).ok())
        .collect())
}

/// The workers cordoned, as (pool, id).
pub(super) async fn cordoned(
    client: &mut Client,
    keys: &Keys,
) -> anyhow::Result<HashSet<(String, String)>> {
    Ok(get_prefix(client, &keys.cordons())
        .await?
        .keys()
        .filter_map(|key| match keys.parse(key) {
            Some(Key::Cordon { pool, id }) => Some((pool, id)),
            _ => None,
        })
        .collect())
}
