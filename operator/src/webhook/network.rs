//! SpiderNetwork admission: the whole topology is checked ([`SpiderNetwork::check`]) and refused with
//! every problem's field path, so a bad topology fails at `kubectl apply` or Argo CD sync time instead of
//! surfacing later in the object's status.

use spiderpool_schema::{Problem, SpiderNetwork};

use super::Change;

/// Every problem the validating webhook finds with a create or update.
pub fn validate(change: Change<'_, SpiderNetwork>) -> Vec<Problem> {
    change.object().check().err().unwrap_or_default()
}
