//! The Clazar emulator: a real HTTP server on 127.0.0.1 for tests, the quick start and benchmarks.
//!
//! It authenticates (`POST /authenticate/`, tokens that expire), answers `POST /metering/` the
//! way Clazar does (a duplicate per contract, dimension and overlapping window is rejected as
//! "already exists"; an unregistered dimension gets `status: fail` without errors; an unknown
//! contract gets errors), and misbehaves on request through a control API:
//!
//! - `POST /_emulator/faults` with a JSON list of one-shot faults for the next metering requests:
//!   `{"kind": "status", "status": 503}`, `{"kind": "rate_limit", "retry_after": 1}`,
//!   `{"kind": "slow", "ms": 3000, "accept": true}`, `{"kind": "drop", "accept": false}`,
//!   `{"kind": "malformed", "accept": true}`, `{"kind": "expire_token"}`; each may carry `"times": n`.
//! - `POST /_emulator/config` with any of `{"random": {"status_500": 0.1, "status_429": 0.05,
//!   "retry_after": 1}}`, `"dimensions": [...]`, `"unknown_contracts": [...]`, `"token_ttl_secs": n`.
//! - `POST /_emulator/expire-tokens`, `GET /_emulator/stats`, `GET /_emulator/accepted`, and
//!   `GET /_emulator/tokens` (every token issued, so tests can check none leaked).
//!
//! Every accepted record is appended to the `--log` file (JSON Lines), which tests read to check
//! that each amount arrived exactly once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use clap::Parser;
use meterbook::clazar::MeteringRequest;
use meterbook::dimensions::BASE_DIMENSIONS;
use meterbook::period::{format_utc, parse_timestamp};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

/// A Clazar emulator for tests and the quick start. Listens on 127.0.0.1 only.
#[derive(Debug, Parser)]
#[command(name = "clazar-emulator")]
struct Args {
    /// Port; 0 picks a free one (see --port-file).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Written with the port number once the server accepts connections.
    #[arg(long)]
    port_file: Option<PathBuf>,

    /// Accepted records are appended here as JSON Lines.
    #[arg(long)]
    log: Option<PathBuf>,

    /// The client id it accepts.
    #[arg(long, env = "CLAZAR_CLIENT_ID", default_value = "emulator-client")]
    client_id: String,

    /// The client secret it accepts.
    #[arg(
        long,
        env = "CLAZAR_CLIENT_SECRET",
        default_value = "emulator-secret",
        hide_env_values = true
    )]
    client_secret: String,

    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 86400.0)]
    token_ttl_secs: f64,

    /// A dimension registered for the listing (repeatable; default: Omnistrate's four).
    #[arg(long = "dimension")]
    dimensions: Vec<String>,

    /// A contract id that does not exist (repeatable).
    #[arg(long = "unknown-contract")]
    unknown_contracts: Vec<String>,

    /// Share of metering requests answered with HTTP 500 (0..1).
    #[arg(long, default_value_t = 0.0)]
    random_500: f64,

    /// Share of metering requests answered with HTTP 429 (0..1).
    #[arg(long, default_value_t = 0.0)]
    random_429: f64,

    /// Retry-After seconds on 429 answers.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum FaultKind {
    Status {
        status: u16,
    },
    RateLimit {
        #[serde(default = "one")]
        retry_after: u64,
    },
    Slow {
        ms: u64,
        #[serde(default = "yes")]
        accept: bool,
    },
    Drop {
        #[serde(default)]
        accept: bool,
    },
    Malformed {
        #[serde(default)]
        accept: bool,
    },
    ExpireToken,
}

