//! Who may call what. What always holds:
//! - keys are compared in constant time (`keys_equal`: both sides hashed to 32 bytes, folded
//!   without an early exit) and every configured key is compared, so timing tells nothing;
//! - the `Bearer` scheme is matched case-insensitively (RFC 7235);
//! - the OpenAI endpoints need an API key (or the admin key) once any API key is configured;
//! - the adapter admin endpoints need the admin key whenever any key (API or admin) is configured,
//!   are refused outright when API keys exist without an admin key, and with no keys at all
//!   answer only to loopback peers — unless `--insecure-open-admin` opens them (logged loudly);
//! - with an admin key configured, a caller without a valid key gets 401 and a caller holding a
//!   valid API key that is not the admin key gets 403 (it is known, but not allowed);
//! - only a caller who proved to be the admin (or a loopback caller of a keyless server) is told
//!   server paths (`AdminAccess::sees_paths`).

use super::api_error::ApiError;
use super::state::{AppState, ServerOptions};
use alloy::primitives::keccak256;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What a caller admitted to the admin endpoints may see; set by `require_admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAccess {
    /// Server paths (adapter folders) may be shown.
    pub sees_paths: bool,
}

/// Constant-time equality of two secrets (their lengths do not leak either).
pub fn keys_equal(a: &str, b: &str) -> bool {
    let (x, y) = (keccak256(a.as_bytes()), keccak256(b.as_bytes()));
    let diff = x
        .iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| std::hint::black_box(acc | (p ^ q)));
    diff == 0
}

/// The bearer token of an `Authorization` header, scheme matched case-insensitively.
pub fn bearer_of(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The payer of `key` among the API keys, every key compared in constant time.
pub fn payer_of<'a>(opts: &'a ServerOptions, key: &str) -> Option<&'a String> {
    let mut found = None;
    for (k, payer) in &opts.api_keys {
        if keys_equal(k, key) {
            found = Some(payer);
        }
    }
    found
}

pub fn is_admin_key(opts: &ServerOptions, key: Option<&str>) -> bool {
    match (&opts.admin_key, key) {
        (Some(admin), Some(k)) => keys_equal(admin, k),
        _ => false,
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_error", message)
}

/// The admin policy (see the header) for a caller presenting `key` from a loopback peer or not.
pub fn admin_access(
    opts: &ServerOptions,
    key: Option<&str>,
    loopback: bool,
) -> Result<AdminAccess, ApiError> {
    let keyless = opts.api_keys.is_empty() && opts.admin_key.is_none();
    if opts.admin_key.is_some() {
        // Both checks always run: which one matched does not show in the timing.
        let admin = is_admin_key(opts, key);
        let api = key.is_some_and(|k| payer_of(opts, k).is_some());
        return match (admin, api) {
            (true, _) => Ok(AdminAccess { sees_paths: true }),
            (false, true) => Err(forbidden(
                "This endpoint needs the admin key; an API key is not enough.",
            )),
            (false, false) => Err(ApiError::unauthorized("This endpoint needs the admin key.")),
        };
    }
    if opts.insecure_open_admin {
        return Ok(AdminAccess {
            sees_paths: keyless && loopback,
        });
    }
    if !keyless {
        return Err(forbidden(
            "adapter admin is disabled: API keys are configured but no admin key (start the server with --admin-key)",
        ));
    }
    match loopback {
        true => Ok(AdminAccess { sees_paths: true }),
        false => Err(forbidden(
            "adapter admin answers only on loopback when no keys are configured (start the server with --admin-key)",
        )),
    }
}

pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if !state.opts.api_keys.is_empty() {
        let key = bearer_of(req.headers());
        let ok = key.is_some_and(|k| {
            // Both checks always run: which one matched does not show in the timing.
            let api = payer_of(&state.opts, k).is_some();
            let admin = is_admin_key(&state.opts, Some(k));
            api | admin
        });
        if !ok {
            return ApiError::unauthorized("Incorrect API key provided.").into_response();
        }
    }
    next.run(req).await
}

pub async fn require_admin(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let loopback = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| is_loopback(c.0.ip()));
    match admin_access(&state.opts, bearer_of(req.headers()), loopback) {
        Ok(access) => {
            req.extensions_mut().insert(access);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn opts(api: &[&str], admin: Option<&str>, open: bool) -> ServerOptions {
        ServerOptions {
            api_keys: api
                .iter()
                .map(|k| (k.to_string(), "p".to_string()))
                .collect(),
            admin_key: admin.map(String::from),
            insecure_open_admin: open,
            ..Default::default()
        }
    }

    #[test]
    fn constant_time_compare() {
        assert!(keys_equal("sk-abc", "sk-abc"));
        assert!(!keys_equal("sk-abc", "sk-abd"));
        assert!(!keys_equal("sk-abc", "sk-ab"));
        assert!(!keys_equal("", "x"));
        assert!(keys_equal("", ""));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for (h, want) in [
            ("Bearer k1", Some("k1")),
            ("bearer k1", Some("k1")),
            ("BEARER  k1 ", Some("k1")),
            ("Basic k1", None),
            ("Bearer", None),
            ("Bearer ", None),
        ] {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(h).unwrap());
            assert_eq!(bearer_of(&m), want, "{h}");
        }
    }

    #[test]
    fn admin_policy() {
        let ok = |o: &ServerOptions, k: Option<&str>, lo: bool| admin_access(o, k, lo).ok();
        let status = |o: &ServerOptions, k: Option<&str>, lo: bool| {
            admin_access(o, k, lo).unwrap_err().status
        };
        // Admin key configured: needed from everywhere, loopback included.
        let o = opts(&["a"], Some("adm"), false);
        assert_eq!(
            ok(&o, Some("adm"), false),
            Some(AdminAccess { sees_paths: true })
        );
        assert_eq!(status(&o, Some("a"), true), StatusCode::FORBIDDEN);
        assert_eq!(status(&o, Some("zz"), true), StatusCode::UNAUTHORIZED);
        assert_eq!(status(&o, None, true), StatusCode::UNAUTHORIZED);
        // API keys but no admin key: disabled, even an API key on loopback.
        let o = opts(&["a"], None, false);
        assert_eq!(status(&o, Some("a"), true), StatusCode::FORBIDDEN);
        // No keys: loopback only.
        let o = opts(&[], None, false);
        assert_eq!(ok(&o, None, true), Some(AdminAccess { sees_paths: true }));
        assert_eq!(status(&o, None, false), StatusCode::FORBIDDEN);
        // The opt-out opens them but shows paths only to a keyless server's loopback callers.
        let o = opts(&["a"], None, true);
        assert_eq!(ok(&o, None, false), Some(AdminAccess { sees_paths: false }));
        let o = opts(&[], None, true);
        assert_eq!(ok(&o, None, false), Some(AdminAccess { sees_paths: false }));
        assert_eq!(ok(&o, None, true), Some(AdminAccess { sees_paths: true }));
    }

    #[test]
    fn loopback_peers() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }
}
