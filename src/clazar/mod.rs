//! The Clazar HTTP client: authentication with a cached token (refreshed shortly before it
//! expires, and once on a 401), one metering POST with a timeout, retries of transient failures
//! with exponential backoff and jitter that honours `Retry-After`, and the one function that maps
//! an HTTP status to what it means ([`classify_status`]). It never touches the ledger.

pub mod types;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;
use serde::Deserialize;

use crate::secret::Secret;
pub use types::{
    Cloud, MeteringRecord, MeteringRequest, MeteringResponse, MeteringResult, ResultKind,
};

/// Where Clazar is and how to talk to it.
#[derive(Debug, Clone)]
pub struct ClazarSettings {
    /// The metering endpoint, e.g. `https://api.clazar.io/metering/`.
    pub metering_url: String,
    /// The authentication endpoint, e.g. `https://api.clazar.io/authenticate/`.
    pub auth_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Per request, connect included.
    pub timeout: Duration,
    /// Retries after the first attempt, for transient failures.
    pub max_retries: u32,
    /// The first backoff delay; it doubles per retry (with jitter), up to [`MAX_BACKOFF`].
    pub backoff: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
}

/// The longest wait between attempts, `Retry-After` included.
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// What an HTTP answer (or its absence) means. Made by [`classify_http`] and [`network_failure`] only.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 2xx with a readable body: one result per record.
    Results {
        status: u16,
        body: String,
        results: Vec<MeteringResult>,
    },
    /// 5xx, 429, a timeout or a network failure: try again.
    Transient {
        why: String,
        status: Option<u16>,
        body: Option<String>,
        retry_after: Option<Duration>,
    },
    /// 401: the token was refused.
    Unauthorized { body: String },
    /// Another 4xx: the request itself is refused; retrying will not help.
    Rejected { status: u16, body: String },
    /// An answer that cannot be read (not JSON, no `results`, an unexpected status): a failure,
    /// never a success.
    Unreadable {
        status: u16,
        body: String,
        why: String,
    },
}

/// What an HTTP status means for any Clazar call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    /// 401: the token (or the credentials) refused.
    Unauthorized,
    /// 429 and 5xx: try again later.
    Transient,
    /// Another 4xx: the request is refused; retrying will not help.
    Refused,
    /// Anything else (1xx, 3xx): not an answer we can use.
    Unexpected,
}

/// Maps an HTTP status to its class: the one place that decides.
pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        401 => StatusClass::Unauthorized,
        429 | 500..=599 => StatusClass::Transient,
        400..=499 => StatusClass::Refused,
        _ => StatusClass::Unexpected,
    }
}

/// What a metering answer means: its status class, and for a success, its body.
pub fn classify_http(status: u16, retry_after: Option<&str>, body: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(body).into_owned();
    match classify_status(status) {
        StatusClass::Success => match serde_json::from_slice::<MeteringResponse>(body) {
            Ok(r) => Answer::Results {
                status,
                body: text,
                results: r.results,
            },
            Err(e) => Answer::Unreadable {
                status,
                body: text,
                why: format!("the answer is not a metering response: {e}"),
            },
        },
        StatusClass::Unauthorized => Answer::Unauthorized { body: text },
        StatusClass::Transient => Answer::Transient {
            why: format!("HTTP {status}"),
            status: Some(status),
            body: Some(text),
            retry_after: retry_after.and_then(parse_retry_after),
        },
        StatusClass::Refused => Answer::Rejected { status, body: text },
        StatusClass::Unexpected => Answer::Unreadable {
            status,
            body: text,
            why: format!("unexpected HTTP status {status}"),
        },
    }
}

/// A request that got no usable answer: transient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAnswer {
    pub why: String,
    /// The HTTP status, when there was an answer (one without what was asked for).
    pub status: Option<u16>,
}

impl From<NoAnswer> for Answer {
    fn from(n: NoAnswer) -> Answer {
        Answer::Transient {
            why: n.why,
            status: n.status,
            body: None,
            retry_after: None,
        }
    }
}

/// A request that got no answer (connect failure, timeout, dropped connection) is transient.
pub fn network_failure(err: &reqwest::Error) -> Answer {
    no_answer(err).into()
}