fn one() -> u64 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
struct Fault {
    #[serde(flatten)]
    kind: FaultKind,
    #[serde(default = "one")]
    times: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RandomFaults {
    #[serde(default)]
    status_500: f64,
    #[serde(default)]
    status_429: f64,
    #[serde(default = "one")]
    retry_after: u64,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigChange {
    random: Option<RandomFaults>,
    dimensions: Option<Vec<String>>,
    unknown_contracts: Option<Vec<String>>,
    token_ttl_secs: Option<f64>,
}

struct Window {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

#[derive(Default)]
struct Stats {
    auth_requests: u64,
    metering_requests: u64,
    records_received: u64,
    records_accepted: u64,
    faults_served: u64,
    unauthorized: u64,
}

struct Emulator {
    client_id: String,
    client_secret: String,
    token_ttl: Duration,
    tokens: HashMap<String, Instant>,
    issued: Vec<String>,
    dimensions: HashSet<String>,
    unknown_contracts: HashSet<String>,
    accepted: HashMap<(String, String), Vec<Window>>,
    accepted_log: Vec<Value>,
    log: Option<std::fs::File>,
    faults: VecDeque<Fault>,
    random: RandomFaults,
    stats: Stats,
    next_id: u64,
}

type Shared = Arc<Mutex<Emulator>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, Emulator> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log = match &args.log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => None,
    };
    let dimensions = if args.dimensions.is_empty() {
        BASE_DIMENSIONS.iter().map(|d| d.to_string()).collect()
    } else {
        args.dimensions.iter().cloned().collect()
    };
    let state: Shared = Arc::new(Mutex::new(Emulator {
        client_id: args.client_id.clone(),
        client_secret: args.client_secret.clone(),
        token_ttl: Duration::from_secs_f64(args.token_ttl_secs),
        tokens: HashMap::new(),
        issued: Vec::new(),
        dimensions,
        unknown_contracts: args.unknown_contracts.iter().cloned().collect(),
        accepted: HashMap::new(),
        accepted_log: Vec::new(),
        log,
        faults: VecDeque::new(),
        random: RandomFaults {
            status_500: args.random_500,
            status_429: args.random_429,
            retry_after: args.retry_after,
        },
        stats: Stats::default(),
        next_id: 0,
    }));
    let app = Router::new()
        .route("/authenticate/", post(authenticate))
        .route("/authenticate", post(authenticate))
        .route("/metering/", post(metering))
        .route("/metering", post(metering))
        .route("/_emulator/faults", post(add_faults))
        .route("/_emulator/config", post(change_config))
        .route("/_emulator/expire-tokens", post(expire_tokens))
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/accepted", get(accepted))
        .route("/_emulator/tokens", get(tokens))
        .with_state(state);
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    let port = listener.local_addr()?.port();
    if let Some(path) = &args.port_file {
        // Written atomically, so a reader never sees a half-written number.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, port.to_string())?;
        std::fs::rename(&tmp, path)?;
    }
    eprintln!("clazar-emulator listening on http://127.0.0.1:{port}");
    axum::serve(listener, app).await?;
    Ok(())
}

#[derive(Deserialize)]
struct Credentials {
    client_id: String,
    client_secret: String,
}

async fn authenticate(State(state): State<Shared>, body: Bytes) -> Response {
    let mut emu = lock(&state);
    emu.stats.auth_requests += 1;
    let Ok(creds) = serde_json::from_slice::<Credentials>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"detail": "client_id and client_secret are required"})),
        )
            .into_response();
    };
    if creds.client_id != emu.client_id || creds.client_secret != emu.client_secret {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"detail": "Invalid client credentials"})),
        )
            .into_response();
    }
    let token = format!("emu-{:032x}", rand::rng().random::<u128>());
    let ttl = emu.token_ttl;
    emu.tokens.insert(token.clone(), Instant::now() + ttl);
    emu.issued.push(token.clone());
    Json(json!({"access_token": token, "token_type": "bearer", "expires_in": ttl.as_secs_f64()}))
        .into_response()
}

/// The next one-shot fault, or a random one.
fn next_fault(emu: &mut Emulator) -> Option<FaultKind> {
    if let Some(front) = emu.faults.front_mut() {
        let kind = front.kind.clone();
        front.times = front.times.saturating_sub(1);
        if front.times == 0 {
            emu.faults.pop_front();
        }
        return Some(kind);
    }
    let r: f64 = rand::rng().random();
    let random = &emu.random;
    if r < random.status_500 {
        Some(FaultKind::Status { status: 500 })
    } else if r < random.status_500 + random.status_429 {
        Some(FaultKind::RateLimit {
            retry_after: random.retry_after,
        })
    } else {
        None
    }
}

async fn metering(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (fault, authorized) = {
        let mut emu = lock(&state);
        emu.stats.metering_requests += 1;
        let fault = next_fault(&mut emu);
        if fault.is_some() {
            emu.stats.faults_served += 1;
        }
        if matches!(fault, Some(FaultKind::ExpireToken)) {
            emu.tokens.clear();
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let now = Instant::now();
        let authorized = emu.tokens.get(token).is_some_and(|exp| *exp > now);
        if !authorized {
            emu.stats.unauthorized += 1;
        }
        (fault, authorized)
    };
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"detail": "Token is invalid or expired"})),
        )
            .into_response();
    }
    let process = |state: &Shared| -> Response {
        let request: MeteringRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"detail": format!("invalid request body: {e}")})),
                )
                    .into_response()
            }
        };
        let mut emu = lock(state);
        let results: Vec<Value> = request.request.iter().map(|r| emu.record(r)).collect();
        Json(json!({"results": results})).into_response()
    };
    match fault {
        None | Some(FaultKind::ExpireToken) => process(&state),
        Some(FaultKind::Status { status }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(json!({"detail": "emulated failure"}))).into_response()
        }
        Some(FaultKind::RateLimit { retry_after }) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after.to_string())],
            Json(json!({"detail": "Too many requests"})),
        )
            .into_response(),
        Some(FaultKind::Slow { ms, accept }) => {
            let answer = if accept {
                process(&state)
            } else {
                (StatusCode::OK, Json(json!({"results": []}))).into_response()
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            answer
        }
        Some(FaultKind::Drop { accept }) => {
            if accept {
                process(&state);
            }
            let broken = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other(
                    "connection dropped by the emulator",
                ))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(broken))
                .expect("a valid response")
        }
        Some(FaultKind::Malformed { accept }) => {
            if accept {
                process(&state);
            }
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>502 Bad Gateway</body></html>",
            )
                .into_response()
        }
    }
}

