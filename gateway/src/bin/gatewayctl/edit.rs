//! One value changed in a routing document's text, the rest kept byte for
//! byte: operators' comments and layout survive `flip` and `canary`.

use anyhow::{anyhow, bail};
use serde_json::Value;
use toml_edit::{DocumentMut, InlineTable, Item};

/// `text` with `field` of pool `pool`'s policy config set to `value` (a
/// string or a number).
pub fn set_policy_field(
    text: &str,
    pool: &str,
    field: &str,
    value: &Value,
) -> anyhow::Result<String> {
    let mut doc: DocumentMut = text.parse()?;
    let pools = doc
        .get_mut("pools")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| anyhow!("the routing config has no [[pools]] tables to edit"))?;
    let table = pools
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(pool))
        .ok_or_else(|| anyhow!("no pool `{pool}` in the routing config"))?;
    let policy = table
        .get_mut("policy")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| anyhow!("pool `{pool}` has no policy table to edit"))?;
    if policy.get("config").is_none() {
        policy.insert("config", Item::Value(InlineTable::new().into()));
    }
    let config = policy
        .get_mut("config")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| anyhow!("pool `{pool}`'s policy config is not a table"))?;
    let value = match value {
        Value::String(s) => toml_edit::value(s.as_str()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml_edit::value(i),
            (None, Some(f)) => toml_edit::value(f),
            _ => bail!("{n} is not a TOML number"),
        },
        other => bail!("cannot write {other} into the config"),
    };
    // An existing value keeps its place and the comment after it.
    match config.get_mut(field).and_then(Item::as_value_mut) {
        Some(old) => {
            let decor = old.decor().clone();
            *old = value.into_value().expect("a value");
            *old.decor_mut() = decor;
        }
        None => {
            config.insert(field, value);
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DOC: &str = "# the fleet's routing\n[routing]\nstrategy = \"kv\" # why kv\n\n\
        [[pools]]\nname = \"other\"\nmodels = [\"o\"]\n\n\
        [[pools]]\nname = \"sim\" # the main pool\nmodels = [\"m\"]\n\
        policy = { plugin = \"blue-green\", version = \"1.0.0\", config = { active = \"blue\" } }\n";

    #[test]
    fn one_value_changes_and_the_rest_stays() {
        let edited = set_policy_field(DOC, "sim", "active", &json!("green")).unwrap();
        assert_eq!(edited, DOC.replace("\"blue\" }", "\"green\" }"));
        let added = set_policy_field(DOC, "sim", "fallback", &json!(1)).unwrap();
        assert!(added.contains("fallback = 1 }"), "{added}");
        assert!(added.starts_with("# the fleet's routing\n") && added.contains("# why kv"));
    }

    #[test]
    fn a_sub_table_policy_is_edited_in_place() {
        let doc =
            "[[pools]]\nname = \"sim\"\nmodels = [\"m\"]\n[pools.policy]\nplugin = \"canary\"\n\
            [pools.policy.config]\ncanary_percent = 5 # ramping\n";
        let edited = set_policy_field(doc, "sim", "canary_percent", &json!(20)).unwrap();
        assert_eq!(edited, doc.replace("= 5 #", "= 20 #"));
        assert!(set_policy_field(doc, "nope", "x", &json!(1)).is_err());
    }
}
