//! API keys and tenants as stored: in the file named by `auth.keys_file`
//! (TOML) or in etcd (`{prefix}/keys/{id}`, `{prefix}/tenants/{name}`, JSON).
//! A key is kept only as the SHA-256 of its secret; the secret is shown once,
//! when `gatewayctl key create` or `key rotate` makes it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What every secret starts with, so scanners and people recognise one.
pub const SECRET_PREFIX: &str = "sk-llmgw-";

/// Scheduling class: who goes first when a pool is saturated.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a priority (high, normal or low)"))
    }
}

/// One API key as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Public name of the key, in logs, metrics and usage (`key_` + hex).
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    pub tenant: String,
    /// Models the key may use; empty: every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Requests per minute; none: no limit of the key's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt and completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub priority: Priority,
    /// Unix seconds after which the key stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// May read the admin listener's `/status` and `/metrics`, and see
    /// topology headers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    pub created_at: u64,
}

/// Limits shared by every key of a tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

impl TenantRecord {
    pub fn check(&self, name: &str) -> Result<(), String> {
        if self.rpm == Some(0) || self.tpm == Some(0) {
            return Err(format!(
                "tenant `{name}`: a limit of 0 allows nothing; revoke its keys instead"
            ));
        }
        Ok(())
    }
}

/// The keys file: `[[keys]]` and `[tenants.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantRecord>,
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

impl KeysFile {
    pub fn read(path: &Path) -> Result<KeysFile, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => KeysFile::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeysFile::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn parse(text: &str) -> Result<KeysFile, String> {
        let file: KeysFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, tenant) in &file.tenants {
            tenant.check(name)?;
        }
        let mut ids = std::collections::HashSet::new();
        for key in &file.keys {
            key.check()?;
            if !ids.insert(&key.id) {
                return Err(format!("key `{}` is listed twice", key.id));
            }
        }
        Ok(file)
    }

    /// Writes the file whole through a rename, so a watcher never reads half of it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = toml::to_string(self).expect("a keys file serializes");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

impl KeyRecord {
    /// A new key and its secret, which is not stored anywhere.
    pub fn generate(tenant: &str) -> (KeyRecord, String) {
        let id = format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let secret = new_secret();
        let record = KeyRecord {
            id,
            sha256: hex_sha256(&secret),
            tenant: tenant.to_string(),
            models: Vec::new(),
            rpm: None,
            tpm: None,
            priority: Priority::Normal,
            expires_at: None,
            admin: false,
            created_at: unix_now(),
        };
        (record, secret)
    }

    /// A new secret for this key; the old one stops working.
    pub fn rotate(&mut self) -> String {
        let secret = new_secret();
        self.sha256 = hex_sha256(&secret);
        secret
    }

    pub fn check(&self) -> Result<(), String> {
        if !self.id.starts_with("key_") || !protocol::bus::valid_token(&self.id) {
            return Err(format!(
                "key id `{}` is not `key_` and letters or digits",
                self.id
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("key `{}`: sha256 is not 64 hex digits", self.id));
        }
        if self.tenant.is_empty() {
            return Err(format!("key `{}`: tenant is empty", self.id));
        }
        if self.rpm == Some(0) || self.tpm == Some(0) {
            return Err(format!(
                "key `{}`: a limit of 0 allows nothing; revoke the key instead",
                self.id
            ));
        }
        Ok(())
    }
}

/// A key in force, looked up by the hash of the secret a request presents.
#[derive(Debug)]
pub struct Key {
    pub record: KeyRecord,
    /// The tenant's own limits, when it has any.
    pub tenant: Option<TenantRecord>,
}

/// Every key in force, by the SHA-256 of its secret.
#[derive(Debug, Default)]
pub struct KeySet {
    by_hash: HashMap<[u8; 32], Arc<Key>>,
}

impl KeySet {
    pub fn new(keys: Vec<KeyRecord>, tenants: &BTreeMap<String, TenantRecord>) -> KeySet {
        let by_hash = keys
            .into_iter()
            .filter_map(|record| {
                let hash = decode_hex32(&record.sha256)?;
                let tenant = tenants.get(&record.tenant).cloned();
                Some((hash, Arc::new(Key { record, tenant })))
            })
            .collect();
        KeySet { by_hash }
    }

