//! The plugin directory's layout: `{dir}/{plugin}/{version}.wasm`, and
//! `{dir}/{plugin}/{pool}.json` overriding a pool's inline config. Pure
//! choices (which version) apart from the reads.

use std::io;
use std::path::{Path, PathBuf};

use super::config::PolicyBinding;
use super::engine::{PluginEngine, Tier};
use super::error::PluginError;
use super::loaded::LoadedPolicy;

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

/// Loads the version `binding` selects in `dir` for `pool` as the watcher
/// would (compile, `init` with the pool's config, sample decisions): the
/// version that would serve, or why none would.
pub fn check(
    engine: &PluginEngine,
    dir: &Path,
    pool: &str,
    binding: &PolicyBinding,
) -> Result<String, PluginError> {
    let selected = select(dir, binding)?;
    let config = config_text(dir, binding, pool)?;
    let bytes = std::fs::read(&selected.path).map_err(|source| PluginError::Io {
        path: selected.path.clone(),
        source,
    })?;
    LoadedPolicy::load(
        engine,
        Tier::Baseline,
        &binding.plugin,
        &selected.version,
        &bytes,
        &config,
    )?;
    Ok(selected.version)
}

/// The versions of `binding`'s plugin below `version`, highest first: what
/// an unpinned binding falls back on when its newest version is refused.
pub(crate) fn older(dir: &Path, binding: &PolicyBinding, version: &str) -> Vec<Selected> {
    let folder = dir.join(&binding.plugin);
    let Ok(newest) = semver::Version::parse(version) else {
        return Vec::new();
    };
    let mut below: Vec<_> = versions(&folder)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| Some((semver::Version::parse(&v).ok()?, v)))
        .filter(|(parsed, _)| *parsed < newest)
        .collect();
    below.sort();
    below
        .into_iter()
        .rev()
        .map(|(_, version)| Selected {
            path: folder.join(format!("{version}.wasm")),
            version,
        })
        .collect()
}

/// Where `config_text` finds `pool`'s config: its override file, or the binding.
pub(crate) fn config_source(dir: &Path, binding: &PolicyBinding, pool: &str) -> String {
    let path = dir.join(&binding.plugin).join(format!("{pool}.json"));
    match path.is_file() {
        true => path.display().to_string(),
        false => "binding".to_string(),
    }
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

/// The highest of `versions` that is a semantic version; other names are
/// no versions at all, so a stray `latest.wasm` is never picked.
pub(crate) fn highest(versions: Vec<String>) -> Option<String> {
    versions
        .into_iter()
        .filter_map(|v| Some((semver::Version::parse(&v).ok()?, v)))
        .max()
        .map(|(_, v)| v)
}

/// Why `version` cannot name a plugin version, if it cannot.
pub fn version_problem(version: &str) -> Option<String> {
    semver::Version::parse(version).err().map(|e| {
        format!("`{version}` is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.2.0): {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_highest_semantic_version_wins_and_other_names_are_none() {
        assert_eq!(
            highest(strings(&["1.9.0", "1.10.0", "1.2.3", "2.0.0-rc.1"])),
            Some("2.0.0-rc.1".into())
        );
        assert_eq!(
            highest(strings(&["2.0.0-rc.1", "2.0.0"])),
            Some("2.0.0".into())
        );
        assert_eq!(
            highest(strings(&["latest", "v3", "1.0", "0.1.0"])),
            Some("0.1.0".into())
        );
        assert_eq!(highest(strings(&["beta"])), None);
        assert!(version_problem("1.0").is_some() && version_problem("1.0.0").is_none());
    }

    #[test]
    fn select_and_config_override() {
        let dir = std::env::temp_dir().join(format!("llmgw-plugin-dir-{}", std::process::id()));
        let folder = dir.join("canary");
        std::fs::create_dir_all(&folder).unwrap();
        for file in [
            "1.2.0.wasm",
            "1.10.0.wasm",
            "latest.wasm",
            ".tmp.wasm",
            "chat.json",
        ] {
            std::fs::write(folder.join(file), b"x").unwrap();
        }
        let mut binding = PolicyBinding {
            plugin: "canary".into(),
            version: None,
            config: Some(serde_json::json!({"a": 1})),
            shadow: None,
        };
        assert_eq!(select(&dir, &binding).unwrap().version, "1.10.0");
        binding.version = Some("1.2.0".into());
        assert_eq!(
            select(&dir, &binding).unwrap().path,
            folder.join("1.2.0.wasm")
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
