//! Load: 10,000 concurrent requests at cold start, across an expiry, in a 401 storm and while the
//! token endpoint fails; memory across 100,000 requests. Every test is bounded by a timeout, so a
//! deadlock fails instead of hanging.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use common::{Scripted, layer_with};
use http::{Request, Response, StatusCode, header};
use http_body_util::Empty;
use ozzobit_auth::{BoxError, Error, OzzobitAuth, ReplayBody};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

const N: usize = 10_000;
const BOUND: Duration = Duration::from_secs(60);

type Svc = OzzobitAuth<
    BoxCloneSyncService<Request<ReplayBody<Empty<Bytes>>>, Response<Empty<Bytes>>, BoxError>,
>;

/// An in-memory API accepting `Bearer tok-N` for N at or above a floor: raising the floor revokes
/// every token issued so far.
#[derive(Clone, Default)]
struct Api {
    floor: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
}

impl Api {
    fn service(&self, layer: &ozzobit_auth::OzzobitAuthLayer) -> Svc {
        let api = self.clone();
        let inner = tower::service_fn(move |req: Request<ReplayBody<Empty<Bytes>>>| {
            api.hits.fetch_add(1, SeqCst);
            let n: u64 = req.headers()[header::AUTHORIZATION].to_str().unwrap()
                ["Bearer tok-".len()..]
                .parse()
                .unwrap();
            let status = if n >= api.floor.load(SeqCst) {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            async move {
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(status)
                        .body(Empty::new())
                        .unwrap(),
                )
            }
        });
        layer.layer(BoxCloneSyncService::new(inner))
    }

    fn revoke_all(&self, issued: u64) {
        self.floor.store(issued + 1, SeqCst);
    }
}

/// Fires `N` requests at once; the statuses, or the token errors' Display.
async fn storm(svc: &Svc) -> Vec<Result<StatusCode, String>> {
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let svc = svc.clone();
            // Spawned directly, not inside an `async move` block: see the crate docs' note on
            // "implementation of `From` is not general enough" with a `BoxError` inner service.
            tokio::spawn(svc.oneshot(Request::get("/orders").body(Empty::new()).unwrap()))
        })
        .collect();
    let mut out = Vec::with_capacity(N);
    for t in tasks {
        out.push(match t.await.unwrap() {
            Ok(res) => Ok(res.status()),
            Err(e) => Err(e
                .downcast::<Error>()
                .map(|e| e.to_string())
                .unwrap_or_else(|e| e.to_string())),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_10k_one_fetch() {
    tokio::time::timeout(BOUND, async {
        let source = Scripted::new(Duration::from_secs(3600));
        source.set_latency(Duration::from_millis(50));
        let layer = layer_with(&source, |b| b);
        let api = Api::default();
        let results = storm(&api.service(&layer)).await;
        assert!(results.iter().all(|r| *r == Ok(StatusCode::OK)));
        assert_eq!(source.fetches(), 1);
        assert_eq!(layer.token_cache().stats().requests_authorized, N as u64);
    })
    .await
    .expect("no deadlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_401s_10k_one_extra_fetch() {
    tokio::time::timeout(BOUND, async {
        let source = Scripted::new(Duration::from_secs(3600));
        source.set_latency(Duration::from_millis(50));
        let layer = layer_with(&source, |b| b);
        let api = Api::default();
        let svc = api.service(&layer);
        layer.token_cache().token().await.unwrap();
        api.revoke_all(1);
        let results = storm(&svc).await;
        assert!(results.iter().all(|r| *r == Ok(StatusCode::OK)));
        assert_eq!(source.fetches(), 2, "one at start, one for the whole storm");
        let stats = layer.token_cache().stats();
        assert_eq!(stats.forced_refreshes, 1);
        // Requests that started before the new token arrived were retried; the rest were not.
        assert_eq!(api.hits.load(SeqCst), N as u64 + stats.retries);
    })
    .await
    .expect("no deadlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_10k_one_attempt_all_get_the_error() {
    tokio::time::timeout(BOUND, async {
        let source = Scripted::new(Duration::from_secs(3600));
        // The fetch takes 200 ms and its failure is then kept for at least 250 ms: all 10,000
        // callers share the one attempt.
        source.set_latency(Duration::from_millis(200));
        source.fail_with(Some(Error::transient("connection refused")));
        let layer = layer_with(&source, |b| b);
        let api = Api::default();
        let results = storm(&api.service(&layer)).await;
        assert!(
            results
                .iter()
                .all(|r| *r == Err("token request failed".to_owned()))
        );
        assert_eq!(source.fetches(), 1);
        assert_eq!(api.hits.load(SeqCst), 0);
    })
    .await
    .expect("no deadlock");
}

/// Paused time needs the current-thread runtime; the expiry itself is what this one is about.
#[tokio::test(start_paused = true)]
async fn across_an_expiry_10k_no_caller_waits_one_fetch() {
    // Simulated time: the bound must outlast the 301 s advanced below.
    tokio::time::timeout(Duration::from_secs(3600), async {
        let source = Scripted::new(Duration::from_secs(600));
        source.set_latency(Duration::from_millis(50));
        let layer = layer_with(&source, |b| b);
        let api = Api::default();
        let svc = api.service(&layer);
        layer.token_cache().token().await.unwrap();
        tokio::time::advance(Duration::from_secs(301)).await; // inside the 300 s refresh window
        let started = tokio::time::Instant::now();
        let results = storm(&svc).await;
        assert!(results.iter().all(|r| *r == Ok(StatusCode::OK)));
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "no request waited for the refresh"
        );
        assert_eq!(layer.token_cache().stats().fetches, 2);
        tokio::time::sleep(Duration::from_millis(60)).await; // the 50 ms background fetch ends
        assert_eq!(layer.token_cache().token().await.unwrap().generation(), 2);
        assert_eq!(source.fetches(), 2);
    })
    .await
    .expect("no deadlock");
}

/// Resident memory in KiB, from /proc (Linux); `None` elsewhere.
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_flat_across_100k_requests_with_401s() {
    tokio::time::timeout(BOUND * 2, async {
        let source = Scripted::new(Duration::from_secs(3600));
        let layer = layer_with(&source, |b| b);
        let api = Api::default();
        let svc = api.service(&layer);
        let run = |n: usize| {
            let (svc, api, source) = (svc.clone(), api.clone(), source.clone());
            async move {
                for i in 0..n {
                    if i % 1000 == 999 {
                        api.revoke_all(source.fetches()); // a 401 and a retry every 1,000
                    }
                    let res = svc
                        .clone()
                        .oneshot(Request::get("/orders").body(Empty::new()).unwrap())
                        .await
                        .unwrap();
                    assert_eq!(res.status(), StatusCode::OK);
                }
            }
        };
        run(20_000).await;
        let Some(before) = rss_kib() else {
            eprintln!("no /proc/self/statm: memory growth not measured on this platform");
            return;
        };
        run(100_000).await;
        let after = rss_kib().unwrap();
        // A leak of even 40 bytes per request would be 4 MiB here.
        assert!(
            after.saturating_sub(before) < 4096,
            "RSS grew from {before} KiB to {after} KiB"
        );
        assert_eq!(layer.token_cache().stats().retries, 120);
    })
    .await
    .expect("no deadlock");
}
