//! A model's own chat template (Jinja, from its GGUF metadata), compiled once
//! and rendered with minijinja the way Hugging Face's `apply_chat_template` does:
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.

use std::borrow::Cow;

use minijinja::{Environment, Error, ErrorKind};
use protocol::openai::ChatMessage;
use serde::Serialize;

const NAME: &str = "chat";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: Cow<'a, str>,
}

impl ChatTemplate {
    /// Compiles `source`; `bos` and `eos` are the token texts templates may reference.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, Error> {
        let mut env = Environment::new();
        // Templates call this to refuse a conversation they cannot render.
        env.add_function("raise_exception", |message: String| -> Result<(), Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(NAME, source.to_string())?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The prompt text of `messages`, ending with the cue for the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, Error> {
        let messages: Vec<Message<'_>> = messages
            .iter()
            .map(|m| Message {
                role: &m.role,
                content: m.text().unwrap_or_default(),
            })
            .collect();
        self.env.get_template(NAME)?.render(minijinja::context! {
            messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as stored in its GGUF file.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn message(role: &str, content: &str) -> ChatMessage<'static> {
        ChatMessage::new(role, content)
    }

    #[test]
    fn renders_smollm2_like_transformers() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let text = t.render(&[message("user", "Hi")]).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = t
            .render(&[message("system", "Be brief."), message("user", "Hi")])
            .unwrap();
        assert!(text.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"));
    }

    #[test]
    fn template_errors_surface() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&[message("system", "x")]).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }
}
