//! The requests OpenAI's clients send, as serde reads them, and the checks that turn them
//! into job inputs. What deephardway cannot honour is refused by name (`n` > 1, token
//! arrays, tools, logprobs) rather than silently ignored; parameters that change nothing
//! here (`user`, `metadata`, zero penalties) are accepted.

use deephardway::v1::{ChatMessage, GenerateInput, chat_message::Role};
use serde::Deserialize;
use serde_json::Value;

use super::errors::ApiError;

/// `"text"` or `["text", …]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<Value>),
}

impl OneOrMany {
    /// The strings; token arrays (numbers) are refused, naming `param`.
    pub fn strings(self, param: &str) -> Result<Vec<String>, ApiError> {
        match self {
            OneOrMany::One(text) => Ok(vec![text]),
            OneOrMany::Many(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(text) => Ok(text),
                    Value::Number(_) | Value::Array(_) => Err(ApiError::invalid(
                        param,
                        format!("{param}[{i}]: token arrays are not supported; send text"),
                    )),
                    other => Err(ApiError::invalid(param, format!("{param}[{i}]: expected a string, got {other}"))),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// What chat completions and completions share: sampling, length, streaming.
#[derive(Debug, Deserialize, Default)]
pub struct Sampling {
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<u64>,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

impl Sampling {
    /// Fills `input`'s sampling from the request.
    pub fn apply(self, input: &mut GenerateInput) -> Result<(), ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid("n", format!("n is {n}; only 1 choice per request is supported")));
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid("stream_options", "stream_options is only allowed with stream: true"));
        }
        input.max_tokens = self.max_completion_tokens.or(self.max_tokens).unwrap_or(0);
        // OpenAI's default temperature is 1.
        input.temperature = self.temperature.unwrap_or(1.0);
        input.top_p = self.top_p.unwrap_or(1.0);
        input.seed = self.seed;
        input.stop = match self.stop {
            None => Vec::new(),
            Some(stop) => stop.strings("stop")?,
        };
        Ok(())
    }
}

/// Parameters that are accepted and change nothing here, and ones refused by name.
/// Anything else unknown is refused too: a silently ignored `tools` or `response_format`
/// would give an answer the caller did not ask for.
pub fn check_unknown(extra: &serde_json::Map<String, Value>, harmless: &[&str]) -> Result<(), ApiError> {
    for (name, value) in extra {
        let zero = value.is_null() || value.as_f64() == Some(0.0) || value == &Value::Bool(false);
        let empty = value.as_object().is_some_and(|o| o.is_empty()) || value.as_array().is_some_and(|a| a.is_empty());
        let fine = harmless.contains(&name.as_str())
            || (matches!(
                name.as_str(),
                "frequency_penalty" | "presence_penalty" | "logprobs" | "top_logprobs" | "echo" | "parallel_tool_calls"
            ) && (zero || empty))
            || (matches!(name.as_str(), "logit_bias" | "tools") && (empty || value.is_null()));
        if !fine {
            return Err(ApiError::invalid(name, format!("{name} is not supported by this server")));
        }
    }
    Ok(())
}

/// Accepted everywhere; they only label or route a request at OpenAI.
pub const HARMLESS: &[&str] = &["user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"];

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<Value>>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<OneOrMany>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: Option<String>,
    pub input: Option<OneOrMany>,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// `POST /v1/responses`.
#[derive(Debug, Deserialize)]
pub struct ResponseRequest {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    #[serde(default)]
    pub background: bool,
    #[serde(default)]
    pub stream: bool,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// The model a request names: required, as OpenAI requires it.
pub fn model(model: Option<String>) -> Result<String, ApiError> {
    match model {
        Some(model) if !model.is_empty() => Ok(model),
        _ => Err(ApiError::invalid("model", "model is required")),
    }
}

/// A message's text: a string, or an array of text parts (`{"type": "text", "text"}`, or
/// `input_text`/`output_text` in the Responses API).
fn content_text(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
                match (kind, part.get("text").and_then(Value::as_str)) {
                    ("text" | "input_text" | "output_text", Some(part)) => text.push_str(part),
                    _ => {
                        return Err(ApiError::invalid(
                            param,
                            format!("{param}[{i}]: only text parts are supported (got type {kind:?})"),
                        ));
                    }
                }
            }
            Ok(text)
        }
        Value::Null => Ok(String::new()),
        other => Err(ApiError::invalid(param, format!("{param}: expected a string or an array of parts, got {other}"))),
    }
}

