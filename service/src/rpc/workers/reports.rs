//! What a worker may report, checked before anything is stored: a worker is trusted to
//! run jobs, not to write whatever it likes into job records that clients read.
//!
//! - Progress must be a finite fraction in 0..=1 with at most [`MAX_METRICS`] finite
//!   metrics and a bounded message; a progress report that breaks these is dropped (the
//!   job's stored state stays as it was, and the job goes on).
//! - Output longer than [`MAX_OUTPUT_PER_REPORT`] is cut there (at a character boundary).
//! - A result must be of the job's kind and hold sane numbers for the job's input: one
//!   embedding per text, all of one length, finite; one prediction per image, with
//!   probabilities in 0..=1; finite losses and accuracies in 0..=1. Anything else fails
//!   the job with INTERNAL saying what was wrong, and the bad result is never stored, so
//!   no client sees it. The job fails rather than waiting: the worker considers it done
//!   and will not report again. Its session goes on (one runner's fault should not cost
//!   the worker's other jobs).
//! - A failure or cancellation keeps its code; its message and details are bounded.

use deephardway::{
    errors::RpcStatus,
    v1::{
        ClassifyResult, EmbedResult, Job, JobCancelled, JobKind, JobProgress, JobResult, TrainResult, job_event::Event,
        job_result, job_spec::Input,
    },
};
use tonic::Code;

/// Bounds on one report.
pub(super) const MAX_OUTPUT_PER_REPORT: usize = 1 << 20;
const MAX_METRICS: usize = 64;
const MAX_METRIC_NAME: usize = 128;
const MAX_PROGRESS_MESSAGE: usize = 4096;
/// A generated text (a result repeats the whole output) or a diagnostic echo.
const MAX_RESULT_TEXT: usize = 1 << 20;
/// An embedding's length (all-MiniLM-L6-v2's is 384; the largest common models' 4096).
const MAX_EMBEDDING_DIMS: usize = 1 << 16;
/// Classes one prediction names, and a class name's length.
const MAX_LABELS: usize = 4096;
const MAX_LABEL: usize = 256;
/// A failure's or cancellation's message, and a failure's details, in bytes.
const MAX_REASON: usize = 4096;
const MAX_DETAILS: usize = 64 << 10;

/// What a job's reports are checked against: its kind and how many items its input has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Expected {
    pub kind: JobKind,
    /// Texts of an embed job, images of a classify job.
    pub items: Option<usize>,
}

impl Expected {
    pub fn of(job: &Job) -> Self {
        let items = match job.spec.as_ref().and_then(|s| s.input.as_ref()) {
            Some(Input::Embed(embed)) => Some(embed.texts.len()),
            Some(Input::Classify(classify)) => Some(classify.images.len()),
            _ => None,
        };
        Expected { kind: job.kind(), items }
    }
}

impl From<JobKind> for Expected {
    fn from(kind: JobKind) -> Self {
        Expected { kind, items: None }
    }
}

/// Checks one report (see the module's comment). `Err` says why a report is dropped.
pub(super) fn check_report(event: Event, expected: Expected) -> Result<Event, String> {
    match event {
        Event::Progress(progress) => check_progress(progress).map(Event::Progress),
        Event::Output(mut output) => {
            if output.text.len() > MAX_OUTPUT_PER_REPORT {
                tracing::warn!(bytes = output.text.len(), "cutting a report's output to {MAX_OUTPUT_PER_REPORT} bytes");
                output.text.truncate(char_boundary(&output.text, MAX_OUTPUT_PER_REPORT));
            }
            Ok(Event::Output(output))
        }
        Event::Result(result) => Ok(match check_result(&result, expected) {
            Ok(()) => Event::Result(result),
            Err(why) => Event::Failed(RpcStatus { code: Code::Internal as i32, message: why, details: Vec::new() }),
        }),
        Event::Failed(mut failure) => {
            if failure.code == Code::Ok as i32 || Code::from_i32(failure.code) as i32 != failure.code {
                failure.code = Code::Unknown as i32;
            }
            failure.message.truncate(char_boundary(&failure.message, MAX_REASON));
            if failure.details.iter().map(|d| d.type_url.len() + d.value.len()).sum::<usize>() > MAX_DETAILS {
                failure.details.clear();
            }
            Ok(Event::Failed(failure))
        }
        Event::Cancelled(JobCancelled { mut reason }) => {
            reason.truncate(char_boundary(&reason, MAX_REASON));
            Ok(Event::Cancelled(JobCancelled { reason }))
        }
        Event::Queued(_) | Event::Started(_) => Err("workers may not report queued or started events".into()),
    }
}

