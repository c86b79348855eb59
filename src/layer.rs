//! [`OzzobitAuthLayer`] and its builder: the one home of the configuration.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tower_layer::Layer;

use crate::credentials::{CredentialsProvider, EnvCredentials};
use crate::scope::{Origin, Scope};
use crate::{Credentials, Error, OzzobitAuth, TokenCache, TokenSource, Unauthorized};

/// OZZOBiT's production API root; the token endpoint is `{DEFAULT_BASE_URL}/auth/token`.
pub const DEFAULT_BASE_URL: &str = "https://OZZOBiT.com/api/api/v2";

const DEFAULT_REFRESH_BUFFER: Duration = Duration::from_secs(300);
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

/// A [`Layer`] that authenticates requests to the OZZOBiT API with a cached, auto-refreshed
/// Partner Access Token.
///
/// Cloning is cheap, and every clone, and every [`OzzobitAuth`] service made from any clone,
/// shares one [`TokenCache`]: one token, one refresher, one set of counters per layer built.
///
/// ```
/// use std::time::Duration;
/// use ozzobit_auth::{Credentials, OzzobitAuthLayer};
///
/// let layer = OzzobitAuthLayer::builder()
///     .credentials(Credentials::new("pk_live_123", "sk_live_456"))
///     .refresh_buffer(Duration::from_secs(300))
///     .build()?;
/// # Ok::<(), ozzobit_auth::Error>(())
/// ```
#[derive(Clone)]
pub struct OzzobitAuthLayer {
    config: Arc<Config>,
}

/// What every service of one layer shares.
pub(crate) struct Config {
    pub(crate) cache: TokenCache,
    pub(crate) scope: Scope,
    pub(crate) max_replay_bytes: usize,
    pub(crate) unauthorized: Unauthorized,
    pub(crate) retry: bool,
    pub(crate) replace_authorization: bool,
}

impl OzzobitAuthLayer {
    /// A builder with the defaults listed on each setter.
    pub fn builder() -> OzzobitAuthBuilder {
        OzzobitAuthBuilder::default()
    }

    /// A layer configured from the environment: `OZZOBIT_API_KEY` and `OZZOBIT_API_SECRET` (or
    /// the vendor's `OZZOBiT_…` spelling), re-read at every token fetch, and `OZZOBIT_BASE_URL`
    /// if set (default [`DEFAULT_BASE_URL`]).
    ///
    /// # Errors
    ///
    /// A credentials error naming the missing variable (checked now, so a misconfigured
    /// deployment fails at start-up), or a configuration error for a bad `OZZOBIT_BASE_URL`.
    pub fn from_env() -> Result<Self, Error> {
        Credentials::from_env()?;
        let mut builder = Self::builder().credentials_provider(EnvCredentials::new());
        if let Some(url) = std::env::var("OZZOBIT_BASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
        {
            builder = builder.base_url(url.trim());
        }
        builder.build()
    }

    /// The token cache every service of this layer shares: use it for tokens outside a tower
    /// stack, or read its [`stats`](TokenCache::stats).
    pub fn token_cache(&self) -> &TokenCache {
        &self.config.cache
    }
}

impl<S> Layer<S> for OzzobitAuthLayer {
    type Service = OzzobitAuth<S>;

    fn layer(&self, inner: S) -> OzzobitAuth<S> {
        OzzobitAuth::new(inner, Arc::clone(&self.config))
    }
}

impl fmt::Debug for OzzobitAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OzzobitAuthLayer")
            .field("cache", &self.cache)
            .field("scope", &self.scope)
            .field("max_replay_bytes", &self.max_replay_bytes)
            .field("unauthorized", &self.unauthorized)
            .field("retry", &self.retry)
            .field("replace_authorization", &self.replace_authorization)
            .finish()
    }
}

/// Configures an [`OzzobitAuthLayer`]. Made by [`OzzobitAuthLayer::builder`].
pub struct OzzobitAuthBuilder {
    credentials: Option<Arc<dyn CredentialsProvider>>,
    token_source: Option<Arc<dyn TokenSource>>,
    base_url: String,
    refresh_buffer: Duration,
    fetch_timeout: Duration,
    max_replay_bytes: usize,
    allow_origins: Vec<String>,
    allow_insecure_http: bool,
    unauthorized: Unauthorized,
    retry: bool,
    replace_authorization: bool,
}

impl Default for OzzobitAuthBuilder {
    fn default() -> Self {
        Self {
            credentials: None,
            token_source: None,
            base_url: DEFAULT_BASE_URL.to_owned(),
            refresh_buffer: DEFAULT_REFRESH_BUFFER,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
            allow_origins: Vec::new(),
            allow_insecure_http: false,
            unauthorized: Unauthorized::default(),
            retry: true,
            replace_authorization: false,
        }
    }
}

