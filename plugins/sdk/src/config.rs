//! Reading a policy's JSON config so that every error names the field at fault.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::de::DeserializeOwned;

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
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        match path.as_str() {
            "." => error.into_inner().to_string(),
            _ => format!("{path}: {}", error.into_inner()),
        }
    })?;
    // Trailing text after the object is a mistake, not something to ignore.
    deserializer.end().map_err(|error| error.to_string())?;
    Ok(value)
}

/// `Ok` when no check failed, else every problem at once, so the operator
/// fixes a config in one round.
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
