//! The HTTP face of `Error`: one `From` maps every error to its status and OpenAI-shaped body
//! `{"error": {"message", "type", "param", "code"}}`. Client mistakes are 4xx, never 500.

use crate::error::Error;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        ApiError {
            code: Some("invalid_api_key"),
            ..Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
        }
    }

    /// An over-long prompt names the request's prompt field (`messages` or `prompt`).
    pub fn prompt_param(mut self, param: &str) -> Self {
        if self.code == Some("context_length_exceeded") {
            self.param = Some(param.to_string());
        }
        self
    }

    pub fn error_type(&self) -> &'static str {
        self.kind
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        let (status, param, code) = match &e {
            Error::InvalidRequest { param, .. } => {
                (StatusCode::BAD_REQUEST, Some(param.clone()), None)
            }
            Error::ContextLength(_) => (
                StatusCode::BAD_REQUEST,
                Some("messages".to_string()),
                Some("context_length_exceeded"),
            ),
            Error::NotFound(_) => (
                StatusCode::NOT_FOUND,
                Some("model".to_string()),
                Some("model_not_found"),
            ),
            Error::NoSuchObject { param, .. } => (StatusCode::NOT_FOUND, Some(param.clone()), None),
            Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, None, None),
            Error::InvalidAdapter { .. } => (
                StatusCode::BAD_REQUEST,
                Some("lora_path".to_string()),
                Some("invalid_adapter"),
            ),
            Error::AdapterRefused { .. } => (
                StatusCode::FORBIDDEN,
                Some("model".to_string()),
                Some("adapter_refused"),
            ),
            Error::Conflict { param, .. } => (StatusCode::CONFLICT, Some(param.to_string()), None),
            Error::Unsupported { .. } | Error::InvalidFile { .. } => {
                (StatusCode::BAD_REQUEST, None, Some("invalid_adapter"))
            }
            Error::InsufficientFunds { .. } => (
                StatusCode::PAYMENT_REQUIRED,
                None,
                Some("insufficient_quota"),
            ),
            Error::Unavailable(_) | Error::EngineStopped => {
                (StatusCode::SERVICE_UNAVAILABLE, None, None)
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, None, None),
        };
        ApiError {
            status,
            message,
            kind: e.error_type(),
            param,
            code,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        (self.status, Json(body)).into_response()
    }
}
