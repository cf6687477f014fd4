//! `meterbook serve`: a read-only web console over the ledger, and `/metrics`. Pages are rendered
//! on the server from one read transaction each ([`reader`]); everything they need (CSS, one
//! small script) is in the binary, nothing is fetched from elsewhere. Only GET reads data; the
//! one form that posts signs a browser in (or out) when a token is required ([`auth`]). Every
//! answer carries a Content-Security-Policy that allows this server's own files only.

pub mod auth;
mod html;
pub mod metrics;
mod pages;
pub mod reader;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use axum::body::Body;
use axum::extract::{Form, Query, Request, State};
use axum::http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use maud::{html, Markup};

use self::auth::Auth;
use self::html::Frame;
use self::metrics::LedgerGauges;
use self::pages::{BadRequest, NotFound, Params, View};
use self::reader::{Reader, Snapshot};
use crate::error::Fatal;
use crate::ledger::LedgerFile;

/// What `serve` needs, resolved.
pub struct Settings {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub ledger: LedgerFile,
}

struct Console {
    reader: Reader,
    auth: Auth,
}

type Shared = Arc<Console>;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// Serves the console until SIGTERM or SIGINT. Prints the address it serves on stdout.
pub async fn serve(settings: Settings) -> Result<()> {
    let console = Arc::new(Console {
        reader: Reader::new(settings.ledger),
        auth: Auth::new(settings.token),
    });
    // A ledger that cannot be read is said at once (exit code 2), not on the first page.
    let check = console.clone();
    tokio::task::spawn_blocking(move || check.reader.read(|_| Ok(()))).await??;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| {
            Fatal::Config(format!(
                "cannot listen on {} (--listen): {e}",
                settings.listen
            ))
        })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && !console.auth.required() {
        tracing::warn!(
            "serving the ledger on {addr}, which other hosts can reach, without a token: anyone \
             there can read it; set METERBOOK_SERVE_TOKEN (or --token), or listen on 127.0.0.1"
        );
    }
    tracing::info!(
        "console of {} on http://{addr}/ (read-only{})",
        console.reader.file().path.display(),
        if console.auth.required() {
            ", token required"
        } else {
            ""
        }
    );
    println!("http://{addr}/");
    axum::serve(listener, router(console))
        .with_graceful_shutdown(crate::daemon::shutdown_signal())
        .await?;
    Ok(())
}

type PageFn = fn(&mut Snapshot<'_>, &Params) -> Result<View>;

fn router(console: Shared) -> Router {
    let page =
        |f: PageFn| get(move |State(c): State<Shared>, Query(p): Query<Params>| show(c, p, f));
    let protected = Router::new()
        .route("/", page(pages::overview))
        .route("/usage", page(pages::usage))
        .route("/usage/pending", page(pages::pending))
        .route("/usage/contract", page(pages::contract_hours))
        .route("/usage/files", page(pages::contract_files))
        .route("/submissions", page(pages::submissions))
        .route("/submissions/line", page(pages::line))
        .route("/submissions/drift", page(pages::drift))
        .route("/problems", page(pages::problems))
        .route("/problems/paths", page(pages::path_problems))
        .route("/problems/unattributed", page(pages::unattributed))
        .route("/costs", page(pages::costs))
        .route("/costs/plot.svg", get(costs_plot))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            console.clone(),
            require_auth,
        ));
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/static/console.css", get(|| asset("text/css", html::CSS)))
        .route(
            "/static/console.js",
            get(|| asset("text/javascript", html::JS)),
        )
        .merge(protected)
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// Renders a page from one snapshot of the ledger.
async fn show(c: Shared, p: Params, f: PageFn) -> Response {
    let signed_in = c.auth.required();
    let result = tokio::task::spawn_blocking(move || {
        c.reader.read(|s| {
            let view = f(s, &p)?;
            Ok((view, s.path.clone()))
        })
    })
    .await;
    match result {
        Ok(Ok((view, path))) => {
            let frame = Frame {
                title: &view.title,
                section: Some(view.section),
                signed_in,
                ledger: Some(&path),
                read_at: Utc::now(),
            };
            html::page(&frame, view.content, &view.queries).into_response()
        }
        Ok(Err(e)) => error_response(&e, signed_in),
        Err(e) => error_response(&anyhow::anyhow!("the page stopped: {e}"), signed_in),
    }
}

