//! [`ReplayBody`]: a request body that can be sent a second time.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service receives: the caller's body, recorded while it streams
    /// so that it can be sent again after a 401.
    ///
    /// Recording keeps the body's own [`Bytes`] (no copy) up to `max_replay_bytes`. A body whose
    /// `size_hint` already says it is larger is passed through without recording. The retry
    /// happens only if the first attempt streamed the whole body (data and trailers) within the
    /// cap; otherwise the 401 is returned as it came. A replay yields exactly the recorded frames
    /// with an exact `size_hint`, so `Content-Length` survives.
    ///
    /// `ReplayBody<B>` is `Send`, `Sync` and `Unpin` whenever `B` is. It implements
    /// [`Body<Data = Bytes>`](Body), so an inner service with a fixed body type adapts with
    /// [`map_request_body`](https://docs.rs/tower/latest/tower/trait.ServiceExt.html#method.map_request_body),
    /// e.g. `tonic::body::Body::new` or `reqwest::Body::wrap`.
    pub struct ReplayBody<B> {
        #[pin]
        state: State<B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B> {
        Streaming {
            #[pin]
            body: B,
            // `None` when not recording: out of scope, over the cap, or the body failed.
            recorder: Option<Recorder>,
        },
        Replaying {
            recorded: Arc<OnceLock<Recorded>>,
            next: usize,
            trailers_sent: bool,
        },
        Empty,
    }
}

/// What a complete first pass streamed.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

struct Recorder {
    slot: Arc<OnceLock<Recorded>>,
    data: Vec<Bytes>,
    len: usize,
    cap: usize,
}

/// The layer's hold on a request's body for the retry.
#[derive(Debug)]
pub(crate) enum Replay {
    /// The body was empty from the start: replaying it is free.
    Empty,
    /// Filled in when (and only if) the first pass streams completely within the cap.
    Recording(Arc<OnceLock<Recorded>>),
}

impl Replay {
    /// Whether [`body`](Self::body) would give a replay now.
    pub(crate) fn is_ready(&self) -> bool {
        match self {
            Replay::Empty => true,
            Replay::Recording(slot) => slot.get().is_some(),
        }
    }

    /// A body that replays the first pass, or `None` if the first pass has not completed within
    /// the cap (still streaming, cut short, failed, or too large).
    pub(crate) fn body<B>(&self) -> Option<ReplayBody<B>> {
        let state = match self {
            Replay::Empty => State::Empty,
            Replay::Recording(slot) => {
                slot.get()?;
                State::Replaying {
                    recorded: Arc::clone(slot),
                    next: 0,
                    trailers_sent: false,
                }
            }
        };
        Some(ReplayBody { state })
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body`, recording it for a replay if it may fit in `cap` bytes.
    pub(crate) fn recording(body: B, cap: usize) -> (Self, Option<Replay>) {
        if body.is_end_stream() {
            return (Self::passthrough(body), Some(Replay::Empty));
        }
        if body.size_hint().lower() > cap as u64 {
            return (Self::passthrough(body), None);
        }
        let slot = Arc::new(OnceLock::new());
        let recorder = Recorder {
            slot: Arc::clone(&slot),
            data: Vec::new(),
            len: 0,
            cap,
        };
        let state = State::Streaming {
            body,
            recorder: Some(recorder),
        };
        (Self { state }, Some(Replay::Recording(slot)))
    }
}

impl<B> ReplayBody<B> {
    /// Wraps `body` without recording it.
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            state: State::Streaming {
                body,
                recorder: None,
            },
        }
    }
}

impl Recorder {
    /// Keeps `frame`; `false` if that would exceed the cap.
    fn record(&mut self, frame: &Frame<Bytes>) -> bool {
        if let Some(data) = frame.data_ref() {
            self.len += data.len();
            if self.len > self.cap {
                return false;
            }
            if !data.is_empty() {
                self.data.push(data.clone());
            }
        }
        true
    }

    fn finish(self, trailers: Option<HeaderMap>) {
        let _ = self.slot.set(Recorded {
            data: self.data,
            trailers,
        });
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
        match self.project().state.project() {
            StateProj::Streaming { mut body, recorder } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                let Some(rec) = recorder.as_mut() else {
                    return Poll::Ready(frame);
                };
                match &frame {
                    Some(Ok(f)) => {
                        if !rec.record(f) {
                            *recorder = None;
                        } else if let Some(trailers) = f.trailers_ref() {
                            let trailers = Some(trailers.clone());
                            if let Some(rec) = recorder.take() {
                                rec.finish(trailers);
                            }
                        } else if body.is_end_stream() {
                            // hyper stops polling once the body says it has ended: finish now.
                            if let Some(rec) = recorder.take() {
                                rec.finish(None);
                            }
                        }
                    }
                    None => {
                        if let Some(rec) = recorder.take() {
                            rec.finish(None);
                        }
                    }
                    Some(Err(_)) => *recorder = None,
                }
                Poll::Ready(frame)
            }
            StateProj::Replaying {
                recorded,
                next,
                trailers_sent,
            } => {
                let Some(rec) = recorded.get() else {
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
            StateProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Streaming { body, .. } => body.is_end_stream(),
            State::Replaying {
                recorded,
                next,
                trailers_sent,
            } => recorded.get().is_none_or(|rec| {
                *next >= rec.data.len() && (rec.trailers.is_none() || *trailers_sent)
            }),
            State::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Streaming { body, .. } => body.size_hint(),
            State::Replaying { recorded, next, .. } => {
                let left = recorded.get().map_or(0, |rec| {
                    rec.data[(*next).min(rec.data.len())..]
                        .iter()
                        .map(|d| d.len() as u64)
                        .sum()
                });
                SizeHint::with_exact(left)
            }
            State::Empty => SizeHint::with_exact(0),
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Streaming {
                recorder: Some(_), ..
            } => "recording",
            State::Streaming { recorder: None, .. } => "passthrough",
            State::Replaying { .. } => "replaying",
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
                match replay.and_then(|r| r.body::<Frames>()) {
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
            assert!(replay.body::<Frames>().is_none());
            let (rest, _) = collect(first).await;
            assert_eq!(rest, "cd");
            let (again, _) = collect(replay.body::<Frames>().unwrap()).await;
            assert_eq!(again, "abcd");
        });
    }

    #[test]
    fn recording_completes_when_the_body_says_it_has_ended() {
        // hyper stops polling once `is_end_stream` is true, so the `None` never comes.
        block_on(async {
            let (mut first, replay) = ReplayBody::recording(Full::new(Bytes::from("abc")), 64);
            first.frame().await.unwrap().unwrap();
            assert!(first.is_end_stream());
            let (again, _) = collect(replay.unwrap().body::<Full<Bytes>>().unwrap()).await;
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
