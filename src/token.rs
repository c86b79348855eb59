//! [`AccessToken`] and parsing of the token endpoint's answer.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use crate::Error;

/// Lifetime assumed for a token when the endpoint gives no `expiresIn`, no `expiresAt` and the
/// token is not a JWT with an `exp` claim. If the real lifetime is shorter, the first 401 forces
/// a refresh.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Longest lifetime believed: a larger claimed lifetime is cut to this, so that nonsense such as
/// `expiresIn: 1e12` cannot overflow a deadline and the token is still refreshed daily.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Shortest lifetime accepted: a shorter-lived token would be stale before a request could use
/// it, and refreshing it would be a loop.
pub(crate) const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(1);

/// Longest endpoint `message` kept in an error, in characters.
const MAX_MESSAGE_CHARS: usize = 200;

/// A Partner Access Token as a [`TokenSource`](crate::TokenSource) returns it: the token and how
/// long it lives from now.
///
/// The token is held in a [`SecretString`]: `Debug` redacts it and it is zeroized on drop.
#[derive(Clone)]
pub struct AccessToken {
    value: SecretString,
    lifetime: Duration,
}

impl AccessToken {
    /// A token that is valid for `lifetime` from now.
    pub fn new(value: impl Into<String>, lifetime: Duration) -> Self {
        Self {
            value: SecretString::from(value.into()),
            lifetime,
        }
    }

    /// Parses a success answer of the token endpoint (see [`TokenSource`](crate::TokenSource)
    /// for when to use this directly).
    ///
    /// Accepts `{accessToken, expiresIn}` (documented), the same inside a `{"data": {…}}`
    /// envelope, an absolute `expiresAt` (epoch seconds, or milliseconds when larger than 10^11),
    /// and falls back to the JWT's `exp` claim, then to [`DEFAULT_TOKEN_LIFETIME`]. `expiresIn`
    /// may be an integer, a fraction or a numeric string; it must be positive, and the lifetime at
    /// least one second. A lifetime above [`MAX_TOKEN_LIFETIME`] is cut to it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ozzobit_auth::AccessToken;
    ///
    /// let token = AccessToken::parse(br#"{"accessToken":"eyJ.x.y","expiresIn":3600}"#)?;
    /// assert_eq!(token.lifetime(), Duration::from_secs(3600));
    /// # Ok::<(), ozzobit_auth::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// An invalid-response error naming what is wrong (not JSON, `accessToken` missing, empty,
    /// not a string or not a valid header value; expiry not a number, not positive or in the
    /// past), or, for the vendor's failure shape (no `accessToken` but a `message`), a rejection
    /// carrying that message. Never a panic, whatever the input.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        parse_token_response(body, SystemTime::now())
    }

    /// The token itself.
    pub fn secret(&self) -> &SecretString {
        &self.value
    }

    /// How long the token lives, counted from when it was received.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Refuses a lifetime under [`MIN_TOKEN_LIFETIME`].
    pub(crate) fn check_lifetime(&self) -> Result<(), Error> {
        if self.lifetime < MIN_TOKEN_LIFETIME {
            return Err(Error::invalid_response(format!(
                "token lifetime {:?} is under one second",
                self.lifetime
            )));
        }
        Ok(())
    }

    /// `Bearer <token>` as a sensitive header value.
    ///
    /// # Errors
    ///
    /// An invalid-response error when the token is empty or holds bytes not allowed in an HTTP
    /// header (CR, LF, other controls, non-ASCII); the token itself is never shown.
    pub(crate) fn bearer_header(&self) -> Result<HeaderValue, Error> {
        let token = self.value.expose_secret();
        if token.is_empty() {
            return Err(Error::invalid_response("accessToken is empty"));
        }
        // Visible ASCII only: what RFC 6750's token68 and every JWT use. `HeaderValue` itself
        // would also take obs-text bytes, which no token contains and proxies mangle.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid_response(
                "accessToken contains characters not allowed in an HTTP header",
            ));
        }
        let mut buf = Vec::with_capacity(7 + token.len());
        buf.extend_from_slice(b"Bearer ");
        buf.extend_from_slice(token.as_bytes());
        let mut value = HeaderValue::from_maybe_shared(bytes::Bytes::from(buf))
            .map_err(|_| Error::invalid_response("accessToken is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &"[REDACTED]")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// [`AccessToken::parse`] at a given wall-clock time.
pub(crate) fn parse_token_response(body: &[u8], now: SystemTime) -> Result<AccessToken, Error> {
    let root: Value = serde_json::from_slice(body).map_err(|e| {
        let what = if body.trim_ascii_start().starts_with(b"<") {
            "body is HTML, not JSON"
        } else {
            "body is not JSON"
        };
        Error::invalid_response(what).with_source(e)
    })?;
    let Value::Object(root) = root else {
        return Err(Error::invalid_response("body is not a JSON object"));
    };
    let obj = match root.get("data") {
        Some(Value::Object(data)) if !root.contains_key("accessToken") => data,
        _ => &root,
    };

    let token = match obj.get("accessToken") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Null) | None => {
            return Err(match message_of(&root) {
                Some(message) => Error::rejected_with_status(http::StatusCode::OK, message),
                None => Error::invalid_response("accessToken is missing"),
            });
        }
        Some(_) => return Err(Error::invalid_response("accessToken is not a string")),
    };

    let lifetime = match (obj.get("expiresIn"), obj.get("expiresAt")) {
        (Some(v), _) => clamped(positive_number(v, "expiresIn")?),
        (None, Some(v)) => {
            let at = positive_number(v, "expiresAt")?;
            let at = if at > 1e11 { at / 1000.0 } else { at };
            remaining(at, now, "expiresAt")?
        }
        (None, None) => match jwt_exp(token) {
            Some(exp) => remaining(exp, now, "the token's exp claim")?,
            None => DEFAULT_TOKEN_LIFETIME,
        },
    };

    let parsed = AccessToken::new(token, lifetime.min(MAX_TOKEN_LIFETIME));
    // Reject unusable tokens here, where the error is clearest.
    parsed.bearer_header()?;
    parsed.check_lifetime()?;
    Ok(parsed)
}

