//! Reading a policy's JSON config so that every error names the field at fault.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use alloc::collections::BTreeMap;

use serde::de::{DeserializeOwned, IgnoredAny};

/// Parses `config` into `T`. An empty config reads as `{}`, so a policy whose
/// fields all have defaults runs when the operator attached none.
///
/// Errors are prefixed with the path of the field (`canary_percent: invalid
/// type ...`), which `serde_json` alone leaves out for type errors.
pub fn parse<T: DeserializeOwned>(config: &str) -> Result<T, String> {
    let config = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let mut deserializer = serde_json::Deserializer::from_str(config);
    let first = match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(value) => {
            deserializer.end().map_err(|error| error.to_string())?;
            return Ok(value);
        }
        Err(error) => error,
    };
    // serde stops at the first problem: every unknown field is named too,
    // each found by trying it alone (`serde_json::Value` would double the
    // component's size).
    let first = describe(first);
    let Ok(keys) = serde_json::from_str::<BTreeMap<String, IgnoredAny>>(config) else {
        return Err(first);
    };
    let mut problems: Vec<String> = keys
        .keys()
        // A key that would need escaping is left to the first error.
        .filter(|key| !key.contains(['"', '\\']) && !key.chars().any(char::is_control))
        .filter_map(|key| {
            let alone = format!("{{\"{key}\":null}}");
            let message = match serde_path_to_error::deserialize::<_, T>(
                &mut serde_json::Deserializer::from_str(&alone),
            ) {
                Ok(_) => return None,
                Err(error) => describe(error),
            };
            (unknown_field(&message).as_deref() == Some(key.as_str())).then_some(message)
        })
        .collect();
    if !problems.contains(&first) {
        problems.insert(0, first);
    }
    Err(problems.join("; "))
}

fn describe<E: core::fmt::Display>(error: serde_path_to_error::Error<E>) -> String {
    let path = error.path().to_string();
    match path.as_str() {
        "." => error.into_inner().to_string(),
        _ => format!("{path}: {}", error.into_inner()),
    }
}

/// The field an "unknown field `x`" message names.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

pub fn check(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[serde(default)]
        count: u32,
    }

    #[test]
    fn empty_config_reads_as_defaults() {
        assert_eq!(parse::<Raw>("  ").unwrap().count, 0);
    }

    #[test]
    fn type_errors_name_the_field() {
        let error = parse::<Raw>(r#"{"count": "three"}"#).unwrap_err();
        assert!(error.starts_with("count: invalid type"), "{error}");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Two {
        name: alloc::string::String,
        #[serde(default)]
        count: u32,
    }

    #[test]
    fn every_unknown_field_is_named_at_once() {
        let error = parse::<Two>(r#"{"name": 1, "colour": 2, "size": 3}"#).unwrap_err();
        for field in ["name: invalid type", "`colour`", "`size`"] {
            assert!(error.contains(field), "{field}: {error}");
        }
        let error = parse::<Two>(r#"{"count": 2}"#).unwrap_err();
        assert!(error.starts_with("missing field `name`"), "{error}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let error = parse::<Raw>(r#"{"cuont": 3}"#).unwrap_err();
        assert!(error.contains("unknown field `cuont`"), "{error}");
    }

    #[test]
    fn trailing_text_is_refused() {
        assert!(parse::<Raw>(r#"{"count": 3} x"#).is_err());
    }

    #[test]
    fn problems_are_reported_together() {
        assert_eq!(check(vec![]), Ok(()));
        assert_eq!(
            check(vec!["a: bad".into(), "b: worse".into()]),
            Err("a: bad; b: worse".into())
        );
    }
}
