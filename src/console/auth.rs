//! Who may read the console. Without a token, anyone who reaches the address (127.0.0.1 by
//! default). With `--token`, every request needs it: as `Authorization: Bearer TOKEN` (scripts,
//! Prometheus), or from the sign-in form, which sets an HttpOnly, SameSite=Strict cookie holding
//! a value derived from the token (the token itself never reaches the browser's storage).
//! Comparisons take the same time whatever they compare, and the token is never logged or shown.

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "meterbook_session";

/// The token, if one is required.
#[derive(Clone)]
pub struct Auth {
    token: Option<String>,
    /// What the session cookie holds once signed in.
    session: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Auth {
    pub fn new(token: Option<String>) -> Auth {
        let session = token.as_deref().map(|t| {
            hex::encode(Sha256::digest(
                format!("meterbook console session\0{t}").as_bytes(),
            ))
        });
        Auth { token, session }
    }

    pub fn required(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `candidate` is the token.
    pub fn is_token(&self, candidate: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|t| equal(t.as_bytes(), candidate.as_bytes()))
    }

    /// Whether a request may read: no token is required, or it brings the token (bearer) or the
    /// session cookie.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let (Some(_), Some(session)) = (&self.token, &self.session) else {
            return true;
        };
        let bearer = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|t| self.is_token(t.trim()));
        let cookie = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .filter(|(k, _)| *k == COOKIE_NAME)
            .any(|(_, v)| equal(v.as_bytes(), session.as_bytes()));
        bearer || cookie
    }

    /// The `Set-Cookie` value that signs a browser in.
    pub fn sign_in_cookie(&self) -> Option<String> {
        self.session
            .as_ref()
            .map(|s| format!("{COOKIE_NAME}={s}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200"))
    }
}

/// The `Set-Cookie` value that signs a browser out.
pub fn sign_out_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Compares in time that depends on the lengths only.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Where to go after signing in: a path on this server only (never another site).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(axum::http::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn without_a_token_everyone_may_read() {
        assert!(Auth::new(None).allows(&HeaderMap::new()));
    }

    #[test]
    fn with_a_token_a_request_needs_the_bearer_token_or_the_session_cookie() {
        let auth = Auth::new(Some("s3cr3t".into()));
        assert!(!auth.allows(&HeaderMap::new()));
        assert!(auth.allows(&headers(&[(AUTHORIZATION, "Bearer s3cr3t")])));
        assert!(!auth.allows(&headers(&[(AUTHORIZATION, "Bearer s3cr3")])));
        assert!(!auth.allows(&headers(&[(AUTHORIZATION, "Basic s3cr3t")])));
        let cookie = auth.sign_in_cookie().unwrap();
        assert!(
            !cookie.contains("s3cr3t"),
            "the cookie holds a derived value"
        );
        let value = cookie.split(';').next().unwrap();
        assert!(auth.allows(&headers(&[(COOKIE, &format!("other=1; {value}"))])));
        assert!(!auth.allows(&headers(&[(COOKIE, "meterbook_session=s3cr3t")])));
    }

    #[test]
    fn after_signing_in_only_local_paths_are_followed() {
        assert_eq!(
            safe_next(Some("/usage?month=2025-06")),
            "/usage?month=2025-06"
        );
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn the_token_is_never_printed() {
        let auth = Auth::new(Some("s3cr3t".into()));
        assert!(!format!("{auth:?}").contains("s3cr3t"));
    }
}
