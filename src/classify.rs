//! Is a response "unauthorized"?

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, StatusCode, header};

/// Decides whether a response means "the token was rejected" and should trigger a refresh and
/// one retry.
///
/// The default, [`Unauthorized::default`], answers yes for HTTP `401 Unauthorized` and for a gRPC
/// response (HTTP 200, `content-type: application/grpc…`) whose headers carry `grpc-status: 16`
/// (`UNAUTHENTICATED`, sent trailers-only). For APIs with another signal, build one from a
/// closure with [`Unauthorized::new`]:
///
/// ```
/// use http::StatusCode;
/// use ozzobit_auth::Unauthorized;
///
/// // This API also answers 403 with `x-token-expired: 1` for an expired token.
/// let classify = Unauthorized::new(|status, headers| {
///     status == StatusCode::UNAUTHORIZED
///         || (status == StatusCode::FORBIDDEN && headers.contains_key("x-token-expired"))
/// });
/// # let _ = classify;
/// ```
#[derive(Clone, Default)]
pub struct Unauthorized {
    custom: Option<Arc<ClassifyFn>>,
}

type ClassifyFn = dyn Fn(StatusCode, &HeaderMap) -> bool + Send + Sync;

impl Unauthorized {
    /// A classifier from a closure over the response's status and headers.
    pub fn new<F>(f: F) -> Self
    where
        F: Fn(StatusCode, &HeaderMap) -> bool + Send + Sync + 'static,
    {
        Self {
            custom: Some(Arc::new(f)),
        }
    }

    /// Whether a response with this status and these headers is "unauthorized".
    pub fn is_unauthorized(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        match &self.custom {
            Some(f) => f(status, headers),
            // gRPC answers every call with HTTP 200: only then are its headers worth reading.
            None => {
                status == StatusCode::UNAUTHORIZED
                    || (status == StatusCode::OK && grpc_unauthenticated(headers))
            }
        }
    }
}

impl fmt::Debug for Unauthorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.custom.is_some() {
            "Unauthorized(custom)"
        } else {
            "Unauthorized(http 401, grpc-status 16)"
        })
    }
}

/// `grpc-status: 16` in the headers of a gRPC response. A status in the trailers of a streamed
/// response comes too late to retry the request, so only trailers-only responses count.
fn grpc_unauthenticated(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
        && headers
            .get("grpc-status")
            .is_some_and(|s| s.as_bytes().trim_ascii() == b"16")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (header::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn default_http_and_grpc() {
        let c = Unauthorized::default();
        assert!(c.is_unauthorized(StatusCode::UNAUTHORIZED, &HeaderMap::new()));
        assert!(!c.is_unauthorized(StatusCode::FORBIDDEN, &HeaderMap::new()));
        let grpc = headers(&[
            ("content-type", "application/grpc+proto"),
            ("grpc-status", "16"),
        ]);
        assert!(c.is_unauthorized(StatusCode::OK, &grpc));
        let other = headers(&[("content-type", "application/grpc"), ("grpc-status", "7")]);
        assert!(!c.is_unauthorized(StatusCode::OK, &other));
        let not_grpc = headers(&[("content-type", "application/json"), ("grpc-status", "16")]);
        assert!(!c.is_unauthorized(StatusCode::OK, &not_grpc));
    }

    #[test]
    fn custom_closure() {
        let c = Unauthorized::new(|s, _| s == StatusCode::FORBIDDEN);
        assert!(c.is_unauthorized(StatusCode::FORBIDDEN, &HeaderMap::new()));
        assert!(!c.is_unauthorized(StatusCode::UNAUTHORIZED, &HeaderMap::new()));
    }
}
