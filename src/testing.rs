//! An embedded mock OZZOBiT server for tests: real HTTP on `127.0.0.1:0`, real HS256 JWTs.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ozzobit_auth::OzzobitAuthLayer;
//! use ozzobit_auth::testing::MockServer;
//!
//! let mock = MockServer::start().await;
//! let layer = OzzobitAuthLayer::builder()
//!     .credentials(mock.credentials())
//!     .base_url(mock.base_url())
//!     .build()?;
//! let token = layer.token_cache().token().await?;
//! assert_eq!(token.generation(), 1);
//! assert_eq!(mock.token_requests(), 1);
//! # Ok(()) }
//! ```
//!
//! Routes, under `/api/v2`:
//!
//! - `POST /auth/token`: checks `apiKey` and `apiSecret`; answers
//!   `{"accessToken": <JWT>, "expiresIn": <seconds>}`, or `401 {"success": false, "message":
//!   "Invalid API key"}`.
//! - `GET /orders` and `POST /orders/create`: check the bearer token (signature, expiry on the
//!   Tokio clock, so paused-time tests work, not revoked) and answer `{"success": true, "data":
//!   …}`, or `401 {"success": false, "message": "Invalid or expired access token"}`.
//!
//! And one gRPC method, served over HTTP/2 (prior knowledge) at the server's root, for tonic
//! clients: `/ozzobit.v2.Orders/List` checks the bearer like the routes above and answers the
//! orders JSON as one gRPC message, or `grpc-status: 16` (`UNAUTHENTICATED`, trailers-only).
//!
//! Knobs change the behaviour at any time; counters count every hit.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Credentials;

/// The API key the mock accepts until [`MockServer::set_credentials`] changes it.
pub const MOCK_API_KEY: &str = "pk_test_mock";
/// The API secret the mock accepts until [`MockServer::set_credentials`] changes it.
pub const MOCK_API_SECRET: &str = "sk_test_mock_secret";

/// Path of the mock's gRPC method (unary; the response message is the orders JSON).
pub const GRPC_LIST_ORDERS: &str = "/ozzobit.v2.Orders/List";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A running mock OZZOBiT server. Stops when dropped.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    key: [u8; 32],
    knobs: Mutex<Knobs>,
    live: Mutex<HashMap<u64, Instant>>,
    issued: Mutex<Vec<String>>,
    seen_authorizations: Mutex<Vec<String>>,
    order_bodies: Mutex<Vec<Bytes>>,
    next_jti: AtomicU64,
    token_requests: AtomicU64,
    api_requests: AtomicU64,
    unauthorized: AtomicU64,
    reject_all_tokens: AtomicBool,
}

struct Knobs {
    api_key: String,
    api_secret: String,
    lifetime: Duration,
    latency: Duration,
    failures: VecDeque<(StatusCode, HeaderMap, String)>,
}

