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
