//! `gatewayctl plugin new NAME --lang rust|python|js`: a buildable policy
//! of one's own, outside the gateway's tree, with a test that runs it over
//! a sample of a gateway's decision log.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

const WIT: &str = include_str!("../../../../wit/policy.wit");
const DECISIONS: &str = include_str!("../../../../plugins/sdk/tests/decisions.jsonl");
const PY_KIT: &str = include_str!("../../../../plugins/py/common/policy_kit.py");
const JS_KIT: &str = include_str!("../../../../plugins/js/common/policy-kit.js");

/// Where the SDK this gatewayctl was built with sits, for a Rust policy's path dependency.
fn sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk")
}

pub fn new(
    name: &str,
    lang: Lang,
    dir: Option<&Path>,
    sdk_dir: Option<&Path>,
) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("a plugin name is lowercase letters, digits and `-`, got `{name}`");
    }
    let root = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if root.exists() {
        bail!("{} exists already; nothing written", root.display());
    }
    let fill = |text: &str, sdk: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", sdk)
    };
    let mut files: Vec<(&str, String)> = vec![("decisions.jsonl", DECISIONS.to_string())];
    let next_step = match lang {
        Lang::Rust => {
            let sdk_dir = sdk_dir.map_or_else(sdk, Path::to_path_buf);
            let sdk_dir = std::fs::canonicalize(&sdk_dir).with_context(|| {
                format!(
                    "no SDK at {}: name it with --sdk PATH/plugins/sdk",
                    sdk_dir.display()
                )
            })?;
            let sdk = sdk_dir.display().to_string();
            files.push((
                "Cargo.toml",
                fill(include_str!("templates/Cargo.toml.txt"), &sdk),
            ));
            files.push((
                "src/lib.rs",
                fill(include_str!("templates/lib.rs.txt"), &sdk),
            ));
            "cargo test && cargo build --release --target wasm32-wasip2"
        }
        Lang::Python => {
            files.push((
                "policy.py",
                fill(include_str!("templates/policy.py.txt"), ""),
            ));
            files.push(("policy_kit.py", PY_KIT.to_string()));
            files.push(("wit/policy.wit", WIT.to_string()));
            files.push(("test.sh", fill(include_str!("templates/test-py.sh"), "")));
            "./test.sh"
        }
        Lang::Js => {
            files.push((
                "policy.js",
                fill(include_str!("templates/policy.js.txt"), ""),
            ));
            files.push(("policy-kit.js", JS_KIT.to_string()));
            files.push(("wit/policy.wit", WIT.to_string()));
            files.push(("test.sh", fill(include_str!("templates/test-js.sh"), "")));
            "./test.sh"
        }
    };
    for (path, text) in &files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    #[cfg(unix)]
    if !matches!(lang, Lang::Rust) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("test.sh"), std::fs::Permissions::from_mode(0o755))?;
    }
    println!(
        "wrote {} ({} files); next: cd {} && {next_step}",
        root.display(),
        files.len(),
        root.display()
    );
    Ok(())
}
