//! The shipped example policies give their documented decisions through the host.

use std::sync::Arc;

use super::*;
use crate::plugin::{nobody, PolicySlot};

#[test]
fn failover_orders_local_zone_by_score_then_other_zones() {
    let policy = load("failover", "{}").unwrap();
    let mut pool = pool(&[
        ("b-best", "b", &[]),
        ("a-worse", "a", &[]),
        ("c-mid", "c", &[]),
        ("a-better", "a", &[]),
    ]);
    pool.candidates.score = vec![0.1, 2.0, 1.0, 1.5];
    let decision = pool.route(&policy, &request("a", None)).unwrap();
    assert_eq!(
        pool.routed(&decision),
        ["a-better", "a-worse", "b-best", "c-mid"]
    );
    assert_eq!(decision, Decision::Route(vec![3, 1, 0, 2]));
}

#[test]
fn failover_max_workers_cuts_the_list() {
    let policy = load("failover", r#"{"max_workers": 1}"#).unwrap();
    let pool = pool(&[("w1", "a", &[]), ("w2", "a", &[])]);
    let decision = pool.route(&policy, &request("a", None)).unwrap();
    assert_eq!(pool.routed(&decision).len(), 1);
}

#[test]
fn canary_sees_the_callers_tenant_through_the_host() {
    let config =
        r#"{"stable": "v1", "canary": "v2", "canary_percent": 100, "stable_tenants": ["acme"]}"#;
    let policy = load("canary", config).unwrap();
    let pool = canary_pool();
    let as_tenant = |tenant: Option<&str>| {
        let caller = super::super::PolicyCaller {
            tenant: tenant.map(str::to_string),
            priority: super::super::PolicyPriority::High,
        };
        let decision = pool
            .route_as(&policy, &request("a", None), &caller)
            .unwrap();
        pool.routed(&decision)[0].to_string()
    };
    assert_eq!(as_tenant(Some("acme")), "stable-1");
    assert_eq!(as_tenant(Some("other")), "canary-1");
    assert_eq!(as_tenant(None), "canary-1");
}

fn canary_pool() -> Pool {
    pool(&[
        ("stable-1", "a", &[("version", "v1")]),
        ("canary-1", "a", &[("version", "v2")]),
    ])
}

#[test]
fn canary_is_sticky_per_session() {
    let policy = load(
        "canary",
        r#"{"stable": "v1", "canary": "v2", "canary_percent": 50}"#,
    )
    .unwrap();
    let pool = canary_pool();
    for key in ["alice", "bob", "carol"] {
        let request = request("a", Some(key));
        let first = pool.route(&policy, &request).unwrap();
        for _ in 0..20 {
            assert_eq!(pool.route(&policy, &request).unwrap(), first, "{key}");
        }
        // Both sides listed: the other one is the failover tail.
        assert_eq!(pool.routed(&first).len(), 2);
    }
}

#[test]
fn canary_splits_sessions_by_percentage() {
    let policy = load(
        "canary",
        r#"{"stable": "v1", "canary": "v2", "canary_percent": 30}"#,
    )
    .unwrap();
    let pool = canary_pool();
    let sessions = 1000;
    let on_canary = (0..sessions)
        .filter(|i| {
            let request = request("a", Some(&format!("user-{i}")));
            let decision = pool.route(&policy, &request).unwrap();
            pool.routed(&decision)[0] == "canary-1"
        })
        .count();
    // 30% of 1000: a binomial with a standard deviation of about 15.
    assert!(
        (230..=370).contains(&on_canary),
        "{on_canary} of {sessions}"
    );
}

#[test]
fn blue_green_routes_to_the_active_colour_and_a_config_flip_moves_it() {
    let bytes = wasm::bytes("blue-green");
    let slot = Arc::new(PolicySlot::new("chat"));
    let pool = pool(&[
        ("blue-1", "a", &[("colour", "blue")]),
        ("green-1", "a", &[("colour", "green")]),
    ]);
    slot.try_load(engine(), "blue-green", "1", &bytes, r#"{"active": "blue"}"#)
        .unwrap();
    let before = slot.current().unwrap();
    let decision = pool.route(&before, &request("a", None)).unwrap();
    assert_eq!(pool.routed(&decision), ["blue-1"]);

    slot.try_load(
        engine(),
        "blue-green",
        "1",
        &bytes,
        r#"{"active": "green"}"#,
    )
    .unwrap();
    let after = slot.current().unwrap();
    let decision = pool.route(&after, &request("a", None)).unwrap();
    assert_eq!(pool.routed(&decision), ["green-1"]);
    // Same code, new config: the version and its hash stay.
    assert_eq!(after.info().sha256, before.info().sha256);
    assert_eq!(slot.status().loads, 2);
    // A request that started before the flip still decides by the old colour.
    let decision = pool.route(&before, &request("a", None)).unwrap();
    assert_eq!(pool.routed(&decision), ["blue-1"]);
}

#[test]
fn blue_green_without_an_active_worker_rejects() {
    let policy = load("blue-green", r#"{"active": "blue"}"#).unwrap();
    let pool = pool(&[("green-1", "a", &[("colour", "green")])]);
    let decision = pool.route(&policy, &request("a", None)).unwrap();
    assert!(
        matches!(decision, Decision::Reject { status: 503, .. }),
        "{decision:?}"
    );
}

#[test]
fn zone_affinity_spills_past_saturated_local_workers() {
    let policy = load("zone-affinity", r#"{"spill_in_flight": 4}"#).unwrap();
    spills_past_saturated_local_workers(&policy);
}

/// What zone-affinity does with a saturated local worker, an idle remote
/// one and a free local one.
fn spills_past_saturated_local_workers(policy: &LoadedPolicy) {
    let mut pool = pool(&[
        ("a-full", "a", &[]),
        ("b-idle", "b", &[]),
        ("a-free", "a", &[]),
    ]);
    pool.candidates.in_flight = vec![5, 0, 1];
    let decision = pool.route(policy, &request("a", None)).unwrap();
    assert_eq!(pool.routed(&decision), ["a-free", "b-idle", "a-full"]);
}

#[test]
fn a_refused_config_is_an_init_error_with_the_guests_message() {
    let error = load("canary", r#"{"stable": "v1"}"#).unwrap_err();
    assert_eq!(error.kind(), "init", "{error}");
    assert!(error.to_string().contains("canary"), "{error}");
}

#[test]
fn fresh_instances_decide_like_recycled_ones() {
    let policy = load("failover", "{}").unwrap();
    let pool = pool(&[("b1", "b", &[]), ("a1", "a", &[])]);
    let request = request("a", None);
    assert_eq!(
        policy
            .route_fresh(&request, &pool.table, &pool.candidates, &nobody())
            .unwrap(),
        pool.route(&policy, &request).unwrap()
    );
}

#[test]
fn a_changed_table_reaches_every_instance_and_only_candidates_are_routed() {
    let policy = load("blue-green", r#"{"active": "blue", "fallback": true}"#).unwrap();
    let request = request("a", None);
    let before = pool(&[("w1", "a", &[("colour", "blue")]), ("w2", "a", &[])]);
    assert_eq!(
        before.routed(&before.route(&policy, &request).unwrap()),
        ["w1", "w2"]
    );
    // The same workers relabelled, and a third that is no candidate: the
    // recycled instance must see the new labels and route to candidates only.
    let mut after = pool(&[
        ("w1", "a", &[("colour", "green")]),
        ("w2", "a", &[("colour", "blue")]),
        ("w3", "a", &[("colour", "blue")]),
    ]);
    after.candidates = sample::candidates_of(&[2, 1]);
    for _ in 0..3 {
        let decision = after.route(&policy, &request).unwrap();
        assert_eq!(after.routed(&decision), ["w2", "w1"]);
    }
    // And back: the old table is sent again, not assumed.
    assert_eq!(
        before.routed(&before.route(&policy, &request).unwrap()),
        ["w1", "w2"]
    );
}

/// The world grew `worker-engines` after its 0.2.0 release; a component
/// built before (the shipped zone-affinity policy of then, kept as bytes)
/// does not import it and must load and route as it did.
#[test]
fn a_plugin_built_before_worker_engines_still_loads() {
    let bytes = include_bytes!("fixtures/zone-affinity-world-0.2.0.wasm");
    let policy = LoadedPolicy::load(
        engine(),
        Tier::Optimized,
        "zone-affinity",
        "0.2.0",
        bytes,
        r#"{"spill_in_flight": 4}"#,
    )
    .unwrap();
    spills_past_saturated_local_workers(&policy);
}

/// The engines the host passes reach the policy: a canary by engine sends
/// everything to the one vLLM worker, the `llmgw` ones behind it and the
/// llama.cpp one (neither side) nowhere.
#[test]
fn canary_splits_by_the_engines_the_host_passes() {
    let policy = load(
        "canary",
        r#"{"by": "engine", "stable": "llmgw", "canary": "vllm", "canary_percent": 100}"#,
    )
    .unwrap();
    let (table, candidates) = (sample::table(), sample::candidates_of(&[2, 3, 0, 1]));
    let decision = policy
        .route(&request("a", None), &table, &candidates, &nobody())
        .unwrap();
    let Decision::Route(order) = decision else {
        panic!("{decision:?}")
    };
    let ids: Vec<&str> = order
        .iter()
        .map(|&i| table.workers()[candidates.worker[i] as usize].id.as_str())
        .collect();
    assert_eq!(ids[0], "sample-a2");
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(!ids.contains(&"sample-c1"));
}
