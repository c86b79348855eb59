//! [`ResponseFuture`]: a request's way through token, call, refresh and retry.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{
    Extensions, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header, request,
};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::Replay;
use crate::cache::Token;
use crate::layer::Config;
use crate::service::Retried;
use crate::{BoxError, Error, ReplayBody, TokenCache};

type TokenFuture = Pin<Box<dyn Future<Output = Result<Arc<Token>, Error>> + Send>>;

/// How long an "unauthorized" answer that arrives while the request body is still being sent
/// waits for the body to finish. A server that authenticates before reading (gRPC interceptors
/// do) answers while a small body is still in flight; it finishes within microseconds, and the
/// refresh runs meanwhile. A body still streaming after this is not replayed.
const BODY_GRACE: Duration = Duration::from_millis(100);

/// A request waiting for its token.
pub(crate) struct Pending<B> {
    pub(crate) parts: request::Parts,
    pub(crate) body: ReplayBody<B>,
    pub(crate) replay: Option<Replay<B>>,
}

/// What the retry needs: a copy of the request's head, taken before the first attempt consumed
/// it, and the hold on its body.
struct RetryPlan<S, B> {
    svc: S,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    replay: Replay<B>,
}

impl<S, B> RetryPlan<S, B> {
    fn request(self, token: &Token, body: ReplayBody<B>) -> (S, Request<ReplayBody<B>>) {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        *req.extensions_mut() = self.extensions;
        req.headers_mut()
            .insert(header::AUTHORIZATION, token.authorization().clone());
        req.extensions_mut().insert(Retried);
        (self.svc, req)
    }
}