fn check_progress(progress: JobProgress) -> Result<JobProgress, String> {
    if !progress.fraction.is_finite() || !(0.0..=1.0).contains(&progress.fraction) {
        return Err(format!("progress fraction {} is not within 0 to 1", progress.fraction));
    }
    if progress.metrics.len() > MAX_METRICS {
        return Err(format!("{} metrics; at most {MAX_METRICS}", progress.metrics.len()));
    }
    if let Some((name, value)) =
        progress.metrics.iter().find(|(name, value)| !value.is_finite() || name.len() > MAX_METRIC_NAME)
    {
        return Err(format!("metric {:?} = {value} is not a finite number with a short name", truncated(name)));
    }
    if progress.message.len() > MAX_PROGRESS_MESSAGE {
        return Err(format!("a progress message of {} bytes; at most {MAX_PROGRESS_MESSAGE}", progress.message.len()));
    }
    Ok(progress)
}

fn kind_name(kind: JobKind) -> String {
    format!("{kind:?}").to_lowercase()
}

/// Why a result cannot be the job's, as the job's failure message says it.
fn check_result(result: &JobResult, expected: Expected) -> Result<(), String> {
    let reported = match &result.value {
        Some(job_result::Value::Diagnostic(_)) => JobKind::Diagnostic,
        Some(job_result::Value::Generate(_)) => JobKind::Generate,
        Some(job_result::Value::Embed(_)) => JobKind::Embed,
        Some(job_result::Value::Classify(_)) => JobKind::Classify,
        Some(job_result::Value::Train(_)) => JobKind::Train,
        None => JobKind::Unspecified,
    };
    if reported != expected.kind {
        return Err(format!(
            "the worker reported a {} result for a {} job",
            kind_name(reported),
            kind_name(expected.kind)
        ));
    }
    let wrong = match &result.value {
        Some(job_result::Value::Diagnostic(d)) => within("echo", d.echo.len(), MAX_RESULT_TEXT),
        Some(job_result::Value::Generate(g)) => within("text", g.text.len(), MAX_RESULT_TEXT),
        Some(job_result::Value::Embed(e)) => check_embed(e, expected.items),
        Some(job_result::Value::Classify(c)) => check_classify(c, expected.items),
        Some(job_result::Value::Train(t)) => check_train(t),
        None => Ok(()),
    };
    wrong.map_err(|why| format!("the worker reported an invalid {} result: {why}", kind_name(reported)))
}

fn within(what: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max { Err(format!("{what} of {len} bytes; at most {max}")) } else { Ok(()) }
}

fn count_matches(what: &str, got: usize, expected: Option<usize>) -> Result<(), String> {
    match expected {
        Some(n) if n != got => Err(format!("{got} {what} for {n} inputs")),
        _ => Ok(()),
    }
}

fn check_embed(result: &EmbedResult, texts: Option<usize>) -> Result<(), String> {
    count_matches("embeddings", result.embeddings.len(), texts)?;
    let dims = result.embeddings.first().map_or(0, |e| e.values.len());
    if result.embeddings.is_empty() {
        return Ok(());
    }
    if dims == 0 || dims > MAX_EMBEDDING_DIMS {
        return Err(format!("embeddings of {dims} values; 1 to {MAX_EMBEDDING_DIMS}"));
    }
    for (i, embedding) in result.embeddings.iter().enumerate() {
        if embedding.values.len() != dims {
            return Err(format!("embedding {i} has {} values, the first {dims}", embedding.values.len()));
        }
        if let Some(v) = embedding.values.iter().find(|v| !v.is_finite()) {
            return Err(format!("embedding {i} holds {v}"));
        }
    }
    Ok(())
}

