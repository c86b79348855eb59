//! Refresh storms: 10,000 concurrent requests, with a token source that takes 50 ms, (a) on a
//! cold cache and (b) across an expiry, i.e. started inside the refresh window of a short-lived
//! token. Three token caches feed the same inner `service_fn`:
//!
//! - `ozzobit_auth`: this crate's layer (single flight, refresh ahead, serves the still-valid
//!   token while the refresh runs);
//! - `vendor_token_manager`: a port of the vendor guide's `TokenManager` (check, then fetch:
//!   every caller that finds the token missing or inside the refresh buffer fetches one itself);
//! - `mutex_held_across_fetch`: a cache behind a `tokio::sync::Mutex` held across the fetch (Go
//!   `x/oauth2`'s `ReuseTokenSource` shape): one fetch, every other caller queues on the lock.
//!
//! All three use the same [`Slow`] source and the same refresh point: a token of lifetime `L` is
//! refreshed from `L - min(refresh_buffer, L / 2)` on, with `refresh_buffer` = 300 s, the
//! vendor's 5 minutes. The timed figure is the storm's makespan (first spawn to last answer).
//! Outside the timed loop each peer runs a few storms per scenario, and the token fetches per
//! storm and the p50/p99/max request latency (from a task's start to its answer) are printed to
//! stderr, with a storm on a warm, fresh token as the steady-state reference.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response, header};
use http_body_util::Empty;
use ozzobit_auth::{AccessToken, BoxFuture, Error, OzzobitAuthLayer, TokenSource};
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwIn0.c2ln";
const URL: &str = "https://ozzobit.com/api/api/v2/orders";
const STORM: usize = 10_000;
const SOURCE_LATENCY: Duration = Duration::from_millis(50);
const REFRESH_BUFFER: Duration = Duration::from_secs(300);
/// Lifetime of the tokens in the cold-cache storm: long enough never to matter.
const LONG_LIFETIME: Duration = Duration::from_secs(3600);
/// Lifetime of the tokens in the expiry storm. With the 300 s buffer capped at `L / 2`, ours
/// refreshes from 0.5 s and serves the old token until its hard margin at 0.75 s, well after the
/// 50 ms fetch has ended.
const SHORT_LIFETIME: Duration = Duration::from_secs(1);
/// How far into the refresh window the expiry storm starts.
const INTO_WINDOW: Duration = Duration::from_millis(5);
/// Storms per peer and scenario for the printed percentiles.
const REPORT_STORMS: usize = 3;

/// A token source that takes [`SOURCE_LATENCY`] and counts its fetches.
#[derive(Clone)]
struct Slow {
    lifetime: Duration,
    fetches: Arc<AtomicU64>,
}

impl Slow {
    fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            fetches: Arc::default(),
        }
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Relaxed)
    }
}

impl TokenSource for Slow {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        self.fetches.fetch_add(1, Relaxed);
        Box::pin(async {
            tokio::time::sleep(SOURCE_LATENCY).await;
            Ok(AccessToken::new(TOKEN, self.lifetime))
        })
    }
}

/// A token as the two peers cache it, with the same refresh point as ours.
#[derive(Clone)]
struct Cached {
    header: HeaderValue,
    refresh_at: Instant,
}

impl Cached {
    fn new(token: &AccessToken) -> Self {
        let mut header =
            HeaderValue::try_from(format!("Bearer {}", token.secret().expose_secret())).unwrap();
        header.set_sensitive(true);
        let lifetime = token.lifetime();
        Self {
            header,
            refresh_at: Instant::now() + lifetime - REFRESH_BUFFER.min(lifetime / 2),
        }
    }