fn error_response(e: &anyhow::Error, signed_in: bool) -> Response {
    let (status, title) = if e.downcast_ref::<BadRequest>().is_some() {
        (StatusCode::BAD_REQUEST, "Not a request this page takes")
    } else if e.downcast_ref::<NotFound>().is_some() {
        (StatusCode::NOT_FOUND, "Not found")
    } else if e.chain().any(|c| c.downcast_ref::<Fatal>().is_some()) {
        (StatusCode::SERVICE_UNAVAILABLE, "The ledger cannot be read")
    } else {
        tracing::warn!("console: {e:#}");
        (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong")
    };
    let frame = Frame {
        title,
        section: None,
        signed_in,
        ledger: None,
        read_at: Utc::now(),
    };
    (status, html::error_page(&frame, title, &format!("{e:#}"))).into_response()
}

async fn not_found(State(c): State<Shared>) -> Response {
    error_response(
        &NotFound("there is no such page".into()).into(),
        c.auth.required(),
    )
}

async fn costs_plot(State(c): State<Shared>, Query(p): Query<Params>) -> Response {
    let signed_in = c.auth.required();
    let result =
        tokio::task::spawn_blocking(move || c.reader.read(|s| pages::costs_plot(s, &p))).await;
    match result {
        Ok(Ok(Some(svg))) => ([(CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Ok(Ok(None)) => {
            error_response(&NotFound("no costs in the ledger".into()).into(), signed_in)
        }
        Ok(Err(e)) => error_response(&e, signed_in),
        Err(e) => error_response(&anyhow::anyhow!("the plot stopped: {e}"), signed_in),
    }
}

async fn metrics(State(c): State<Shared>) -> Response {
    let result = tokio::task::spawn_blocking(move || c.reader.read(LedgerGauges::read)).await;
    match result {
        Ok(Ok(gauges)) => (
            [(CONTENT_TYPE, metrics::CONTENT_TYPE)],
            metrics::render(None, Some(&gauges), Utc::now()),
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Lets a request through when it may read; otherwise sends a browser to the sign-in form and
/// anything else (Prometheus, curl) a 401.
async fn require_auth(State(c): State<Shared>, request: Request, next: Next) -> Response {
    if c.auth.allows(request.headers()) {
        return next.run(request).await;
    }
    let wants_html = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        let here = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        return redirect(&format!("/login?next={}", html::encode(here)), None);
    }
    (
        StatusCode::UNAUTHORIZED,
        [(WWW_AUTHENTICATE, "Bearer realm=\"meterbook\"")],
        "a token is required: Authorization: Bearer <METERBOOK_SERVE_TOKEN>\n",
    )
        .into_response()
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut response = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(LOCATION, to);
    if let Some(cookie) = cookie {
        response = response.header(SET_COOKIE, cookie);
    }
    response
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
    next: Option<String>,
}

fn login_page(next: &str, failed: bool) -> Markup {
    let frame = Frame {
        title: "Sign in",
        section: None,
        signed_in: false,
        ledger: None,
        read_at: Utc::now(),
    };
    html::page(
        &frame,
        html! {
            div.login {
                h1 { "Sign in" }
                p.muted { "This console needs the token it was started with (METERBOOK_SERVE_TOKEN)." }
                @if failed { div.error { "That is not the token." } }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label for="token" { "Token" }
                    input id="token" type="password" name="token" autocomplete="current-password" autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        },
        &[],
    )
}

async fn login_form(Query(p): Query<Params>) -> Response {
    login_page(&auth::safe_next(p.get("next").map(String::as_str)), false).into_response()
}

async fn login(State(c): State<Shared>, Form(form): Form<Login>) -> Response {
    let next = auth::safe_next(form.next.as_deref());
    if c.auth.is_token(form.token.trim()) {
        return redirect(&next, c.auth.sign_in_cookie());
    }
    (StatusCode::UNAUTHORIZED, login_page(&next, true)).into_response()
}

async fn logout() -> Response {
    redirect("/login", Some(auth::sign_out_cookie()))
}

/// Headers on every answer: this server's own files only, never in a frame, no sniffing, no
/// referrer, and pages not kept by caches (they hold billing data).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
