//! `gatewayctl config get`: the routing document the gateways serve, from
//! their reports under `{prefix}/gateways/`, and apart (on stderr) whether
//! the latest one written is in force, held back or refused, and why.

use std::collections::BTreeMap;

use anyhow::bail;
use etcd_client::{Client, GetOptions};
use protocol::control::{GatewayReport, Keys};

use super::get_prefix;

pub async fn print(client: &mut Client, keys: &Keys, latest: bool) -> anyhow::Result<()> {
    let got = client.get(keys.config(), None).await?;
    let Some(kv) = got.kvs().first() else {
        bail!("no routing config in etcd under {}", keys.config());
    };
    let written = kv.mod_revision();
    let reports: Vec<GatewayReport> = get_prefix(client, &keys.gateways())
        .await?
        .values()
        .filter_map(|(value, _)| serde_json::from_slice(value).ok())
        .collect();
    if latest || reports.is_empty() {
        let note = if reports.is_empty() {
            "; no gateway reports what it serves"
        } else {
            ""
        };
        eprintln!("# revision {written}, the latest written{note}");
        print!("{}", String::from_utf8_lossy(kv.value()));
        return Ok(());
    }
    // The revision most gateways serve.
    let mut serving: BTreeMap<Option<i64>, usize> = BTreeMap::new();
    for r in &reports {
        *serving.entry(r.config_revision).or_default() += 1;
    }
    let (in_force, on) = serving
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(revision, n)| (*revision, *n))
        .expect("at least one report");
    let total = reports.len();
    let Some(in_force) = in_force else {
        // Their files' configs are not in etcd: the latest written is what there is to show.
        eprintln!("# {on} of {total} gateways serve their own file's config, not etcd's");
        note_latest(&reports, written);
        print!("{}", String::from_utf8_lossy(kv.value()));
        return Ok(());
    };
    eprintln!("# revision {in_force}, in force on {on} of {total} gateways");
    if in_force != written {
        note_latest(&reports, written);
    }
    let then = client
        .get(
            keys.config(),
            Some(GetOptions::new().with_revision(in_force)),
        )
        .await;
    match then.ok().as_ref().and_then(|g| g.kvs().first()) {
        Some(kv) => print!("{}", String::from_utf8_lossy(kv.value())),
        None => bail!("revision {in_force} is compacted out of etcd's history; `config get --latest` shows the latest written"),
    }
    Ok(())
}

/// Says on stderr what became of the latest document written.
fn note_latest(reports: &[GatewayReport], written: i64) {
    let serving = reports
        .iter()
        .filter(|r| r.config_revision == Some(written))
        .count();
    let pending = reports
        .iter()
        .filter(|r| r.pending_config_revision == Some(written))
        .count();
    let refusals: Vec<&str> = reports
        .iter()
        .filter_map(|r| r.refused.as_ref())
        .filter(|(revision, _)| *revision >= written)
        .map(|(_, reason)| reason.as_str())
        .collect();
    eprintln!(
        "# revision {written}, the latest written, is in force on {serving} of {} gateways, held back on {pending}, refused on {}",
        reports.len(),
        refusals.len()
    );
    if let Some(reason) = refusals.first() {
        eprintln!("#   refused: {reason}");
    }
    eprintln!("#   `gatewayctl config get --latest` prints it");
}
