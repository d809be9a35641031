//! What routing runs on now: the config in force and the worker registry
//! built from it. The control plane swaps both at once when etcd changes
//! either; a request loads them once and keeps them to its end, so a swap
//! never changes a request halfway.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::pools::Registry;

pub struct Live {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
}

/// The live state, shared by the request path, probes, the bus mirror and the control plane.
pub type Shared = Arc<ArcSwap<Live>>;

pub fn shared(config: Config, registry: Registry) -> Shared {
    Arc::new(ArcSwap::from_pointee(Live {
        config: Arc::new(config),
        registry: Arc::new(registry),
    }))
}
