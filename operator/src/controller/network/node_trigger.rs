//! Which Node events wake the SpiderNetwork controller (pure): a node's labels changed (rack
//! selectors match labels), or the node is gone (its interface task must be pruned; the topology is
//! the task's only owner, so the garbage collector does not do it). Heartbeats and status changes
//! do not.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt as _;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

/// The node to wake the controller for, given the labels last seen of each node (updated here).
pub fn node_change(
    seen: &mut HashMap<String, BTreeMap<String, String>>,
    event: Result<watcher::Event<PartialObjectMeta<Node>>, watcher::Error>,
) -> Option<Result<PartialObjectMeta<Node>, watcher::Error>> {
    match event {
        Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
            let labels = node.labels().clone();
            let changed = seen.insert(node.name_any(), labels.clone()).as_ref() != Some(&labels);
            changed.then_some(Ok(node))
        }
        Ok(watcher::Event::Delete(node)) => {
            seen.remove(&node.name_any());
            Some(Ok(node))
        }
        Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        Err(e) => Some(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, rack: &str, rv: &str) -> PartialObjectMeta<Node> {
        let mut node: PartialObjectMeta<Node> = PartialObjectMeta::default();
        node.metadata.name = Some(name.into());
        node.metadata.resource_version = Some(rv.into());
        node.metadata.labels = Some(BTreeMap::from([("rack".to_owned(), rack.to_owned())]));
        node
    }

    fn wakes(
        seen: &mut HashMap<String, BTreeMap<String, String>>,
        event: watcher::Event<PartialObjectMeta<Node>>,
    ) -> bool {
        node_change(seen, Ok(event)).is_some()
    }

    #[test]
    fn labels_and_deletion_wake_heartbeats_do_not() {
        let mut seen = HashMap::new();
        assert!(wakes(&mut seen, watcher::Event::InitApply(node("n1", "r1", "1"))));
        assert!(
            !wakes(&mut seen, watcher::Event::Apply(node("n1", "r1", "2"))),
            "a heartbeat"
        );
        assert!(
            wakes(&mut seen, watcher::Event::Apply(node("n1", "r2", "3"))),
            "relabelled"
        );
        assert!(
            wakes(&mut seen, watcher::Event::Delete(node("n1", "r2", "4"))),
            "gone"
        );
        assert!(
            wakes(&mut seen, watcher::Event::Apply(node("n1", "r2", "5"))),
            "back again"
        );
        assert!(!wakes(&mut seen, watcher::Event::InitDone));
    }
}
