//! The OpenAI error shape, `{"error": {"message", "type", "param", "code"}}`,
//! with the HTTP status that goes with each kind.

use serde::{Deserialize, Serialize};

/// What went wrong, as far as an API client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    /// No API key, or one that is unknown, revoked or expired.
    InvalidApiKey,
    /// A valid key that may not do this (the admin listener without an admin key).
    PermissionDenied,
    PayloadTooLarge,
    ModelNotFound,
    NotFound,
    MethodNotAllowed,
    RateLimited,
    Overloaded,
    NoHealthyWorker,
    UpstreamFailed,
    Timeout,
    Internal,
    /// A routing policy turned the request away with this status.
    Rejected(u16),
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::InvalidApiKey => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::ModelNotFound | ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RateLimited => 429,
            ErrorKind::Internal => 500,
            ErrorKind::UpstreamFailed => 502,
            ErrorKind::Overloaded | ErrorKind::NoHealthyWorker => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::Rejected(status) => status,
        }
    }

    /// OpenAI's `type` field.
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::InvalidApiKey
            | ErrorKind::PermissionDenied
            | ErrorKind::PayloadTooLarge
            | ErrorKind::ModelNotFound
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed => "invalid_request_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Overloaded | ErrorKind::NoHealthyWorker => "service_unavailable",
            ErrorKind::UpstreamFailed | ErrorKind::Timeout | ErrorKind::Internal => "server_error",
            ErrorKind::Rejected(status) if status < 500 => "invalid_request_error",
            ErrorKind::Rejected(_) => "server_error",
        }
    }

    /// OpenAI's `code` field.
    pub fn code(self) -> Option<&'static str> {
        match self {
            ErrorKind::InvalidApiKey => Some("invalid_api_key"),
            ErrorKind::PermissionDenied => Some("permission_denied"),
            ErrorKind::ModelNotFound => Some("model_not_found"),
            ErrorKind::PayloadTooLarge => Some("payload_too_large"),
            ErrorKind::RateLimited => Some("rate_limit_exceeded"),
            ErrorKind::Overloaded => Some("overloaded"),
            ErrorKind::NoHealthyWorker => Some("no_healthy_worker"),
            ErrorKind::UpstreamFailed => Some("upstream_failed"),
            ErrorKind::Timeout => Some("timeout"),
            ErrorKind::Rejected(_) => Some("policy_rejected"),
            _ => None,
        }
    }
}

/// An error for an API client: a kind, a message, and the offending parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            kind: ErrorKind::InvalidRequest,
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            kind: ErrorKind::ModelNotFound,
            message: format!("The model `{model}` does not exist or you do not have access to it."),
            param: Some("model".to_string()),
        }
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The JSON body OpenAI clients parse.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                r#type: self.kind.type_name().to_string(),
                param: self.param.clone(),
                code: self.kind.code().map(str::to_string),
            },
        })
        .expect("error body serializes")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.status())
    }
}

impl std::error::Error for ApiError {}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    pub r#type: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_not_found_has_openai_shape() {
        let e = ApiError::model_not_found("gpt-x");
        assert_eq!(e.status(), 404);
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
    }
}
