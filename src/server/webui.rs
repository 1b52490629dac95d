//! The built-in web console: plain HTML/CSS/JS compiled into the binary (`webui/`, no build step,
//! no Node at run time), served at `/` (the page) and `/ui/{file}` (its assets) unless the server
//! runs with `--no-webui`, in which case both are unknown routes (404 JSON, as before).
//! What always holds:
//! - only the files of `ASSETS` are served, by exact name (no path is ever joined or read);
//! - every console response carries `SECURITY_HEADERS`: a Content-Security-Policy that allows
//!   scripts, styles and connections to this origin only (no inline script or style, no other
//!   host), `nosniff`, no framing, no referrer;
//! - the page holds no secret: it asks for the API key (kept in the tab's sessionStorage) and the
//!   admin key, and every call it makes goes through the same auth as any other client's.

use super::api_error::ApiError;
use axum::extract::Path;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The console's Content-Security-Policy: this origin only, nothing inline.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const SECURITY_HEADERS: [(HeaderName, &str); 6] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-cache"),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    ),
];

/// (file name under `/ui/`, content type, bytes), embedded at build time.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../webui/app.css"),
    ),
    ("app.js", JS, include_str!("../../webui/app.js")),
    ("api.js", JS, include_str!("../../webui/api.js")),
    (
        "playground.js",
        JS,
        include_str!("../../webui/playground.js"),
    ),
    ("receipt.js", JS, include_str!("../../webui/receipt.js")),
    ("adapters.js", JS, include_str!("../../webui/adapters.js")),
    ("server.js", JS, include_str!("../../webui/server.js")),
    ("chart.js", JS, include_str!("../../webui/chart.js")),
    ("finetune.js", JS, include_str!("../../webui/finetune.js")),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../webui/favicon.svg"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &str = include_str!("../../webui/index.html");

/// The console's routes (merged into the API router when the console is on).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route("/ui/{file}", get(asset))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut res = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    res.headers_mut().extend(
        SECURITY_HEADERS
            .iter()
            .map(|(k, v)| (k.clone(), header::HeaderValue::from_static(v))),
    );
    res
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => page(content_type, body),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Invalid URL (GET /ui/{file})"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every script the page loads is an embedded asset, and no asset holds inline code the
    /// policy would block (the browser tests check the page itself runs without CSP errors).
    #[test]
    fn page_references_only_embedded_assets() {
        for src in INDEX
            .split("src=\"")
            .skip(1)
            .chain(INDEX.split("href=\"").skip(1))
        {
            let url = src.split('"').next().unwrap();
            if url.starts_with('#') {
                continue;
            }
            let name = url
                .strip_prefix("/ui/")
                .unwrap_or_else(|| panic!("{url} not under /ui/"));
            assert!(ASSETS.iter().any(|a| a.0 == name), "{name} is not embedded");
        }
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style=\""));
        assert!(!INDEX.contains("onclick=") && !INDEX.contains("<style"));
    }

    #[test]
    fn imports_between_scripts_name_embedded_assets() {
        for (_, _, body) in ASSETS {
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let name = line.split("'./").nth(1).and_then(|s| s.split('\'').next());
                let name = name.unwrap_or_else(|| panic!("unexpected import: {line}"));
                assert!(ASSETS.iter().any(|a| a.0 == name), "{name} is not embedded");
            }
        }
    }
}