fn no_answer(err: &reqwest::Error) -> NoAnswer {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    NoAnswer {
        why: format!("{what}: {}", without_url(err)),
        status: err.status().map(|s| s.as_u16()),
    }
}

fn without_url(err: &reqwest::Error) -> String {
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    chain.join(": ")
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// The wait before retry number `retry` (0-based): exponential with jitter, at least `Retry-After`.
pub fn backoff_delay(base: Duration, retry: u32, retry_after: Option<Duration>) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(retry.min(16)));
    let capped = exp.min(MAX_BACKOFF);
    let jittered = capped.mul_f64(rand::rng().random_range(0.5..=1.0));
    jittered
        .max(retry_after.unwrap_or_default())
        .min(MAX_BACKOFF)
}

/// Why Clazar does not let us in: errors that stop a run (`submit`, `resubmit`, `run`), and what
/// `doctor` reports. Each says what happened and what to check.
#[derive(Debug, Clone, PartialEq)]
pub enum ClazarError {
    /// The authentication endpoint refused the request (the credentials, or it is no such
    /// endpoint).
    CredentialsRefused {
        client_id: String,
        url: String,
        status: u16,
    },
    /// The metering endpoint refused a fresh token.
    TokenRefused { url: String },
    /// No token: the authentication endpoint gave no usable answer (no connection, a timeout, an
    /// error status, an answer without a token).
    NoToken { url: String, failure: NoAnswer },
}

/// Where Clazar's URLs come from, for messages.
const URL_SETTINGS: &str = "CLAZAR_API_URL (or --clazar-base-url)";

impl ClazarError {
    /// What happened, and what to check.
    pub fn explained(&self) -> (String, String) {
        let reach = || {
            format!(
                "check {URL_SETTINGS} and that this host can reach it (network, proxy, firewall)"
            )
        };
        match self {
            ClazarError::CredentialsRefused {
                client_id,
                url,
                status: status @ (404 | 405),
            } => (
                format!(
                    "Clazar's authentication at {url} answered HTTP {status} for CLAZAR_CLIENT_ID \
                     {client_id}: there is no authentication endpoint there"
                ),
                format!("check {URL_SETTINGS}"),
            ),
            ClazarError::CredentialsRefused {
                client_id,
                url,
                status,
            } => (
                format!(
                    "Clazar refused the credentials of CLAZAR_CLIENT_ID {client_id} at {url}: HTTP \
                     {status}"
                ),
                "check CLAZAR_CLIENT_ID and CLAZAR_CLIENT_SECRET".into(),
            ),
            ClazarError::TokenRefused { url } => (
                format!("Clazar refused a fresh token at {url} (HTTP 401 twice)"),
                format!(
                    "check that the client of CLAZAR_CLIENT_ID may send metering records, and \
                     {URL_SETTINGS}"
                ),
            ),
            ClazarError::NoToken { url, failure } => match failure {
                NoAnswer {
                    status: Some(status @ 200..=299),
                    ..
                } => (
                    format!("the answer of {url} (HTTP {status}) holds no access token"),
                    format!("check that {URL_SETTINGS} names Clazar's API"),
                ),
                NoAnswer {
                    status: Some(status),
                    ..
                } => (
                    format!(
                        "Clazar's authentication at {url} answered HTTP {status}: Clazar is \
                         failing or busy"
                    ),
                    "try again later".into(),
                ),
                NoAnswer { why, status: None } => (
                    format!("no answer from Clazar's authentication at {url} ({why})"),
                    reach(),
                ),
            },
        }
    }
}

impl std::fmt::Display for ClazarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (happened, check) = self.explained();
        write!(f, "{happened}; {check}")
    }
}

impl std::error::Error for ClazarError {}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<f64>,
}

struct Token {
    value: Secret,
    refresh_at: Instant,
}

/// The result of delivering one request body, after retries.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub answer: Answer,
    /// Attempts made (1 + retries).
    pub attempts: u32,
}

/// A Clazar client; share one per run (it caches the token).
pub struct Client {
    http: reqwest::Client,
    settings: ClazarSettings,
    token: tokio::sync::Mutex<Option<Token>>,
}