/// A positive number, from a JSON number or a numeric string.
fn positive_number(v: &Value, field: &str) -> Result<f64, Error> {
    let secs = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|s| s.is_finite())
    .ok_or_else(|| Error::invalid_response(format!("{field} is not a number")))?;
    if secs <= 0.0 {
        return Err(Error::invalid_response(format!("{field} is not positive")));
    }
    Ok(secs)
}

/// Positive seconds as a lifetime, clamped before converting: 1e300 must not overflow `Duration`.
fn clamped(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.min(MAX_TOKEN_LIFETIME.as_secs_f64()))
}

/// Time from `now` until the epoch-seconds instant `at`.
fn remaining(at: f64, now: SystemTime, what: &str) -> Result<Duration, Error> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let left = at - now;
    if left <= 0.0 {
        return Err(Error::invalid_response(format!("{what} is in the past")));
    }
    Ok(clamped(left))
}

/// The `exp` claim of a JWT, read without verifying the signature: only to know when to refresh.
fn jwt_exp(token: &str) -> Option<f64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&json).ok()?;
    claims.get("exp")?.as_f64().filter(|e| e.is_finite())
}

/// The human-readable `message` of an endpoint answer, cleaned up for an error's `Display`.
///
/// Looks at `message`, `error_description` and `error`, top-level or in `data`.
#[cfg(feature = "reqwest")]
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    match serde_json::from_slice(body).ok()? {
        Value::Object(root) => message_of(&root),
        _ => None,
    }
}

