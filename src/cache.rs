//! [`TokenCache`]: the one shared refresher behind every clone of the layer.
//!
//! Reads are lock-free: the current token sits in an [`ArcSwapOption`] and a request that finds it
//! fresh clones one `Arc` and is done. Everything else (starting a fetch, waiting for one,
//! recording failures, backing off) is decided under a short `std::sync::Mutex` that is never held
//! across an `.await`. The fetch itself runs in a spawned task, so a waiter that is cancelled
//! neither aborts nor restarts it; when it ends, every waiter is woken through one [`Notify`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{AccessToken, Error, TokenSource};

/// Callers stop using a token this long before it expires (or a quarter of the refresh buffer, for
/// short-lived tokens) and wait for the new one instead: margin for clock skew and the request's
/// own flight time.
const HARD_MARGIN: Duration = Duration::from_secs(15);
/// First backoff after a transient failure; doubles per consecutive failure up to
/// [`MAX_BACKOFF`]. Each delay is jittered to between half and all of its value.
const BASE_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A `Retry-After` is honoured up to this long; a larger one is treated as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// How long a rejection of the credentials (4xx) is answered from the cache before the endpoint
/// is asked again: short enough that a rotated secret is picked up within seconds, long enough
/// that a burst of callers cannot hammer the endpoint with a bad key.
const REJECTED_WINDOW: Duration = Duration::from_secs(5);

/// A cached Partner Access Token, shared by every request that uses it.
///
/// `Debug` shows the generation and deadlines, never the token.
pub struct Token {
    authorization: HeaderValue,
    generation: u64,
    refresh_at: Instant,
    usable_until: Instant,
    expires_at: Instant,
}

impl Token {
    fn new(
        authorization: HeaderValue,
        generation: u64,
        now: Instant,
        lifetime: Duration,
        refresh_buffer: Duration,
    ) -> Self {
        // Capping the buffer at half the lifetime keeps a 60 s token from refreshing in a loop.
        let buffer = refresh_buffer.min(lifetime / 2);
        let margin = HARD_MARGIN.min(buffer / 2);
        Self {
            authorization,
            generation,
            refresh_at: now + (lifetime - buffer),
            usable_until: now + (lifetime - margin),
            expires_at: now + lifetime,
        }
    }

    /// `Bearer <token>`, marked sensitive so that HTTP/2 never indexes it and `Debug` hides it.
    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// Which token this is: 1 for the first one a cache fetched, one more for each after.
    ///
    /// [`TokenCache::force_refresh`] takes it, so that many 401s for one token cause one fetch.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the token stops being valid, by the endpoint's word.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// From when on the first request starts a background refresh.
    pub fn refresh_at(&self) -> Instant {
        self.refresh_at
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("refresh_at", &self.refresh_at)
            .field("expires_at", &self.expires_at)
            .field("authorization", &"Bearer [REDACTED]")
            .finish()
    }
}

/// A snapshot of a [`TokenCache`]'s counters, for monitoring token usage.
///
/// Every counter only grows. An alert on `fetches` or `forced_refreshes` climbing faster than the
/// token lifetime explains catches a revoked secret, a clock problem or a misbehaving endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Token fetches started.
    pub fetches: u64,
    /// Token fetches that failed (error, timeout, unusable answer).
    pub fetch_failures: u64,
    /// Tokens invalidated because a request carrying them was answered "unauthorized".
    pub forced_refreshes: u64,
    /// Requests sent a second time after a 401.
    pub retries: u64,
    /// Requests the layer attached a token to (a retry counts again).
    pub requests_authorized: u64,
}

#[derive(Debug, Default)]
struct Counters {
    fetches: AtomicU64,
    fetch_failures: AtomicU64,
    forced_refreshes: AtomicU64,
    retries: AtomicU64,
    requests_authorized: AtomicU64,
}

