//! The browser side of the one port: grpc-web needs CORS for pages served elsewhere, and
//! the built web client (`client-web/dist`) is served from the same port as the API, so
//! `http://localhost:50051/` opens it. gRPC and grpc-web requests are routed by path
//! (`/package.Service/Method`); anything else is a static file, with `index.html` for
//! the client's own routes. Without a built client, `/` explains how to build it.

use std::path::PathBuf;

use axum::{http::StatusCode, response::Html, routing::get};
use http::{HeaderValue, header::HeaderName};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    services::{ServeDir, ServeFile},
};

/// Which other browser origins may call the service through grpc-web. Pages served from
/// this port are same-origin and need none.
#[derive(Debug, Clone)]
pub enum Cors {
    /// Any origin: any web page a user opens could drive the service (with auth off, as
    /// that user). Only when the operator asks for it (`--cors-origins '*'`), never with auth.
    Any,
    /// Only these origins, e.g. `https://app.example.com`; none (the default) means same
    /// origin only.
    Origins(Vec<String>),
}

impl Default for Cors {
    fn default() -> Cors {
        Cors::Origins(Vec::new())
    }
}

/// How the service faces browsers.
#[derive(Debug, Clone, Default)]
pub struct Web {
    pub cors: Cors,
    /// The built web client to serve (a directory with `index.html`), if any.
    pub client_dir: Option<PathBuf>,
}

/// Where `up` and `serve` look for the built client when not told.
pub const DEFAULT_CLIENT_DIR: &str = "client-web/dist";

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>deephardway</title>\
<h1>deephardway is running</h1>\
<p>The web client is not built. Build it with <code>scripts/setup</code> (or \
<code>npm --prefix client-web ci &amp;&amp; npm --prefix client-web run build</code>), then \
restart with <code>--web-dir client-web/dist</code>.</p>\
<p>The gRPC API is on this port: <code>grpcurl -plaintext HOST:PORT list</code>.</p>";

pub fn cors_layer(cors: &Cors) -> anyhow::Result<CorsLayer> {
    let origin = match cors {
        Cors::Any => AllowOrigin::any(),
        Cors::Origins(list) => {
            AllowOrigin::list(list.iter().map(|o| HeaderValue::from_str(o)).collect::<Result<Vec<_>, _>>()?)
        }
    };
    let exposed = ["grpc-status", "grpc-message", "grpc-status-details-bin"].map(HeaderName::from_static);
    Ok(CorsLayer::new()
        .allow_origin(origin)
        // Listed, not `*`: browsers never let a wildcard cover `authorization`.
        .allow_headers(
            ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "authorization", "traceparent"]
                .map(HeaderName::from_static),
        )
        .allow_methods([http::Method::GET, http::Method::POST, http::Method::OPTIONS])
        .expose_headers(exposed)
        .max_age(std::time::Duration::from_secs(24 * 3600)))
}

/// Adds the static client (or the "not built" page) behind the gRPC routes.
pub fn with_client(grpc: axum::Router, web: &Web) -> axum::Router {
    match &web.client_dir {
        Some(dir) if dir.join("index.html").is_file() => {
            let files = ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html")));
            grpc.fallback_service(files)
        }
        Some(dir) => {
            tracing::warn!(dir = %dir.display(), "no index.html in the web client directory; serving a how-to page");
            not_built(grpc)
        }
        None => not_built(grpc),
    }
}

fn not_built(grpc: axum::Router) -> axum::Router {
    grpc.route("/", get(|| async { Html(NOT_BUILT) }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: this port serves the deephardway gRPC API") })
}
