//! Checks a request before anything is written, so a rejected request changes nothing.
//! Every error is INVALID_ARGUMENT naming the offending field by its proto path (relative
//! to the job spec for the job's own fields, e.g. `diagnostic.steps`), in the message and
//! in a `google.rpc.BadRequest` detail.

use deephardway::{
    errors::invalid_field,
    v1::{JobSpec, chat_message::Role, job_spec::Input},
};
use prost_types::Duration;
use tonic::Status;

pub const MAX_REQUEST_ID: usize = 128;
pub const MAX_MODEL_NAME: usize = 128;
pub const MAX_ECHO: usize = 4096;
pub const MAX_PROMPT: usize = 64 * 1024;
/// Every repeated field is capped by count as well as by bytes, so a request of many
/// empty elements (each a few bytes on the wire, far more once decoded) is refused.
pub const MAX_MESSAGES: usize = 1000;
pub const MAX_STOP: usize = 8;
pub const MAX_STOP_BYTES: usize = 256;
pub const MAX_HIDDEN_SIZES: usize = 8;
pub const MAX_EMBED_TEXTS: usize = 256;
pub const MAX_EMBED_BYTES: usize = 1024 * 1024;
pub const MAX_IMAGES: usize = 512;
pub const MAX_IMAGE_BYTES: usize = 8 * 1024 * 1024;
pub const MAX_IMAGES_TOTAL: usize = 32 * 1024 * 1024;
/// The longest a job may run: a day.
pub const MAX_TIMEOUT_SECONDS: i64 = 24 * 3600;
pub const MAX_REASON: usize = 1024;

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    invalid_field(field, why.to_string())
}

fn at_most(field: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(invalid(field, format!("is {len} bytes; at most {max} allowed")));
    }
    Ok(())
}

fn count_at_most(field: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(invalid(field, format!("has {len} elements; at most {max} allowed")));
    }
    Ok(())
}

fn in_range<T: PartialOrd + std::fmt::Display>(field: &str, v: T, lo: T, hi: T) -> Result<(), Status> {
    if !(v >= lo && v <= hi) {
        return Err(invalid(field, format!("is {v}; must be between {lo} and {hi}")));
    }
    Ok(())
}

fn finite_in_range(field: &str, v: f32, lo: f32, hi: f32) -> Result<(), Status> {
    if !v.is_finite() {
        return Err(invalid(field, "must be a finite number"));
    }
    in_range(field, v, lo, hi)
}

/// A model name: letters, digits and `._:-`, so it can sit inside a store key.
pub fn model_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid(field, "is required"));
    }
    at_most(field, name.len(), MAX_MODEL_NAME)?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)) {
        return Err(invalid(field, format!("{name:?} may hold only letters, digits and . _ : -")));
    }
    Ok(())
}

/// A dataset's or trained model's name: letters, digits and `._-`, not starting with a
/// dot, so it is a safe path in the artifact store and a key in the job store.
pub fn artifact_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid(field, "is required"));
    }
    at_most(field, name.len(), MAX_MODEL_NAME)?;
    if name.starts_with('.') || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(invalid(field, format!("{name:?} may hold only letters, digits and . _ - (not first)")));
    }
    Ok(())
}

/// A job id as the service makes them (a UUID); anything else cannot exist.
pub fn job_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid("job_id", "is required"));
    }
    if id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(invalid("job_id", format!("{id:?} is not a job id")));
    }
    Ok(())
}

pub fn reason(reason: &str) -> Result<(), Status> {
    at_most("reason", reason.len(), MAX_REASON)
}

pub fn request_id(request_id: &str) -> Result<(), Status> {
    at_most("request_id", request_id.len(), MAX_REQUEST_ID)
}

/// A page size: 0 (the default) to 1000.
pub fn page_size(page_size: u32, default: usize) -> Result<usize, Status> {
    in_range("page_size", page_size, 0, 1000)?;
    Ok(if page_size == 0 { default } else { page_size as usize })
}

