//! Continuing W3C trace context through keel's own spans.
//!
//! Without the `otlp` feature keel exports no spans: the stored `traceparent` of a job is handed
//! on unchanged (lease responses, push deliveries) and these functions do nothing. With it, a
//! request's span is a child of the caller's `traceparent`, a push delivery's span is a child of
//! the job's, and the target receives the delivery span's own context, so a trace viewer shows
//! producer → keel delivery → target as one trace.

use tracing::Span;

/// Makes `span` a child of the remote context in `traceparent` (ignored when it does not
/// parse, or when no exporting layer is installed).
#[cfg(feature = "otlp")]
pub(crate) fn adopt(span: &Span, traceparent: Option<&str>) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(tp) = traceparent.and_then(keel_core::validate::traceparent) else {
        return;
    };
    let fields: Vec<&str> = tp.split('-').collect();
    let [_, trace, parent, flags] = fields.as_slice() else {
        return;
    };
    let (Ok(trace), Ok(parent), Ok(flags)) = (
        TraceId::from_hex(trace),
        SpanId::from_hex(parent),
        u8::from_str_radix(flags, 16),
    ) else {
        return;
    };
    let remote = SpanContext::new(
        trace,
        parent,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

#[cfg(not(feature = "otlp"))]
pub(crate) fn adopt(_span: &Span, _traceparent: Option<&str>) {}

/// The `traceparent` to send for work done in `span`: the span's own context when spans are
/// exported, else `stored` (the job's) unchanged.
#[cfg(feature = "otlp")]
pub(crate) fn outgoing(span: &Span, stored: Option<&str>) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    let own = cx.span().span_context().clone();
    if own.is_valid() && !own.is_remote() {
        Some(format!(
            "00-{:032x}-{:016x}-{:02x}",
            own.trace_id(),
            own.span_id(),
            own.trace_flags().to_u8()
        ))
    } else {
        stored.map(str::to_owned)
    }
}

#[cfg(not(feature = "otlp"))]
pub(crate) fn outgoing(_span: &Span, stored: Option<&str>) -> Option<String> {
    stored.map(str::to_owned)
}