/// The shared refresher: caches the token, fetches a new one ahead of expiry through a single
/// in-flight fetch, and replaces a rejected one once however many requests saw it rejected.
///
/// Every clone of an [`OzzobitAuthLayer`](crate::OzzobitAuthLayer), and every service it makes,
/// shares one `TokenCache`; get it with
/// [`OzzobitAuthLayer::token_cache`](crate::OzzobitAuthLayer::token_cache) to use tokens outside
/// a tower stack or to read [`stats`](Self::stats).
///
/// # Timing
///
/// With lifetime `L` and `b = min(refresh_buffer, L / 2)`:
///
/// - before `L - b` the token is served from memory;
/// - from `L - b` the first caller starts one background fetch and every caller keeps the current
///   token;
/// - from `L - min(15 s, b / 2)` callers wait for the fetch rather than send a token about to
///   lapse; if that fetch fails, the old token is still served until `L` ("stale-serve").
///
/// # Failures
///
/// A failed fetch never replaces a valid token. Transient failures (transport, timeout, 5xx, 408,
/// 429) back off exponentially from 0.5 s to 30 s with jitter, or for the `Retry-After` the
/// endpoint sent (up to 5 minutes); a rejection (4xx) or unreadable credentials are answered from
/// the cache for 5 s, then tried again, so a rotated secret recovers without a restart. While no
/// usable token exists, callers during a backoff get the last error at once.
///
/// # Panics
///
/// Never. Without a Tokio runtime to spawn the fetch on, `token` returns a configuration error.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn TokenSource>,
    refresh_buffer: Duration,
    fetch_timeout: Duration,
    current: ArcSwapOption<Token>,
    state: Mutex<State>,
    fetched: Notify,
    counters: Counters,
}

#[derive(Default)]
struct State {
    /// Generation of the last token stored.
    generation: u64,
    fetching: bool,
    /// Fetches finished so far, so a waiter knows the one it waited for has ended.
    completed: u64,
    /// Consecutive failed fetches.
    failures: u32,
    last_error: Option<Error>,
    /// No new fetch before this.
    retry_at: Option<Instant>,
    /// Whether the stale-serve after the last failure has been logged.
    stale_logged: bool,
}

impl State {
    fn backing_off(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| now < at)
    }
}

enum Decision {
    Ready(Result<Arc<Token>, Error>),
    Wait,
}

