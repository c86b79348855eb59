//! The shared refresher: single flight, refresh-ahead, generations, failures and recovery.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Scripted, layer_with, settle};
use ozzobit_auth::testing::MockServer;
use ozzobit_auth::{Credentials, CredentialsFn, Error, OzzobitAuthLayer};
use tokio::time::{Instant, advance, timeout};

const HOUR: Duration = Duration::from_secs(3600);

/// Whether `fut` is ready without waiting: a zero timeout polls it exactly once.
async fn ready_now<F: Future>(fut: F) -> Option<F::Output> {
    timeout(Duration::ZERO, fut).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_cache_500_concurrent_callers_one_fetch() {
    let mock = MockServer::start().await;
    mock.set_token_latency(Duration::from_millis(50));
    let layer = OzzobitAuthLayer::builder()
        .credentials(mock.credentials())
        .base_url(mock.base_url())
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let cache = layer.token_cache().clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    let mut headers = Vec::new();
    for t in tasks {
        let token = t.await.unwrap().unwrap();
        assert_eq!(token.generation(), 1);
        headers.push(token.authorization().clone());
    }
    assert_eq!(mock.token_requests(), 1);
    let issued = mock.issued_tokens();
    assert_eq!(issued.len(), 1);
    let want = format!("Bearer {}", issued[0]);
    assert!(
        headers
            .iter()
            .all(|h| h == want.as_str() && h.is_sensitive())
    );
    assert_eq!(layer.token_cache().stats().fetches, 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_serves_old_token_then_waits_past_hard_margin() {
    let source = Scripted::new(Duration::from_secs(600));
    source.set_latency(Duration::from_secs(2));
    let layer = layer_with(&source, |b| b);
    let cache = layer.token_cache();

    let first = cache.token().await.unwrap();
    assert_eq!((first.generation(), source.fetches()), (1, 1));
    let received = Instant::now();

    // Before the window: served from memory, nothing fetched.
    advance(Duration::from_secs(299)).await;
    assert_eq!(
        ready_now(cache.token())
            .await
            .unwrap()
            .unwrap()
            .generation(),
        1
    );
    assert_eq!(source.fetches(), 1);

    // Inside the window (600 - 300 s): the old token at once, one background fetch for all.
    advance(Duration::from_secs(2)).await;
    for _ in 0..50 {
        let t = ready_now(cache.token())
            .await
            .expect("no wait in the window")
            .unwrap();
        assert_eq!(t.generation(), 1);
    }
    assert_eq!(cache.stats().fetches, 2);
    settle().await;
    assert_eq!(source.fetches(), 2);
    advance(Duration::from_secs(2)).await;
    settle().await;
    let second = ready_now(cache.token()).await.unwrap().unwrap();
    assert_eq!((second.generation(), source.fetches()), (2, 2));
    assert!(Instant::now() - received < Duration::from_secs(310));

    // Past the hard margin (15 s before expiry) with no refresh done yet: callers wait.
    let second_received = Instant::now();
    source.fail_with(Some(Error::transient("down")));
    advance(Duration::from_secs(300)).await; // window: background refresh fails, backs off
    assert_eq!(
        ready_now(cache.token())
            .await
            .unwrap()
            .unwrap()
            .generation(),
        2
    );
    settle().await;
    advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(source.fetches(), 3);
    source.fail_with(None);
    let past_margin = second_received + Duration::from_secs(600 - 10);
    advance(past_margin - Instant::now()).await;
    let waiting = tokio::spawn({
        let cache = cache.clone();
        async move { cache.token().await }
    });
    settle().await;
    assert!(
        !waiting.is_finished(),
        "past the hard margin a caller waits for the new token"
    );
    assert_eq!(source.fetches(), 4);
    advance(Duration::from_secs(2)).await;
    assert_eq!(waiting.await.unwrap().unwrap().generation(), 3);
}

#[tokio::test(start_paused = true)]
async fn six_second_token_refreshes_every_three_seconds_not_in_a_loop() {
    let source = Scripted::new(Duration::from_secs(6));
    let layer = layer_with(&source, |b| b); // default 300 s buffer, capped at 3 s
    let cache = layer.token_cache();
    let start = Instant::now();
    let mut last_gen = 0;
    let mut changes = Vec::new();
    while Instant::now() - start < Duration::from_secs(30) {
        let token = cache.token().await.unwrap();
        assert!(
            Instant::now() < token.expires_at(),
            "never an expired token"
        );
        if token.generation() != last_gen {
            last_gen = token.generation();
            changes.push(Instant::now() - start);
        }
        advance(Duration::from_millis(100)).await;
        settle().await;
    }
    // One fetch at 0 s, then one every 3 s: 11 in 30 s. A refresh loop would be hundreds.
    assert!(
        (10..=12).contains(&source.fetches()),
        "{} fetches",
        source.fetches()
    );
    for pair in changes.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(2900) && gap <= Duration::from_millis(3200),
            "{gap:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn force_refresh_is_deduplicated_by_generation() {
    let source = Scripted::new(HOUR);
    source.set_latency(Duration::from_millis(100));
    let layer = layer_with(&source, |b| b);
    let cache = layer.token_cache();
    assert_eq!(cache.token().await.unwrap().generation(), 1);

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.force_refresh(1).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().generation(), 2);
    }
    assert_eq!(source.fetches(), 2);

    // A 401 for a token already replaced fetches nothing.
    assert_eq!(cache.force_refresh(1).await.unwrap().generation(), 2);
    assert_eq!(source.fetches(), 2);
    let stats = cache.stats();
    assert_eq!((stats.fetches, stats.forced_refreshes), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn failing_refresh_keeps_serving_valid_token_with_bounded_attempts() {
    let source = Scripted::new(Duration::from_secs(600));
    let layer = layer_with(&source, |b| b);
    let cache = layer.token_cache();
    let received = Instant::now();
    assert_eq!(cache.token().await.unwrap().generation(), 1);
    source.fail_with(Some(Error::transient("connection refused")));

    // A simulated minute inside the refresh window, a request every 100 ms.
    advance(Duration::from_secs(300)).await;
    let before = source.fetches();
    for _ in 0..600 {
        let t = ready_now(cache.token())
            .await
            .expect("never waits")
            .unwrap();
        assert_eq!(t.generation(), 1);
        advance(Duration::from_millis(100)).await;
        settle().await;
    }
    // Backoff 0.5 s doubling to 30 s, each jittered to at least half: at most 9 starts in any
    // 60 s (0.25 + 0.5 + 1 + 2 + 4 + 8 + 15 + 15 > 45.75, the ninth at >= 45.75 s).
    let attempts = source.fetches() - before;
    assert!(
        (5..=9).contains(&attempts),
        "{attempts} attempts in a minute"
    );
    assert_eq!(cache.stats().fetch_failures, attempts);

    // Past the hard margin, still failing: the still-valid token is served until it expires.
    advance(received + Duration::from_secs(590) - Instant::now()).await;
    assert_eq!(cache.token().await.unwrap().generation(), 1);
    advance(Duration::from_secs(11)).await;
    let e = cache.token().await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert_eq!(e.to_string(), "token request failed");
}

#[tokio::test(start_paused = true)]
async fn rejected_secret_is_terminal_briefly_then_rotation_recovers() {
    let mock = MockServer::start().await;
    mock.set_credentials(ozzobit_auth::testing::MOCK_API_KEY, "sk_rotated_new");
    let secret = Arc::new(std::sync::Mutex::new("sk_canary_old".to_owned()));
    let provider = CredentialsFn::new({
        let secret = Arc::clone(&secret);
        move || {
            let s = secret.lock().unwrap().clone();
            async move { Ok(Credentials::new(ozzobit_auth::testing::MOCK_API_KEY, s)) }
        }
    });
    let layer = OzzobitAuthLayer::builder()
        .credentials_provider(provider)
        .base_url(mock.base_url())
        .fetch_timeout(HOUR)
        .build()
        .unwrap();
    let cache = layer.token_cache();

    let e = cache.token().await.unwrap_err();
    assert!(e.is_rejected(), "{e:?}");
    assert_eq!(e.status(), Some(http::StatusCode::UNAUTHORIZED));
    assert_eq!(
        e.to_string(),
        "token request rejected (401 Unauthorized): Invalid API secret"
    );
    assert!(!format!("{e:?}").contains("sk_canary_old"));
    assert_eq!(mock.token_requests(), 1);

    // A burst inside the terminal window is answered from the cache.
    *secret.lock().unwrap() = "sk_rotated_new".into();
    for _ in 0..20 {
        assert!(cache.token().await.unwrap_err().is_rejected());
    }
    assert_eq!(mock.token_requests(), 1);

    // After the window, the rotated secret is read and the cache recovers, no restart.
    advance(Duration::from_secs(5)).await;
    let token = cache.token().await.unwrap();
    assert_eq!(token.generation(), 1);
    assert_eq!(mock.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn aborting_the_caller_that_started_the_fetch_does_not_cancel_it() {
    let source = Scripted::new(HOUR);
    source.set_latency(Duration::from_secs(1));
    let layer = layer_with(&source, |b| b);
    let cache = layer.token_cache().clone();

    let starter = tokio::spawn({
        let cache = cache.clone();
        async move { cache.token().await }
    });
    settle().await;
    assert_eq!(source.fetches(), 1);
    let others: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    settle().await;
    starter.abort();
    assert!(starter.await.unwrap_err().is_cancelled());

    advance(Duration::from_secs(1)).await;
    for t in others {
        assert_eq!(t.await.unwrap().unwrap().generation(), 1);
    }
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn fetch_timeout_bounds_a_hanging_endpoint() {
    let source = Scripted::new(HOUR);
    source.set_latency(Duration::from_secs(3600));
    let layer = layer_with(&source, |b| b.fetch_timeout(Duration::from_secs(10)));
    let started = Instant::now();
    let e = layer.token_cache().token().await.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert_eq!(Instant::now() - started, Duration::from_secs(10));
    assert_eq!(e.to_string(), "token request timed out after 10s");
}

#[tokio::test(start_paused = true)]
async fn a_source_that_panics_does_not_wedge_the_cache() {
    struct Panics(std::sync::atomic::AtomicBool);
    impl ozzobit_auth::TokenSource for Panics {
        fn fetch(&self) -> ozzobit_auth::BoxFuture<'_, Result<ozzobit_auth::AccessToken, Error>> {
            let first = !self.0.swap(true, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                assert!(!first, "token source bug");
                Ok(ozzobit_auth::AccessToken::new("ok", HOUR))
            })
        }
    }
    let layer = OzzobitAuthLayer::builder()
        .token_source(Panics(Default::default()))
        .base_url("http://127.0.0.1:9")
        .build()
        .unwrap();
    let e = layer.token_cache().token().await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    // Backoff after the first failure is at most 0.5 s.
    advance(Duration::from_millis(500)).await;
    assert_eq!(layer.token_cache().token().await.unwrap().generation(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_source_returning_a_zero_lifetime_token_gets_an_error_not_a_fetch_loop() {
    let source = Scripted::new(Duration::ZERO);
    let layer = layer_with(&source, |b| b);
    let e = layer.token_cache().token().await.unwrap_err();
    assert!(e.is_invalid_response(), "{e:?}");
    assert_eq!(
        e.to_string(),
        "invalid token response: token lifetime 0ns is under one second"
    );
    assert_eq!(source.fetches(), 1);
}
