//! Trace context across the wire: an edge puts the current span's context into a request's
//! gRPC metadata (W3C `traceparent`), and central makes its span a child of it, so one write is
//! one trace across nodes. Without an OpenTelemetry propagator installed (tracing export off)
//! both are no-ops.

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::pb::central_client::CentralClient;

/// A client of central whose every request carries the caller's trace context.
pub type TracedClient =
    CentralClient<InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>>;

/// A [`TracedClient`] over `channel`.
pub fn traced_client(channel: Channel) -> TracedClient {
    CentralClient::with_interceptor(channel, inject_into as fn(_) -> _)
}

fn inject_into(mut request: Request<()>) -> Result<Request<()>, Status> {
    inject(request.metadata_mut());
    Ok(request)
}
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct Inject<'a>(&'a mut MetadataMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct Extract<'a>(&'a MetadataMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Puts the current span's trace context into `metadata`.
pub fn inject(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Inject(metadata));
    });
}

/// Makes `span` a child of the trace context `metadata` carries, if it carries one.
pub fn continue_trace(span: &tracing::Span, metadata: &MetadataMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Extract(metadata))
    });
    // Fails only when the span is disabled, and then there is nothing to parent.
    let _ = span.set_parent(parent);
}