impl Emulator {
    /// Clazar's answer to one record, accepting it when it is new.
    fn record(&mut self, r: &meterbook::clazar::MeteringRecord) -> Value {
        self.stats.records_received += 1;
        self.next_id += 1;
        let mut result = json!({
            "id": format!("rec-{:08}", self.next_id),
            "cloud": r.cloud, "contract_id": r.contract_id, "dimension": r.dimension,
            "quantity": r.quantity, "start_time": r.start_time, "end_time": r.end_time,
            "custom_properties": {},
        });
        let fail = |result: &mut Value,
                    errors: Option<Vec<&str>>,
                    code: Option<&str>,
                    message: Option<&str>| {
            result["status"] = "fail".into();
            if let Some(errors) = errors {
                result["errors"] = json!(errors);
            }
            if let Some(code) = code {
                result["code"] = code.into();
            }
            if let Some(message) = message {
                result["message"] = message.into();
            }
        };
        if self.unknown_contracts.contains(&r.contract_id) {
            fail(
                &mut result,
                Some(vec!["Invalid contract_id: contract not found"]),
                Some("INVALID_CONTRACT"),
                Some("Contract not found"),
            );
            return result;
        }
        if !r.quantity.chars().all(|c| c.is_ascii_digit()) || r.quantity.is_empty() {
            fail(
                &mut result,
                Some(vec!["quantity must be a non-negative integer"]),
                Some("INVALID_QUANTITY"),
                Some("Invalid quantity"),
            );
            return result;
        }
        let (Some(start), Some(end)) =
            (parse_timestamp(&r.start_time), parse_timestamp(&r.end_time))
        else {
            fail(
                &mut result,
                Some(vec!["start_time and end_time must be timestamps"]),
                Some("INVALID_WINDOW"),
                Some("Invalid window"),
            );
            return result;
        };
        if !self.dimensions.contains(&r.dimension) {
            // What Clazar does for a dimension not registered for the listing: no errors at all.
            fail(&mut result, None, None, None);
            return result;
        }
        let windows = self
            .accepted
            .entry((r.contract_id.clone(), r.dimension.clone()))
            .or_default();
        if windows.iter().any(|w| w.start < end && start < w.end) {
            fail(
                &mut result,
                Some(vec!["Metering record already exists for the same contract_id and dimension in the same hour"]),
                Some("DUPLICATE_RECORD"),
                Some("Duplicate metering record"),
            );
            return result;
        }
        windows.push(Window { start, end });
        result["status"] = "success".into();
        self.stats.records_accepted += 1;
        let logged = json!({
            "id": result["id"], "contract_id": r.contract_id, "dimension": r.dimension,
            "start_time": r.start_time, "end_time": r.end_time, "quantity": r.quantity,
            "cloud": r.cloud, "accepted_at": format_utc(Utc::now()),
        });
        if let Some(log) = self.log.as_mut() {
            let _ = writeln!(log, "{logged}").and_then(|_| log.flush());
        }
        self.accepted_log.push(logged);
        result
    }
}

async fn add_faults(State(state): State<Shared>, Json(faults): Json<Vec<Fault>>) -> StatusCode {
    lock(&state).faults.extend(faults);
    StatusCode::NO_CONTENT
}

async fn change_config(
    State(state): State<Shared>,
    Json(change): Json<ConfigChange>,
) -> StatusCode {
    let mut emu = lock(&state);
    if let Some(r) = change.random {
        emu.random = r;
    }
    if let Some(d) = change.dimensions {
        emu.dimensions = d.into_iter().collect();
    }
    if let Some(c) = change.unknown_contracts {
        emu.unknown_contracts = c.into_iter().collect();
    }
    if let Some(t) = change.token_ttl_secs {
        emu.token_ttl = Duration::from_secs_f64(t.max(0.0));
    }
    StatusCode::NO_CONTENT
}

async fn expire_tokens(State(state): State<Shared>) -> StatusCode {
    lock(&state).tokens.clear();
    StatusCode::NO_CONTENT
}

async fn stats(State(state): State<Shared>) -> Json<Value> {
    let emu = lock(&state);
    let s = &emu.stats;
    Json(json!({
        "auth_requests": s.auth_requests,
        "metering_requests": s.metering_requests,
        "records_received": s.records_received,
        "records_accepted": s.records_accepted,
        "faults_served": s.faults_served,
        "unauthorized": s.unauthorized,
        "faults_queued": emu.faults.len(),
    }))
}

async fn accepted(State(state): State<Shared>) -> Json<Value> {
    Json(Value::Array(lock(&state).accepted_log.clone()))
}

async fn tokens(State(state): State<Shared>) -> Json<Value> {
    Json(json!(lock(&state).issued))
}
