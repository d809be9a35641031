//! The components under test, built once per test process.
//!
//! Runs `cargo build --profile plugin --target wasm32-wasip2 -p
//! policy-failover -p policy-canary -p policy-blue-green -p
//! policy-zone-affinity -p policy-hostile` in the workspace (a no-op when
//! they are fresh), into the same target directory, and reads
//! `{target}/wasm32-wasip2/plugin/{policy_*,not_a_policy}.wasm`. Set
//! `LLMGW_PLUGIN_WASM_DIR` to a folder of prebuilt files to skip the build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const PACKAGES: [&str; 5] = [
    "policy-failover",
    "policy-canary",
    "policy-blue-green",
    "policy-zone-affinity",
    "policy-hostile",
];

/// The bytes of `name`: a package's component (`failover`, `hostile`, ...) or `not_a_policy`.
pub fn bytes(name: &str) -> Vec<u8> {
    let file = match name {
        "not_a_policy" => "not_a_policy.wasm".to_string(),
        plugin => format!("policy_{}.wasm", plugin.replace('-', "_")),
    };
    let path = dir().join(&file);
    std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var_os("LLMGW_PLUGIN_WASM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => build(),
    })
}

fn build() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ sits in the workspace");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--profile", "plugin", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(&target);
    for package in PACKAGES {
        command.args(["-p", package]);
    }
    let status = command.status().expect("running cargo");
    assert!(
        status.success(),
        "building the test components failed; run: cargo build --profile plugin --target wasm32-wasip2 -p {} \
         (rustup target add wasm32-wasip2 if the target is missing)",
        PACKAGES.join(" -p ")
    );
    target.join("wasm32-wasip2").join("plugin")
}
