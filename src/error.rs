//! The one error type of openlora. Every fallible path returns [`Error`]; `error_type()` is the
//! stable label used both in the OpenAI-shaped error body and as the `outcome` metric label, and
//! `is_client_error()` decides between a 4xx and a 5xx at the HTTP edge.

use std::path::PathBuf;

/// Every error openlora can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request parameter is invalid; `param` names the field.
    #[error("invalid value for `{param}`: {message}")]
    InvalidRequest { param: String, message: String },
    /// The prompt plus the requested completion does not fit the model's context.
    #[error("{0}")]
    ContextLength(String),
    /// A model or adapter name that is not registered.
    #[error("{0}")]
    NotFound(String),
    /// The model or adapter uses a feature openlora does not implement; `field` names it.
    #[error("unsupported {field}: {message}")]
    Unsupported { field: String, message: String },
    /// A runtime-loaded adapter is refused (where it lives, what its files hold); the message names
    /// the adapter and never a server path.
    #[error("adapter `{name}`: {message}")]
    InvalidAdapter { name: String, message: String },
    /// An adapter the integrity gate refuses to serve (weights hash differs from the one
    /// registered on chain, deactivated, or not registered where registration is required).
    #[error("adapter `{name}` is refused: {reason}")]
    AdapterRefused { name: String, reason: String },
    /// A file, job or other stored object that does not exist; `param` names the field that
    /// referred to it.
    #[error("{message}")]
    NoSuchObject { param: String, message: String },
    /// An upload larger than its limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The request conflicts with the current state (an adapter name already taken, a file a
    /// job still uses); `param` is the request field at fault.
    #[error("{message}")]
    Conflict {
        param: &'static str,
        message: String,
    },
    /// A model or adapter file is malformed.
    #[error("invalid {what} at {path}: {message}")]
    InvalidFile {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The engine is not accepting work (shutting down, queue full).
    #[error("{0}")]
    Unavailable(String),
    /// The engine thread stopped.
    #[error("engine stopped")]
    EngineStopped,
    /// The engine failed (panicked) while running the request: a server error, never billed.
    #[error("{0}")]
    EngineFailed(String),
    #[error("io error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// A chain operation (settlement, deposits) failed.
    #[error("chain: {0}")]
    Chain(#[from] crate::chain::ChainError),
    /// The payer's deposit does not cover this call on top of its unsettled usage.
    #[error("insufficient funds: payer {payer} has {available} wei available (deposit minus unsettled usage and calls in flight), this request may cost up to {needed} wei; deposit more into the Settlement contract")]
    InsufficientFunds {
        payer: String,
        available: String,
        needed: String,
    },
    /// The usage ledger (SQLite) failed.
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            param: param.into(),
            message: message.into(),
        }
    }

    pub fn conflict(param: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            param,
            message: message.into(),
        }
    }

    pub fn no_such(param: impl Into<String>, message: impl Into<String>) -> Self {
        Error::NoSuchObject {
            param: param.into(),
            message: message.into(),
        }
    }

    pub fn unsupported(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Unsupported {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn file(what: &'static str, path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Error::InvalidFile {
            what,
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The error as a client may see it about adapter `name`: the variants that carry a server
    /// path (`Io`, `InvalidFile`) become `InvalidAdapter`, naming the file but not where it is.
    pub fn about_adapter(self, name: &str) -> Error {
        let file = |p: &std::path::Path| {
            p.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "its folder".into())
        };
        let message = match self {
            Error::Io { path, source } => format!("cannot read {}: {}", file(&path), source.kind()),
            Error::InvalidFile { what, message, .. } => format!("invalid {what}: {message}"),
            other => return other,
        };
        Error::InvalidAdapter {
            name: name.to_string(),
            message,
        }
    }

    /// Stable snake_case label: the OpenAI error `type` and the metric `outcome` label.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::InvalidRequest { .. }
            | Error::ContextLength(_)
            | Error::NotFound(_)
            | Error::NoSuchObject { .. }
            | Error::TooLarge(_)
            | Error::InvalidAdapter { .. }
            | Error::Conflict { .. }
            | Error::Unsupported { .. }
            | Error::InvalidFile { .. } => "invalid_request_error",
            Error::Unavailable(_) | Error::EngineStopped => "service_unavailable",
            Error::AdapterRefused { .. } => "permission_error",
            Error::InsufficientFunds { .. } => "insufficient_quota",
            Error::Io { .. }
            | Error::Ledger(_)
            | Error::Tokenizer(_)
            | Error::Template(_)
            | Error::Chain(_)
            | Error::EngineFailed(_)
            | Error::Internal(_) => "server_error",
        }
    }

    /// True when the caller, not the server, is at fault.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self.error_type(),
            "invalid_request_error" | "insufficient_quota" | "permission_error"
        )
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Internal(format!("candle: {e}"))
    }
}
