//! A hostile policy for the host's tests: its config picks how it misbehaves.
//!
//! Never ship it. The gateway's plugin tests load it to prove that a plugin
//! cannot crash, hang or starve the gateway, and that a bad decision is caught.
//!
//! Config (JSON):
//! - `mode` (required): `ok` (routes by score), `loop` (spins forever in
//!   `route`), `oom` (allocates until memory runs out), `trap` (panics, which
//!   is a trap in a component), `empty` (routes to no worker), `unknown`
//!   (routes to a candidate that does not exist), `duplicate` (lists the best
//!   worker twice), `bad_status` (rejects with status 200), `init_fail`
//!   (`init` returns an error), `slow_init` (spins forever in `init`).
//! - `on_model`: misbehave in `route` only for requests of this model and
//!   route by score otherwise, so a version passes the host's sample
//!   decisions at load time and misbehaves at call time. Default: always.
//! - `fail_closed`: declares in `init` that its failures must fail closed.

#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::hint::black_box;

use policy_sdk::{
    by_score, config, reject, route_to, Candidate, Decision, Deserialize, Policy, Request,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(crate = "policy_sdk::serde", rename_all = "snake_case")]
enum Mode {
    Ok,
    Loop,
    Oom,
    Trap,
    Empty,
    Unknown,
    Duplicate,
    BadStatus,
    InitFail,
    SlowInit,
}

#[derive(Debug, Deserialize)]
#[serde(crate = "policy_sdk::serde", deny_unknown_fields)]
struct RawConfig {
    mode: Mode,
    #[serde(default)]
    on_model: Option<String>,
    #[serde(default)]
    fail_closed: bool,
}

pub struct Hostile {
    mode: Mode,
    on_model: Option<String>,
}

impl Policy for Hostile {
    fn init(config: &str) -> Result<Self, String> {
        let raw: RawConfig = config::parse(config)?;
        if raw.fail_closed {
            policy_sdk::host::fail_closed();
        }
        match raw.mode {
            Mode::InitFail => Err("hostile: init_fail asked for".to_string()),
            Mode::SlowInit => spin(),
            mode => Ok(Self {
                mode,
                on_model: raw.on_model,
            }),
        }
    }

    fn route(&self, request: &Request, candidates: &[Candidate<'_>]) -> Decision {
        let misbehaves = self
            .on_model
            .as_ref()
            .is_none_or(|model| *model == request.model);
        let ordered = by_score(candidates);
        if !misbehaves {
            return route_to(request, ordered);
        }
        match self.mode {
            Mode::Ok | Mode::InitFail | Mode::SlowInit => route_to(request, ordered),
            Mode::Loop => spin(),
            Mode::Oom => hoard(),
            Mode::Trap => panic!("hostile: trap asked for"),
            Mode::Empty => Decision::Route(Vec::new()),
            // One past the last candidate.
            Mode::Unknown => Decision::Route(vec![candidates.len() as u32]),
            Mode::Duplicate => {
                let Some(best) = ordered.first() else {
                    return reject(503, "no candidates");
                };
                Decision::Route(vec![best.position(), best.position()])
            }
            Mode::BadStatus => reject(200, "a rejection that is a success"),
        }
    }
}

/// Spins until the host interrupts it. `black_box` keeps the loop from being
/// reasoned away; the host's epoch check sits at the loop header either way.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Allocates 1 MiB at a time until the host refuses to grow memory. Untouched,
/// so the limit is what stops it, not the call deadline: filling 16 MiB byte by
/// byte in a baseline build can take longer than a busy machine's deadline.
fn hoard() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(Vec::with_capacity(1 << 20));
        black_box(&hoard);
    }
}

policy_sdk::export_policy!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_a_mode() {
        assert!(Hostile::init(r#"{"mode": "ok"}"#).is_ok());
        assert!(Hostile::init(r#"{"mode": "init_fail"}"#).is_err());
        assert!(Hostile::init(r#"{"mode": "nope"}"#).is_err());
        assert!(Hostile::init("{}").is_err());
    }
}
