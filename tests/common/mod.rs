//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ozzobit_auth::{
    AccessToken, BoxFuture, Error, OzzobitAuthBuilder, OzzobitAuthLayer, TokenSource,
};

/// An in-process token source driven by the test: counts fetches, takes `latency` on the Tokio
/// clock, and fails while a failure is set. Deterministic under paused time.
#[derive(Default)]
pub struct Scripted {
    fetches: AtomicU64,
    latency: Mutex<Duration>,
    lifetime: Mutex<Duration>,
    failure: Mutex<Option<Error>>,
}

impl Scripted {
    pub fn new(lifetime: Duration) -> Arc<Self> {
        let s = Self::default();
        *s.lifetime.lock().unwrap() = lifetime;
        Arc::new(s)
    }
    pub fn fetches(&self) -> u64 {
        self.fetches.load(SeqCst)
    }
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap() = latency;
    }
    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.lifetime.lock().unwrap() = lifetime;
    }
    pub fn fail_with(&self, error: Option<Error>) {
        *self.failure.lock().unwrap() = error;
    }
}

impl TokenSource for Scripted {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        let n = self.fetches.fetch_add(1, SeqCst) + 1;
        let latency = *self.latency.lock().unwrap();
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if let Some(e) = self.failure.lock().unwrap().clone() {
                return Err(e);
            }
            Ok(AccessToken::new(
                format!("tok-{n}"),
                *self.lifetime.lock().unwrap(),
            ))
        })
    }
}

/// A layer over `source`, for `base_url` (default: a loopback origin nothing listens on).
pub fn layer_with(
    source: &Arc<Scripted>,
    edit: impl FnOnce(OzzobitAuthBuilder) -> OzzobitAuthBuilder,
) -> OzzobitAuthLayer {
    edit(
        OzzobitAuthLayer::builder()
            .token_source(Arc::clone(source))
            .base_url("http://127.0.0.1:9/api/v2"),
    )
    .build()
    .unwrap()
}

/// Lets spawned tasks (the background fetch) run to their next await.
pub async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A body streamed in `chunks` frames of `size` bytes with no size hint: what an upload from a
/// socket or a file looks like.
pub struct Chunked {
    left: usize,
    chunk: bytes::Bytes,
}

impl Chunked {
    pub fn new(chunks: usize, size: usize, byte: u8) -> Self {
        Self {
            left: chunks,
            chunk: bytes::Bytes::from(vec![byte; size]),
        }
    }
}

impl http_body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.chunk.clone()))))
    }
}

/// A layer for the mock server's credentials and base URL.
pub fn mock_layer(
    mock: &ozzobit_auth::testing::MockServer,
    edit: impl FnOnce(OzzobitAuthBuilder) -> OzzobitAuthBuilder,
) -> OzzobitAuthLayer {
    edit(
        OzzobitAuthLayer::builder()
            .credentials(mock.credentials())
            .base_url(mock.base_url()),
    )
    .build()
    .unwrap()
}

/// A plain loopback HTTP server that records the `Authorization` header of every request and
/// answers each with the next status of `statuses` (then 200).
pub struct Recorder {
    pub addr: std::net::SocketAddr,
    pub seen: Arc<Mutex<Vec<Option<String>>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(statuses: Vec<u16>) -> Self {
        use axum::http::HeaderMap;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let statuses = Arc::new(Mutex::new(std::collections::VecDeque::from(statuses)));
        let app = axum::Router::new().fallback({
            let seen = Arc::clone(&seen);
            move |headers: HeaderMap| {
                let auth = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                seen.lock().unwrap().push(auth);
                let status = statuses.lock().unwrap().pop_front().unwrap_or(200);
                async move { axum::http::StatusCode::from_u16(status).unwrap() }
            }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            seen,
            _task: task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }
}

/// A loopback TCP server that runs `handle` on every connection: for faults no HTTP server
/// would produce (closing at once, hanging, trickling, an endless chunked body).
pub async fn raw_server<F, Fut>(handle: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
    addr
}

/// Reads one request head (up to the blank line) so the client sees its request accepted.
pub async fn read_head(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        buf.push(byte[0]);
    }
}

/// A body that sends one chunk, then never ends: an upload still streaming.
pub struct Stalled {
    sent: bool,
}

impl Stalled {
    pub fn new() -> Self {
        Self { sent: false }
    }
}

impl http_body::Body for Stalled {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if std::mem::replace(&mut self.sent, true) {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            b"{\"partial\":",
        )))))
    }
}
