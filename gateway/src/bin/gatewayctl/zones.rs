//! `gatewayctl zone shift ZONE --for DURATION` and `zone unshift ZONE`: a
//! zonal shift, as cloud load balancers offer it. The shift is a key under
//! `{prefix}/shifts/` on a lease as long as the shift, so it ends by itself;
//! every gateway then sends new requests away from the zone while any worker
//! elsewhere can take them, and lets those in flight finish.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use etcd_client::{Client, PutOptions};
use protocol::control::Keys;
use serde_json::json;

use super::workers::registrations;

/// `30s`, `15m`, `2h`: how long a shift lasts.
pub fn duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 15m or 2h"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{text}` is not a duration like 30s, 15m or 2h")),
    };
    if seconds == 0 {
        return Err("a shift lasts at least a second".to_string());
    }
    Ok(Duration::from_secs(seconds))
}

pub async fn shift(
    client: &mut Client,
    keys: &Keys,
    zone: &str,
    lasting: Duration,
) -> anyhow::Result<()> {
    let registrations = registrations(client, keys).await?;
    let (inside, outside) = registrations
        .iter()
        .partition::<Vec<_>, _>(|r| r.zone == zone);
    if inside.is_empty() {
        bail!(
            "no registered worker is in zone `{zone}`; nothing to shift (zones: {})",
            zones(&registrations)
        );
    }
    let lease = client
        .lease_grant(lasting.as_secs() as i64, None)
        .await?
        .id();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let until_ms = now_ms + lasting.as_millis() as u64;
    let value = json!({ "at_ms": now_ms, "until_ms": until_ms }).to_string();
    client
        .put(
            keys.shift(zone),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    println!(
        "zone `{zone}` shifted away for {} s: new requests go to the {} registered worker(s) elsewhere, those in flight finish; it ends by itself",
        lasting.as_secs(),
        outside.len()
    );
    if outside.is_empty() {
        eprintln!("warning: no registered worker is outside zone `{zone}`: its workers keep serving until one is");
    }
    Ok(())
}

pub async fn unshift(client: &mut Client, keys: &Keys, zone: &str) -> anyhow::Result<()> {
    let deleted = client.delete(keys.shift(zone), None).await?.deleted();
    if deleted == 0 {
        bail!("zone `{zone}` is not shifted");
    }
    println!("zone `{zone}` takes new requests again");
    Ok(())
}

fn zones(registrations: &[protocol::control::Registration]) -> String {
    let mut zones: Vec<&str> = registrations.iter().map(|r| r.zone.as_str()).collect();
    zones.sort();
    zones.dedup();
    zones.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(duration("30").is_err() && duration("m").is_err() && duration("0s").is_err());
    }
}