fn message_of(root: &Map<String, Value>) -> Option<String> {
    let data = root.get("data").and_then(Value::as_object);
    let found = ["message", "error_description", "error"]
        .iter()
        .find_map(|k| {
            root.get(*k)
                .or_else(|| data.and_then(|d| d.get(*k)))
                .and_then(Value::as_str)
        })?;
    let clean: String = found
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_CHARS)
        .collect();
    let clean = clean.trim();
    (!clean.is_empty()).then(|| clean.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn parse(body: &str) -> Result<AccessToken, Error> {
        parse_token_response(body.as_bytes(), now())
    }

    fn jwt(claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(claims)
        )
    }

    fn err(body: &str) -> String {
        parse(body).unwrap_err().to_string()
    }

    #[test]
    fn documented_shape() {
        let t = parse(r#"{"accessToken":"abc.def.ghi","expiresIn":3600}"#).unwrap();
        assert_eq!(t.secret().expose_secret(), "abc.def.ghi");
        assert_eq!(t.lifetime(), Duration::from_secs(3600));
        let h = t.bearer_header().unwrap();
        assert_eq!(h, "Bearer abc.def.ghi");
        assert!(h.is_sensitive());
    }

    #[test]
    fn envelope_and_expires_at() {
        let body = format!(
            r#"{{"success":true,"data":{{"accessToken":"t","expiresAt":{}}}}}"#,
            NOW + 600
        );
        let t = parse(&body).unwrap();
        assert_eq!(t.secret().expose_secret(), "t");
        assert_eq!(t.lifetime(), Duration::from_secs(600));
        let ms = format!(r#"{{"accessToken":"t","expiresAt":{}}}"#, (NOW + 60) * 1000);
        assert_eq!(parse(&ms).unwrap().lifetime(), Duration::from_secs(60));
    }

    #[test]
    fn jwt_exp_then_default() {
        let token = jwt(&format!(r#"{{"sub":"p","exp":{}}}"#, NOW + 120));
        let t = parse(&format!(r#"{{"accessToken":"{token}"}}"#)).unwrap();
        assert_eq!(t.lifetime(), Duration::from_secs(120));
        let t = parse(r#"{"accessToken":"opaque"}"#).unwrap();
        assert_eq!(t.lifetime(), DEFAULT_TOKEN_LIFETIME);
        let expired = jwt(&format!(r#"{{"exp":{}}}"#, NOW - 1));
        assert_eq!(
            err(&format!(r#"{{"accessToken":"{expired}"}}"#)),
            "invalid token response: the token's exp claim is in the past"
        );
    }

    #[test]
    fn tolerant_expiry_forms() {
        let t = parse(r#"{"accessToken":"t","expiresIn":"90"}"#).unwrap();
        assert_eq!(t.lifetime(), Duration::from_secs(90));
        let t = parse(r#"{"accessToken":"t","expiresIn":1.5}"#).unwrap();
        assert_eq!(t.lifetime(), Duration::from_millis(1500));
        let t = parse(r#"{"accessToken":"t","expiresIn":1000000000000}"#).unwrap();
        assert_eq!(t.lifetime(), MAX_TOKEN_LIFETIME);
        let t = parse(r#"{"accessToken":"t","expiresIn":1e300}"#).unwrap();
        assert_eq!(t.lifetime(), MAX_TOKEN_LIFETIME);
    }

    #[test]
    fn parse_errors_are_clear() {
        let cases = [
            ("not json", "invalid token response: body is not JSON"),
            (
                "<html><body>502</body></html>",
                "invalid token response: body is HTML, not JSON",
            ),
            ("[1,2]", "invalid token response: body is not a JSON object"),
            (
                r#"{"expiresIn":3600}"#,
                "invalid token response: accessToken is missing",
            ),
            (
                r#"{"accessToken":null}"#,
                "invalid token response: accessToken is missing",
            ),
            (
                r#"{"accessToken":42,"expiresIn":3600}"#,
                "invalid token response: accessToken is not a string",
            ),
            (
                r#"{"accessToken":"","expiresIn":3600}"#,
                "invalid token response: accessToken is empty",
            ),
            (
                r#"{"accessToken":"a\r\nX-Evil: 1","expiresIn":3600}"#,
                "invalid token response: accessToken contains characters not allowed in an HTTP header",
            ),
            (
                r#"{"accessToken":"a b","expiresIn":3600}"#,
                "invalid token response: accessToken contains characters not allowed in an HTTP header",
            ),
            (
                r#"{"accessToken":"tøken","expiresIn":3600}"#,
                "invalid token response: accessToken contains characters not allowed in an HTTP header",
            ),
            (
                r#"{"accessToken":"t","expiresIn":0}"#,
                "invalid token response: expiresIn is not positive",
            ),
            (
                r#"{"accessToken":"t","expiresIn":-5}"#,
                "invalid token response: expiresIn is not positive",
            ),
            (
                r#"{"accessToken":"t","expiresIn":"soon"}"#,
                "invalid token response: expiresIn is not a number",
            ),
            (
                r#"{"accessToken":"t","expiresIn":true}"#,
                "invalid token response: expiresIn is not a number",
            ),
            (
                r#"{"accessToken":"t","expiresAt":1000}"#,
                "invalid token response: expiresAt is in the past",
            ),
            (
                r#"{"accessToken":"t","expiresIn":1e-83}"#,
                "invalid token response: token lifetime 0ns is under one second",
            ),
            (
                r#"{"accessToken":"t","expiresIn":0.5}"#,
                "invalid token response: token lifetime 500ms is under one second",
            ),
        ];
        for (body, want) in cases {
            let e = parse(body).unwrap_err();
            assert!(e.is_invalid_response(), "{body}: {e:?}");
            assert_eq!(e.to_string(), want, "{body}");
        }
    }

    #[test]
    fn vendor_failure_shape_is_a_rejection_with_message() {
        let e = parse(r#"{"success":false,"message":"Invalid API key"}"#).unwrap_err();
        assert!(e.is_rejected());
        assert_eq!(
            e.to_string(),
            "token request rejected (200 OK): Invalid API key"
        );
    }

    #[cfg(feature = "reqwest")]
    #[test]
    fn message_is_cleaned_and_capped() {
        let long = "x".repeat(1000);
        let body = format!(r#"{{"message":"bad\u0007 {long}"}}"#);
        let m = error_message(body.as_bytes()).unwrap();
        assert!(m.starts_with("bad xxx"));
        assert_eq!(m.chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(
            error_message(br#"{"data":{"error":"nope"}}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(error_message(b"<html>"), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(&String::from_utf8_lossy(&body));
            let _ = parse_token_response(&body, now());
        }

        #[test]
        fn accepted_tokens_are_usable(token in "\\PC{0,40}", expires in proptest::prelude::any::<f64>()) {
            let body = serde_json::json!({ "accessToken": token, "expiresIn": expires }).to_string();
            let visible = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic());
            match parse(&body) {
                Ok(t) => {
                    proptest::prop_assert!(visible && expires >= 1.0);
                    proptest::prop_assert!(t.lifetime() >= MIN_TOKEN_LIFETIME && t.lifetime() <= MAX_TOKEN_LIFETIME);
                    let header = t.bearer_header().unwrap();
                    proptest::prop_assert_eq!(header.to_str().unwrap(), format!("Bearer {token}"));
                }
                // serde_json writes NaN and infinities as null: "not a number" is right for them.
                Err(e) => {
                    let long_enough = expires.is_finite() && expires >= 1.0;
                    proptest::prop_assert!(!visible || !long_enough, "{}", e);
                }
            }
        }
    }

    #[test]
    fn debug_redacts_token() {
        let t = AccessToken::new("tok_canary", Duration::from_secs(1));
        assert!(!format!("{t:?}").contains("tok_canary"));
    }
}