/// Chat messages (`messages`, or the Responses API's `input` array) as the job's.
pub fn messages(items: &[Value], param: &str) -> Result<Vec<ChatMessage>, ApiError> {
    if items.is_empty() {
        return Err(ApiError::invalid(param, format!("{param} must not be empty")));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{param}[{i}]");
            let Some(object) = item.as_object() else {
                return Err(ApiError::invalid(param, format!("{at}: expected an object, got {item}")));
            };
            let role = match object.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some(other) => {
                    return Err(ApiError::invalid(param, format!("{at}.role: {other:?} is not supported")));
                }
                None => return Err(ApiError::invalid(param, format!("{at}.role is required"))),
            };
            let content = content_text(object.get("content").unwrap_or(&Value::Null), &format!("{at}.content"))
                .map_err(|e| ApiError { param: Some(param.into()), ..e })?;
            Ok(ChatMessage { role: role as i32, content })
        })
        .collect()
}

/// The job-API field a refusal names, in the request's terms.
pub fn generate_param(field: &str) -> Option<String> {
    let field = field.strip_prefix("generate.")?;
    let name = field.split(['.', '[']).next().unwrap_or(field);
    Some(
        match name {
            "max_tokens" => "max_tokens",
            "prompt" => "prompt",
            "messages" => "messages",
            "temperature" => "temperature",
            "top_p" => "top_p",
            "stop" => "stop",
            "seed" => "seed",
            other => other,
        }
        .to_string(),
    )
}

pub fn embed_param(field: &str) -> Option<String> {
    field.starts_with("embed.texts").then(|| "input".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_arrays_and_wrong_types_are_refused_by_name() {
        let many: OneOrMany = serde_json::from_str(r#"["a", [1, 2]]"#).unwrap();
        let error = many.strings("input").unwrap_err();
        assert_eq!(error.param.as_deref(), Some("input"));
        assert!(error.message.contains("token arrays"), "{}", error.message);
        let one: OneOrMany = serde_json::from_str(r#""text""#).unwrap();
        assert_eq!(one.strings("input").unwrap(), ["text"]);
    }

    #[test]
    fn messages_take_strings_and_text_parts_and_refuse_the_rest() {
        let items: Vec<Value> = serde_json::from_str(
            r#"[{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]"#,
        )
        .unwrap();
        let parsed = messages(&items, "messages").unwrap();
        assert_eq!(parsed[0].role, Role::System as i32);
        assert_eq!(parsed[1].content, "Hi there");
        assert!(messages(&[], "messages").is_err());
        let tool: Vec<Value> = serde_json::from_str(r#"[{"role": "tool", "content": "x"}]"#).unwrap();
        assert_eq!(messages(&tool, "messages").unwrap_err().param.as_deref(), Some("messages"));
        let image: Vec<Value> =
            serde_json::from_str(r#"[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]"#).unwrap();
        assert!(messages(&image, "messages").unwrap_err().message.contains("only text parts"));
    }

    #[test]
    fn n_above_one_and_unknown_parameters_are_refused() {
        let request: ChatRequest = serde_json::from_str(
            r#"{"model": "m", "messages": [], "n": 2, "user": "u", "tools": [{"type": "function"}]}"#,
        )
        .unwrap();
        assert_eq!(check_unknown(&request.extra, HARMLESS).unwrap_err().param.as_deref(), Some("tools"));
        let mut input = GenerateInput::default();
        assert_eq!(request.sampling.apply(&mut input).unwrap_err().param.as_deref(), Some("n"));
        let request: ChatRequest =
            serde_json::from_str(r#"{"model": "m", "frequency_penalty": 0, "logprobs": false, "user": "u"}"#).unwrap();
        assert!(check_unknown(&request.extra, HARMLESS).is_ok());
    }

    #[test]
    fn max_completion_tokens_wins_and_temperature_defaults_to_one() {
        let request: ChatRequest =
            serde_json::from_str(r#"{"model": "m", "max_tokens": 5, "max_completion_tokens": 7, "stop": "x"}"#)
                .unwrap();
        let mut input = GenerateInput::default();
        request.sampling.apply(&mut input).unwrap();
        assert_eq!((input.max_tokens, input.temperature, input.stop.clone()), (7, 1.0, vec!["x".to_string()]));
    }
}
