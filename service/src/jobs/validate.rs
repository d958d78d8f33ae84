//! Checks a request before anything is written, so a rejected request changes nothing.
//! Every message names the offending field by its proto path, e.g. `diagnostic.steps`.

use deephardway::v1::{SubmitRequest, submit_request::Input};
use tonic::Status;

pub const MAX_REQUEST_ID: usize = 128;
pub const MAX_MODEL_NAME: usize = 128;
pub const MAX_ECHO: usize = 4096;
pub const MAX_PROMPT: usize = 64 * 1024;
pub const MAX_EMBED_TEXTS: usize = 256;
pub const MAX_EMBED_BYTES: usize = 1024 * 1024;
pub const MAX_IMAGES: usize = 512;
pub const MAX_IMAGE_BYTES: usize = 8 * 1024 * 1024;
pub const MAX_IMAGES_TOTAL: usize = 32 * 1024 * 1024;
pub const MAX_TIMEOUT_MS: u32 = 7 * 24 * 3600 * 1000;
pub const MAX_REASON: usize = 1024;

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

fn at_most(field: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(invalid(field, format!("is {len} bytes; at most {max} allowed")));
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

/// Validates a submit request.
pub fn submit(req: &SubmitRequest) -> Result<(), Status> {
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
    at_most("request_id", req.request_id.len(), MAX_REQUEST_ID)?;
    in_range("timeout_ms", req.timeout_ms, 0, MAX_TIMEOUT_MS)?;
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
            let chat_bytes: usize = g.messages.iter().map(|m| m.content.len()).sum();
            at_most("generate.messages", chat_bytes, MAX_PROMPT)?;
            for (i, m) in g.messages.iter().enumerate() {
                if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                    return Err(invalid(
                        &format!("generate.messages[{i}].role"),
                        format!("{:?} must be system, user or assistant", m.role),
                    ));
                }
            }
            in_range("generate.max_tokens", g.max_tokens, 0, 8192)?;
            finite_in_range("generate.temperature", g.temperature, 0.0, 5.0)?;
            finite_in_range("generate.top_p", g.top_p, 0.0, 1.0)?;
            in_range("generate.top_k", g.top_k, 0, 1000)?;
            finite_in_range("generate.repetition_penalty", g.repetition_penalty, 0.0, 5.0)?;
            in_range("generate.stop", g.stop.len(), 0, 8)?;
            for (i, s) in g.stop.iter().enumerate() {
                let field = format!("generate.stop[{i}]");
                if s.is_empty() {
                    return Err(invalid(&field, "must not be empty"));
                }
                at_most(&field, s.len(), 256)?;
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
            in_range("train.hidden_sizes", t.hidden_sizes.len(), 0, 8)?;
            for (i, &h) in t.hidden_sizes.iter().enumerate() {
                in_range(&format!("train.hidden_sizes[{i}]"), h, 1, 4096)?;
            }
            // Architecture and optimizer names, as the worker will read them.
            deephardway_worker::runners::train::options(t).map_err(|e| match e.split_once(": ") {
                Some((field, why)) => invalid(field, why),
                None => Status::invalid_argument(e),
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deephardway::v1::DiagnosticInput;

    fn diagnostic(d: DiagnosticInput) -> SubmitRequest {
        SubmitRequest { input: Some(Input::Diagnostic(d)), ..Default::default() }
    }

    #[test]
    fn messages_name_the_field() {
        let err = submit(&diagnostic(DiagnosticInput { steps: 0, ..Default::default() })).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("diagnostic.steps:"), "{}", err.message());

        let err = submit(&SubmitRequest::default()).unwrap_err();
        assert!(err.message().starts_with("input:"), "{}", err.message());

        let mut req = diagnostic(DiagnosticInput { steps: 1, ..Default::default() });
        req.model = "a/b".into();
        assert!(submit(&req).unwrap_err().message().starts_with("model:"));
    }

    #[test]
    fn a_good_request_passes() {
        submit(&diagnostic(DiagnosticInput { steps: 3, step_ms: 10, ..Default::default() })).unwrap();
    }
}
