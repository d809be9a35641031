//! The guest's decision checked against the candidates it was given, and
//! turned into indices the gateway can act on without string lookups.

use std::collections::HashMap;

use super::bindings::llmgw::policy::types;
use super::error::PluginError;
use super::PolicyCandidate;

/// What a policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Indices into the candidates slice, in the order to try them: non-empty,
    /// no index twice.
    Route(Vec<usize>),
    /// Answer the client with this status (400 to 599) and message.
    Reject { status: u16, message: String },
}

/// Below this many candidates a linear scan beats building a map.
const SCAN_MAX: usize = 16;

/// Guest-chosen text quoted in an error is cut to this many bytes.
const QUOTE_MAX: usize = 64;

pub(crate) fn check(
    decision: types::Decision,
    candidates: &[PolicyCandidate],
) -> Result<Decision, PluginError> {
    match decision {
        types::Decision::Reject(rejection) => {
            if !(400..=599).contains(&rejection.status) {
                return Err(PluginError::InvalidDecision(format!(
                    "rejection status {} is outside 400..=599",
                    rejection.status
                )));
            }
            Ok(Decision::Reject {
                status: rejection.status,
                message: rejection.message,
            })
        }
        types::Decision::Route(ids) => route(&ids, candidates).map(Decision::Route),
    }
}

fn route(ids: &[String], candidates: &[PolicyCandidate]) -> Result<Vec<usize>, PluginError> {
    if ids.is_empty() {
        return Err(PluginError::InvalidDecision(
            "routes to no worker (reject instead)".to_string(),
        ));
    }
    let index: Option<HashMap<&str, usize>> = (candidates.len() > SCAN_MAX).then(|| {
        let mut index = HashMap::with_capacity(candidates.len());
        for (i, candidate) in candidates.iter().enumerate() {
            // The first of any duplicate ids wins, as the scan below would.
            index.entry(candidate.id.as_str()).or_insert(i);
        }
        index
    });
    let mut listed = vec![false; candidates.len()];
    let mut order = Vec::with_capacity(ids.len());
    for id in ids {
        let found = match &index {
            Some(index) => index.get(id.as_str()).copied(),
            None => candidates.iter().position(|c| c.id == *id),
        };
        let Some(i) = found else {
            return Err(PluginError::InvalidDecision(format!(
                "worker {} is not a candidate",
                quote(id)
            )));
        };
        if std::mem::replace(&mut listed[i], true) {
            return Err(PluginError::InvalidDecision(format!(
                "worker {} is listed twice",
                quote(id)
            )));
        }
        order.push(i);
    }
    Ok(order)
}

fn quote(id: &str) -> String {
    let mut end = id.len().min(QUOTE_MAX);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}", &id[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::sample;

    fn route_ids(ids: &[&str]) -> types::Decision {
        types::Decision::Route(ids.iter().map(|id| id.to_string()).collect())
    }

    fn candidates(n: usize) -> Vec<PolicyCandidate> {
        (0..n)
            .map(|i| sample::candidate(&format!("w{i}"), "a", &[]))
            .collect()
    }

    #[test]
    fn ids_become_indices_with_and_without_the_map() {
        for n in [3, SCAN_MAX + 5] {
            let cs = candidates(n);
            assert_eq!(
                check(route_ids(&["w2", "w0"]), &cs).unwrap(),
                Decision::Route(vec![2, 0])
            );
        }
    }

    #[test]
    fn empty_unknown_and_duplicate_routes_are_invalid() {
        for n in [3, SCAN_MAX + 5] {
            let cs = candidates(n);
            for ids in [&[][..], &["nope"], &["w1", "w1"]] {
                let error = check(route_ids(ids), &cs).unwrap_err();
                assert_eq!(error.kind(), "invalid_decision", "{ids:?}: {error}");
            }
        }
    }

    #[test]
    fn rejection_status_must_be_an_error_status() {
        let reject = |status| {
            types::Decision::Reject(types::Rejection {
                status,
                message: "m".to_string(),
            })
        };
        assert_eq!(
            check(reject(429), &[]).unwrap(),
            Decision::Reject {
                status: 429,
                message: "m".to_string()
            }
        );
        assert!(check(reject(200), &[]).is_err());
        assert!(check(reject(600), &[]).is_err());
    }

    #[test]
    fn quoted_ids_are_cut_on_a_char_boundary() {
        let long = "é".repeat(100);
        assert!(quote(&long).len() <= QUOTE_MAX + 2);
    }
}
