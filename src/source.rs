//! Where tokens come from: the [`TokenSource`] trait and the OZZOBiT token endpoint client.

use crate::{AccessToken, BoxFuture, Error};

/// Fetches a new Partner Access Token.
///
/// The layer's [`TokenCache`](crate::TokenCache) calls it from one spawned task at a time (single
/// flight), bounded by `fetch_timeout`. The built-in source posts the credentials to
/// `{base_url}/auth/token`; implement this trait to get tokens some other way, or to drive the
/// cache in tests, and pass it to
/// [`OzzobitAuthBuilder::token_source`](crate::OzzobitAuthBuilder::token_source).
///
/// Return [`Error::transient`] for failures that may pass (the cache backs off and retries) and
/// [`Error::rejected`] for a refusal of the credentials.
///
/// ```
/// use std::time::Duration;
/// use ozzobit_auth::{AccessToken, BoxFuture, Error, TokenSource};
///
/// struct Fixed;
///
/// impl TokenSource for Fixed {
///     fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
///         Box::pin(async { Ok(AccessToken::new("t0k3n", Duration::from_secs(3600))) })
///     }
/// }
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// Obtains a fresh token.
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>>;
}

impl<T: TokenSource + ?Sized> TokenSource for std::sync::Arc<T> {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        (**self).fetch()
    }
}

#[cfg(feature = "reqwest")]
pub(crate) use endpoint::EndpointSource;

#[cfg(feature = "reqwest")]
mod endpoint {
    use std::fmt;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use http::{HeaderMap, StatusCode, header};
    use secrecy::ExposeSecret;

    use crate::credentials::CredentialsProvider;
    use crate::token::{error_message, parse_token_response};
    use crate::{AccessToken, BoxFuture, Error, TokenSource};

    /// Cap on the token endpoint's response body: a token answer is a few hundred bytes.
    const MAX_BODY_BYTES: usize = 64 * 1024;

    /// The OZZOBiT token endpoint: `POST {base_url}/auth/token` with `{"apiKey", "apiSecret"}`.
    pub(crate) struct EndpointSource {
        client: reqwest::Client,
        endpoint: String,
        credentials: Arc<dyn CredentialsProvider>,
        fetch_timeout: Duration,
    }

    impl fmt::Debug for EndpointSource {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("EndpointSource")
                .field("endpoint", &self.endpoint)
                .finish_non_exhaustive()
        }
    }

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct TokenRequest<'a> {
        api_key: &'a str,
        api_secret: &'a str,
    }

    impl EndpointSource {
        /// A client for `endpoint`. Redirects are not followed, so the secret is never re-posted
        /// to a location the user did not configure.
        pub(crate) fn new(
            endpoint: String,
            credentials: Arc<dyn CredentialsProvider>,
            fetch_timeout: Duration,
        ) -> Result<Self, Error> {
            // The whole fetch is bounded by the cache's `fetch_timeout`; the connect timeout only
            // keeps an unreachable host from holding a connection attempt open past it.
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(fetch_timeout)
                .user_agent(concat!("ozzobit-auth/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| {
                    Error::config("cannot build the token endpoint client").with_source(e)
                })?;
            Ok(Self {
                client,
                endpoint,
                credentials,
                fetch_timeout,
            })
        }

        async fn fetch_once(&self) -> Result<AccessToken, Error> {
            let creds = self.credentials.credentials().await?;
            let body = serde_json::to_vec(&TokenRequest {
                api_key: creds.api_key(),
                api_secret: creds.api_secret().expose_secret(),
            })
            .map_err(|e| Error::config("cannot encode the token request").with_source(e))?;

            let response = self
                .client
                .post(&self.endpoint)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| self.transport_error(e))?;

            let status = response.status();
            let retry_after = retry_after(response.headers());
            if status.is_redirection() {
                return Err(Error::rejected_with_status(
                    status,
                    "the token endpoint redirected; redirects are not followed, so check base_url"
                        .into(),
                ));
            }
            let body = read_capped(response)
                .await
                .map_err(|e| e.map_transport(|e| self.transport_error(e)))?;
            if status.is_success() {
                return parse_token_response(&body, SystemTime::now());
            }
            if status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error()
            {
                return Err(Error::transient_status(status, retry_after));
            }
            let message = match error_message(&body) {
                // An endpoint that echoes its input must not leak the secret into logs.
                Some(m) if creds.secret_in(&m) => {
                    "(message withheld: it contained the API secret)".into()
                }
                Some(m) => m,
                None => status.canonical_reason().unwrap_or("no message").to_owned(),
            };
            Err(Error::rejected_with_status(status, message))
        }
    }

    impl EndpointSource {
        fn transport_error(&self, error: reqwest::Error) -> Error {
            if error.is_timeout() {
                Error::timeout(self.fetch_timeout).with_source(error)
            } else {
                Error::transient(error)
            }
        }
    }

    impl TokenSource for EndpointSource {
        fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
            Box::pin(self.fetch_once())
        }
    }

    /// Why reading the body stopped.
    enum ReadError {
        TooBig,
        Transport(reqwest::Error),
    }

    impl ReadError {
        fn map_transport(self, f: impl FnOnce(reqwest::Error) -> Error) -> Error {
            match self {
                ReadError::TooBig => {
                    Error::invalid_response(format!("body exceeds {MAX_BODY_BYTES} bytes"))
                }
                ReadError::Transport(e) => f(e),
            }
        }
    }

    /// Reads the body, refusing more than [`MAX_BODY_BYTES`] before it is all in memory.
    async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, ReadError> {
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(ReadError::TooBig);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(ReadError::TooBig);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// `Retry-After` in its delay-seconds form. The HTTP-date form is ignored (the jittered
    /// backoff applies instead): clocks of token endpoints and clients disagree too often for a
    /// date to be worth trusting.
    fn retry_after(headers: &HeaderMap) -> Option<Duration> {
        let secs: u64 = headers
            .get(header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Duration::from_secs(secs))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn retry_after_seconds_only() {
            let mut h = HeaderMap::new();
            assert_eq!(retry_after(&h), None);
            h.insert(header::RETRY_AFTER, " 7 ".parse().unwrap());
            assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
            h.insert(
                header::RETRY_AFTER,
                "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
            );
            assert_eq!(retry_after(&h), None);
        }
    }
}