pin_project! {
    /// The response future of [`OzzobitAuth`](crate::OzzobitAuth).
    ///
    /// With a fresh cached token it wraps the inner future directly: no allocation, no extra
    /// `await`. It boxes a future only to wait for a token fetch.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S::Future, S::Response, S, B>,
        // `None` for requests that pass through untouched.
        config: Option<Arc<Config>>,
        // Generation of the token the attempt in flight carries.
        generation: u64,
        retry: Option<RetryPlan<S, B>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R, S, B> {
        // No usable token yet: the request waits for the shared fetch.
        // Slow-path payloads are boxed so the future stays small on the fast path.
        Token { token: TokenFuture, waiting: Option<Box<(S, Pending<B>)>> },
        // An attempt in flight.
        Called { #[pin] fut: F },
        // The first attempt was unauthorized: waiting (a little, if it is still being sent) for
        // its body to be replayable.
        AwaitingBody { settled: Pin<Box<dyn Future<Output = ()> + Send>>, response: Option<Box<R>> },
        // The first attempt was unauthorized: waiting for the refreshed token, keeping the
        // response to return if the refresh fails.
        Refreshing { token: TokenFuture, response: Option<Box<R>> },
        // Driving the service to readiness for the retry.
        Readying { retry: Option<Box<(S, Request<ReplayBody<B>>)>> },
    }
}

impl<F, R, S, B> State<F, R, S, B> {
    /// Replaces the rejected token (once per generation, however many requests saw it) and keeps
    /// `response` to return if that fails.
    fn refreshing(cache: &TokenCache, generation: u64, response: Box<R>) -> Self {
        let cache = cache.clone();
        State::Refreshing {
            token: Box::pin(async move { cache.force_refresh(generation).await }),
            response: Some(response),
        }
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    pub(crate) fn passthrough(fut: S::Future) -> Self {
        Self {
            state: State::Called { fut },
            config: None,
            generation: 0,
            retry: None,
        }
    }

    pub(crate) fn wait_for_token(svc: S, config: Arc<Config>, pending: Pending<B>) -> Self {
        let cache = config.cache.clone();
        Self {
            state: State::Token {
                token: Box::pin(async move { cache.wait_for_token().await }),
                waiting: Some(Box::new((svc, pending))),
            },
            config: Some(config),
            generation: 0,
            retry: None,
        }
    }

    /// Sends the first attempt with `token`.
    pub(crate) fn send(
        mut svc: S,
        config: Arc<Config>,
        (authorization, generation): (HeaderValue, u64),
        pending: Pending<B>,
    ) -> Self {
        let Pending {
            mut parts,
            body,
            replay,
        } = pending;
        config.cache.record_authorized();
        let fut;
        let retry = match replay {
            Some(replay) => {
                let (method, uri, version) =
                    (parts.method.clone(), parts.uri.clone(), parts.version);
                // Copied before `Authorization` goes in (the retry sets its own), so a request
                // with no other headers copies an empty map: no allocation.
                let (headers, extensions) = (parts.headers.clone(), parts.extensions.clone());
                parts.headers.insert(header::AUTHORIZATION, authorization);
                fut = svc.call(Request::from_parts(parts, body));
                Some(RetryPlan {
                    svc,
                    method,
                    uri,
                    version,
                    headers,
                    extensions,
                    replay,
                })
            }
            None => {
                parts.headers.insert(header::AUTHORIZATION, authorization);
                fut = svc.call(Request::from_parts(parts, body));
                None
            }
        };
        Self {
            state: State::Called { fut },
            config: Some(config),
            generation,
            retry,
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Token { token, waiting } => {
                    let token = ready!(token.as_mut().poll(cx))?;
                    let (Some(waiting), Some(config)) = (waiting.take(), this.config.take()) else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let (svc, pending) = *waiting;
                    let authorization = (token.authorization().clone(), token.generation());
                    let sent = Self::send(svc, config, authorization, pending);
                    *this.config = sent.config;
                    *this.generation = sent.generation;
                    *this.retry = sent.retry;
                    this.state.set(sent.state);
                }
                StateProj::Called { fut } => {
                    let response = ready!(fut.poll(cx)).map_err(Into::into)?;
                    let Some(config) = this.config.as_ref() else {
                        return Poll::Ready(Ok(response));
                    };
                    if !config
                        .unauthorized
                        .is_unauthorized(response.status(), response.headers())
                    {
                        return Poll::Ready(Ok(response));
                    }
                    let generation = *this.generation;
                    let Some(plan) = this.retry.as_ref() else {
                        // No second attempt; still replace the token for the requests after this.
                        tracing::debug!(generation, "unauthorized; not retrying this request");
                        config.cache.invalidate(generation);
                        return Poll::Ready(Ok(response));
                    };
                    // Start the refresh now; if the body is still being sent, it finishes
                    // meanwhile.
                    config.cache.invalidate(generation);
                    let settled = plan.replay.settled();
                    this.state.set(State::AwaitingBody {
                        settled: Box::pin(async move {
                            let _ = tokio::time::timeout(BODY_GRACE, settled).await;
                        }),
                        response: Some(Box::new(response)),
                    });
                }
                StateProj::AwaitingBody { settled, response } => {
                    ready!(settled.as_mut().poll(cx));
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let (Some(plan), Some(config)) = (this.retry.as_ref(), this.config.as_ref())
                    else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let generation = *this.generation;
                    if !plan.replay.is_ready() {
                        tracing::debug!(
                            generation,
                            "unauthorized; the request body cannot be replayed"
                        );
                        *this.retry = None;
                        return Poll::Ready(Ok(*response));
                    }
                    tracing::debug!(
                        generation,
                        "unauthorized; refreshing the token to retry once"
                    );
                    this.state
                        .set(State::refreshing(&config.cache, generation, response));
                }
                StateProj::Refreshing { token, response } => {
                    let refreshed = ready!(token.as_mut().poll(cx));
                    let (Some(plan), Some(config)) = (this.retry.take(), this.config.as_ref())
                    else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let token = match refreshed {
                        Ok(token) => token,
                        Err(error) => {
                            // The API's own answer is more faithful than the token error, which
                            // the cache has already logged and which the next request reports.
                            tracing::warn!(error = %error.chain(), "token refresh after unauthorized failed; returning the response");
                            return Poll::Ready(Ok(*response
                                .take()
                                .expect("ResponseFuture polled after completion")));
                        }
                    };
                    let Some(body) = plan.replay.body() else {
                        return Poll::Ready(Ok(*response
                            .take()
                            .expect("ResponseFuture polled after completion")));
                    };
                    config.cache.record_retry();
                    config.cache.record_authorized();
                    *this.generation = token.generation();
                    let (svc, request) = plan.request(&token, body);
                    this.state.set(State::Readying {
                        retry: Some(Box::new((svc, request))),
                    });
                }
                StateProj::Readying { retry } => {
                    let Some((svc, _)) = retry.as_deref_mut() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    ready!(svc.poll_ready(cx)).map_err(Into::into)?;
                    let Some(retry) = retry.take() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let (mut svc, request) = *retry;
                    let fut = svc.call(request);
                    // The retry's answer is final, whatever it is.
                    *this.config = None;
                    this.state.set(State::Called { fut });
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Token { .. } => "waiting for token",
            State::Called { .. } => "in flight",
            State::AwaitingBody { .. } => "waiting for the request body to finish",
            State::Refreshing { .. } => "refreshing after unauthorized",
            State::Readying { .. } => "readying retry",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("generation", &self.generation)
            .finish()
    }
}
