//! [`OzzobitAuth`]: the middleware service.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;
use tower_service::Service;

use crate::future::{Pending, ResponseFuture};
use crate::layer::Config;
use crate::{BoxError, ReplayBody, TokenCache};

/// Marks a request this layer sent a second time after an "unauthorized" answer. Another
/// `OzzobitAuth` further down the stack sees it and does not retry again; inner layers may read
/// it for logging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retried;

/// Adds `Authorization: Bearer <Partner Access Token>` to requests for in-scope origins, and after
/// an "unauthorized" answer refreshes the token and sends the request once more.
///
/// Made by [`OzzobitAuthLayer`](crate::OzzobitAuthLayer); see the [crate docs](crate) for where
/// it belongs in a stack.
pub struct OzzobitAuth<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> OzzobitAuth<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The token cache shared with the layer and its other services.
    pub fn token_cache(&self) -> &TokenCache {
        &self.config.cache
    }
}

impl<S: Clone> Clone for OzzobitAuth<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for OzzobitAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OzzobitAuth")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, B, ResBody> Service<Request<B>> for OzzobitAuth<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The service that was driven to readiness answers this request; the clone left behind
        // is readied by the next `poll_ready`.
        let clone = self.inner.clone();
        let mut svc = mem::replace(&mut self.inner, clone);
        let config = &self.config;

        let caller_auth =
            req.headers().contains_key(header::AUTHORIZATION) && !config.replace_authorization;
        if caller_auth || !config.scope.allows(req.uri()) {
            return ResponseFuture::passthrough(svc.call(req.map(ReplayBody::passthrough)));
        }

        let retry = config.retry && req.extensions().get::<Retried>().is_none();
        let (parts, body) = req.into_parts();
        let (body, replay) = if retry {
            ReplayBody::recording(body, config.max_replay_bytes)
        } else {
            (ReplayBody::passthrough(body), None)
        };
        let pending = Pending {
            parts,
            body,
            replay,
        };
        match config.cache.try_authorization() {
            Some(authorization) => {
                ResponseFuture::send(svc, Arc::clone(config), authorization, pending)
            }
            None => ResponseFuture::wait_for_token(svc, Arc::clone(config), pending),
        }
    }
}