impl Client {
    pub fn new(settings: ClazarSettings) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("meterbook/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            settings,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// Posts `body` to the metering endpoint, retrying transient failures up to `max_retries`. A
    /// failure to get a token is such a failure too; the error is only for credentials or a
    /// token Clazar refuses.
    pub async fn deliver(&self, body: &str) -> Result<Delivery, ClazarError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let answer = self.post_once(body).await?;
            match &answer {
                Answer::Transient {
                    why, retry_after, ..
                } if attempts <= self.settings.max_retries => {
                    let wait = backoff_delay(self.settings.backoff, attempts - 1, *retry_after);
                    tracing::debug!("{why}; retrying in {} ms", wait.as_millis());
                    tokio::time::sleep(wait).await;
                }
                _ => return Ok(Delivery { answer, attempts }),
            }
        }
    }

    /// One metering POST; on a 401, one fresh token and one more try.
    async fn post_once(&self, body: &str) -> Result<Answer, ClazarError> {
        for fresh in [false, true] {
            let token = match self.token(fresh).await? {
                Ok(t) => t,
                Err(transient) => return Ok(transient),
            };
            let sent = self
                .http
                .post(&self.settings.metering_url)
                .bearer_auth(token.expose())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send()
                .await;
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match resp.bytes().await {
                        Ok(bytes) => classify_http(status, retry_after.as_deref(), &bytes),
                        Err(e) => network_failure(&e),
                    }
                }
                Err(e) => network_failure(&e),
            };
            if !matches!(answer, Answer::Unauthorized { .. }) {
                return Ok(answer);
            }
        }
        Err(ClazarError::TokenRefused {
            url: self.settings.metering_url.clone(),
        })
    }

    /// The cached token, or a new one (`fresh` forces one). `Ok(Err(answer))` when the
    /// authentication endpoint itself failed transiently.
    async fn token(&self, fresh: bool) -> Result<Result<Secret, Answer>, ClazarError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref() {
            if !fresh && Instant::now() < t.refresh_at {
                return Ok(Ok(t.value.clone()));
            }
        }
        *cached = None;
        match self.authenticate().await? {
            Ok(t) => {
                let value = t.value.clone();
                *cached = Some(t);
                Ok(Ok(value))
            }
            Err(failure) => Ok(Err(failure.into())),
        }
    }

    /// Authenticates once, for `meterbook doctor`.
    pub async fn check_credentials(&self) -> Result<(), ClazarError> {
        match self.authenticate().await? {
            Ok(_) => Ok(()),
            Err(failure) => Err(ClazarError::NoToken {
                url: self.settings.auth_url.clone(),
                failure,
            }),
        }
    }

    async fn authenticate(&self) -> Result<Result<Token, NoAnswer>, ClazarError> {
        let s = &self.settings;
        tracing::debug!("authenticating with Clazar at {}", s.auth_url);
        let body = serde_json::json!({
            "client_id": s.client_id,
            "client_secret": s.client_secret.expose(),
        });
        let resp = match self.http.post(&s.auth_url).json(&body).send().await {
            Ok(r) => r,
            Err(e) => return Ok(Err(no_answer(&e))),
        };
        let status = resp.status().as_u16();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Ok(Err(no_answer(&e))),
        };
        match classify_status(status) {
            StatusClass::Success => match serde_json::from_slice::<TokenResponse>(&bytes) {
                Ok(t) => {
                    let lifetime = Duration::from_secs_f64(
                        t.expires_in
                            .filter(|s| s.is_finite() && *s > 0.0)
                            .unwrap_or(3600.0),
                    );
                    // Refresh shortly before expiry: a tenth of the lifetime early, at most 5 minutes.
                    let margin = (lifetime / 10).min(Duration::from_secs(300));
                    Ok(Ok(Token {
                        value: Secret::new(t.access_token),
                        refresh_at: Instant::now() + lifetime - margin,
                    }))
                }
                // The body holds a token or junk; neither is ever printed.
                Err(_) => Ok(Err(NoAnswer {
                    why: format!("the authentication answer (HTTP {status}) has no access_token"),
                    status: Some(status),
                })),
            },
            StatusClass::Transient => Ok(Err(NoAnswer {
                why: format!("authentication: HTTP {status}"),
                status: Some(status),
            })),
            StatusClass::Unauthorized | StatusClass::Refused | StatusClass::Unexpected => {
                Err(ClazarError::CredentialsRefused {
                    client_id: s.client_id.clone(),
                    url: s.auth_url.clone(),
                    status,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_are_classified_in_one_place() {
        let ok = br#"{"results": [{"status": "success"}]}"#;
        assert!(matches!(
            classify_http(200, None, ok),
            Answer::Results { ref results, .. } if results.len() == 1
        ));
        assert!(matches!(
            classify_http(200, None, b"<html>oops"),
            Answer::Unreadable { .. }
        ));
        assert!(matches!(
            classify_http(200, None, br#"{"detail": "x"}"#),
            Answer::Unreadable { .. }
        ));
        assert_eq!(
            classify_http(429, Some("3"), b""),
            Answer::Transient {
                why: "HTTP 429".into(),
                status: Some(429),
                body: Some(String::new()),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(
            classify_http(503, None, b"down"),
            Answer::Transient { .. }
        ));
        assert!(matches!(
            classify_http(401, None, b""),
            Answer::Unauthorized { .. }
        ));
        assert!(matches!(
            classify_http(422, None, b"bad"),
            Answer::Rejected { status: 422, .. }
        ));
        assert!(matches!(
            classify_http(302, None, b""),
            Answer::Unreadable { .. }
        ));
    }

    #[test]
    fn clazar_errors_say_what_happened_and_what_to_check() {
        let url = "http://127.0.0.1:9/authenticate/".to_string();
        let refused = |status| ClazarError::CredentialsRefused {
            client_id: "client-1".into(),
            url: url.clone(),
            status,
        };
        let cases = [
            (refused(401), "refused the credentials of CLAZAR_CLIENT_ID client-1", "check CLAZAR_CLIENT_ID and CLAZAR_CLIENT_SECRET"),
            (refused(404), "answered HTTP 404", "no authentication endpoint there; check CLAZAR_API_URL (or --clazar-base-url)"),
            (
                ClazarError::NoToken {
                    url: url.clone(),
                    failure: NoAnswer {
                        why: "could not connect: tcp connect error: Connection refused (os error 111)".into(),
                        status: None,
                    },
                },
                "no answer from Clazar's authentication at http://127.0.0.1:9/authenticate/ (could not connect",
                "check CLAZAR_API_URL (or --clazar-base-url) and that this host can reach it",
            ),
            (
                ClazarError::NoToken {
                    url: url.clone(),
                    failure: NoAnswer { why: "authentication: HTTP 503".into(), status: Some(503) },
                },
                "answered HTTP 503",
                "try again later",
            ),
            (
                ClazarError::NoToken {
                    url: url.clone(),
                    failure: NoAnswer { why: "no access_token".into(), status: Some(200) },
                },
                "(HTTP 200) holds no access token",
                "names Clazar's API",
            ),
            (ClazarError::TokenRefused { url: url.clone() }, "refused a fresh token", "may send metering records"),
        ];
        for (error, happened, check) in cases {
            let text = error.to_string();
            assert!(text.contains(happened) && text.contains(check), "{text}");
            // One sentence for an operator: never a Rust value.
            assert!(!text.contains('{') && !text.contains("None"), "{text}");
            // What happened, then what to check.
            assert!(text.find(happened) < text.find(check), "{text}");
        }
        // Credentials are checked only when they were refused.
        for error in [refused(404), ClazarError::TokenRefused { url: url.clone() }] {
            assert!(
                !error.to_string().contains("CLAZAR_CLIENT_SECRET"),
                "{error}"
            );
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        for retry in 0..4 {
            let d = backoff_delay(base, retry, None);
            let full = base * 2u32.pow(retry);
            assert!(d >= full / 2 && d <= full, "{retry}: {d:?}");
        }
        let d = backoff_delay(base, 0, Some(Duration::from_secs(2)));
        assert_eq!(d, Duration::from_secs(2));
        assert!(backoff_delay(base, 30, None) <= MAX_BACKOFF);
    }
}
