//! Whether two label selectors can select the same object, judged from the selectors alone (racks
//! that may share a node must agree on their interfaces).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether no object can match both selectors, judged from the selectors alone (conservative: `false`
/// means "may overlap"). Two selectors are disjoint when some label key is pinned to value sets that do
/// not intersect, or one requires a key that the other forbids.
pub fn selectors_disjoint(a: &LabelSelector, b: &LabelSelector) -> bool {
    let ca = constraints(a);
    let cb = constraints(b);
    ca.iter()
        .any(|(key, ka)| cb.get(key).is_some_and(|kb| ka.excludes(kb)))
}

#[derive(Debug, Default, Clone)]
struct KeyConstraint {
    /// The value must be one of these (None: no such constraint).
    allowed: Option<BTreeSet<String>>,
    /// The value must not be one of these.
    forbidden: BTreeSet<String>,
    must_exist: bool,
    must_not_exist: bool,
}

impl KeyConstraint {
    fn excludes(&self, other: &KeyConstraint) -> bool {
        if (self.must_not_exist && (other.must_exist || other.allowed.is_some()))
            || (other.must_not_exist && (self.must_exist || self.allowed.is_some()))
        {
            return true;
        }
        match (&self.allowed, &other.allowed) {
            (Some(x), Some(y)) => x
                .intersection(y)
                .all(|v| self.forbidden.contains(v) || other.forbidden.contains(v)),
            (Some(x), None) => x.iter().all(|v| other.forbidden.contains(v)),
            (None, Some(y)) => y.iter().all(|v| self.forbidden.contains(v)),
            (None, None) => false,
        }
    }
}

fn constraints(selector: &LabelSelector) -> BTreeMap<String, KeyConstraint> {
    let mut out: BTreeMap<String, KeyConstraint> = BTreeMap::new();
    let narrow = |c: &mut KeyConstraint, values: BTreeSet<String>| {
        c.allowed = Some(match c.allowed.take() {
            Some(existing) => existing.intersection(&values).cloned().collect(),
            None => values,
        });
    };
    for (k, v) in selector.match_labels.iter().flatten() {
        narrow(out.entry(k.clone()).or_default(), BTreeSet::from([v.clone()]));
    }
    for expr in selector.match_expressions.iter().flatten() {
        let c = out.entry(expr.key.clone()).or_default();
        let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
        match expr.operator.as_str() {
            "In" => narrow(c, values),
            "NotIn" => c.forbidden.extend(values),
            "Exists" => c.must_exist = true,
            "DoesNotExist" => c.must_not_exist = true,
            _ => {}
        }
    }
    out
}
