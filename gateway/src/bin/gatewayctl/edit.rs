//! One value changed in a routing document's text, the rest kept byte for
//! byte: operators' comments and layout survive `flip`, `canary`, and
//! `plugin shadow` and `promote`.

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
    let policy = policy_of(&mut doc, pool)?;
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

/// `text` with pool `pool`'s shadow set to `version` sampling `sample` of
/// requests, or removed (`None`).
pub fn set_shadow(text: &str, pool: &str, shadow: Option<(&str, f64)>) -> anyhow::Result<String> {
    let mut doc: DocumentMut = text.parse()?;
    let policy = policy_of(&mut doc, pool)?;
    match shadow {
        Some((version, sample)) => {
            let mut table = InlineTable::new();
            table.insert("version", version.into());
            table.insert("sample", sample.into());
            // A shadow's own config survives a new version.
            if let Some(config) = policy
                .get("shadow")
                .and_then(Item::as_table_like)
                .and_then(|t| t.get("config"))
                .and_then(Item::as_value)
            {
                table.insert("config", config.clone());
            }
            policy.insert("shadow", Item::Value(table.into()));
        }
        None => {
            policy.remove("shadow");
        }
    }
    Ok(doc.to_string())
}

/// `text` with pool `pool`'s shadow version (and its config, if it has
/// one of its own) live, and no shadow.
pub fn promote(text: &str, pool: &str) -> anyhow::Result<String> {
    let mut doc: DocumentMut = text.parse()?;
    let policy = policy_of(&mut doc, pool)?;
    let shadow = policy
        .remove("shadow")
        .ok_or_else(|| anyhow!("pool `{pool}` has no shadow to promote"))?;
    let shadow = shadow
        .as_table_like()
        .ok_or_else(|| anyhow!("pool `{pool}`'s shadow is not a table"))?;
    let version = shadow
        .get("version")
        .and_then(Item::as_value)
        .cloned()
        .ok_or_else(|| anyhow!("pool `{pool}`'s shadow has no version"))?;
    policy.insert("version", Item::Value(version));
    if let Some(config) = shadow.get("config").and_then(Item::as_value) {
        policy.insert("config", Item::Value(config.clone()));
    }
    Ok(doc.to_string())
}

fn policy_of<'d>(
    doc: &'d mut DocumentMut,
    pool: &str,
) -> anyhow::Result<&'d mut dyn toml_edit::TableLike> {
    let pools = doc
        .get_mut("pools")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| anyhow!("the routing config has no [[pools]] tables to edit"))?;
    let table = pools
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(pool))
        .ok_or_else(|| anyhow!("no pool `{pool}` in the routing config"))?;
    table
        .get_mut("policy")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| anyhow!("pool `{pool}` has no policy table to edit"))
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
    fn a_shadow_is_set_then_promoted() {
        let shadowed = set_shadow(DOC, "sim", Some(("1.1.0", 0.25))).unwrap();
        let doc: gateway::config::RoutingDoc = toml::from_str(&shadowed).unwrap();
        let binding = doc.pools[1].policy.as_ref().unwrap();
        assert_eq!(binding.shadow.as_ref().unwrap().version, "1.1.0");
        assert_eq!(binding.shadow.as_ref().unwrap().sample, 0.25);
        assert!(shadowed.contains("# why kv"));
        let promoted = promote(&shadowed, "sim").unwrap();
        let doc: gateway::config::RoutingDoc = toml::from_str(&promoted).unwrap();
        let binding = doc.pools[1].policy.as_ref().unwrap();
        assert_eq!(binding.version.as_deref(), Some("1.1.0"));
        assert!(binding.shadow.is_none());
        assert_eq!(binding.config_json(), r#"{"active":"blue"}"#);
        assert!(promote(&promoted, "sim").is_err());
        assert_eq!(set_shadow(&shadowed, "sim", None).unwrap(), DOC);
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
