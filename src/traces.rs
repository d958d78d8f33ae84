//! Trace context, as the service and the worker pass it along: W3C `traceparent` strings
//! (`00-<trace id>-<span id>-<flags>`).
//!
//! A job's trace crosses three processes and a store: a client sends `traceparent`
//! metadata with CreateJob/RunJob, the service keeps its own submit span's context with
//! the job (the job may wait in line for hours, on another replica), and the assignment
//! carries the context the worker's `run` span continues. One string format everywhere,
//! parsed and written here, keeps both sides in agreement; the worker and the service
//! only need `opentelemetry`'s API crate for it, never the SDK or an exporter (those are
//! the binary's choice: `deephardway --otlp-endpoint`).
//!
//! Everything here is a no-op while no OpenTelemetry layer is installed: spans then have
//! no trace context to read, and setting a parent does nothing.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::SystemTime,
};

pub use opentelemetry::KeyValue;
use opentelemetry::{
    Context,
    trace::{Span as _, SpanBuilder, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The gRPC metadata key (an HTTP header) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Marks traces as exported by this process (the binary calls it once it has installed
/// its OpenTelemetry layer), so that work done only for traces — reading a job's stored
/// trace context, counting tokens for attributes — is skipped while they are off.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span context a `traceparent` value names, or `None` if it is not a valid one.
/// Follows the W3C Trace Context rules: lowercase hex, version `ff` invalid, all-zero
/// ids invalid, and a later version's extra fields (after a `-`) ignored.
pub fn parse(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let fields = value.get(..55)?;
    let rest = &value[55..];
    let mut parts = fields.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !(lower_hex(version, 2) && lower_hex(trace, 32) && lower_hex(span, 16) && lower_hex(flags, 2)) {
        return None;
    }
    // Version 00 is exactly 55 characters; later versions may append fields.
    if version == "ff" || (version == "00" && !rest.is_empty()) || (!rest.is_empty() && !rest.starts_with('-')) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    // Only the sampled bit is defined; others are not propagated.
    let flags = TraceFlags::new(flags) & TraceFlags::SAMPLED;
    Some(SpanContext::new(trace_id, span_id, flags, true, TraceState::default()))
}

/// The `traceparent` value of a span context, `None` for an invalid (empty) one.
pub fn format(cx: &SpanContext) -> Option<String> {
    cx.is_valid().then(|| format!("00-{}-{}-{:02x}", cx.trace_id(), cx.span_id(), cx.trace_flags().to_u8()))
}

/// An OpenTelemetry context whose (remote) parent is the span `traceparent` names.
pub fn remote_context(traceparent: &str) -> Option<Context> {
    parse(traceparent).map(|cx| Context::new().with_remote_span_context(cx))
}

/// Makes `span` a child of the span `traceparent` names, so that it joins that trace.
/// Does nothing for an empty or invalid value (the span then starts a trace of its own,
/// or continues its tracing parent's) or while traces are off. Must be called before the
/// span is first entered.
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    if let Some(parent) = remote_context(traceparent) {
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` of `span`, to hand to the next hop; `None` while traces are off.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    format(span.context().span().span_context())
}

/// Records a span that covered `start..end`, a child of `parent` (a `traceparent`; a new
/// trace if it is empty), and returns its own `traceparent`; `None` while traces are off.
///
/// For the spans of a job that no code waits through: the time in queue is only known
/// once the job starts (perhaps on another replica than the one that queued it), and a
/// `tracing` span cannot be given a start time in the past.
pub fn record_span(
    name: &'static str,
    parent: &str,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) -> Option<String> {
    if !enabled() {
        return None;
    }
    let parent = remote_context(parent).unwrap_or_default();
    let tracer = opentelemetry::global::tracer("deephardway");
    let mut span = SpanBuilder::from_name(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    let traceparent = format(span.span_context());
    span.end_with_timestamp(end.max(start));
    traceparent
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        let cx = parse(EXAMPLE).expect("valid");
        assert_eq!(cx.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(format(&cx).as_deref(), Some(EXAMPLE));
        let unsampled = EXAMPLE.replace("-01", "-00");
        assert!(!parse(&unsampled).unwrap().is_sampled());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} was accepted");
        }
        // A later version may add fields.
        assert!(parse(&format!("{}-extra", EXAMPLE.replacen("00", "01", 1))).is_some());
        assert!(format(&SpanContext::empty_context()).is_none());
    }

    #[test]
    fn without_a_layer_spans_carry_no_context() {
        let span = tracing::info_span!("untraced");
        continue_from(&span, EXAMPLE);
        assert_eq!(traceparent_of(&span), None);
    }
}
