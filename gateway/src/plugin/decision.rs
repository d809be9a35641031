//! The guest's decision checked against the candidates it was given.

use super::bindings::llmgw::policy::types;
use super::error::PluginError;

/// What a policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Indices into the candidates slice, in the order to try them: non-empty,
    /// no index twice.
    Route(Vec<usize>),
    /// Answer the client with this status (400 to 599) and message.
    Reject { status: u16, message: String },
}

/// Checks `decision` on a list of `candidates` candidates.
pub(crate) fn check(decision: types::Decision, candidates: usize) -> Result<Decision, PluginError> {
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
        types::Decision::Route(order) => route(&order, candidates).map(Decision::Route),
    }
}

fn route(order: &[u32], candidates: usize) -> Result<Vec<usize>, PluginError> {
    if order.is_empty() {
        return Err(PluginError::InvalidDecision(
            "routes to no worker (reject instead)".to_string(),
        ));
    }
    let mut listed = vec![false; candidates];
    order
        .iter()
        .map(|&i| {
            let i = i as usize;
            let Some(seen) = listed.get_mut(i) else {
                return Err(PluginError::InvalidDecision(format!(
                    "candidate {i} does not exist (there are {candidates})"
                )));
            };
            if std::mem::replace(seen, true) {
                return Err(PluginError::InvalidDecision(format!(
                    "candidate {i} is listed twice"
                )));
            }
            Ok(i)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(order: &[u32]) -> types::Decision {
        types::Decision::Route(order.to_vec())
    }

    #[test]
    fn positions_are_kept_in_order() {
        assert_eq!(
            check(route(&[2, 0]), 3).unwrap(),
            Decision::Route(vec![2, 0])
        );
    }

    #[test]
    fn empty_unknown_and_duplicate_routes_are_invalid() {
        for order in [&[][..], &[3], &[u32::MAX], &[1, 1]] {
            let error = check(route(order), 3).unwrap_err();
            assert_eq!(error.kind(), "invalid_decision", "{order:?}: {error}");
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
            check(reject(429), 0).unwrap(),
            Decision::Reject {
                status: 429,
                message: "m".to_string()
            }
        );
        assert!(check(reject(200), 0).is_err());
        assert!(check(reject(600), 0).is_err());
    }
}
