//! Tower middleware that authenticates calls to the OZZOBiT Whitelabel API with a Partner Access
//! Token, obtained, cached and refreshed ahead of expiry by one shared refresher. Requests get
//! `Authorization: Bearer <token>`; a request answered 401 is sent once more with a new token.
//!
//! ```
//! use ozzobit_auth::{OzzobitAuthLayer, ReqwestService};
//! use tower::{ServiceBuilder, ServiceExt};
//! # use ozzobit_auth::testing::MockServer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ozzobit_auth::BoxError> {
//! # let mock = MockServer::start().await;
//! # let (credentials, base_url) = (mock.credentials(), mock.base_url());
//! // `OzzobitAuthLayer::from_env()` reads OZZOBIT_API_KEY, OZZOBIT_API_SECRET, OZZOBIT_BASE_URL.
//! let auth = OzzobitAuthLayer::builder()
//!     .credentials(credentials)
//!     .base_url(&base_url)
//!     .build()?;
//! let client = ServiceBuilder::new()
//!     .layer(auth.clone())
//!     .service(ReqwestService::new(reqwest::Client::new()));
//!
//! let request = http::Request::get(format!("{base_url}/orders"))
//!     .body(http_body_util::Empty::<bytes::Bytes>::new())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(auth.token_cache().stats().fetches, 1);
//! # Ok(()) }
//! ```
//!
//! # Where it goes in a stack
//!
//! Put `OzzobitAuthLayer` *inside* (after, in `ServiceBuilder` order) layers that retry, time
//! out or follow redirects, and *outside* the client itself:
//!
//! ```text
//! ServiceBuilder::new()
//!     .timeout(..)            // bounds the whole exchange, token wait and 401 retry included
//!     .retry(..)              // each transport retry gets a current token
//!     .layer(auth)            // adds the token, answers 401 with one refresh + retry
//!     .service(client)
//! ```
//!
//! - Retries above it re-enter it, so each attempt carries the current token. This layer does not
//!   retry transport errors itself: an error from the inner service is returned unchanged.
//! - A redirect follower must sit *above* it, so a redirect to another origin passes through
//!   this layer's origin check and does not get the token. Below it, the follower would copy
//!   the header to wherever the server points.
//! - A timeout above it bounds the token wait as well; `fetch_timeout` bounds the fetch itself.
//!
//! # Composing with clients
//!
//! The inner service receives `http::Request<ReplayBody<B>>`. A client generic over its body
//! (hyper-util's `Client<C, B>`) takes it as is; one with a fixed body type adapts in one line.
//! With tonic:
//!
//! ```no_run
//! # async fn demo(auth: ozzobit_auth::OzzobitAuthLayer) -> Result<(), Box<dyn std::error::Error>> {
//! use ozzobit_auth::ReplayBody;
//! use tower::ServiceBuilder;
//! use tower_http::ServiceBuilderExt; // map_request_body
//!
//! let channel = tonic::transport::Endpoint::from_static("https://grpc.example").connect().await?;
//! let svc = ServiceBuilder::new()
//!     .layer(auth)
//!     // The type is inferred once a client calls through `svc`.
//!     .map_request_body(tonic::body::Body::new::<ReplayBody<tonic::body::Body>>)
//!     .service(channel);
//! let grpc = tonic::client::Grpc::new(svc); // or any generated `FooClient::new(svc)`
//! # let _ = grpc; Ok(()) }
//! ```
//!
//! With reqwest, wrap the client in [`ReqwestService`]. The `examples/` directory has runnable
//! hyper-util, reqwest, tonic and axum (a server calling OZZOBiT) programs.
//!
//! A compiler limitation shared with every tower middleware whose error is
//! [`BoxError`] (tower's `Timeout` too): when the inner service's error is itself `BoxError`,
//! `tokio::spawn(async move { svc.oneshot(req).await })` may fail to compile with
//! "implementation of `From` is not general enough". Spawn the future itself instead,
//! `tokio::spawn(svc.oneshot(req))`, or give the inner service a concrete error type.
//!
//! # What goes where
//!
//! The token goes only to the base URL's origin, origins added with
//! [`allow_origin`](OzzobitAuthBuilder::allow_origin), and path-only URIs (tonic's, which get
//! their origin inside the channel). Everything else passes through untouched: no header, no
//! fetch, and its 401 triggers nothing. A request that already has an `Authorization` header
//! is left alone unless [`replace_authorization`](OzzobitAuthBuilder::replace_authorization) is
//! set.
//!
//! # "Retries once", and streaming bodies
//!
//! The inner service receives [`ReplayBody`], which records the body as it streams, up to
//! [`max_replay_bytes`](OzzobitAuthBuilder::max_replay_bytes) (64 KiB by default). After a 401
//! (or gRPC `UNAUTHENTICATED`) the token is refreshed, once for all requests that saw it
//! rejected, and the request is sent again only if:
//!
//! - the body fits within the cap, and the first attempt either streamed all of it or dropped
//!   it part-way (an HTTP/2 server that answers before reading resets the stream; gRPC servers
//!   that authenticate in an interceptor do this): the retry then sends the recorded part and
//!   the rest of your body. If the first attempt is still sending the body, the layer waits up
//!   to 100 ms for it to finish, then returns the 401 as is. An upload larger than the cap gets
//!   its 401 returned as is;
//! - it is the first attempt (the retry carries a [`Retried`] extension, so a second
//!   `OzzobitAuth` below does not retry again);
//! - the refresh succeeded (otherwise the 401 is returned and the refresh error is logged).
//!
//! A 401 whose request is not retried still replaces the token for the requests after it.
//!
//! # Security
//!
//! The secret and tokens are held in [`secrecy`] types and never appear in `Debug`, `Display`,
//! errors or `tracing` events. The header is marked sensitive. The token endpoint is called with
//! a private client that does not follow redirects, its answer is capped at 64 KiB and bounded
//! by `fetch_timeout`, and `http://` base URLs are refused unless loopback.
//!
//! # Features
//!
//! - `reqwest` (default): the built-in token endpoint client (rustls; no system TLS library) and
//!   [`ReqwestService`]. Without it, supply a [`TokenSource`].
//! - `test-util`: [`testing::MockServer`], an embedded mock OZZOBiT server for your own tests.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod cache;
mod classify;
mod credentials;
mod error;
mod future;
mod layer;
#[cfg(feature = "reqwest")]
mod reqwest_service;
mod scope;
mod service;
mod source;
mod token;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

pub use body::ReplayBody;
pub use cache::{Stats, Token, TokenCache};
pub use classify::Unauthorized;
pub use credentials::{
    Credentials, CredentialsFn, CredentialsProvider, EnvCredentials, FileCredentials,
};
pub use error::{BoxError, Error};
pub use future::ResponseFuture;
pub use layer::{DEFAULT_BASE_URL, OzzobitAuthBuilder, OzzobitAuthLayer};
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use reqwest_service::ReqwestService;
pub use service::{OzzobitAuth, Retried};
pub use source::TokenSource;
pub use token::{AccessToken, DEFAULT_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME};

/// A boxed, `Send` future, as [`TokenSource`] and [`CredentialsProvider`] return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