    fn fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

/// The vendor guide's `TokenManager`, ported: return the cached token if it is outside the
/// refresh buffer, else fetch, store and return a new one. No single flight: every caller that
/// gets past the check fetches. (The lock only makes the field access sound across threads, as
/// JavaScript's single thread does; it is never held across the fetch.)
struct VendorTokenManager {
    source: Slow,
    cached: std::sync::Mutex<Option<Cached>>,
}

impl VendorTokenManager {
    fn new(source: Slow) -> Self {
        Self {
            source,
            cached: std::sync::Mutex::new(None),
        }
    }

    async fn authorization(&self) -> HeaderValue {
        if let Some(cached) = self.cached.lock().unwrap().as_ref().filter(|c| c.fresh()) {
            return cached.header.clone();
        }
        let cached = Cached::new(&self.source.fetch().await.unwrap());
        *self.cached.lock().unwrap() = Some(cached.clone());
        cached.header
    }

    async fn refresh_at(&self) -> Instant {
        self.authorization().await;
        self.cached.lock().unwrap().as_ref().unwrap().refresh_at
    }
}

/// A cache that holds a `tokio::sync::Mutex` across the fetch: one fetch, and every other caller
/// waits for the lock, then finds the new token.
struct MutexHeldAcrossFetch {
    source: Slow,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl MutexHeldAcrossFetch {
    fn new(source: Slow) -> Self {
        Self {
            source,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    async fn authorization(&self) -> HeaderValue {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.fresh()) {
            return c.header.clone();
        }
        let fetched = Cached::new(&self.source.fetch().await.unwrap());
        let header = fetched.header.clone();
        *cached = Some(fetched);
        header
    }

    async fn refresh_at(&self) -> Instant {
        self.authorization().await;
        self.cached.lock().await.as_ref().unwrap().refresh_at
    }
}

async fn inner<B>(req: Request<B>) -> Result<Response<Empty<Bytes>>, Infallible> {
    assert!(req.headers().contains_key(header::AUTHORIZATION));
    Ok(Response::new(Empty::new()))
}

fn request() -> Request<Empty<Bytes>> {
    Request::get(URL).body(Empty::new()).unwrap()
}

type Call = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ours,
    Vendor,
    Mutex,
}

const KINDS: [Kind; 3] = [Kind::Ours, Kind::Vendor, Kind::Mutex];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ozzobit_auth",
            Kind::Vendor => "vendor_token_manager",
            Kind::Mutex => "mutex_held_across_fetch",
        }
    }
}

/// A fresh cache of one kind in front of the shared inner service, and its source.
struct Peer {
    source: Slow,
    cache: Cache,
}

enum Cache {
    Ours(OzzobitAuthLayer),
    Vendor(Arc<VendorTokenManager>),
    Mutex(Arc<MutexHeldAcrossFetch>),
}

impl Peer {
    fn new(kind: Kind, lifetime: Duration) -> Self {
        let source = Slow::new(lifetime);
        let cache = match kind {
            Kind::Ours => Cache::Ours(
                OzzobitAuthLayer::builder()
                    .token_source(source.clone())
                    .refresh_buffer(REFRESH_BUFFER)
                    .build()
                    .unwrap(),
            ),
            Kind::Vendor => Cache::Vendor(Arc::new(VendorTokenManager::new(source.clone()))),
            Kind::Mutex => Cache::Mutex(Arc::new(MutexHeldAcrossFetch::new(source.clone()))),
        };
        Self { source, cache }
    }

    /// Fetches the first token; returns when its refresh window opens.
    async fn warm(&self) -> Instant {
        match &self.cache {
            Cache::Ours(layer) => layer.token_cache().token().await.unwrap().refresh_at(),
            Cache::Vendor(m) => m.refresh_at().await,
            Cache::Mutex(m) => m.refresh_at().await,
        }
    }