fn check_classify(result: &ClassifyResult, images: Option<usize>) -> Result<(), String> {
    count_matches("predictions", result.predictions.len(), images)?;
    for (i, prediction) in result.predictions.iter().enumerate() {
        if prediction.probabilities.len() > MAX_LABELS {
            return Err(format!(
                "prediction {i} names {} classes; at most {MAX_LABELS}",
                prediction.probabilities.len()
            ));
        }
        if prediction.label.len() > MAX_LABEL || prediction.probabilities.keys().any(|l| l.len() > MAX_LABEL) {
            return Err(format!("prediction {i} has a label longer than {MAX_LABEL} bytes"));
        }
        if !prediction.probabilities.is_empty() && !prediction.probabilities.contains_key(&prediction.label) {
            return Err(format!("prediction {i}'s label is not among its classes"));
        }
        if let Some((label, p)) = prediction.probabilities.iter().find(|(_, p)| !(0.0..=1.0).contains(*p)) {
            return Err(format!("prediction {i} gives {:?} the probability {p}", truncated(label)));
        }
    }
    Ok(())
}

fn check_train(result: &TrainResult) -> Result<(), String> {
    let fraction = |name: &str, v: f64| {
        if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(format!("{name} {v} is not within 0 to 1")) }
    };
    if !result.loss.is_finite() || result.loss < 0.0 {
        return Err(format!("loss {} is not a finite number from 0", result.loss));
    }
    fraction("train_accuracy", result.train_accuracy)?;
    fraction("validation_accuracy", result.validation_accuracy)?;
    if !result.epoch_ms.is_finite() || result.epoch_ms < 0.0 {
        return Err(format!("epoch_ms {} is not a finite number from 0", result.epoch_ms));
    }
    Ok(())
}

/// The start of a name a peer sent, for a log line.
fn truncated(name: &str) -> &str {
    &name[..char_boundary(name, 64)]
}

