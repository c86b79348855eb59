//! The crate's error type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// A boxed error, the error type of [`OzzobitAuth`](crate::OzzobitAuth) services.
///
/// Token failures inside it downcast to [`Error`]; errors of the inner service are passed through
/// unchanged.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error obtaining a Partner Access Token, or configuring the layer.
///
/// The kind is private; ask with the `is_*` predicates. `Display` is lowercase, carries the useful
/// detail (the token endpoint's `message`, the HTTP status) and never a secret or a token.
///
/// `Error` is `Clone`, because the outcome of one shared token fetch is handed to every caller
/// that waited for it.
#[derive(Clone)]
pub struct Error {
    kind: Kind,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

#[derive(Clone, Debug)]
enum Kind {
    /// The builder was given something unusable.
    Config(String),
    /// The credentials could not be read (missing environment variable, unreadable file, …).
    Credentials(String),
    /// The token endpoint refused the credentials or the request (a 4xx other than 408/429).
    Rejected {
        status: Option<StatusCode>,
        message: String,
    },
    /// A failure that may pass: transport, 5xx, 408, 429.
    Transient {
        status: Option<StatusCode>,
        retry_after: Option<Duration>,
    },
    /// The fetch did not finish within `fetch_timeout`.
    Timeout(Duration),
    /// The token endpoint answered 2xx with a body that does not hold a usable token.
    InvalidResponse(String),
}

impl Error {
    /// A transient failure of a custom [`TokenSource`](crate::TokenSource): the cache backs off
    /// (exponentially, with jitter) and tries again.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Transient {
            status: None,
            retry_after: None,
        })
        .with_source(source)
    }

    /// A terminal rejection by a custom [`TokenSource`](crate::TokenSource) (bad key or secret):
    /// the cache keeps this error for a few seconds before it tries again. `message` is shown in
    /// `Display`, so it must not contain a secret.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(Kind::Rejected {
            status: None,
            message: message.into(),
        })
    }

    fn new(kind: Kind) -> Self {
        Self { kind, source: None }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Self::new(Kind::Config(msg.into()))
    }

    pub(crate) fn credentials(msg: impl Into<String>) -> Self {
        Self::new(Kind::Credentials(msg.into()))
    }

    pub(crate) fn rejected_with_status(status: StatusCode, message: String) -> Self {
        Self::new(Kind::Rejected {
            status: Some(status),
            message,
        })
    }

    #[cfg(any(test, feature = "reqwest"))]
    pub(crate) fn transient_status(status: StatusCode, retry_after: Option<Duration>) -> Self {
        Self::new(Kind::Transient {
            status: Some(status),
            retry_after,
        })
    }

    pub(crate) fn timeout(after: Duration) -> Self {
        Self::new(Kind::Timeout(after))
    }

    pub(crate) fn invalid_response(msg: impl Into<String>) -> Self {
        Self::new(Kind::InvalidResponse(msg.into()))
    }

    /// The builder's configuration was invalid (bad URL, `http://` to a remote host, no
    /// credentials, …).
    pub fn is_config(&self) -> bool {
        matches!(self.kind, Kind::Config(_))
    }

    /// The credentials could not be read (a missing or empty environment variable, an unreadable
    /// file, a failing secrets-manager closure).
    pub fn is_credentials(&self) -> bool {
        matches!(self.kind, Kind::Credentials(_))
    }

    /// The token endpoint rejected the request: invalid key or secret, or another 4xx.
    ///
    /// This is terminal for a few seconds; the cache then tries again, so a rotated secret is
    /// picked up without a restart.
    pub fn is_rejected(&self) -> bool {
        matches!(self.kind, Kind::Rejected { .. })
    }

    /// A failure that may pass on its own: transport error, timeout, 5xx, 408 or 429.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, Kind::Transient { .. } | Kind::Timeout(_))
    }

    /// The token fetch did not finish within `fetch_timeout`.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout(_))
    }

    /// The token endpoint answered success with a body holding no usable token (not JSON, no
    /// `accessToken`, a token that is not a valid header value, a bad expiry, an oversized body).
    pub fn is_invalid_response(&self) -> bool {
        matches!(self.kind, Kind::InvalidResponse(_))
    }

    /// The HTTP status the token endpoint answered with, where one caused this error.
    pub fn status(&self) -> Option<StatusCode> {
        match self.kind {
            Kind::Rejected { status, .. } | Kind::Transient { status, .. } => status,
            _ => None,
        }
    }

    /// The `Retry-After` the token endpoint sent with a 429 or 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            Kind::Transient { retry_after, .. } => retry_after,
            _ => None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ozzobit_auth::Error");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Config(msg) => write!(f, "invalid configuration: {msg}"),
            Kind::Credentials(msg) => write!(f, "credentials unavailable: {msg}"),
            Kind::Rejected {
                status: Some(status),
                message,
            } => write!(f, "token request rejected ({status}): {message}"),
            Kind::Rejected {
                status: None,
                message,
            } => write!(f, "token request rejected: {message}"),
            Kind::Transient {
                status: Some(status),
                ..
            } => write!(f, "token endpoint unavailable ({status})"),
            Kind::Transient { status: None, .. } => f.write_str("token request failed"),
            Kind::Timeout(after) => write!(f, "token request timed out after {after:?}"),
            Kind::InvalidResponse(msg) => write!(f, "invalid token response: {msg}"),
        }
    }
}

impl Error {
    /// `Display` of this error and each of its sources, joined with `": "`: what the `tracing`
    /// events log, so an operator sees the cause ("connection refused") and not only the kind.
    /// Sources are transport and I/O errors, URLs and file paths: never a secret.
    pub(crate) fn chain(&self) -> impl fmt::Display + '_ {
        struct Chain<'a>(&'a Error);
        impl fmt::Display for Chain<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)?;
                let mut source = std::error::Error::source(self.0);
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
        Chain(self)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_display_carries_status_and_message() {
        let e = Error::rejected_with_status(StatusCode::UNAUTHORIZED, "Invalid API key".into());
        assert_eq!(
            e.to_string(),
            "token request rejected (401 Unauthorized): Invalid API key"
        );
        assert!(e.is_rejected() && !e.is_transient());
        assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn timeout_is_transient() {
        let e = Error::timeout(Duration::from_secs(10));
        assert!(e.is_timeout() && e.is_transient());
        assert_eq!(e.to_string(), "token request timed out after 10s");
    }

    #[test]
    fn chain_shows_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = Error::transient(io);
        assert_eq!(e.to_string(), "token request failed");
        assert_eq!(
            e.chain().to_string(),
            "token request failed: connection refused"
        );
    }

    #[test]
    fn error_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Error>();
    }
}
