//! Types the gateway and the workers both speak, defined once: the OpenAI wire
//! format, the OpenAI error shape, block hashing of prompts, and the worker's
//! health report.

pub mod blocks;
pub mod error;
pub mod health;
pub mod openai;

pub use blocks::{block_hashes, BlockHash};
pub use error::{ApiError, ErrorKind};
pub use health::{HealthReport, LoadReport};