impl TokenCache {
    pub(crate) fn new(
        source: Arc<dyn TokenSource>,
        refresh_buffer: Duration,
        fetch_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                refresh_buffer,
                fetch_timeout,
                current: ArcSwapOption::empty(),
                state: Mutex::default(),
                fetched: Notify::new(),
                counters: Counters::default(),
            }),
        }
    }

    /// A usable token: the cached one, or the result of the one shared fetch.
    ///
    /// # Errors
    ///
    /// The error of the fetch this call waited for, or, during a backoff with no usable token,
    /// the last fetch's error.
    pub async fn token(&self) -> Result<Arc<Token>, Error> {
        match self.try_token() {
            Some(token) => Ok(token),
            None => self.wait_for_token().await,
        }
    }

    /// Replaces the token of generation `rejected_generation`, which the API refused.
    ///
    /// Only the first call for a generation fetches: if the cached token is already newer, it is
    /// returned at once, so a thousand concurrent 401s for one token cause one fetch.
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token).
    pub async fn force_refresh(&self, rejected_generation: u64) -> Result<Arc<Token>, Error> {
        self.invalidate(rejected_generation);
        self.wait_for_token().await
    }

    /// Drops the token of generation `rejected_generation` if it is still the current one, and
    /// starts fetching its replacement (unless backing off) without waiting for it.
    pub(crate) fn invalidate(&self, rejected_generation: u64) {
        let mut state = self.inner.lock();
        let current = self.inner.current.load();
        if current
            .as_ref()
            .is_some_and(|t| t.generation == rejected_generation)
        {
            self.inner.current.store(None);
            self.inner.counters.forced_refreshes.fetch_add(1, Relaxed);
            tracing::info!(
                generation = rejected_generation,
                "token rejected by the API; refreshing"
            );
            let _ = self.inner.decide(&mut state, Instant::now(), false);
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            fetches: c.fetches.load(Relaxed),
            fetch_failures: c.fetch_failures.load(Relaxed),
            forced_refreshes: c.forced_refreshes.load(Relaxed),
            retries: c.retries.load(Relaxed),
            requests_authorized: c.requests_authorized.load(Relaxed),
        }
    }

    /// The token if one can be had without waiting: lock-free while it is fresh; inside the
    /// refresh window this also starts the background refresh. `None` means "await
    /// [`wait_for_token`](Self::wait_for_token)".
    pub(crate) fn try_token(&self) -> Option<Arc<Token>> {
        self.try_with(Arc::clone)
    }

    /// [`try_token`](Self::try_token) for the layer: the header and its generation, read
    /// through arc-swap's guard, so the fresh path costs one reference count (the header's).
    pub(crate) fn try_authorization(&self) -> Option<(HeaderValue, u64)> {
        self.try_with(|t| (t.authorization.clone(), t.generation))
    }

    fn try_with<T>(&self, take: impl Fn(&Arc<Token>) -> T) -> Option<T> {
        let now = Instant::now();
        if let Some(token) = &*self.inner.current.load()
            && now < token.refresh_at
        {
            return Some(take(token));
        }
        let mut state = self.inner.lock();
        match self.inner.decide(&mut state, now, false) {
            Decision::Ready(Ok(token)) => Some(take(&token)),
            Decision::Ready(Err(_)) | Decision::Wait => None,
        }
    }

    /// The slow path: decide under the lock, and wait for the shared fetch when there is one.
    pub(crate) async fn wait_for_token(&self) -> Result<Arc<Token>, Error> {
        let mut waited_for = None;
        loop {
            let notified = self.inner.fetched.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so a fetch ending in between still wakes us.
            notified.as_mut().enable();
            {
                let mut state = self.inner.lock();
                let after_fetch = waited_for.is_some_and(|seen| state.completed > seen);
                match self.inner.decide(&mut state, Instant::now(), after_fetch) {
                    Decision::Ready(result) => return result,
                    Decision::Wait => waited_for = Some(state.completed),
                }
            }
            notified.await;
        }
    }

    pub(crate) fn record_authorized(&self) {
        self.inner
            .counters
            .requests_authorized
            .fetch_add(1, Relaxed);
    }

    pub(crate) fn record_retry(&self) {
        self.inner.counters.retries.fetch_add(1, Relaxed);
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("current", &self.inner.current.load())
            .field("refresh_buffer", &self.inner.refresh_buffer)
            .field("fetch_timeout", &self.inner.fetch_timeout)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section can leave `State` half-updated, so a poisoned lock is still sound.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What a caller gets now. `after_fetch`: the caller already waited for a fetch that has
    /// ended, so it takes that fetch's outcome rather than start another.
    fn decide(self: &Arc<Self>, state: &mut State, now: Instant, after_fetch: bool) -> Decision {
        let current = self.current.load_full();
        if let Some(token) = &current {
            if now < token.refresh_at {
                return Decision::Ready(Ok(Arc::clone(token)));
            }
            if now < token.usable_until {
                if !state.fetching && !state.backing_off(now) {
                    // Without a runtime the current token still serves; the next call retries.
                    let _ = self.start_fetch(state, "refresh-ahead");
                }
                return Decision::Ready(Ok(Arc::clone(token)));
            }
        }
        if state.fetching {
            return Decision::Wait;
        }
        if (after_fetch || state.backing_off(now))
            && let Some(error) = &state.last_error
        {
            if let Some(token) = current.filter(|t| now < t.expires_at) {
                if !std::mem::replace(&mut state.stale_logged, true) {
                    tracing::warn!(
                        generation = token.generation,
                        expires_in = ?token.expires_at - now,
                        "token refresh failing; serving the still-valid token",
                    );
                }
                return Decision::Ready(Ok(token));
            }
            return Decision::Ready(Err(error.clone()));
        }
        let reason = if current.is_some() {
            "expiring"
        } else {
            "no token"
        };
        match self.start_fetch(state, reason) {
            Ok(()) => Decision::Wait,
            Err(e) => Decision::Ready(Err(e)),
        }
    }

    fn start_fetch(self: &Arc<Self>, state: &mut State, reason: &'static str) -> Result<(), Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::config("a token fetch needs a Tokio runtime").with_source(e))?;
        state.fetching = true;
        self.counters.fetches.fetch_add(1, Relaxed);
        tracing::debug!(reason, "token fetch started");
        let guard = FetchGuard {
            inner: Arc::clone(self),
            result: None,
        };
        runtime.spawn(guard.run());
        Ok(())
    }

    fn complete(&self, result: Result<AccessToken, Error>) {
        let now = Instant::now();
        let result = result.and_then(|token| {
            token.check_lifetime()?;
            Ok((token.bearer_header()?, token.lifetime()))
        });
        let mut state = self.lock();
        state.fetching = false;
        state.completed += 1;
        state.stale_logged = false;
        match result {
            Ok((header, lifetime)) => {
                state.generation += 1;
                let token =
                    Token::new(header, state.generation, now, lifetime, self.refresh_buffer);
                tracing::info!(generation = state.generation, expires_in = ?lifetime, "token fetched");
                self.current.store(Some(Arc::new(token)));
                state.failures = 0;
                state.last_error = None;
                state.retry_at = None;
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let delay = backoff(&error, state.failures);
                self.counters.fetch_failures.fetch_add(1, Relaxed);
                tracing::warn!(error = %error.chain(), retry_in = ?delay, failures = state.failures, "token fetch failed");
                state.retry_at = Some(now + delay);
                state.last_error = Some(error);
            }
        }
        drop(state);
        self.fetched.notify_waiters();
    }
}

