//! The plugin SDK: write a routing policy as a plain Rust type, test it natively, export it as a component.
//!
//! A policy crate implements [`Policy`] and calls [`export_policy!`]; on
//! `wasm32` that exports `init`, `set-workers` and `route` of the
//! `llmgw:policy/policy@0.2.0` world, elsewhere it expands to nothing so the
//! crate's unit tests run on the build machine (with [`testing::route`]).
//!
//! The world sends a pool's workers apart from each request's figures, which
//! refer to them by index, and takes candidate positions back; the SDK keeps
//! the workers and joins them in, so a policy sees each [`Candidate`] whole
//! and routes by naming candidates ([`route_to`]).
//!
//! The crate is `no_std` (with `alloc`), and so must policy crates be: the
//! `failover` component is 96 KB without std against 176 KB with it, and
//! loads in 13-20 ms instead of 43 ms; that load is most of a hot swap (see
//! `rt.rs`).

#![no_std]

extern crate alloc;
// Natively (unit tests, the host stand-ins) std is at hand.
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

// The generated bindings and `export_policy!` name this crate by its path, which
// must also resolve from inside it.
extern crate self as policy_sdk;

use alloc::string::String;

pub mod config;
pub mod host;
mod order;
#[cfg(target_arch = "wasm32")]
mod rt;
mod slot;
mod sticky;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod view;

pub use order::{by_score, reject, route_to};
/// For policies' config types: `#[derive(Deserialize)]` with
/// `#[serde(crate = "policy_sdk::serde")]`, so a policy crate needs no serde
/// of its own (and cannot pull in serde's std by accident).
pub use serde::{self, Deserialize};
pub use slot::Slot;
pub use sticky::{random_fraction, sticky_fraction};
pub use view::{Candidate, Health, Load};

/// Bindings generated once from `wit/policy.wit`, shared by every policy crate.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        // Decisions compare in tests.
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "::policy_sdk::bindings",
        runtime_path: "::policy_sdk::__private::wit_bindgen::rt",
    });
}

pub use bindings::llmgw::policy::host::Level;
pub use bindings::llmgw::policy::types::{
    Caller, Decision, Engine, Label, Priority, Rejection, Request, Worker,
};

impl Engine {
    /// The name a gateway config gives it: `llmgw`, `vllm`, `sglang`,
    /// `llamacpp` or `openai`.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Llmgw => "llmgw",
            Engine::Vllm => "vllm",
            Engine::Sglang => "sglang",
            Engine::Llamacpp => "llamacpp",
            Engine::Openai => "openai",
        }
    }
}

/// A routing policy: built once from the operator's JSON config, then asked to order candidates.
pub trait Policy: Send + Sync + 'static {
    /// Parses and checks `config`; the error names the offending field.
    fn init(config: &str) -> Result<Self, String>
    where
        Self: Sized;

    /// Orders `candidates` for `request` (usually with [`route_to`]), or
    /// rejects it. Must not panic: a panic is a trap.
    fn route(&self, request: &Request, candidates: &[Candidate<'_>]) -> Decision;
}

/// Items the macros expand to in policy crates; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use alloc::string::String;
    pub use alloc::vec::Vec;
    pub use wit_bindgen;
}

/// Exports a [`Policy`] type as the component's `init`, `set-workers` and `route`.
///
/// The initialised policy and the workers live in a static [`Slot`]: `init`
/// and `set-workers` fill it and `route` reads it, rejecting with 500 until
/// an `init` succeeded.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        // Natively the crate is a library under test; the exports would only
        // collide with other symbols named `init`.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static SLOT: $crate::Slot<$policy> = $crate::Slot::new();

            struct Component;

            impl $crate::bindings::Guest for Component {
                fn init(
                    config: $crate::__private::String,
                ) -> ::core::result::Result<(), $crate::__private::String> {
                    SLOT.init(&config)
                }

                fn set_workers(workers: $crate::__private::Vec<$crate::Worker>) {
                    SLOT.set_workers(workers, $crate::host::worker_engines())
                }

                fn route(
                    request: $crate::Request,
                    candidates: $crate::bindings::llmgw::policy::types::Candidates,
                ) -> $crate::Decision {
                    SLOT.route(&request, &candidates)
                }
            }

            $crate::bindings::__export_world!(Component);
        };
    };
}
