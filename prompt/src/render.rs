//! Request prompts to token ids. Chat messages are rendered with the model's
//! own Jinja chat template when the tokenizer carries one, else with the sim's
//! fixed template.

use protocol::openai::{ChatMessage, PromptInput};
use protocol::{ApiError, ErrorKind};

use crate::tokenizer::Tokenizer;

/// A rendered prompt: one text, cut where its pieces tokenize apart (at
/// messages, for the sim's template; nowhere, for a model's own template,
/// whose added tokens the tokenizer cuts at).
pub struct Rendered {
    text: String,
    /// Where each piece but the last ends.
    cuts: Vec<usize>,
}

impl Rendered {
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn pieces(&self) -> Vec<&str> {
        let mut pieces = Vec::with_capacity(self.cuts.len() + 1);
        let mut from = 0;
        for &cut in &self.cuts {
            pieces.push(&self.text[from..cut]);
            from = cut;
        }
        pieces.push(&self.text[from..]);
        pieces
    }
}

/// The sim's chat template, `<|role|>\ncontent\n` per message, then
/// `<|assistant|>\n` to cue the reply, cut into pieces of one message each. A
/// piece ends with its content and the next begins with the newline: byte-
/// level pre-tokenizers split whitespace before a newline differently at the
/// end of a text, so a piece ending in `"  \n"` would not tokenize as it does
/// within the prompt. The gateway renders prompts with the same function so
/// its block hashes match the worker's.
pub fn chat_pieces(messages: &[ChatMessage]) -> Rendered {
    // Borrowed, unless the message is in several parts (rare).
    fn text<'a>(m: &'a ChatMessage) -> std::borrow::Cow<'a, str> {
        m.text().unwrap_or_default()
    }
    // Each message's markup with the newline that opens the next piece.
    let markup = "<||>\n\n".len();
    let size = messages
        .iter()
        .map(|m| markup + m.role.len() + text(m).len())
        .sum::<usize>();
    let mut rendered = Rendered {
        text: String::with_capacity(size + "<|assistant|>\n".len()),
        cuts: Vec::with_capacity(messages.len()),
    };
    let mut open = "";
    for m in messages {
        for part in [open, "<|", &m.role, "|>\n", &text(m)] {
            rendered.text.push_str(part);
        }
        rendered.cuts.push(rendered.text.len());
        open = "\n";
    }
    rendered.text.push_str(open);
    rendered.text.push_str("<|assistant|>\n");
    rendered
}

/// Token ids of a chat request's prompt. The gateway calls this with the same
/// tokenizer as the worker, so both render and hash the same tokens. A
/// message seen before is tokenized once (`Tokenizer::encode_pieces`).
pub fn chat_tokens(messages: &[ChatMessage], tokenizer: &Tokenizer) -> Result<Vec<u32>, ApiError> {
    let rendered = match tokenizer.chat_template() {
        // A template refusing a conversation (`raise_exception`) is the client's to fix.
        Some(template) => Rendered {
            text: template
                .render(messages)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?,
            cuts: Vec::new(),
        },
        None => chat_pieces(messages),
    };
    encode(tokenizer, &rendered.pieces())
}

/// Token ids of a text completion's prompt: text is tokenized, ids are taken as
/// they are once checked against the vocabulary.
pub fn completion_tokens(
    prompt: PromptInput<'_>,
    tokenizer: &Tokenizer,
) -> Result<Vec<u32>, ApiError> {
    match prompt {
        PromptInput::Text(text) => encode(tokenizer, &[text]),
        PromptInput::Tokens(ids) => {
            let vocab = tokenizer.vocab_size();
            match ids.iter().find(|&&id| id as usize >= vocab) {
                Some(id) => Err(ApiError::invalid(
                    "prompt",
                    format!("token id {id} is out of range; the vocabulary has {vocab} tokens"),
                )),
                None => Ok(ids.to_vec()),
            }
        }
    }
}

fn encode(tokenizer: &Tokenizer, pieces: &[&str]) -> Result<Vec<u32>, ApiError> {
    let ids = tokenizer
        .encode_pieces(pieces)
        .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> ChatMessage<'static> {
        ChatMessage::new(role, content)
    }

    #[test]
    fn chat_template() {
        let rendered = chat_pieces(&[message("system", "be brief"), message("user", "hi")]);
        let text = "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n";
        assert_eq!(rendered.text(), text);
        assert_eq!(
            rendered.pieces(),
            [
                "<|system|>\nbe brief",
                "\n<|user|>\nhi",
                "\n<|assistant|>\n"
            ]
        );
    }

    #[test]
    fn pieces_tokenize_as_the_whole_prompt() {
        let tok = Tokenizer::builtin().unwrap();
        assert!(tok.caches_pieces() && tok.has_fast_path());
        // Twice: the second pass comes from the cache.
        for pass in 0..2 {
            for messages in crate::samples::conversations(7, 300) {
                let whole = tok.encode(chat_pieces(&messages).text()).unwrap();
                assert_eq!(
                    chat_tokens(&messages, &tok).unwrap(),
                    whole,
                    "pass {pass}: {messages:?}"
                );
            }
        }
    }

    #[test]
    fn token_prompts_are_checked_against_the_vocabulary() {
        let tok = Tokenizer::builtin().unwrap();
        assert_eq!(
            completion_tokens(PromptInput::Tokens(&[1, 2]), &tok).unwrap(),
            [1, 2]
        );
        let too_big = tok.vocab_size() as u32;
        let err = completion_tokens(PromptInput::Tokens(&[1, too_big]), &tok).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(completion_tokens(PromptInput::Text(""), &tok).is_err());
        assert!(!completion_tokens(PromptInput::Text("rain"), &tok)
            .unwrap()
            .is_empty());
    }
}
