//! OpenTelemetry export (cargo feature `otel`): a `tracing` layer that sends the SDK's spans to
//! an OTLP/HTTP collector.
//!
//! The SDK always emits `tracing` spans: one `gen_ai` span per governed LLM call, named
//! `{gen_ai.operation.name} {gen_ai.request.model}` and attributed per the OpenTelemetry GenAI
//! semantic conventions (`gen_ai.operation.name`, `gen_ai.provider.name`,
//! `gen_ai.request.model`, `gen_ai.request.max_tokens`, `gen_ai.response.model`,
//! `gen_ai.response.finish_reasons`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`),
//! with `governance.*` attributes for the agent, session, cost and outcome; and one
//! `governance.gate` span per gate decision (halt, scope and budget on the LLM path; human
//! approvals). This module only connects them to OpenTelemetry; it installs nothing global.
//!
//! ```no_run
//! # fn run() -> Result<(), gov_sdk::Error> {
//! use tracing_subscriber::prelude::*;
//! let (layer, _guard) = gov_sdk::otel::layer("http://127.0.0.1:4318/v1/traces", "billing-service")?;
//! tracing_subscriber::registry().with(layer).init();
//! // keep `_guard` alive: dropping it flushes and shuts the exporter down
//! # Ok(()) }
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::registry::LookupSpan;

use crate::{Error, Result};

/// The instrumentation scope the SDK's spans are exported under.
pub const SCOPE: &str = "gov-sdk";

/// Keeps the exporter running; dropping it flushes the spans still batched and shuts it down.
#[derive(Debug)]
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl OtelGuard {
    /// The tracer provider, to build more tracers or layers from.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "the OpenTelemetry exporter did not shut down cleanly");
        }
    }
}

/// A layer exporting spans over OTLP/HTTP (protobuf) to `endpoint` (the full traces URL, e.g.
/// `http://127.0.0.1:4318/v1/traces`) with batching on the Tokio runtime, under the resource
/// `service.name = service_name`. Call it inside a Tokio runtime.
pub fn layer<S>(
    endpoint: &str,
    service_name: &str,
) -> Result<(
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    OtelGuard,
)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| Error::Config(format!("the OTLP exporter could not be built: {e}")))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer(SCOPE);
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer),
        OtelGuard { provider },
    ))
}