impl fmt::Debug for OzzobitAuthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OzzobitAuthBuilder")
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "[provider]"),
            )
            .field(
                "token_source",
                &self.token_source.as_ref().map(|_| "[custom]"),
            )
            .field("base_url", &self.base_url)
            .field("refresh_buffer", &self.refresh_buffer)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("max_replay_bytes", &self.max_replay_bytes)
            .field("allow_origins", &self.allow_origins)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("unauthorized", &self.unauthorized)
            .field("retry", &self.retry)
            .field("replace_authorization", &self.replace_authorization)
            .finish()
    }
}

impl OzzobitAuthBuilder {
    /// Fixed credentials. No default: set these, a
    /// [`credentials_provider`](Self::credentials_provider), or a
    /// [`token_source`](Self::token_source).
    pub fn credentials(self, credentials: Credentials) -> Self {
        self.credentials_provider(credentials)
    }

    /// Credentials read at every token fetch, so a rotated secret is picked up without a restart:
    /// [`EnvCredentials`], [`FileCredentials`](crate::FileCredentials),
    /// [`CredentialsFn`](crate::CredentialsFn) or your own. Replaces
    /// [`credentials`](Self::credentials).
    pub fn credentials_provider(mut self, provider: impl CredentialsProvider) -> Self {
        self.credentials = Some(Arc::new(provider));
        self
    }

    /// Where tokens come from instead of the built-in `POST {base_url}/auth/token` client; the
    /// credentials are then not used. Default: the built-in client (feature `reqwest`).
    pub fn token_source(mut self, source: impl TokenSource) -> Self {
        self.token_source = Some(Arc::new(source));
        self
    }

    /// The API root. The token endpoint is `{base_url}/auth/token` and requests to this URL's
    /// origin get the token. Default: [`DEFAULT_BASE_URL`].
    ///
    /// `http://` is refused unless the host is loopback or
    /// [`allow_insecure_http`](Self::allow_insecure_http) is set.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// How long before expiry a background refresh starts; capped at half the token's lifetime.
    /// Default: 300 s, the vendor's advice.
    pub fn refresh_buffer(mut self, refresh_buffer: Duration) -> Self {
        self.refresh_buffer = refresh_buffer;
        self
    }

    /// Bound on one token fetch, credentials lookup and HTTP exchange together. Default: 10 s.
    pub fn fetch_timeout(mut self, fetch_timeout: Duration) -> Self {
        self.fetch_timeout = fetch_timeout;
        self
    }

    /// The most request-body bytes kept for a retry after a 401; a larger body is sent once and
    /// its 401 returned. Default: 64 KiB.
    pub fn max_replay_bytes(mut self, max_replay_bytes: usize) -> Self {
        self.max_replay_bytes = max_replay_bytes;
        self
    }

    /// Another origin (`scheme://host[:port]`) that gets the token, besides the base URL's.
    /// Default: none. May be called more than once.
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.allow_origins.push(origin.into());
        self
    }

    /// Allow an `http://` base URL to a non-loopback host, sending the secret and the token in
    /// clear text. Default: `false`.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Which responses mean "the token was rejected". Default: HTTP 401 and gRPC status 16.
    pub fn unauthorized(mut self, classify: Unauthorized) -> Self {
        self.unauthorized = classify;
        self
    }

    /// Whether a request answered "unauthorized" is sent once more with a refreshed token.
    /// When off, the token is still refreshed for the next request and no body is recorded.
    /// Default: `true`.
    pub fn retry(mut self, retry: bool) -> Self {
        self.retry = retry;
        self
    }

    /// Whether to replace an `Authorization` header the caller set. When `false`, such a request
    /// passes through untouched and is not retried. Default: `false`.
    pub fn replace_authorization(mut self, replace: bool) -> Self {
        self.replace_authorization = replace;
        self
    }

    /// Validates the configuration and builds the layer. No token is fetched yet: the first
    /// request does that.
    ///
    /// # Errors
    ///
    /// A configuration error when the base URL or an allowed origin does not parse, the base URL
    /// is `http://` to a non-loopback host without
    /// [`allow_insecure_http`](Self::allow_insecure_http), `fetch_timeout` is zero, or there is
    /// nothing to get tokens from (no credentials and no token source).
    pub fn build(self) -> Result<OzzobitAuthLayer, Error> {
        let (origin, endpoint) = parse_base_url(&self.base_url)?;
        if !origin.is_https() && !self.allow_insecure_http && !is_loopback(origin.host()) {
            return Err(Error::config(format!(
                "base_url {:?} is http:// to a non-loopback host; use https:// or allow_insecure_http(true)",
                self.base_url
            )));
        }
        if self.fetch_timeout.is_zero() {
            return Err(Error::config("fetch_timeout must be more than zero"));
        }
        let mut origins = vec![origin];
        for extra in &self.allow_origins {
            origins.push(Origin::parse(extra)?);
        }
        let source = match (self.token_source, self.credentials) {
            (Some(source), _) => source,
            (None, Some(credentials)) => {
                endpoint_source(endpoint, credentials, self.fetch_timeout)?
            }
            (None, None) => {
                return Err(Error::config(
                    "no credentials: call credentials(), credentials_provider() or token_source()",
                ));
            }
        };
        Ok(OzzobitAuthLayer {
            config: Arc::new(Config {
                cache: TokenCache::new(source, self.refresh_buffer, self.fetch_timeout),
                scope: Scope::new(origins),
                max_replay_bytes: self.max_replay_bytes,
                unauthorized: self.unauthorized,
                retry: self.retry,
                replace_authorization: self.replace_authorization,
            }),
        })
    }
}

