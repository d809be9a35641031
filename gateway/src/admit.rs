//! Admission: sheds a request with 503 when `max_concurrent_requests` are in
//! flight. The permit rides in the response body, so a stream counts until it
//! ends, not only until its headers.

use std::sync::Arc;

use protocol::{ApiError, ErrorKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics;

#[derive(Clone)]
pub struct Admit {
    slots: Arc<Semaphore>,
}

pub type Permit = OwnedSemaphorePermit;

impl Admit {
    pub fn new(max_concurrent_requests: usize) -> Admit {
        Admit {
            slots: Arc::new(Semaphore::new(max_concurrent_requests)),
        }
    }

    pub fn try_admit(&self) -> Result<Permit, ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            metrics::shed();
            ApiError::new(
                ErrorKind::Overloaded,
                "the gateway is at capacity; retry later",
            )
        })
    }
}
