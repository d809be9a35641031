//! Hostile plugins are refused at load time, or fail one call with the right
//! error, bounded by the deadline, and the next call is served, on both tiers.

use super::*;
use crate::plugin::PluginError;

fn load_hostile(tier: Tier, mode: &str) -> Result<LoadedPolicy, PluginError> {
    load_at(tier, "hostile", &format!(r#"{{"mode": "{mode}"}}"#))
}

#[test]
fn misbehaviour_on_every_call_is_refused_at_load() {
    for (mode, kind) in [
        ("loop", "timeout"),
        ("oom", "out_of_memory"),
        ("trap", "trap"),
        ("empty", "invalid_decision"),
        ("unknown", "invalid_decision"),
        ("duplicate", "invalid_decision"),
        ("bad_status", "invalid_decision"),
        ("init_fail", "init"),
        ("slow_init", "timeout"),
    ] {
        for tier in TIERS {
            let error = load_hostile(tier, mode).unwrap_err();
            assert_eq!(error.kind(), kind, "{mode} {tier:?}: {error}");
        }
    }
    for tier in TIERS {
        assert!(load_hostile(tier, "ok").is_ok());
    }
}

#[test]
fn misbehaviour_on_some_calls_fails_those_calls_only() {
    let pool = pool(&[("w1", "a", &[]), ("w2", "b", &[])]);
    let mut evil = request("a", None);
    evil.model = "evil".to_string();
    for (mode, kind) in [
        ("loop", "timeout"),
        ("oom", "out_of_memory"),
        ("trap", "trap"),
        ("unknown", "invalid_decision"),
    ] {
        for tier in TIERS {
            let policy = load_at(
                tier,
                "hostile",
                &format!(r#"{{"mode": "{mode}", "on_model": "evil"}}"#),
            )
            .unwrap_or_else(|error| panic!("{mode} {tier:?}: {error}"));
            for _ in 0..2 {
                let error = pool.route(&policy, &evil).unwrap_err();
                assert_eq!(error.kind(), kind, "{mode} {tier:?}: {error}");
                // The failed instance is gone; the next call gets a sound one.
                let decision = pool.route(&policy, &request("a", None)).unwrap();
                assert_eq!(pool.routed(&decision), ["w1", "w2"], "{mode}");
            }
        }
    }
}

#[test]
fn a_trap_message_says_what_happened() {
    let policy = load("hostile", r#"{"mode": "trap", "on_model": "evil"}"#).unwrap();
    let mut evil = request("a", None);
    evil.model = "evil".to_string();
    let error = pool(&[("w1", "a", &[])]).route(&policy, &evil).unwrap_err();
    assert!(matches!(error, PluginError::Trap(_)), "{error}");
    assert!(error.to_string().contains("unreachable"), "{error}");
}

#[test]
fn invalid_bytes_do_not_compile() {
    // Pseudo-random bytes, a core module, and a truncated component.
    let mut noise = Vec::with_capacity(4096);
    let mut x: u32 = 0x2545_f491;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    // One byte short: the last section is cut wherever the sections fall (a
    // fixed length can end on a section boundary, which is a valid component).
    let mut truncated = wasm::bytes("failover");
    truncated.pop();
    for bytes in [noise, core_module, truncated, Vec::new()] {
        let error =
            LoadedPolicy::load(engine(), Tier::Baseline, "bad", "1", &bytes, "{}").unwrap_err();
        assert_eq!(error.kind(), "compile", "{error}");
    }
}

#[test]
fn a_component_of_another_world_is_refused() {
    let bytes = wasm::bytes("not_a_policy");
    let error = LoadedPolicy::load(engine(), Tier::Baseline, "cmd", "1", &bytes, "{}").unwrap_err();
    assert_eq!(error.kind(), "wrong_world", "{error}");
}
