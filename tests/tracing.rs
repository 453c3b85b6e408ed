//! One write is one trace across nodes: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a real edge and
//! a real central export their spans over OTLP/gRPC to a receiver in this test (a tonic server
//! implementing the OTLP trace service), and the edge's spans and central's share a trace id
//! because the edge passes its trace context to central in the gRPC metadata.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, send_ok, Server};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// A received span: service name, span name, trace id.
type Received = (String, String, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((service.clone(), span.name, span.trace_id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_one_trace_across_edge_and_central() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export within a fraction of a second instead of the default five.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info"),
    ];
    let mut central_env = vec![
        ("DRIFTKV_GRPC__LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_GOSSIP__LISTEN", "127.0.0.1:0"),
    ];
    central_env.extend_from_slice(&otel);
    let central_dir = dir.path().join("central");
    let central = Server::launch(
        &[
            "central".into(),
            "--data-dir".into(),
            central_dir.display().to_string(),
        ],
        &central_dir,
        &central_env,
        "driftkv central listening on ",
    )
    .expect("central starts");
    let edge_dir = dir.path().join("edge");
    let mut edge_env = vec![
        ("DRIFTKV_NODE_ID", "2"),
        ("DRIFTKV_CENTRAL__ADDRESS", central.base.as_str()),
        ("DRIFTKV_GOSSIP__LISTEN", "127.0.0.1:0"),
    ];
    edge_env.extend_from_slice(&otel);
    let edge = Server::launch(
        &[
            "edge".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            edge_dir.display().to_string(),
        ],
        &edge_dir,
        &edge_env,
        "driftkv edge listening on ",
    )
    .expect("edge starts");

    let http = client();
    let ns = common::namespace_url(&http, &edge, "traced").await;
    send_ok(http.put(format!("{ns}/values/k")).body("v")).await;

    // The trace of the write: central's "central write" span, and the edge's spans with the
    // same trace id.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (trace, services) = loop {
        let received = receiver.0.lock().unwrap().clone();
        let mut by_trace: BTreeMap<Vec<u8>, BTreeSet<(String, String)>> = BTreeMap::new();
        for (service, name, trace) in received {
            by_trace.entry(trace).or_default().insert((service, name));
        }
        let found = by_trace.into_iter().find(|(_, spans)| {
            spans.contains(&("driftkv-central".to_owned(), "central write".to_owned()))
                && spans.iter().any(|(service, _)| service == "driftkv-edge")
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no trace spans both nodes; received {:?}",
            receiver.0.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(trace.len(), 16, "a W3C trace id");
    assert!(
        services.contains(&("driftkv-edge".to_owned(), "forward to central".to_owned())),
        "{services:?}"
    );
    edge.stop();
    central.stop();
}
