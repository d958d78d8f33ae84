//! The worker's spans of a job (exported only when the binary was given
//! `--otlp-endpoint`; always in the logs, so every line a job's code logs names its job).
//!
//! - `run`: the whole job on this worker, from the assignment to the last report. It
//!   continues the assignment's `traceparent` (the service's `dispatch` span), so the run
//!   joins the job's trace; without one it starts a trace of its own.
//! - `gen_ai` (named `{operation} {model}` in the trace, as the OpenTelemetry GenAI
//!   semantic conventions name spans): the model's work for a generate or embed job, with
//!   `gen_ai.operation.name` (`text_completion` for a prompt, `chat` for messages,
//!   `embeddings`), `gen_ai.request.model` and the token counts `gen_ai.usage.*`.

use deephardway::{
    kind_of,
    v1::{JobKind, JobResult, job_result, job_spec::Input},
    worker::v1::Assignment,
};
use tracing::{Span, field::Empty};

/// The `run` span of an assignment, a child of the trace context it carries.
pub fn run_span(assignment: &Assignment) -> Span {
    let kind = kind_name(input(assignment));
    let span = tracing::info_span!(
        "run",
        deephardway.job.id = %assignment.job_id,
        deephardway.job.kind = kind,
        deephardway.job.attempt = assignment.attempt,
        deephardway.model = %assignment.model,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    deephardway::traces::continue_from(&span, &assignment.traceparent);
    span
}

/// Marks the current `run` span as failed, with the job's status, so that trace views
/// show failed jobs as errors.
pub fn record_failure(status: &tonic::Status) {
    let span = Span::current();
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", format!("{:?}: {}", status.code(), status.message()));
}

/// The `gen_ai` span for a generate or embed job, a child of the current (`run`) span;
/// `None` for other kinds. Its token counts are recorded by [`record_usage`] and, for
/// embed jobs (whose result carries none), by the embed runner.
pub fn gen_ai_span(assignment: &Assignment) -> Option<Span> {
    let operation = match input(assignment)? {
        Input::Generate(g) if g.messages.is_empty() => "text_completion",
        Input::Generate(_) => "chat",
        Input::Embed(_) => "embeddings",
        _ => return None,
    };
    Some(tracing::info_span!(
        "gen_ai",
        otel.name = format!("{operation} {}", assignment.model),
        gen_ai.operation.name = operation,
        gen_ai.request.model = %assignment.model,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        deephardway.job.id = %assignment.job_id,
    ))
}

/// Records a generate job's token counts on its `gen_ai` span (as i64: the OpenTelemetry
/// bridge exports unsigned numbers as strings, and the conventions want integers).
pub fn record_usage(span: &Span, result: &JobResult) {
    if let Some(job_result::Value::Generate(g)) = &result.value {
        span.record("gen_ai.usage.input_tokens", i64::from(g.prompt_tokens));
        span.record("gen_ai.usage.output_tokens", i64::from(g.completion_tokens));
    }
}

fn input(assignment: &Assignment) -> Option<&Input> {
    assignment.spec.as_ref().and_then(|spec| spec.input.as_ref())
}

fn kind_name(input: Option<&Input>) -> &'static str {
    match input.map(kind_of) {
        Some(JobKind::Diagnostic) => "diagnostic",
        Some(JobKind::Generate) => "generate",
        Some(JobKind::Embed) => "embed",
        Some(JobKind::Classify) => "classify",
        Some(JobKind::Train) => "train",
        Some(JobKind::Unspecified) | None => "unknown",
    }
}
