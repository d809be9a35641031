//! OpenAI parameters this worker cannot honour, refused by name with a 400
//! rather than ignored: a client that asked for JSON output, tool calls or
//! audio must not believe it got them. Neutral values (`response_format:
//! {"type": "text"}`, an empty `tools` list, `echo: false`, ...) pass, as the
//! OpenAI SDKs send some of them by default.
//! The gateway passes every parameter through to engines that honour them.

use protocol::ApiError;
use serde_json::Value;

/// The first parameter of `body` (a request's JSON object) this worker
/// would have to ignore, as a 400 naming it.
pub fn refuse(body: &[u8]) -> Result<(), ApiError> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    for (param, value) in &fields {
        if let Some(why) = unsupported(param, value) {
            return Err(ApiError::invalid(param, format!("`{param}`: {why}")));
        }
    }
    if let Some(Value::Array(messages)) = fields.get("messages") {
        for (i, message) in messages.iter().enumerate() {
            content_parts(i, message)?;
        }
    }
    Ok(())
}

/// Why `value` of `param` cannot be honoured, if it cannot.
fn unsupported(param: &str, value: &Value) -> Option<String> {
    let neutral = match param {
        "response_format" => value.is_null() || value.get("type") == Some(&Value::from("text")),
        "tools" | "functions" => is_empty(value),
        "tool_choice" | "function_call" => value.is_null() || value == "none",
        "best_of" => value.is_null() || value == 1,
        "echo" => value.is_null() || value == false,
        "suffix" => value.is_null() || value == "",
        "modalities" => value.is_null() || value == &Value::from(vec!["text"]),
        "audio" | "prediction" => value.is_null(),
        _ => true,
    };
    if neutral {
        return None;
    }
    Some(match param {
        "response_format" => format!(
            "type {} is not supported by this worker; only \"text\"",
            value.get("type").unwrap_or(&Value::Null)
        ),
        "tools" | "functions" | "tool_choice" | "function_call" => {
            "this worker's chat template has no tool calling".to_string()
        }
        _ => format!("{value} is not supported by this worker"),
    })
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Content parts other than text (images, audio, files) cannot be read.
fn content_parts(i: usize, message: &Value) -> Result<(), ApiError> {
    let Some(Value::Array(parts)) = message.get("content") else {
        return Ok(());
    };
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "text" {
            let param = format!("messages[{i}].content[{j}]");
            return Err(ApiError::invalid(
                &param,
                format!("content of type `{kind}` is not supported by this worker; only text"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: &str) -> Option<String> {
        refuse(body.as_bytes()).err().and_then(|e| e.param)
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let base = r#""model":"m","messages":[{"role":"user","content":"x"}]"#;
        for (extra, param) in [
            (
                r#""response_format":{"type":"json_schema","json_schema":{}}"#,
                "response_format",
            ),
            (
                r#""response_format":{"type":"json_object"}"#,
                "response_format",
            ),
            (
                r#""tools":[{"type":"function","function":{"name":"f"}}]"#,
                "tools",
            ),
            (r#""tool_choice":"auto""#, "tool_choice"),
            (r#""modalities":["text","audio"]"#, "modalities"),
            (r#""audio":{"voice":"alloy"}"#, "audio"),
        ] {
            let body = format!("{{{base},{extra}}}");
            assert_eq!(param_of(&body).as_deref(), Some(param), "{body}");
        }
        let image = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        assert_eq!(param_of(image).as_deref(), Some("messages[0].content[1]"));
    }

    #[test]
    fn neutral_values_pass() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"}]}],
            "response_format":{"type":"text"},"tools":[],"tool_choice":"none","logprobs":true,
            "top_logprobs":2,"presence_penalty":0.5,"logit_bias":{"5":1},"modalities":["text"],
            "user":"u","store":false}"#;
        assert_eq!(param_of(body), None);
        assert_eq!(
            param_of(r#"{"model":"m","prompt":"x","echo":false,"best_of":1,"logprobs":3}"#),
            None
        );
    }
}
