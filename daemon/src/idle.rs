//! Connections that hold no call are closed after a while.
//!
//! Invariant: a connection from [`crate::listener`] is closed once it has
//! had no call in flight for its idle timeout. A call is in flight from
//! the moment its request reaches the service stack ([`TrackCallsLayer`])
//! until its response body is dropped (a unary answer sent, a stream
//! ended or reset), so a long watch or a raft stream keeps its connection
//! open however quiet it is, and HTTP/2 pings alone never do.
//!
//! tonic has no idle timeout of its own; the connection's count of calls
//! travels to the service stack inside its connect info ([`Tracked`]),
//! which [`TrackCallsLayer`] unwraps again so `remote_addr()` and
//! `peer_certs()` read as before.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

// tokio's clock, as the listener's idle timer reads it.
use tokio::time::Instant;

use tonic::codegen::http;

/// The calls in flight on one connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    /// (calls in flight, when the last one ended or the connection opened)
    calls: Mutex<(usize, Instant)>,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new((0, Instant::now())),
        })
    }

    /// A call began; it ends when the guard is dropped.
    pub fn call(self: &Arc<Self>) -> CallGuard {
        self.lock().0 += 1;
        CallGuard(self.clone())
    }

    /// When the connection will have been idle for `idle`: `None` while a
    /// call is in flight.
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        let (calls, since) = *self.lock();
        (calls == 0).then(|| since + idle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One call in flight on a connection.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut calls = self.0.lock();
        calls.0 -= 1;
        calls.1 = Instant::now();
    }
}

/// A connection's own connect info (`C`: tonic's TCP or TLS info) and its
/// [`Activity`], as the listener hands them to tonic.
#[derive(Debug, Clone)]
pub struct Tracked<C> {
    pub info: C,
    pub activity: Arc<Activity>,
}

/// Counts each request as a call on its connection (see the module
/// invariant). Requests that did not come through the listener (none in
/// the daemon, the simulation's) pass untouched.
#[derive(Debug, Clone, Default)]
pub struct TrackCallsLayer;

impl<S> tower::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;
    fn layer(&self, inner: S) -> TrackCalls<S> {
        TrackCalls { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TrackCalls<S> {
    inner: S,
}

/// The guard of the request's connection, its connect info put back
/// where tonic looks for it.
fn take_call(extensions: &mut http::Extensions) -> Option<CallGuard> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    fn unwrap<C: Clone + Send + Sync + 'static>(
        extensions: &mut http::Extensions,
    ) -> Option<CallGuard> {
        let tracked = extensions.remove::<Tracked<C>>()?;
        extensions.insert(tracked.info);
        Some(tracked.activity.call())
    }
    unwrap::<TlsConnectInfo<TcpConnectInfo>>(extensions)
        .or_else(|| unwrap::<TcpConnectInfo>(extensions))
}

impl<S, B, Answer> tower::Service<http::Request<B>> for TrackCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Answer>>,
    S::Future: Send + 'static,
    Answer: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    Answer::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let call = take_call(request.extensions_mut());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(match call {
                Some(call) => response.map(|body| {
                    tonic::body::Body::new(Held {
                        body: tonic::body::Body::new(body),
                        _call: call,
                    })
                }),
                None => response.map(tonic::body::Body::new),
            })
        })
    }
}

/// A response body that holds its call in flight until it is dropped.
struct Held<B> {
    body: B,
    _call: CallGuard,
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_no_call_in_flight() {
        let idle = Duration::from_secs(60);
        let activity = Activity::new();
        let opened = Instant::now();
        assert_eq!(activity.idle_deadline(idle), Some(opened + idle));
        let first = activity.call();
        let second = activity.call();
        assert_eq!(activity.idle_deadline(idle), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(first);
        assert_eq!(activity.idle_deadline(idle), None, "one call still open");
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(second);
        // Idle from the last call's end, not from the connection's start.
        assert_eq!(
            activity.idle_deadline(idle),
            Some(opened + Duration::from_secs(20) + idle)
        );
    }

    #[test]
    fn the_layer_counts_a_call_until_its_body_is_dropped_and_puts_the_info_back() {
        use tonic::transport::server::TcpConnectInfo;
        let activity = Activity::new();
        let mut request = http::Request::new(());
        request.extensions_mut().insert(Tracked {
            info: TcpConnectInfo {
                local_addr: None,
                remote_addr: Some("192.0.2.1:5000".parse().unwrap()),
            },
            activity: activity.clone(),
        });
        let call = take_call(request.extensions_mut()).unwrap();
        let request = tonic::Request::from_http(request);
        assert_eq!(
            request.remote_addr(),
            Some("192.0.2.1:5000".parse().unwrap())
        );
        assert_eq!(activity.idle_deadline(Duration::ZERO), None);
        drop(call);
        assert!(activity.idle_deadline(Duration::ZERO).is_some());
        // A request from elsewhere is not counted.
        assert!(take_call(&mut http::Extensions::new()).is_none());
    }
}