    pub fn from_file(file: KeysFile) -> KeySet {
        KeySet::new(file.keys, &file.tenants)
    }

    pub fn count(&self) -> usize {
        self.by_hash.len()
    }

    pub fn find(&self, secret: &str) -> Option<&Arc<Key>> {
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        self.by_hash.get(&hash)
    }

    /// Keys and tenants as etcd holds them under `keys_prefix` and
    /// `tenants_prefix`; a record that does not parse is skipped and named.
    pub fn from_etcd<'a>(
        kvs: impl Iterator<Item = (&'a str, &'a [u8])>,
        keys_prefix: &str,
        tenants_prefix: &str,
    ) -> (KeySet, Vec<String>) {
        let (mut keys, mut tenants, mut bad) = (Vec::new(), BTreeMap::new(), Vec::new());
        for (path, value) in kvs {
            if let Some(id) = path.strip_prefix(keys_prefix) {
                match serde_json::from_slice::<KeyRecord>(value)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.check().map(|()| r))
                {
                    Ok(record) if record.id == id => keys.push(record),
                    Ok(record) => bad.push(format!("{path}: holds key `{}`", record.id)),
                    Err(e) => bad.push(format!("{path}: {e}")),
                }
            } else if let Some(name) = path.strip_prefix(tenants_prefix) {
                match serde_json::from_slice::<TenantRecord>(value)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.check(name).map(|()| r))
                {
                    Ok(record) => {
                        tenants.insert(name.to_string(), record);
                    }
                    Err(e) => bad.push(format!("{path}: {e}")),
                }
            }
        }
        (KeySet::new(keys, &tenants), bad)
    }
}

fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn hex_sha256(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_by_its_secret_only() {
        let (record, secret) = KeyRecord::generate("acme");
        assert!(secret.starts_with(SECRET_PREFIX));
        assert!(!format!("{record:?}").contains(&secret[SECRET_PREFIX.len()..]));
        let set = KeySet::new(vec![record.clone()], &BTreeMap::new());
        assert_eq!(set.find(&secret).unwrap().record.id, record.id);
        assert!(set.find("sk-llmgw-wrong").is_none());
    }

    #[test]
    fn rotating_replaces_the_secret() {
        let (mut record, old) = KeyRecord::generate("acme");
        let new = record.rotate();
        let set = KeySet::new(vec![record], &BTreeMap::new());
        assert!(set.find(&old).is_none());
        assert!(set.find(&new).is_some());
    }

    #[test]
    fn the_file_round_trips_and_refuses_bad_records() {
        let (mut record, _) = KeyRecord::generate("acme");
        record.models = vec!["m".into()];
        record.rpm = Some(10);
        let mut file = KeysFile::default();
        file.keys.push(record.clone());
        file.tenants.insert(
            "acme".into(),
            TenantRecord {
                rpm: None,
                tpm: Some(5),
            },
        );
        let text = toml::to_string(&file).unwrap();
        assert_eq!(KeysFile::parse(&text).unwrap(), file);
        file.keys.push(record);
        let twice = toml::to_string(&file).unwrap();
        assert!(KeysFile::parse(&twice).unwrap_err().contains("twice"));
        let zero = text.replace("rpm = 10", "rpm = 0");
        assert!(KeysFile::parse(&zero).unwrap_err().contains("limit of 0"));
        let short = text.replace("sha256 = \"", "sha256 = \"ab");
        assert!(KeysFile::parse(&short).is_err());
    }

    #[test]
    fn etcd_records_parse_and_bad_ones_are_named() {
        let (record, secret) = KeyRecord::generate("acme");
        let json = serde_json::to_vec(&record).unwrap();
        let key_path = format!("/p/keys/{}", record.id);
        let tenant = br#"{"tpm": 100}"#.to_vec();
        let kvs = [
            (key_path.as_str(), json.as_slice()),
            ("/p/keys/key_bad", b"{".as_slice()),
            ("/p/tenants/acme", tenant.as_slice()),
        ];
        let (set, bad) =
            KeySet::from_etcd(kvs.iter().map(|(k, v)| (*k, *v)), "/p/keys/", "/p/tenants/");
        assert_eq!(set.count(), 1);
        assert_eq!(bad.len(), 1, "{bad:?}");
        let key = set.find(&secret).unwrap();
        assert_eq!(key.tenant.as_ref().unwrap().tpm, Some(100));
    }
}
