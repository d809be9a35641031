//! The plugin directory's layout: `{dir}/{plugin}/{version}.wasm`, and
//! `{dir}/{plugin}/{pool}.json` overriding a pool's inline config. Pure
//! choices (which version) apart from the reads.

use std::cmp::Ordering;
use std::io;
use std::path::{Path, PathBuf};

use super::config::PolicyBinding;
use super::error::PluginError;

/// The file a binding selects now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selected {
    pub version: String,
    pub path: PathBuf,
}

/// The version `binding` names (pinned, else the highest present) and its file.
pub(crate) fn select(dir: &Path, binding: &PolicyBinding) -> Result<Selected, PluginError> {
    let folder = dir.join(&binding.plugin);
    let version = match &binding.version {
        Some(pinned) => pinned.clone(),
        None => {
            let versions = versions(&folder).map_err(|source| PluginError::Io {
                path: folder.clone(),
                source,
            })?;
            highest(versions)
                .ok_or_else(|| PluginError::Missing(format!("no *.wasm in {}", folder.display())))?
        }
    };
    let path = folder.join(format!("{version}.wasm"));
    if !path.is_file() {
        return Err(PluginError::Missing(format!(
            "{} not found",
            path.display()
        )));
    }
    Ok(Selected { version, path })
}

/// The config text for `pool`: its override file when present, else the inline config.
pub(crate) fn config_text(
    dir: &Path,
    binding: &PolicyBinding,
    pool: &str,
) -> Result<String, PluginError> {
    let path = dir.join(&binding.plugin).join(format!("{pool}.json"));
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(binding.config_json()),
        Err(source) => Err(PluginError::Io { path, source }),
    }
}

/// Version names: the stems of the `*.wasm` files in `folder`. A missing
/// folder is no versions, not an error.
fn versions(folder: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut versions = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "wasm") {
            if let Some(stem) = path.file_stem().and_then(|stem| stem.to_str()) {
                // Editors' and copy tools' temporary files are not versions.
                if !stem.starts_with('.') {
                    versions.push(stem.to_string());
                }
            }
        }
    }
    Ok(versions)
}

fn highest(versions: Vec<String>) -> Option<String> {
    versions.into_iter().max_by(|a, b| compare_versions(a, b))
}

/// Dotted numeric parts compare as numbers (`1.10` > `1.9`, a leading `v`
/// ignored); versions that are not all numbers compare lexically and sort
/// below numeric ones, so a stray `latest.wasm` never outranks `2.0.wasm`.
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    match (numeric_parts(a), numeric_parts(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => a.cmp(b),
    }
}

fn numeric_parts(version: &str) -> Option<Vec<u64>> {
    let version = version.strip_prefix('v').unwrap_or(version);
    version.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn numeric_versions_compare_by_parts() {
        assert_eq!(
            highest(strings(&["1.9", "1.10", "1.2.3"])),
            Some("1.10".into())
        );
        assert_eq!(highest(strings(&["v2", "v10", "v9.9"])), Some("v10".into()));
        assert_eq!(compare_versions("1.0", "1.0.0"), Ordering::Less);
    }

    #[test]
    fn non_numeric_versions_fall_back_to_lexical_below_numeric() {
        assert_eq!(highest(strings(&["beta", "alpha"])), Some("beta".into()));
        assert_eq!(highest(strings(&["latest", "0.1"])), Some("0.1".into()));
        assert_eq!(highest(Vec::new()), None);
    }

    #[test]
    fn select_and_config_override() {
        let dir = std::env::temp_dir().join(format!("llmgw-plugin-dir-{}", std::process::id()));
        let folder = dir.join("canary");
        std::fs::create_dir_all(&folder).unwrap();
        for file in ["1.2.wasm", "1.10.wasm", ".tmp.wasm", "chat.json"] {
            std::fs::write(folder.join(file), b"x").unwrap();
        }
        let mut binding = PolicyBinding {
            plugin: "canary".into(),
            version: None,
            config: Some(serde_json::json!({"a": 1})),
        };
        assert_eq!(select(&dir, &binding).unwrap().version, "1.10");
        binding.version = Some("1.2".into());
        assert_eq!(
            select(&dir, &binding).unwrap().path,
            folder.join("1.2.wasm")
        );
        binding.version = Some("3".into());
        assert_eq!(select(&dir, &binding).unwrap_err().kind(), "missing");
        assert_eq!(config_text(&dir, &binding, "chat").unwrap(), "x");
        assert_eq!(config_text(&dir, &binding, "other").unwrap(), r#"{"a":1}"#);
        binding.plugin = "absent".into();
        binding.version = None;
        assert_eq!(select(&dir, &binding).unwrap_err().kind(), "missing");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
