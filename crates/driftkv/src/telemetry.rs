//! Logs and traces: `tracing` to stderr (text, or JSON lines with `DRIFTKV_LOG_FORMAT=json`, at
//! the level `RUST_LOG` sets), and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every span
//! exported over OTLP/gRPC with W3C trace context propagated to central. Without that variable
//! no exporter or propagator is installed, so tracing costs nothing extra.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The installed exporter, flushed when the process ends.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs logging, and span export when configured. `role` names the service in traces
    /// (`driftkv-central`, ...) unless `OTEL_SERVICE_NAME` does.
    pub fn init(role: &str) -> anyhow::Result<Telemetry> {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let json =
            std::env::var("DRIFTKV_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
        let logs = tracing_subscriber::fmt::layer()
            // Colours only on a terminal: container logs and files get plain text.
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        let logs = if json {
            logs.json().boxed()
        } else {
            logs.boxed()
        };

        let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Ok(endpoint) if !endpoint.is_empty() => Some(exporter(role)?),
            _ => None,
        };
        let traces = provider
            .as_ref()
            .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("driftkv")));
        tracing_subscriber::registry()
            .with(filter)
            .with(logs)
            .with(traces)
            .init();
        Ok(Telemetry { provider })
    }

    /// Whether spans are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` is set), so that each HTTP
    /// request should have a span of its own.
    pub fn exports_spans(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("exporting the last spans failed: {e}");
            }
        }
    }
}

/// An OTLP/gRPC span exporter configured by the standard `OTEL_*` variables, installed as the
/// global provider along with the W3C trace-context propagator.
fn exporter(role: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("cannot set up the OTLP span exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| format!("driftkv-{role}"));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(provider)
}
