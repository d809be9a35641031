//! What the gateway and the workers both speak, defined once: the OpenAI wire
//! format, the OpenAI error shape, block hashing of prompts, the worker's
//! health and load reports, KV-cache events, the bus that carries them, and
//! the control plane's keys in etcd; how a stream is continued on another
//! worker; and how every binary logs.

pub mod blocks;
pub mod bus;
pub mod control;
pub mod engine_kv;
pub mod error;
pub mod health;
pub mod kv;
pub mod logs;
pub mod openai;
pub mod resume;
pub mod traces;
mod worker_id;

pub use blocks::{block_hashes, BlockHash};
pub use bus::{Bus, BusError, Subjects, Topic};
pub use error::{ApiError, ErrorKind};
pub use health::{HealthReport, LoadReport};
pub use kv::{KvEvent, KvEventBatch, KvSnapshot, LoadMessage};
pub use worker_id::WorkerId;