/// A job's running-time limit: unset, or a whole positive duration of at most a day.
fn timeout(timeout: Option<&Duration>) -> Result<(), Status> {
    let Some(t) = timeout else { return Ok(()) };
    if t.seconds < 0 || t.nanos < 0 || (t.seconds == 0 && t.nanos == 0) || t.nanos >= 1_000_000_000 {
        return Err(invalid("timeout", "must be a positive duration"));
    }
    if t.seconds > MAX_TIMEOUT_SECONDS || (t.seconds == MAX_TIMEOUT_SECONDS && t.nanos > 0) {
        return Err(invalid("timeout", format!("is {}s; at most {MAX_TIMEOUT_SECONDS}s (a day)", t.seconds)));
    }
    Ok(())
}

/// An enum field's value, if this version knows it (protobuf keeps unknown numbers).
pub fn known_enum<E: TryFrom<i32>>(field: &str, value: i32) -> Result<E, Status> {
    E::try_from(value).map_err(|_| invalid(field, format!("{value} is not a known value")))
}

/// Validates a job spec.
pub fn spec(req: &JobSpec) -> Result<(), Status> {
    let Some(input) = &req.input else {
        return Err(invalid("input", "is required: set one of diagnostic, generate, embed, classify, train"));
    };
    match (input, req.model.split_once('@')) {
        _ if req.model.is_empty() => {}
        // A trained model, `name@version`.
        (Input::Classify(_), Some((name, _))) => artifact_name("model", name)?,
        (Input::Classify(_), None) => artifact_name("model", &req.model)?,
        _ => model_name("model", &req.model)?,
    }
    in_range("priority", req.priority, -100, 100)?;
    timeout(req.timeout.as_ref())?;
    in_range("max_attempts", req.max_attempts, 0, 10)?;
    match input {
        Input::Diagnostic(d) => {
            in_range("diagnostic.steps", d.steps, 1, 100_000)?;
            in_range("diagnostic.step_ms", d.step_ms, 0, 600_000)?;
            in_range("diagnostic.fail_at_step", d.fail_at_step, 0, d.steps)?;
            at_most("diagnostic.echo", d.echo.len(), MAX_ECHO)?;
            at_most("diagnostic.output_per_step", d.output_per_step.len(), MAX_ECHO)?;
        }
        Input::Generate(g) => {
            match (g.prompt.is_empty(), g.messages.is_empty()) {
                (true, true) => return Err(invalid("generate.prompt", "set prompt or messages")),
                (false, false) => return Err(invalid("generate.messages", "set prompt or messages, not both")),
                _ => {}
            }
            at_most("generate.prompt", g.prompt.len(), MAX_PROMPT)?;
            count_at_most("generate.messages", g.messages.len(), MAX_MESSAGES)?;
            let chat_bytes: usize = g.messages.iter().map(|m| m.content.len()).sum();
            at_most("generate.messages", chat_bytes, MAX_PROMPT)?;
            for (i, m) in g.messages.iter().enumerate() {
                if matches!(Role::try_from(m.role), Err(_) | Ok(Role::Unspecified)) {
                    return Err(invalid(
                        &format!("generate.messages[{i}].role"),
                        "must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT",
                    ));
                }
            }
            in_range("generate.max_tokens", g.max_tokens, 0, 8192)?;
            finite_in_range("generate.temperature", g.temperature, 0.0, 5.0)?;
            finite_in_range("generate.top_p", g.top_p, 0.0, 1.0)?;
            in_range("generate.top_k", g.top_k, 0, 1000)?;
            finite_in_range("generate.repetition_penalty", g.repetition_penalty, 0.0, 5.0)?;
            count_at_most("generate.stop", g.stop.len(), MAX_STOP)?;
            for (i, s) in g.stop.iter().enumerate() {
                let field = format!("generate.stop[{i}]");
                if s.is_empty() {
                    return Err(invalid(&field, "must not be empty"));
                }
                at_most(&field, s.len(), MAX_STOP_BYTES)?;
            }
        }
        Input::Embed(e) => {
            in_range("embed.texts", e.texts.len(), 1, MAX_EMBED_TEXTS)?;
            let total: usize = e.texts.iter().map(String::len).sum();
            at_most("embed.texts", total, MAX_EMBED_BYTES)?;
        }
        Input::Classify(c) => {
            in_range("classify.images", c.images.len(), 1, MAX_IMAGES)?;
            let total: usize = c.images.iter().map(Vec::len).sum();
            at_most("classify.images", total, MAX_IMAGES_TOTAL)?;
            for (i, img) in c.images.iter().enumerate() {
                let field = format!("classify.images[{i}]");
                if img.is_empty() {
                    return Err(invalid(&field, "is empty"));
                }
                at_most(&field, img.len(), MAX_IMAGE_BYTES)?;
            }
        }
        Input::Train(t) => {
            match (t.dataset.is_empty(), t.dataset_path.is_empty()) {
                (true, true) => return Err(invalid("train.dataset", "is required (or dataset_path)")),
                (false, false) => return Err(invalid("train.dataset_path", "set dataset or dataset_path, not both")),
                (false, true) => artifact_name("train.dataset", &t.dataset)?,
                (true, false) => at_most("train.dataset_path", t.dataset_path.len(), 4096)?,
            }
            if !t.output_model.is_empty() {
                artifact_name("train.output_model", &t.output_model)?;
            }
            finite_in_range("train.learning_rate", t.learning_rate, 0.0, 10.0)?;
            finite_in_range("train.validation_split", t.validation_split, 0.0, 0.5)?;
            in_range("train.input_size", t.input_size, 0, 512)?;
            in_range("train.epochs", t.epochs, 0, 100_000)?;
            in_range("train.batch_size", t.batch_size, 0, 100_000)?;
            in_range("train.augment_shift", t.augment_shift, 0, 8)?;
            count_at_most("train.hidden_sizes", t.hidden_sizes.len(), MAX_HIDDEN_SIZES)?;
            for (i, &h) in t.hidden_sizes.iter().enumerate() {
                in_range(&format!("train.hidden_sizes[{i}]"), h, 1, 4096)?;
            }
            // The options as the worker will read them (architecture, optimizer, schedule).
            deephardway::train::options(t)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deephardway::v1::DiagnosticInput;

    fn diagnostic(d: DiagnosticInput) -> JobSpec {
        JobSpec { input: Some(Input::Diagnostic(d)), ..Default::default() }
    }

    #[test]
    fn messages_name_the_field() {
        let err = spec(&diagnostic(DiagnosticInput { steps: 0, ..Default::default() })).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("diagnostic.steps:"), "{}", err.message());
        let fields: Vec<String> = deephardway::errors::violations(&err).into_iter().map(|v| v.field).collect();
        assert_eq!(fields, ["diagnostic.steps"]);

        let err = spec(&JobSpec::default()).unwrap_err();
        assert!(err.message().starts_with("input:"), "{}", err.message());

        let mut req = diagnostic(DiagnosticInput { steps: 1, ..Default::default() });
        req.model = "a/b".into();
        assert!(spec(&req).unwrap_err().message().starts_with("model:"));
    }

    #[test]
    fn timeouts_are_positive_and_at_most_a_day() {
        let mut req = diagnostic(DiagnosticInput { steps: 1, ..Default::default() });
        for (seconds, nanos, ok) in
            [(1, 0, true), (0, 1, true), (86_400, 0, true), (0, 0, false), (-1, 0, false), (86_400, 1, false)]
        {
            req.timeout = Some(Duration { seconds, nanos });
            assert_eq!(spec(&req).is_ok(), ok, "{seconds}s {nanos}ns");
        }
    }

    #[test]
    fn repeated_fields_are_capped_by_count() {
        use deephardway::v1::{ChatMessage, GenerateInput};
        let messages = vec![ChatMessage { role: Role::User as i32, content: String::new() }; 100_000];
        let req = JobSpec {
            input: Some(Input::Generate(GenerateInput { messages, ..Default::default() })),
            ..Default::default()
        };
        let err = spec(&req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("generate.messages:"), "{}", err.message());

        let messages = vec![ChatMessage { role: Role::User as i32, content: "hi".into() }; MAX_MESSAGES];
        let req = JobSpec {
            input: Some(Input::Generate(GenerateInput { messages, ..Default::default() })),
            ..Default::default()
        };
        spec(&req).unwrap();

        let stop = vec!["x".to_string(); MAX_STOP + 1];
        let req = JobSpec {
            input: Some(Input::Generate(GenerateInput { prompt: "p".into(), stop, ..Default::default() })),
            ..Default::default()
        };
        assert!(spec(&req).unwrap_err().message().starts_with("generate.stop:"));
    }

    #[test]
    fn a_good_request_passes() {
        spec(&diagnostic(DiagnosticInput { steps: 3, step_ms: 10, ..Default::default() })).unwrap();
    }
}
