//! `keel serve --otlp-endpoint`: trace spans exported over OTLP/HTTP (protobuf), built only with
//! the `otlp` cargo feature. Spans are batched and sent from the SDK's own thread; an
//! unreachable collector costs dropped spans, never a slower request.

#[cfg(feature = "otlp")]
mod enabled {
    use anyhow::Context;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;
    use tracing_subscriber::registry::Registry;

    /// Flushes buffered spans when dropped (at the end of `keel serve`).
    pub struct Guard(SdkTracerProvider);

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Err(e) = self.0.shutdown() {
                eprintln!("keel: spans not all exported at shutdown: {e}");
            }
        }
    }

    /// The OTLP collector's trace URL: `endpoint` is a base URL, as in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, to which `/v1/traces` is added.
    fn traces_url(endpoint: &str) -> String {
        let base = endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }
    }

    pub fn layer(
        endpoint: &str,
    ) -> anyhow::Result<(Box<dyn Layer<Registry> + Send + Sync>, Guard)> {
        // The exporter's HTTP client is reqwest with rustls, which needs keel's crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url(endpoint))
            .build()
            .context("building the OTLP exporter")?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("keel").build())
            .build();
        let tracer = provider.tracer("keel");
        Ok((
            tracing_opentelemetry::layer().with_tracer(tracer).boxed(),
            Guard(provider),
        ))
    }
}

#[cfg(feature = "otlp")]
pub use enabled::{Guard, layer};

#[cfg(not(feature = "otlp"))]
pub struct Guard;

#[cfg(not(feature = "otlp"))]
pub fn layer(
    _endpoint: &str,
) -> anyhow::Result<(
    Box<dyn tracing_subscriber::Layer<tracing_subscriber::registry::Registry> + Send + Sync>,
    Guard,
)> {
    anyhow::bail!(
        "this keel was built without OTLP export; build it with `cargo build --release --features otlp`"
    )
}