/// Owns the outcome of one fetch, and records it even if the fetch panics or its task is dropped
/// (runtime shutdown), so waiters are never left waiting on a fetch that will not end.
struct FetchGuard {
    inner: Arc<Inner>,
    result: Option<Result<AccessToken, Error>>,
}

impl FetchGuard {
    async fn run(mut self) {
        let timeout = self.inner.fetch_timeout;
        let fetched = tokio::time::timeout(timeout, self.inner.source.fetch()).await;
        self.result = Some(fetched.unwrap_or_else(|_| Err(Error::timeout(timeout))));
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(|| {
            Err(Error::transient(
                "the token fetch ended without a result (panic or runtime shutdown)",
            ))
        });
        self.inner.complete(result);
    }
}

/// How long to wait after the `failures`-th consecutive failure.
fn backoff(error: &Error, failures: u32) -> Duration {
    if !error.is_transient() && !error.is_invalid_response() {
        return REJECTED_WINDOW;
    }
    let exp = BASE_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    // "Equal jitter": callers of many processes that failed together spread out, but none retries
    // sooner than half the nominal delay.
    let half = exp / 2;
    let jittered = half + half.mul_f64(fastrand::f64());
    match error.retry_after() {
        Some(after) => jittered.max(after.min(MAX_RETRY_AFTER)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_deadlines_scale_with_lifetime() {
        let now = Instant::now();
        let h = HeaderValue::from_static("Bearer x");
        let hour = Token::new(
            h.clone(),
            1,
            now,
            Duration::from_secs(3600),
            Duration::from_secs(300),
        );
        assert_eq!(hour.refresh_at - now, Duration::from_secs(3300));
        assert_eq!(hour.usable_until - now, Duration::from_secs(3585));
        let short = Token::new(h, 1, now, Duration::from_secs(6), Duration::from_secs(300));
        assert_eq!(short.refresh_at - now, Duration::from_secs(3));
        assert_eq!(short.usable_until - now, Duration::from_millis(4500));
        assert_eq!(short.expires_at - now, Duration::from_secs(6));
    }

    #[test]
    fn backoff_grows_jitters_and_honours_retry_after() {
        let transient = Error::transient("down");
        for failures in 1..=20 {
            let nominal = BASE_BACKOFF
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_BACKOFF);
            let d = backoff(&transient, failures);
            assert!(d >= nominal / 2 && d <= nominal, "{failures}: {d:?}");
        }
        let limited = Error::transient_status(
            http::StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(42)),
        );
        assert_eq!(backoff(&limited, 1), Duration::from_secs(42));
        let huge = Error::transient_status(
            http::StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(86_400)),
        );
        assert_eq!(backoff(&huge, 1), MAX_RETRY_AFTER);
        assert_eq!(
            backoff(&Error::rejected("Invalid API key"), 7),
            REJECTED_WINDOW
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let t = Token::new(
            HeaderValue::from_static("Bearer tok_canary"),
            3,
            Instant::now(),
            Duration::from_secs(60),
            Duration::from_secs(300),
        );
        let dbg = format!("{t:?}");
        assert!(
            dbg.contains("generation: 3") && !dbg.contains("tok_canary"),
            "{dbg}"
        );
    }
}
