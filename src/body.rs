//! [`ReplayBody`]: a request body that can be sent a second time.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service receives: the caller's body, recorded while it streams
    /// so that it can be sent again after a 401.
    ///
    /// Recording keeps the body's own [`Bytes`] (no copy) up to `max_replay_bytes`; a body whose
    /// `size_hint` already says it is larger is passed through without recording. The retry
    /// sends exactly the same frames, with an exact `size_hint` when the first attempt read the
    /// whole body, so `Content-Length` survives. It happens when:
    ///
    /// - the first attempt streamed the whole body (data and trailers) within the cap; or
    /// - the first attempt dropped the body part-way, within the cap (an HTTP/2 server that
    ///   answers before reading and resets the stream, as gRPC servers that authenticate in an
    ///   interceptor do): the retry sends the recorded part, then the rest of the caller's body.
    ///
    /// Otherwise (over the cap, a body error, or the first attempt still streaming it), the 401 is
    /// returned as it came. Nothing panics and no byte is sent twice within one attempt.
    ///
    /// `ReplayBody<B>` is `Send` and `Unpin` whenever `B` is, and `Sync` when `B` is `Send +
    /// Sync`. It implements [`Body<Data = Bytes>`](Body), so an inner service with a fixed body
    /// type adapts with `map_request_body`, e.g. `tonic::body::Body::new` or
    /// `reqwest::Body::wrap`.
    pub struct ReplayBody<B> {
        #[pin]
        state: State<B>,
    }

    impl<B> PinnedDrop for ReplayBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped part-way through recording: leave the rest to the retry.
            if let StateProj::Recording { rec } = this.project().state.project()
                && let Some(rec) = rec.take()
            {
                rec.hand_off();
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B> {
        // Not recorded: out of scope, retry off, or known to exceed the cap.
        Passthrough { #[pin] body: B },
        // Recording; `None` once the body has ended.
        Recording { rec: Option<Recorder<B>> },
        // Was recording; went over the cap or failed.
        Unrecorded { body: Pin<Box<B>> },
        // The retry of a body the first attempt read to the end.
        Replaying { slot: Arc<Slot<B>>, next: usize, trailers_sent: bool },
        // The retry of a body the first attempt dropped part-way: the recorded part, then the rest.
        Resuming { prefix: Vec<Bytes>, next: usize, rest: Pin<Box<B>> },
        Empty,
    }
}

/// What the first attempt leaves for the retry, and the signal that it has stopped.
pub(crate) struct Slot<B> {
    recorded: OnceLock<Recorded>,
    handoff: Mutex<Option<Handoff<B>>>,
    abandoned: AtomicBool,
    settled: tokio::sync::Notify,
}

/// A complete first pass.
#[derive(Debug)]
struct Recorded {
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

/// A first pass dropped part-way: what was sent, and the caller's body from there on.
struct Handoff<B> {
    prefix: Vec<Bytes>,
    rest: Pin<Box<B>>,
}

struct Recorder<B> {
    // Boxed so that it can move to the retry when the first attempt drops it part-way.
    body: Pin<Box<B>>,
    data: Vec<Bytes>,
    len: usize,
    cap: usize,
    slot: Arc<Slot<B>>,
}

impl<B> Recorder<B> {
    fn finish(self, trailers: Option<HeaderMap>) {
        let _ = self.slot.recorded.set(Recorded {
            data: self.data,
            trailers,
        });
        self.slot.settled.notify_one();
    }

    fn abandon(self) -> Pin<Box<B>> {
        self.slot.abandoned.store(true, Ordering::Release);
        self.slot.settled.notify_one();
        self.body
    }

    fn hand_off(self) {
        let handoff = Handoff {
            prefix: self.data,
            rest: self.body,
        };
        *self.slot.handoff.lock().unwrap_or_else(|p| p.into_inner()) = Some(handoff);
        // `notify_one` keeps a permit if nobody waits yet: the wake-up is never lost.
        self.slot.settled.notify_one();
    }
}

/// The layer's hold on a request's body for the retry.
pub(crate) enum Replay<B> {
    /// The body was empty from the start: replaying it is free.
    Empty,
    /// Filled in by the first attempt.
    Recording(Arc<Slot<B>>),
}

impl<B> Replay<B> {
    /// Whether [`body`](Self::body) would give a replay now.
    pub(crate) fn is_ready(&self) -> bool {
        match self {
            Replay::Empty => true,
            Replay::Recording(slot) => slot.recorded.get().is_some() || slot.has_handoff(),
        }
    }

    /// Resolves when the first attempt has stopped recording: complete, handed off, or
    /// abandoned. For an answer that came while the body was still streaming.
    pub(crate) fn settled(&self) -> impl Future<Output = ()> + Send + 'static
    where
        B: Send + 'static,
    {
        let slot = match self {
            Replay::Empty => None,
            Replay::Recording(slot) => Some(Arc::clone(slot)),
        };
        async move {
            let Some(slot) = slot else { return };
            loop {
                let notified = slot.settled.notified();
                if slot.recorded.get().is_some()
                    || slot.abandoned.load(Ordering::Acquire)
                    || slot.has_handoff()
                {
                    return;
                }
                notified.await;
            }
        }
    }

    /// The body for the retry, or `None` if the first attempt is still streaming it, went over
    /// the cap, or failed. A handed-off body can be taken once.
    pub(crate) fn body(&self) -> Option<ReplayBody<B>> {
        let state = match self {
            Replay::Empty => State::Empty,
            Replay::Recording(slot) if slot.recorded.get().is_some() => State::Replaying {
                slot: Arc::clone(slot),
                next: 0,
                trailers_sent: false,
            },
            Replay::Recording(slot) => {
                let handoff = slot
                    .handoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()?;
                State::Resuming {
                    prefix: handoff.prefix,
                    next: 0,
                    rest: handoff.rest,
                }
            }
        };
        Some(ReplayBody { state })
    }
}

impl<B> Slot<B> {
    fn has_handoff(&self) -> bool {
        self.handoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl<B> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Replay::Empty => "Replay::Empty",
            Replay::Recording(_) => "Replay::Recording",
        })
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body`, recording it for a replay if it may fit in `cap` bytes.
    pub(crate) fn recording(body: B, cap: usize) -> (Self, Option<Replay<B>>) {
        if body.is_end_stream() {
            return (Self::passthrough(body), Some(Replay::Empty));
        }
        if body.size_hint().lower() > cap as u64 {
            return (Self::passthrough(body), None);
        }
        let slot = Arc::new(Slot {
            recorded: OnceLock::new(),
            handoff: Mutex::new(None),
            abandoned: AtomicBool::new(false),
            settled: tokio::sync::Notify::new(),
        });
        let rec = Recorder {
            body: Box::pin(body),
            data: Vec::new(),
            len: 0,
            cap,
            slot: Arc::clone(&slot),
        };
        let state = State::Recording { rec: Some(rec) };
        (Self { state }, Some(Replay::Recording(slot)))
    }
}

impl<B> ReplayBody<B> {
    /// Wraps `body` without recording it.
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            state: State::Passthrough { body },
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::Passthrough { body } => body.poll_frame(cx),
            StateProj::Unrecorded { body } => body.as_mut().poll_frame(cx),
            StateProj::Recording { rec: slot } => {
                let Some(rec) = slot.as_mut() else {
                    return Poll::Ready(None);
                };
                let frame = ready!(rec.body.as_mut().poll_frame(cx));
                let Some(Ok(f)) = &frame else {
                    // The end, or an error: a body that failed is not sent again.
                    if let Some(rec) = slot.take() {
                        match frame {
                            None => rec.finish(None),
                            Some(_) => {
                                let body = rec.abandon();
                                state.set(State::Unrecorded { body });
                            }
                        }
                    }
                    return Poll::Ready(frame);
                };
                if let Some(data) = f.data_ref() {
                    rec.len += data.len();
                    if rec.len > rec.cap {
                        if let Some(rec) = slot.take() {
                            let body = rec.abandon();
                            state.set(State::Unrecorded { body });
                        }
                        return Poll::Ready(frame);
                    }
                    if !data.is_empty() {
                        rec.data.push(data.clone());
                    }
                }
                let trailers = f.trailers_ref().cloned();
                // hyper stops polling once the body says it has ended: finish there.
                if (trailers.is_some() || rec.body.is_end_stream())
                    && let Some(rec) = slot.take()
                {
                    rec.finish(trailers);
                }
                Poll::Ready(frame)
            }
            StateProj::Replaying {
                slot,
                next,
                trailers_sent,
            } => {
                let Some(rec) = slot.recorded.get() else {
                    return Poll::Ready(None);
                };
                if let Some(data) = rec.data.get(*next) {
                    *next += 1;
                    return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
                }
                match &rec.trailers {
                    Some(t) if !*trailers_sent => {
                        *trailers_sent = true;
                        Poll::Ready(Some(Ok(Frame::trailers(t.clone()))))
                    }
                    _ => Poll::Ready(None),
                }
            }
            StateProj::Resuming { prefix, next, rest } => {
                if let Some(data) = prefix.get(*next) {
                    *next += 1;
                    return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
                }
                rest.as_mut().poll_frame(cx)
            }
            StateProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Passthrough { body } => body.is_end_stream(),
            State::Unrecorded { body } => body.is_end_stream(),
            State::Recording { rec } => rec.as_ref().is_none_or(|r| r.body.is_end_stream()),
            State::Replaying {
                slot,
                next,
                trailers_sent,
            } => slot.recorded.get().is_none_or(|rec| {
                *next >= rec.data.len() && (rec.trailers.is_none() || *trailers_sent)
            }),
            State::Resuming { prefix, next, rest } => *next >= prefix.len() && rest.is_end_stream(),
            State::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let left = |data: &[Bytes], next: usize| -> u64 {
            data[next.min(data.len())..]
                .iter()
                .map(|d| d.len() as u64)
                .sum()
        };
        match &self.state {
            State::Passthrough { body } => body.size_hint(),
            State::Unrecorded { body } => body.size_hint(),
            State::Recording { rec } => rec
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |r| r.body.size_hint()),
            State::Replaying { slot, next, .. } => {
                SizeHint::with_exact(slot.recorded.get().map_or(0, |rec| left(&rec.data, *next)))
            }
            State::Resuming { prefix, next, rest } => {
                let done = left(prefix, *next);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + done);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + done);
                }
                hint
            }
            State::Empty => SizeHint::with_exact(0),
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Passthrough { .. } => "passthrough",
            State::Recording { .. } => "recording",
            State::Unrecorded { .. } => "unrecorded",
            State::Replaying { .. } => "replaying",
            State::Resuming { .. } => "resuming",
            State::Empty => "empty",
        };
        f.debug_struct("ReplayBody").field("state", &state).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::{BodyExt, Full};
    use proptest::prelude::*;

    use super::*;

    /// A body of given frames, with an exact or unknown size hint.
    struct Frames {
        frames: VecDeque<Frame<Bytes>>,
        exact: Option<u64>,
    }

    impl Frames {
        fn new(chunks: &[Vec<u8>], trailers: Option<HeaderMap>, exact: bool) -> Self {
            let mut frames: VecDeque<_> = chunks
                .iter()
                .map(|c| Frame::data(Bytes::from(c.clone())))
                .collect();
            frames.extend(trailers.map(Frame::trailers));
            let total = chunks.iter().map(|c| c.len() as u64).sum();
            Self {
                frames,
                exact: exact.then_some(total),
            }
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.frames.pop_front().map(Ok))
        }
        fn is_end_stream(&self) -> bool {
            self.frames.is_empty()
        }
        fn size_hint(&self) -> SizeHint {
            self.exact.map_or_else(SizeHint::new, SizeHint::with_exact)
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    async fn collect<B: Body<Data = Bytes>>(body: B) -> (Bytes, Option<HeaderMap>)
    where
        B::Error: fmt::Debug,
    {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    proptest! {
        #[test]
        fn replay_equals_original_or_is_refused(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
            cap in 0usize..2048,
            with_trailers in any::<bool>(),
            exact in any::<bool>(),
        ) {
            let trailers = with_trailers.then(|| {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                t
            });
            let total: usize = chunks.iter().map(Vec::len).sum();
            let want: Vec<u8> = chunks.concat();
            block_on(async {
                let (first, replay) =
                    ReplayBody::recording(Frames::new(&chunks, trailers.clone(), exact), cap);
                prop_assert_eq!(first.size_hint().exact(), exact.then_some(total as u64));
                let (data, got_trailers) = collect(first).await;
                prop_assert_eq!(&data[..], &want[..]);
                prop_assert_eq!(&got_trailers, &trailers);

                let empty = chunks.is_empty() && trailers.is_none();
                match replay.and_then(|r| r.body()) {
                    Some(again) => {
                        prop_assert!(total <= cap || empty, "replayable over the cap");
                        prop_assert_eq!(again.size_hint().exact(), Some(total as u64));
                        let (data, got_trailers) = collect(again).await;
                        prop_assert_eq!(&data[..], &want[..]);
                        prop_assert_eq!(&got_trailers, &trailers);
                    }
                    None => prop_assert!(total > cap, "refused under the cap"),
                }
                Ok(())
            })?;
        }
    }

    #[test]
    fn not_replayable_while_the_original_is_still_streaming() {
        block_on(async {
            let chunks = [b"ab".to_vec(), b"cd".to_vec()];
            let (mut first, replay) = ReplayBody::recording(Frames::new(&chunks, None, false), 64);
            let replay = replay.unwrap();
            let frame = first.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "ab");
            assert!(!replay.is_ready());
            assert!(replay.body().is_none());
            let (rest, _) = collect(first).await;
            assert_eq!(rest, "cd");
            let (again, _) = collect(replay.body().unwrap()).await;
            assert_eq!(again, "abcd");
        });
    }

    #[test]
    fn dropped_part_way_the_retry_sends_the_recorded_part_then_the_rest() {
        block_on(async {
            let chunks = [b"ab".to_vec(), b"cd".to_vec(), b"ef".to_vec()];
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            let (mut first, replay) =
                ReplayBody::recording(Frames::new(&chunks, Some(t.clone()), false), 64);
            let replay = replay.unwrap();
            first.frame().await.unwrap().unwrap();
            assert!(!replay.is_ready());
            let settled = tokio::spawn(replay.settled());
            drop(first); // e.g. the HTTP/2 stream was reset after an early answer
            settled.await.unwrap();
            assert!(replay.is_ready());
            let again = replay.body().unwrap();
            assert_eq!(format!("{again:?}"), "ReplayBody { state: \"resuming\" }");
            assert_eq!(again.size_hint().lower(), 2);
            let (data, trailers) = collect(again).await;
            assert_eq!(data, "abcdef");
            assert_eq!(trailers, Some(t));
            assert!(replay.body().is_none(), "a handed-off body is taken once");
        });
    }

    #[test]
    fn over_the_cap_settles_as_not_replayable() {
        block_on(async {
            let chunks = [vec![1; 10], vec![2; 10]];
            let (mut first, replay) = ReplayBody::recording(Frames::new(&chunks, None, false), 15);
            let replay = replay.unwrap();
            first.frame().await.unwrap().unwrap();
            first.frame().await.unwrap().unwrap();
            replay.settled().await;
            drop(first);
            assert!(!replay.is_ready());
            assert!(replay.body().is_none());
        });
    }

    #[test]
    fn recording_completes_when_the_body_says_it_has_ended() {
        // hyper stops polling once `is_end_stream` is true, so the `None` never comes.
        block_on(async {
            let (mut first, replay) = ReplayBody::recording(Full::new(Bytes::from("abc")), 64);
            first.frame().await.unwrap().unwrap();
            assert!(first.is_end_stream());
            let (again, _) = collect(replay.unwrap().body().unwrap()).await;
            assert_eq!(again, "abc");
        });
    }

    #[test]
    fn a_body_known_to_exceed_the_cap_is_not_recorded() {
        let (first, replay) = ReplayBody::recording(Full::new(Bytes::from(vec![0; 100])), 99);
        assert!(replay.is_none());
        assert_eq!(first.size_hint().exact(), Some(100));
        assert_eq!(
            format!("{first:?}"),
            "ReplayBody { state: \"passthrough\" }"
        );
    }
}