/// The largest character boundary of `text` at or before `at`.
fn char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deephardway::v1::{Embedding, JobOutput, Prediction};

    fn progress(f: f64) -> Event {
        Event::Progress(JobProgress { fraction: f, ..Default::default() })
    }

    fn failure(event: Result<Event, String>) -> String {
        match event {
            Ok(Event::Failed(failure)) => {
                assert_eq!(failure.code, Code::Internal as i32);
                failure.message
            }
            other => panic!("the job fails, not {other:?}"),
        }
    }

    #[test]
    fn progress_is_finite_and_bounded() {
        for bad in [f64::NAN, f64::INFINITY, -0.1, 1.5] {
            assert!(check_report(progress(bad), JobKind::Diagnostic.into()).is_err(), "{bad}");
        }
        assert_eq!(check_report(progress(0.5), JobKind::Diagnostic.into()), Ok(progress(0.5)));
        let metric = |v: f64| {
            Event::Progress(JobProgress {
                fraction: 0.5,
                metrics: [("loss".to_string(), v)].into(),
                ..Default::default()
            })
        };
        assert!(check_report(metric(f64::NAN), JobKind::Train.into()).is_err());
        assert!(check_report(metric(f64::NEG_INFINITY), JobKind::Train.into()).is_err());
        assert!(check_report(metric(0.25), JobKind::Train.into()).is_ok());
        let many = (0..=MAX_METRICS).map(|i| (i.to_string(), 1.0)).collect();
        let many = Event::Progress(JobProgress { metrics: many, ..Default::default() });
        assert!(check_report(many, JobKind::Train.into()).is_err());
    }

    #[test]
    fn output_is_cut_at_a_character_boundary() {
        let long = Event::Output(JobOutput { text: "é".repeat(MAX_OUTPUT_PER_REPORT) });
        let Ok(Event::Output(cut)) = check_report(long, JobKind::Generate.into()) else { panic!("output is kept") };
        assert!(cut.text.len() <= MAX_OUTPUT_PER_REPORT && cut.text.len() > MAX_OUTPUT_PER_REPORT - 4);
    }

    #[test]
    fn a_result_of_another_kind_fails_the_job() {
        let diagnostic = Event::Result(JobResult { value: Some(job_result::Value::Diagnostic(Default::default())) });
        assert_eq!(check_report(diagnostic.clone(), JobKind::Diagnostic.into()), Ok(diagnostic.clone()));
        assert_eq!(
            failure(check_report(diagnostic, JobKind::Generate.into())),
            "the worker reported a diagnostic result for a generate job"
        );
    }

    #[test]
    fn results_hold_sane_numbers_for_the_input() {
        let embed = |vectors: Vec<Vec<f32>>| {
            Event::Result(JobResult {
                value: Some(job_result::Value::Embed(EmbedResult {
                    embeddings: vectors.into_iter().map(|values| Embedding { values }).collect(),
                    ..Default::default()
                })),
            })
        };
        let two = Expected { kind: JobKind::Embed, items: Some(2) };
        assert!(matches!(check_report(embed(vec![vec![0.1, 0.2], vec![0.3, 0.4]]), two), Ok(Event::Result(_))));
        assert!(failure(check_report(embed(vec![vec![0.1, f32::NAN], vec![0.3, 0.4]]), two)).contains("NaN"));
        assert!(failure(check_report(embed(vec![vec![0.1, 0.2]]), two)).contains("1 embeddings for 2 inputs"));
        assert!(failure(check_report(embed(vec![vec![0.1, 0.2], vec![0.3]]), two)).contains("embedding 1"));
        // An embed result for a generate job fails the job, NaN or not.
        let wrong = failure(check_report(embed(vec![vec![f32::NAN]]), JobKind::Generate.into()));
        assert_eq!(wrong, "the worker reported a embed result for a generate job");

        let classify = |p: f32| {
            Event::Result(JobResult {
                value: Some(job_result::Value::Classify(ClassifyResult {
                    predictions: vec![Prediction {
                        label: "cat".into(),
                        probabilities: [("cat".into(), p), ("dog".into(), 1.0 - p)].into(),
                    }],
                })),
            })
        };
        let one = Expected { kind: JobKind::Classify, items: Some(1) };
        assert!(matches!(check_report(classify(0.9), one), Ok(Event::Result(_))));
        assert!(failure(check_report(classify(f32::NAN), one)).contains("probability NaN"));
        // 1.5 for one class, -0.5 for the other: either is named.
        let out_of_range = failure(check_report(classify(1.5), one));
        assert!(
            out_of_range.contains("probability 1.5") || out_of_range.contains("probability -0.5"),
            "{out_of_range}"
        );

        let train = |loss: f64, accuracy: f64| {
            Event::Result(JobResult {
                value: Some(job_result::Value::Train(TrainResult {
                    loss,
                    train_accuracy: accuracy,
                    ..Default::default()
                })),
            })
        };
        assert!(matches!(check_report(train(0.3, 0.9), JobKind::Train.into()), Ok(Event::Result(_))));
        assert!(failure(check_report(train(f64::NAN, 0.9), JobKind::Train.into())).contains("loss NaN"));
        assert!(failure(check_report(train(0.3, f64::INFINITY), JobKind::Train.into())).contains("train_accuracy"));
    }

    #[test]
    fn failures_keep_a_real_code_and_a_bounded_message() {
        let failed = |code: i32, message: String| Event::Failed(RpcStatus { code, message, details: Vec::new() });
        let Ok(Event::Failed(f)) = check_report(failed(0, "x".repeat(10 * MAX_REASON)), JobKind::Generate.into())
        else {
            panic!("kept")
        };
        assert_eq!(f.code, Code::Unknown as i32);
        assert_eq!(f.message.len(), MAX_REASON);
        let Ok(Event::Failed(f)) = check_report(failed(3, "bad".into()), JobKind::Generate.into()) else {
            panic!("kept")
        };
        assert_eq!((f.code, f.message.as_str()), (3, "bad"));
    }
}
