//! Chat messages rendered into a prompt through the model's own Jinja template
//! (`tokenizer.chat_template` in the GGUF), as Hugging Face's `apply_chat_template` does.

use anyhow::Context;
use minijinja::{Environment, context};
use serde::Serialize;

/// A model's chat template, parsed once.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

#[derive(Serialize)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

impl ChatTemplate {
    pub fn new(source: String, bos_token: String, eos_token: String) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        // Templates written for Python's Jinja call string methods such as `.strip()`.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_template_owned("chat", source).context("the model's chat template does not parse")?;
        Ok(Self { env, bos_token, eos_token })
    }

    /// The prompt for `messages`, ending where the assistant's reply begins.
    pub fn render(&self, messages: &[Message]) -> anyhow::Result<String> {
        let template = self.env.get_template("chat")?;
        let prompt = template.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })?;
        Ok(prompt)
    }
}