    /// One request through this peer's cache into the shared inner service.
    fn call(&self) -> Call {
        match &self.cache {
            Cache::Ours(layer) => {
                let svc = layer.layer(service_fn(inner));
                Box::pin(async move {
                    black_box(svc.oneshot(request()).await.unwrap());
                })
            }
            Cache::Vendor(m) => {
                let m = Arc::clone(m);
                Box::pin(async move {
                    let mut req = request();
                    req.headers_mut()
                        .insert(header::AUTHORIZATION, m.authorization().await);
                    black_box(service_fn(inner).oneshot(req).await.unwrap());
                })
            }
            Cache::Mutex(m) => {
                let m = Arc::clone(m);
                Box::pin(async move {
                    let mut req = request();
                    req.headers_mut()
                        .insert(header::AUTHORIZATION, m.authorization().await);
                    black_box(service_fn(inner).oneshot(req).await.unwrap());
                })
            }
        }
    }
}

struct Storm {
    makespan: Duration,
    latencies: Vec<Duration>,
    fetches: u64,
}

/// [`STORM`] concurrent requests, each in its own task.
async fn storm(peer: &Peer) -> Storm {
    let fetches = peer.source.fetches();
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..STORM)
        .map(|_| {
            let call = peer.call();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                call.await;
                t.elapsed()
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(STORM);
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    Storm {
        makespan: start.elapsed(),
        latencies,
        fetches: peer.source.fetches() - fetches,
    }
}

#[derive(Clone, Copy, Debug)]
enum Scenario {
    Cold,
    Expiry,
    Steady,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Cold => "cold_cache",
            Scenario::Expiry => "across_expiry",
            Scenario::Steady => "steady_state",
        }
    }

    /// A fresh peer brought to where this scenario's storm starts, then the storm.
    async fn run(self, kind: Kind) -> Storm {
        let peer = match self {
            Scenario::Cold => Peer::new(kind, LONG_LIFETIME),
            Scenario::Steady => {
                let peer = Peer::new(kind, LONG_LIFETIME);
                peer.warm().await;
                peer
            }
            Scenario::Expiry => {
                let peer = Peer::new(kind, SHORT_LIFETIME);
                let window = peer.warm().await;
                tokio::time::sleep_until(window + INTO_WINDOW).await;
                peer
            }
        };
        storm(&peer).await
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Runs [`REPORT_STORMS`] storms and prints fetches per storm and latency percentiles.
fn report(rt: &tokio::runtime::Runtime, scenario: Scenario, kind: Kind) {
    let mut latencies = Vec::new();
    let mut fetches = Vec::new();
    let mut makespans = Vec::new();
    for _ in 0..REPORT_STORMS {
        let s = rt.block_on(scenario.run(kind));
        latencies.extend(s.latencies);
        fetches.push(s.fetches);
        makespans.push(s.makespan);
    }
    latencies.sort_unstable();
    makespans.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "refresh_storm/{:<13} {:<24} fetches/storm {:?}  p50 {}  p99 {}  max {}  median makespan {}",
        scenario.name(),
        kind.name(),
        fetches,
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(pct(1.0)),
        ms(makespans[makespans.len() / 2]),
    );
}

fn refresh_storm(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    eprintln!(
        "refresh_storm: {STORM} concurrent requests, source latency {}, {REPORT_STORMS} storms each",
        ms(SOURCE_LATENCY)
    );
    for scenario in [Scenario::Steady, Scenario::Cold, Scenario::Expiry] {
        for kind in KINDS {
            report(&rt, scenario, kind);
        }
    }

    // Each iteration is one whole storm on a fresh cache; only the storm is timed. Storms are
    // long, so a few flat samples are enough, and warm-up is a single storm.
    for (scenario, measurement) in [
        (Scenario::Cold, Duration::from_secs(1)),
        (Scenario::Expiry, Duration::from_millis(300)),
    ] {
        let mut g = c.benchmark_group(format!("refresh_storm/{}", scenario.name()));
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(measurement);
        for kind in KINDS {
            g.bench_function(BenchmarkId::from_parameter(kind.name()), |b| {
                b.to_async(&rt).iter_custom(|iters| async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += black_box(scenario.run(kind).await).makespan;
                    }
                    total
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, refresh_storm);
criterion_main!(benches);
