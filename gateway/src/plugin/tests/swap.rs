//! Swaps: a refused version leaves the old one serving, a held version stays
//! the same, new bytes serve at the baseline tier and then optimized, and
//! the directory watcher swaps under concurrent calls, never back, and
//! without waiting for its interval.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::plugin::{PluginWatcher, PolicyBinding, PolicyInfo, PolicySlot};

fn failover_pool() -> Pool {
    pool(&[("b1", "b", &[]), ("a1", "a", &[])])
}

fn colours() -> Pool {
    pool(&[
        ("blue-1", "a", &[("colour", "blue")]),
        ("green-1", "a", &[("colour", "green")]),
    ])
}

/// What the slot shows once its version serves at the optimized tier.
fn wait_optimized(slot: &PolicySlot) -> PolicyInfo {
    // Generous: the upgrade compiles on a machine shared with the build.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = slot.status().policy.expect("a version serves");
        if info.tier == Tier::Optimized {
            assert_eq!(slot.current().unwrap().info(), &info);
            return info;
        }
        assert!(Instant::now() < deadline, "never optimized: {info:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn new_bytes_serve_at_baseline_then_optimized() {
    let slot = Arc::new(PolicySlot::new("chat"));
    let bytes = wasm::bytes("failover");
    let baseline = slot
        .try_load(engine(), "failover", "1", &bytes, "{}")
        .unwrap();
    let baseline = baseline.info().clone();
    assert_eq!(baseline.tier, Tier::Baseline);
    assert_eq!(serde_json::to_value(&baseline).unwrap()["tier"], "baseline");

    let optimized = wait_optimized(&slot);
    // The same version, unnoticed but for the tier: not another load.
    let same = PolicyInfo {
        tier: Tier::Optimized,
        ..baseline
    };
    assert_eq!(optimized, same);
    assert_eq!(
        serde_json::to_value(&optimized).unwrap()["tier"],
        "optimized"
    );
    let status = slot.status();
    assert_eq!((status.loads, status.refusals), (1, 0));
    let pool = failover_pool();
    let decision = pool
        .route(&slot.current().unwrap(), &request("a", None))
        .unwrap();
    assert_eq!(pool.routed(&decision), ["a1", "b1"]);

    // A new name for the same bytes reuses the optimized code.
    let renamed = slot
        .try_load(engine(), "failover", "2", &bytes, "{}")
        .unwrap();
    assert_eq!(renamed.info().tier, Tier::Optimized);
}

#[test]
fn a_config_flipped_before_the_upgrade_is_upgraded_with_it() {
    let slot = Arc::new(PolicySlot::new("chat"));
    let bytes = wasm::bytes("blue-green");
    slot.try_load(engine(), "bg", "1", &bytes, r#"{"active": "blue"}"#)
        .unwrap();
    // Most likely still on the baseline code, which the flip then reuses.
    slot.try_load(engine(), "bg", "1", &bytes, r#"{"active": "green"}"#)
        .unwrap();
    wait_optimized(&slot);
    let current = slot.current().unwrap();
    assert_eq!(current.config(), r#"{"active": "green"}"#);
    let pool = colours();
    let decision = pool.route(&current, &request("a", None)).unwrap();
    assert_eq!(pool.routed(&decision), ["green-1"]);
    assert_eq!(slot.status().loads, 2);
}

#[test]
fn a_version_replaced_before_its_upgrade_never_serves_again() {
    let slot = Arc::new(PolicySlot::new("chat"));
    slot.try_load(engine(), "failover", "1", &wasm::bytes("failover"), "{}")
        .unwrap();
    slot.try_load(engine(), "zone", "2", &wasm::bytes("zone-affinity"), "{}")
        .unwrap();
    // Upgrades run one at a time in order, so version 1's is over by now.
    let info = wait_optimized(&slot);
    assert_eq!((info.plugin.as_str(), info.version.as_str()), ("zone", "2"));
    assert_eq!(slot.current().unwrap().info().version, "2");
}

#[test]
fn a_refused_version_leaves_the_old_one_serving() {
    let slot = Arc::new(PolicySlot::new("chat"));
    slot.try_load(engine(), "failover", "1", &wasm::bytes("failover"), "{}")
        .unwrap();
    let error = slot
        .try_load(
            engine(),
            "failover",
            "2",
            &wasm::bytes("hostile"),
            r#"{"mode": "trap"}"#,
        )
        .unwrap_err();
    assert_eq!(error.kind(), "trap");
    let current = slot.current().unwrap();
    assert_eq!(current.info().version, "1");
    let pool = failover_pool();
    let decision = pool.route(&current, &request("a", None)).unwrap();
    assert_eq!(pool.routed(&decision), ["a1", "b1"]);
    let status = slot.status();
    assert_eq!(status.policy.unwrap().version, "1");
    let refusal = status.last_refusal.unwrap();
    assert_eq!((refusal.version.as_str(), refusal.kind), ("2", "trap"));
    assert_eq!((status.loads, status.refusals), (1, 1));
}

#[test]
fn a_version_held_across_a_swap_keeps_deciding() {
    let slot = Arc::new(PolicySlot::new("chat"));
    slot.try_load(engine(), "failover", "1", &wasm::bytes("failover"), "{}")
        .unwrap();
    let held = slot.current().unwrap();
    slot.try_load(
        engine(),
        "blue-green",
        "1",
        &wasm::bytes("blue-green"),
        r#"{"active": "blue"}"#,
    )
    .unwrap();
    assert_eq!(slot.current().unwrap().info().plugin, "blue-green");
    // Unlabelled workers: blue-green would reject, failover routes.
    let pool = failover_pool();
    let decision = pool.route(&held, &request("a", None)).unwrap();
    assert_eq!(pool.routed(&decision), ["a1", "b1"]);
    assert_eq!(held.info().plugin, "failover");
}

/// A fresh temporary plugin directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("llmgw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// Writes then renames, as an operator's deploy should, so a poll never
    /// reads half a file.
    fn put(&self, relative: &str, bytes: &[u8]) {
        let path = self.0.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let staging = path.with_file_name(format!(
            ".staging-{}",
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&staging, bytes).unwrap();
        std::fs::rename(&staging, &path).unwrap();
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn binding(plugin: &str) -> PolicyBinding {
    PolicyBinding {
        plugin: plugin.to_string(),
        version: None,
        config: None,
        shadow: None,
    }
}

#[test]
fn the_watcher_loads_the_highest_version_and_refuses_bad_ones() {
    let dir = TempDir::new("watch-versions");
    let slot = Arc::new(PolicySlot::new("chat"));
    let mut watcher = PluginWatcher::new(engine().clone(), dir.path());
    watcher.watch("chat", binding("routing"), slot.clone());

    assert_eq!(watcher.poll_once(), 0);
    assert_eq!(slot.status().last_refusal.unwrap().kind, "missing");

    dir.put("routing/1.9.0.wasm", &wasm::bytes("failover"));
    assert_eq!(watcher.poll_once(), 1);
    assert_eq!(watcher.poll_once(), 0, "nothing changed");
    let status = slot.status();
    assert_eq!(status.policy.as_ref().unwrap().version, "1.9.0");
    assert_eq!(
        status.policy.unwrap().sha256,
        crate::plugin::loaded::sha256_hex(&wasm::bytes("failover"))
    );

    // 1.10.0 > 1.9.0; the hostile plugin refuses the empty config in init.
    dir.put("routing/1.10.0.wasm", &wasm::bytes("hostile"));
    assert_eq!(watcher.poll_once(), 0);
    let status = slot.status();
    assert_eq!(status.policy.unwrap().version, "1.9.0");
    let refusal = status.last_refusal.unwrap();
    assert_eq!((refusal.version.as_str(), refusal.kind), ("1.10.0", "init"));
    assert_eq!(
        watcher.poll_once(),
        0,
        "a refused version is not retried unchanged"
    );
    assert_eq!(slot.status().refusals, 2);

    dir.put("routing/1.11.0.wasm", &wasm::bytes("zone-affinity"));
    assert_eq!(watcher.poll_once(), 1);
    assert_eq!(slot.current().unwrap().info().version, "1.11.0");
}

#[test]
fn the_pool_config_file_overrides_the_inline_config() {
    let dir = TempDir::new("watch-config");
    dir.put("bg/1.0.0.wasm", &wasm::bytes("blue-green"));
    let slot = Arc::new(PolicySlot::new("chat"));
    let mut watcher = PluginWatcher::new(engine().clone(), dir.path());
    let mut bg = binding("bg");
    bg.config = Some(serde_json::json!({"active": "blue"}));
    watcher.watch("chat", bg, slot.clone());
    let pool = colours();
    let first = |slot: &PolicySlot| {
        let decision = pool
            .route(&slot.current().unwrap(), &request("a", None))
            .unwrap();
        pool.routed(&decision)[0].to_string()
    };

    assert_eq!(watcher.poll_once(), 1);
    assert_eq!(first(&slot), "blue-1");
    dir.put("bg/chat.json", br#"{"active": "green"}"#);
    assert_eq!(watcher.poll_once(), 1);
    assert_eq!(first(&slot), "green-1");
    dir.put("bg/chat.json", br#"{"active": ""}"#);
    assert_eq!(watcher.poll_once(), 0, "an invalid config is refused");
    assert_eq!(first(&slot), "green-1");
    assert_eq!(slot.status().last_refusal.unwrap().kind, "init");
}

#[test]
fn swaps_under_concurrent_calls_fail_no_call() {
    let dir = TempDir::new("watch-load");
    let versions = [wasm::bytes("failover"), wasm::bytes("zone-affinity")];
    dir.put("routing/1.0.0.wasm", &versions[0]);
    let slot = Arc::new(PolicySlot::new("chat"));
    let mut watcher = PluginWatcher::new(engine().clone(), dir.path());
    watcher.watch("chat", binding("routing"), slot.clone());
    assert_eq!(watcher.poll_once(), 1);
    let handle = watcher.spawn(Duration::from_millis(5));

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let caller = {
        let (slot, stop, calls, failures) =
            (slot.clone(), stop.clone(), calls.clone(), failures.clone());
        std::thread::spawn(move || {
            let pool = failover_pool();
            // (version, tier) as served, each change once, in order.
            let mut served: Vec<(u32, Tier)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let policy = slot.current().expect("a version is always loaded");
                let major = policy
                    .info()
                    .version
                    .split('.')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let now = (major, policy.info().tier);
                if served.last() != Some(&now) {
                    served.push(now);
                }
                match pool.route(&policy, &request("a", None)) {
                    Ok(Decision::Route(order)) if order.len() == 2 => {}
                    other => {
                        eprintln!("failed call: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
            served
        })
    };

    for swap in 2..=6 {
        let version = format!("{swap}.0.0");
        dir.put(&format!("routing/{version}.wasm"), &versions[swap % 2]);
        // Generous: the watcher compiles on a machine shared with the build.
        let deadline = Instant::now() + Duration::from_secs(60);
        while slot.current().unwrap().info().version != version {
            assert!(Instant::now() < deadline, "version {version} never served");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    wait_optimized(&slot);
    // Two more calls: at least one started after the upgrade, so it was seen.
    let seen = calls.load(Ordering::Relaxed) + 2;
    while calls.load(Ordering::Relaxed) < seen {
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let served = caller.join().unwrap();
    handle.stop();
    // Never back to an older version, nor to the baseline build of one.
    let rank = |&(version, tier): &(u32, Tier)| (version, tier == Tier::Optimized);
    assert!(
        served.windows(2).all(|w| rank(&w[0]) < rank(&w[1])),
        "{served:?}"
    );
    assert_eq!(served.last(), Some(&(6, Tier::Optimized)));
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert_eq!(slot.status().loads, 6);
}

#[test]
fn a_new_file_is_loaded_without_waiting_for_the_poll_interval() {
    let dir = TempDir::new("watch-wake");
    dir.put("routing/1.0.0.wasm", &wasm::bytes("failover"));
    let slot = Arc::new(PolicySlot::new("chat"));
    let mut watcher = PluginWatcher::new(engine().clone(), dir.path());
    watcher.watch("chat", binding("routing"), slot.clone());
    assert_eq!(watcher.poll_once(), 1);
    // Never polled on its own during the test: only a change wakes it.
    let handle = watcher.spawn(Duration::from_secs(3600));

    dir.put("routing/2.0.0.wasm", &wasm::bytes("zone-affinity"));
    // Generous: the watcher compiles on a machine shared with the build.
    let deadline = Instant::now() + Duration::from_secs(60);
    while slot.current().unwrap().info().version != "2.0.0" {
        assert!(Instant::now() < deadline, "version 2 never served");
        std::thread::sleep(Duration::from_millis(2));
    }
    handle.stop();
}
