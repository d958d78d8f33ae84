//! The built-in diagnostic job, deephardway's equivalent of Triton's identity model: it
//! needs no weights, sleeps through `steps` steps of `step_ms` each, reports progress
//! (and optional output) after every step, can be told to fail at a given step, and
//! echoes a string back. Tests and benchmarks use it to exercise the whole path —
//! queue, dispatch, streaming, cancellation, failure — without the cost of a model.

use std::time::Duration;

use deephardway::{
    v1::{DiagnosticResult, JobKind, JobOutput, JobProgress, JobResult, job_event::Event, job_result, job_spec::Input},
    worker::v1::ServedModel,
};

use crate::runner::{JobContext, JobError, Runner, wrong_kind};

pub const MODEL: &str = "diagnostic";

pub struct DiagnosticRunner;

#[tonic::async_trait]
impl Runner for DiagnosticRunner {
    fn models(&self) -> Vec<ServedModel> {
        vec![ServedModel {
            name: MODEL.into(),
            kind: JobKind::Diagnostic as i32,
            description: "built-in test job: timed steps with progress, optional failure".into(),
            ..Default::default()
        }]
    }

    async fn run(&self, job: JobContext) -> Result<JobResult, JobError> {
        let Some(Input::Diagnostic(input)) = job.input().cloned() else {
            return Err(wrong_kind("diagnostic"));
        };
        let steps = input.steps.max(1);
        for step in 1..=steps {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(u64::from(input.step_ms))) => {}
                _ = job.cancel.cancelled() => return Err(JobError::Cancelled),
            }
            if step == input.fail_at_step {
                return Err(JobError::internal(format!("diagnostic job failed at step {step} as requested")));
            }
            if !input.output_per_step.is_empty() {
                job.emit(Event::Output(JobOutput { text: input.output_per_step.clone() }));
            }
            job.emit(Event::Progress(JobProgress {
                fraction: f64::from(step) / f64::from(steps),
                message: format!("step {step}/{steps}"),
                metrics: [("step".to_string(), f64::from(step))].into(),
            }));
        }
        Ok(JobResult { value: Some(job_result::Value::Diagnostic(DiagnosticResult { steps, echo: input.echo })) })
    }
}
