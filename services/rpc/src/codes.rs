//! Requests that no handler sees. tonic answers a request it cannot decode
//! itself: a message over the size limit gets OUT_OF_RANGE and bytes that
//! are not the message get INTERNAL, and neither reaches the handlers that
//! count calls. This layer gives them the gRPC conventions
//! (RESOURCE_EXHAUSTED, INVALID_ARGUMENT) and counts them in
//! `healthcode_grpc_requests_total`, so a station sending bad bytes shows
//! up as a client error, not a server fault.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::Code;

/// The messages tonic and prost give a request they could not decode.
const DECODE_FAILURES: [&str; 3] =
    ["failed to decode Protobuf message", "Unexpected EOF decoding stream", "Missing request message"];

/// The label of a gRPC method: its name when it is one of ours (a bounded
/// set), `None` for anything else.
pub type RpcLabel = fn(&str) -> Option<&'static str>;

/// Wraps the gRPC services of a server (`Server::builder().layer(...)`).
#[derive(Clone, Copy, Debug)]
pub struct DecodeErrorsLayer {
    label: RpcLabel,
}

impl DecodeErrorsLayer {
    pub fn new(label: RpcLabel) -> Self {
        DecodeErrorsLayer { label }
    }
}

impl<S> tower_layer::Layer<S> for DecodeErrorsLayer {
    type Service = DecodeErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DecodeErrors { inner, label: self.label }
    }
}

#[derive(Clone, Debug)]
pub struct DecodeErrors<S> {
    inner: S,
    label: RpcLabel,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for DecodeErrors<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Fixed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let rpc = (self.label)(method).unwrap_or("other");
        Fixed { inner: self.inner.call(request), rpc }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's response, with decode failures recoded.
    pub struct Fixed<F> {
        #[pin]
        inner: F,
        rpc: &'static str,
    }
}

impl<F, R, E> Future for Fixed<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        recode(response.headers_mut(), this.rpc);
        Poll::Ready(Ok(response))
    }
}

/// A trailers-only answer of a request that was never decoded gets the
/// conventional code, and is counted.
fn recode(headers: &mut http::HeaderMap, rpc: &'static str) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let (code, label) = match status.code() {
        Code::OutOfRange => (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
        Code::Internal if DECODE_FAILURES.iter().any(|f| status.message().starts_with(f)) => {
            (Code::InvalidArgument, "INVALID_ARGUMENT")
        }
        _ => return,
    };
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    metrics::counter!("healthcode_grpc_requests_total", "rpc" => rpc, "code" => label).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers_only(code: Code, message: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        tonic::Status::new(code, message).add_header(&mut headers).unwrap();
        headers
    }

    fn recoded(code: Code, message: &str) -> Code {
        let mut headers = trailers_only(code, message);
        recode(&mut headers, "GetStatus");
        tonic::Status::from_header_map(&headers).unwrap().code()
    }

    #[test]
    fn requests_never_decoded_get_the_conventional_codes() {
        let too_large = "Error, decoded message length too large: found 102400 bytes, the limit is: 65536 bytes";
        assert_eq!(recoded(Code::OutOfRange, too_large), Code::ResourceExhausted);
        let garbage = "failed to decode Protobuf message: invalid wire type: Varint (expected LengthDelimited)";
        assert_eq!(recoded(Code::Internal, garbage), Code::InvalidArgument);
        // A real fault of ours stays INTERNAL, and other codes pass untouched.
        assert_eq!(recoded(Code::Internal, "internal error: the store broke"), Code::Internal);
        assert_eq!(recoded(Code::Unavailable, "status store unavailable"), Code::Unavailable);
    }
}
