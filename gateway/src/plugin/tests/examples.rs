//! The shipped example policies give their documented decisions through the host.

use std::sync::Arc;

use super::*;
use crate::plugin::PolicySlot;

#[test]
fn failover_orders_local_zone_by_score_then_other_zones() {
    let policy = load("failover", "{}").unwrap();
    let mut candidates = vec![
        candidate("b-best", "b", &[]),
        candidate("a-worse", "a", &[]),
        candidate("c-mid", "c", &[]),
        candidate("a-better", "a", &[]),
    ];
    for (c, score) in candidates.iter_mut().zip([0.1, 2.0, 1.0, 1.5]) {
        c.score = score;
    }
    let decision = policy.route(&request("a", None), &candidates).unwrap();
    assert_eq!(
        routed(&decision, &candidates),
        ["a-better", "a-worse", "b-best", "c-mid"]
    );
    assert_eq!(decision, Decision::Route(vec![3, 1, 0, 2]));
}

#[test]
fn failover_max_workers_cuts_the_list() {
    let policy = load("failover", r#"{"max_workers": 1}"#).unwrap();
    let candidates = [candidate("w1", "a", &[]), candidate("w2", "a", &[])];
    let decision = policy.route(&request("a", None), &candidates).unwrap();
    assert_eq!(routed(&decision, &candidates).len(), 1);
}

fn canary_candidates() -> Vec<PolicyCandidate> {
    vec![
        candidate("stable-1", "a", &[("version", "v1")]),
        candidate("canary-1", "a", &[("version", "v2")]),
    ]
}

#[test]
fn canary_is_sticky_per_session() {
    let policy = load(
        "canary",
        r#"{"stable": "v1", "canary": "v2", "canary_percent": 50}"#,
    )
    .unwrap();
    let candidates = canary_candidates();
    for key in ["alice", "bob", "carol"] {
        let request = request("a", Some(key));
        let first = policy.route(&request, &candidates).unwrap();
        for _ in 0..20 {
            assert_eq!(policy.route(&request, &candidates).unwrap(), first, "{key}");
        }
        // Both sides listed: the other one is the failover tail.
        assert_eq!(routed(&first, &candidates).len(), 2);
    }
}

#[test]
fn canary_splits_sessions_by_percentage() {
    let policy = load(
        "canary",
        r#"{"stable": "v1", "canary": "v2", "canary_percent": 30}"#,
    )
    .unwrap();
    let candidates = canary_candidates();
    let sessions = 1000;
    let on_canary = (0..sessions)
        .filter(|i| {
            let decision = policy
                .route(&request("a", Some(&format!("user-{i}"))), &candidates)
                .unwrap();
            routed(&decision, &candidates)[0] == "canary-1"
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
    let candidates = [
        candidate("blue-1", "a", &[("colour", "blue")]),
        candidate("green-1", "a", &[("colour", "green")]),
    ];
    slot.try_load(engine(), "blue-green", "1", &bytes, r#"{"active": "blue"}"#)
        .unwrap();
    let before = slot.current().unwrap();
    let decision = before.route(&request("a", None), &candidates).unwrap();
    assert_eq!(routed(&decision, &candidates), ["blue-1"]);

    slot.try_load(
        engine(),
        "blue-green",
        "1",
        &bytes,
        r#"{"active": "green"}"#,
    )
    .unwrap();
    let after = slot.current().unwrap();
    let decision = after.route(&request("a", None), &candidates).unwrap();
    assert_eq!(routed(&decision, &candidates), ["green-1"]);
    // Same code, new config: the version and its hash stay.
    assert_eq!(after.info().sha256, before.info().sha256);
    assert_eq!(slot.status().loads, 2);
    // A request that started before the flip still decides by the old colour.
    let decision = before.route(&request("a", None), &candidates).unwrap();
    assert_eq!(routed(&decision, &candidates), ["blue-1"]);
}

#[test]
fn blue_green_without_an_active_worker_rejects() {
    let policy = load("blue-green", r#"{"active": "blue"}"#).unwrap();
    let candidates = [candidate("green-1", "a", &[("colour", "green")])];
    let decision = policy.route(&request("a", None), &candidates).unwrap();
    assert!(
        matches!(decision, Decision::Reject { status: 503, .. }),
        "{decision:?}"
    );
}

#[test]
fn zone_affinity_spills_past_saturated_local_workers() {
    let policy = load("zone-affinity", r#"{"spill_in_flight": 4}"#).unwrap();
    let mut candidates = vec![
        candidate("a-full", "a", &[]),
        candidate("b-idle", "b", &[]),
        candidate("a-free", "a", &[]),
    ];
    candidates[0].load.in_flight = 5;
    candidates[2].load.in_flight = 1;
    let decision = policy.route(&request("a", None), &candidates).unwrap();
    assert_eq!(
        routed(&decision, &candidates),
        ["a-free", "b-idle", "a-full"]
    );
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
    let candidates = [candidate("b1", "b", &[]), candidate("a1", "a", &[])];
    let request = request("a", None);
    assert_eq!(
        policy.route_fresh(&request, &candidates).unwrap(),
        policy.route(&request, &candidates).unwrap()
    );
}
