//! Host-side bindings generated from `wit/policy.wit`; nothing else lives here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
});
