//! The last state applied from etcd, kept on local disk (`etcd.snapshot`):
//! every key under the fleet's prefix (registrations, the routing document,
//! plugins, cordons). A gateway that starts while etcd is unreachable
//! serves it, never its file's static workers alone, and says so; the first
//! answer from etcd replaces it.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::follow::EtcdSnapshot;

#[derive(Serialize, Deserialize)]
struct Saved {
    revision: i64,
    /// Milliseconds since the Unix epoch.
    saved_at_ms: u64,
    kvs: Vec<SavedKv>,
}

#[derive(Serialize, Deserialize)]
struct SavedKv {
    key: String,
    /// Base64: plugins are bytes.
    value: String,
    mod_revision: i64,
}

/// Writes `snapshot` to `path` whole or not at all (a temporary file
/// renamed over it), so a crash mid-write leaves the previous one.
pub fn write(path: &Path, snapshot: &EtcdSnapshot) -> std::io::Result<()> {
    let saved = Saved {
        revision: snapshot.revision,
        saved_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        kvs: snapshot
            .kvs
            .iter()
            .map(|(key, (value, mod_revision))| SavedKv {
                key: key.clone(),
                value: base64::engine::general_purpose::STANDARD.encode(value),
                mod_revision: *mod_revision,
            })
            .collect(),
    };
    let text = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

/// The snapshot saved at `path`, with when it was saved.
pub fn read(path: &Path) -> Result<(EtcdSnapshot, u64), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let saved: Saved = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a saved etcd state: {e}", path.display()))?;
    let kvs = saved
        .kvs
        .into_iter()
        .map(|kv| {
            let value = base64::engine::general_purpose::STANDARD
                .decode(&kv.value)
                .map_err(|e| format!("{}: key {}: {e}", path.display(), kv.key))?;
            Ok((kv.key, (Bytes::from(value), kv.mod_revision)))
        })
        .collect::<Result<_, String>>()?;
    let snapshot = EtcdSnapshot {
        revision: saved.revision,
        kvs,
        from_disk: true,
    };
    Ok((snapshot, saved.saved_at_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_reads_back_whole() {
        let path = std::env::temp_dir().join(format!("llmgw-saved-{}.json", std::process::id()));
        let mut snapshot = EtcdSnapshot {
            revision: 42,
            ..EtcdSnapshot::default()
        };
        snapshot.kvs.insert(
            "/llmgw/config".into(),
            (Bytes::from_static(b"[routing]\n"), 40),
        );
        snapshot.kvs.insert(
            "/llmgw/plugins/p/1.0.0/wasm".into(),
            (Bytes::from_static(b"\0asm\xff"), 41),
        );
        write(&path, &snapshot).unwrap();
        let (back, at) = read(&path).unwrap();
        assert!(back.from_disk);
        assert_eq!((back.revision, back.kvs, at > 0), (42, snapshot.kvs, true));
        std::fs::write(&path, b"{").unwrap();
        assert!(read(&path).unwrap_err().contains("not a saved etcd state"));
        std::fs::remove_file(path).unwrap();
    }
}