impl MockServer {
    /// Starts a server on `127.0.0.1:0`, accepting [`MOCK_API_KEY`] / [`MOCK_API_SECRET`] and
    /// issuing tokens that live one hour.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound, or outside a Tokio runtime: test set-up failures.
    pub async fn start() -> Self {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// As [`start`](Self::start), on `addr`: to bring the endpoint back on the address a client
    /// was built for, after testing what happens while nothing listens there.
    ///
    /// # Panics
    ///
    /// If `addr` cannot be bound, or outside a Tokio runtime.
    pub async fn start_at(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the mock server's address");
        let addr = listener.local_addr().expect("local_addr");
        let mut key = [0u8; 32];
        key.iter_mut().for_each(|b| *b = fastrand::u8(..));
        let shared = Arc::new(Shared {
            key,
            knobs: Mutex::new(Knobs {
                api_key: MOCK_API_KEY.into(),
                api_secret: MOCK_API_SECRET.into(),
                lifetime: Duration::from_secs(3600),
                latency: Duration::ZERO,
                failures: VecDeque::new(),
            }),
            live: Mutex::default(),
            issued: Mutex::default(),
            seen_authorizations: Mutex::default(),
            order_bodies: Mutex::default(),
            next_jti: AtomicU64::new(1),
            token_requests: AtomicU64::new(0),
            api_requests: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            reject_all_tokens: AtomicBool::new(false),
        });
        let app = axum::Router::new()
            .route("/api/v2/auth/token", post(token))
            .route("/api/v2/orders", get(list_orders))
            .route("/api/v2/orders/create", post(create_order))
            .route(GRPC_LIST_ORDERS, post(grpc_list_orders))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/api/v2`, to pass to
    /// [`base_url`](crate::OzzobitAuthBuilder::base_url).
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v2", self.addr)
    }

    /// `{base_url}/<path>`, e.g. `mock.url("orders")`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url(), path.trim_start_matches('/'))
    }

    /// The credentials the mock accepts now.
    pub fn credentials(&self) -> Credentials {
        let knobs = self.knobs();
        Credentials::new(&knobs.api_key, &knobs.api_secret)
    }

    /// Requests to `POST /auth/token`, successful or not.
    pub fn token_requests(&self) -> u64 {
        self.shared.token_requests.load(SeqCst)
    }

    /// Requests to the API routes (`/orders`, `/orders/create`), authorized or not.
    pub fn api_requests(&self) -> u64 {
        self.shared.api_requests.load(SeqCst)
    }

    /// API requests answered 401.
    pub fn unauthorized_responses(&self) -> u64 {
        self.shared.unauthorized.load(SeqCst)
    }

    /// Every token issued, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.shared.issued).clone()
    }

    /// The `Authorization` header of every API request, in arrival order (`""` when absent).
    pub fn seen_authorizations(&self) -> Vec<String> {
        lock(&self.shared.seen_authorizations).clone()
    }

    /// The raw body of every `POST /orders/create`, in arrival order, retries included.
    pub fn order_bodies(&self) -> Vec<Bytes> {
        lock(&self.shared.order_bodies).clone()
    }

    /// Lifetime of tokens issued from now on (`expiresIn`, rounded down to whole seconds, at
    /// least 1). Default: one hour.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.knobs().lifetime = lifetime;
    }

    /// Delay before the token endpoint answers (on the Tokio clock). Default: none.
    pub fn set_token_latency(&self, latency: Duration) {
        self.knobs().latency = latency;
    }

    /// The next `n` token requests are answered with `status` and `body` (JSON content type if
    /// the body starts with `{`, HTML otherwise).
    pub fn fail_next_token_requests(&self, n: usize, status: StatusCode, body: &str) {
        self.fail_next_token_requests_with_headers(n, status, HeaderMap::new(), body);
    }

    /// As [`fail_next_token_requests`](Self::fail_next_token_requests), with extra response
    /// headers (e.g. `Retry-After`, `Location`).
    pub fn fail_next_token_requests_with_headers(
        &self,
        n: usize,
        status: StatusCode,
        headers: HeaderMap,
        body: &str,
    ) {
        let mut knobs = self.knobs();
        for _ in 0..n {
            knobs
                .failures
                .push_back((status, headers.clone(), body.to_owned()));
        }
    }

    /// Accept only these credentials from now on: rotates the secret, or, with values no client
    /// has, rejects every token request with `401 Invalid API key`.
    pub fn set_credentials(&self, api_key: &str, api_secret: &str) {
        let mut knobs = self.knobs();
        knobs.api_key = api_key.to_owned();
        knobs.api_secret = api_secret.to_owned();
    }

    /// Revokes every token issued so far: API requests carrying them get 401.
    pub fn revoke_all_tokens(&self) {
        lock(&self.shared.live).clear();
    }

    /// While `true`, the API routes answer 401 to every token, new ones included.
    pub fn reject_all_tokens(&self, reject: bool) {
        self.shared.reject_all_tokens.store(reject, SeqCst);
    }

    fn knobs(&self) -> std::sync::MutexGuard<'_, Knobs> {
        lock(&self.shared.knobs)
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("token_requests", &self.token_requests())
            .field("api_requests", &self.api_requests())
            .finish_non_exhaustive()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({ "success": false, "message": message })),
    )
        .into_response()
}

async fn token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.token_requests.fetch_add(1, SeqCst);
    let (latency, failure) = {
        let mut knobs = lock(&shared.knobs);
        (knobs.latency, knobs.failures.pop_front())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some((status, headers, body)) = failure {
        let content_type = if body.trim_start().starts_with('{') {
            "application/json"
        } else {
            "text/html; charset=utf-8"
        };
        return (
            status,
            headers,
            [(header::CONTENT_TYPE, content_type)],
            body,
        )
            .into_response();
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return json_error(StatusCode::BAD_REQUEST, "Invalid request body");
    };
    let (key, secret) = (req["apiKey"].as_str(), req["apiSecret"].as_str());
    let lifetime = {
        let knobs = lock(&shared.knobs);
        if key != Some(knobs.api_key.as_str()) {
            return json_error(StatusCode::UNAUTHORIZED, "Invalid API key");
        }
        if secret != Some(knobs.api_secret.as_str()) {
            return json_error(StatusCode::UNAUTHORIZED, "Invalid API secret");
        }
        knobs.lifetime
    };
    let secs = lifetime.as_secs().max(1);
    let jti = shared.next_jti.fetch_add(1, SeqCst);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = json!({ "sub": key, "iat": now, "exp": now + secs, "jti": jti });
    let token = sign(&shared.key, &claims);
    lock(&shared.live).insert(jti, Instant::now() + Duration::from_secs(secs));
    lock(&shared.issued).push(token.clone());
    Json(json!({ "accessToken": token, "expiresIn": secs })).into_response()
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length")
}

fn sign(key: &[u8], claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        B64.encode(claims.to_string())
    );
    let mut mac = mac(key);
    mac.update(signing_input.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// The `jti` of a token whose signature checks out.
fn verify(key: &[u8], token: &str) -> Option<u64> {
    let (signing_input, sig) = token.rsplit_once('.')?;
    let mut mac = mac(key);
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&B64.decode(sig).ok()?).ok()?;
    let payload = signing_input.split_once('.')?.1;
    let claims: Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
    claims["jti"].as_u64()
}

/// Counts the API request and checks its bearer token; `Some` is the 401 to send.
fn deny(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    shared.api_requests.fetch_add(1, SeqCst);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    lock(&shared.seen_authorizations).push(auth.to_owned());
    let valid = !shared.reject_all_tokens.load(SeqCst)
        && auth
            .strip_prefix("Bearer ")
            .and_then(|t| verify(&shared.key, t))
            .and_then(|jti| lock(&shared.live).get(&jti).copied())
            .is_some_and(|expires| Instant::now() < expires);
    if valid {
        return None;
    }
    shared.unauthorized.fetch_add(1, SeqCst);
    Some(json_error(
        StatusCode::UNAUTHORIZED,
        "Invalid or expired access token",
    ))
}

async fn list_orders(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(denied) = deny(&shared, &headers) {
        return denied;
    }
    Json(orders()).into_response()
}

fn orders() -> Value {
    json!({
        "success": true,
        "data": {
            "orders": [
                { "orderId": "ord_1001", "status": "COMPLETED", "fiatAmount": 100, "fiatCurrency": "USD", "cryptoCurrency": "BTC" },
                { "orderId": "ord_1002", "status": "PENDING", "fiatAmount": 250, "fiatCurrency": "EUR", "cryptoCurrency": "ETH" }
            ],
            "total": 2
        }
    })
}

async fn grpc_list_orders(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    use http_body_util::BodyExt as _;

    let grpc = [(header::CONTENT_TYPE, "application/grpc")];
    if deny(&shared, &headers).is_some() {
        let status = [
            ("grpc-status", "16"),
            ("grpc-message", "invalid or expired access token"),
        ];
        return (grpc, status).into_response();
    }
    let message = orders().to_string();
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0); // not compressed
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message.as_bytes());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", header::HeaderValue::from_static("0"));
    let body = http_body_util::Full::new(Bytes::from(frame))
        .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(trailers)) });
    (grpc, axum::body::Body::new(body)).into_response()
}

async fn create_order(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    lock(&shared.order_bodies).push(body.clone());
    if let Some(denied) = deny(&shared, &headers) {
        return denied;
    }
    let Ok(order) = serde_json::from_slice::<Value>(&body) else {
        return json_error(StatusCode::BAD_REQUEST, "Invalid request body");
    };
    let id = shared.api_requests.load(SeqCst);
    Json(json!({
        "success": true,
        "data": { "orderId": format!("ord_{}", 2000 + id), "status": "PENDING", "request": order }
    }))
    .into_response()
}