#[cfg(feature = "reqwest")]
fn endpoint_source(
    endpoint: String,
    credentials: Arc<dyn CredentialsProvider>,
    fetch_timeout: Duration,
) -> Result<Arc<dyn TokenSource>, Error> {
    Ok(Arc::new(crate::source::EndpointSource::new(
        endpoint,
        credentials,
        fetch_timeout,
    )?))
}

#[cfg(not(feature = "reqwest"))]
fn endpoint_source(
    _endpoint: String,
    _credentials: Arc<dyn CredentialsProvider>,
    _fetch_timeout: Duration,
) -> Result<Arc<dyn TokenSource>, Error> {
    Err(Error::config(
        "the built-in token endpoint client needs the `reqwest` feature; enable it or set token_source()",
    ))
}

/// The base URL's origin and the token endpoint `{base_url}/auth/token`.
fn parse_base_url(text: &str) -> Result<(Origin, String), Error> {
    let bad = |why: &str| Error::config(format!("base_url {text:?}: {why}"));
    let uri: Uri = text.trim().parse().map_err(|_| bad("not a URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(bad("expected an absolute http:// or https:// URL"));
    };
    if authority.as_str().contains('@') {
        return Err(bad(
            "user-info is not allowed; credentials go in credentials()",
        ));
    }
    if uri.query().is_some() {
        return Err(bad("a query is not allowed"));
    }
    let origin = Origin::of(&uri).ok_or_else(|| bad("expected an http:// or https:// URL"))?;
    let endpoint = format!(
        "{scheme}://{authority}{}/auth/token",
        uri.path().trim_end_matches('/')
    );
    Ok((origin, endpoint))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(
        f: impl FnOnce(OzzobitAuthBuilder) -> OzzobitAuthBuilder,
    ) -> Result<OzzobitAuthLayer, Error> {
        f(OzzobitAuthLayer::builder().credentials(Credentials::new("pk", "sk"))).build()
    }

    #[test]
    fn endpoint_is_base_url_plus_auth_token() {
        let (_, e) = parse_base_url(DEFAULT_BASE_URL).unwrap();
        assert_eq!(e, "https://OZZOBiT.com/api/api/v2/auth/token");
        let (_, e) = parse_base_url("http://127.0.0.1:8080/api/v2/").unwrap();
        assert_eq!(e, "http://127.0.0.1:8080/api/v2/auth/token");
        let (_, e) = parse_base_url("https://h.example").unwrap();
        assert_eq!(e, "https://h.example/auth/token");
    }

    #[test]
    fn http_only_for_loopback_or_opt_in() {
        for ok in [
            "http://127.0.0.1:1/api",
            "http://localhost:9/x",
            "http://[::1]:80/",
        ] {
            build(|b| b.base_url(ok)).unwrap();
        }
        let e = build(|b| b.base_url("http://api.example/v2")).unwrap_err();
        assert!(e.is_config());
        assert!(e.to_string().contains("allow_insecure_http"), "{e}");
        build(|b| {
            b.base_url("http://api.example/v2")
                .allow_insecure_http(true)
        })
        .unwrap();
    }

    #[test]
    fn bad_configuration_is_a_clear_error() {
        type Edit = fn(OzzobitAuthBuilder) -> OzzobitAuthBuilder;
        let cases: [(&str, Edit); 6] = [
            ("not a URL", |b| b.base_url("ht tp://x")),
            ("absolute", |b| b.base_url("/relative")),
            ("user-info", |b| b.base_url("https://u:p@h.example")),
            ("query", |b| b.base_url("https://h.example/v2?x=1")),
            ("fetch_timeout", |b| b.fetch_timeout(Duration::ZERO)),
            ("allow_origin", |b| b.allow_origin("https://h.example/path")),
        ];
        for (want, f) in cases {
            let e = build(f).unwrap_err();
            assert!(e.is_config(), "{want}: {e:?}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        let e = OzzobitAuthLayer::builder().build().unwrap_err();
        assert!(e.to_string().contains("no credentials"), "{e}");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let b = OzzobitAuthLayer::builder().credentials(Credentials::new("pk", "sk_canary"));
        assert!(!format!("{b:?}").contains("sk_canary"));
        let layer = b.build().unwrap();
        assert!(!format!("{layer:?}").contains("sk_canary"));
    }
}
