//! SpiderNetwork admission: the whole topology is validated and compiled ([`crate::compile::compile`],
//! which runs [`spiderpool_schema::SpiderNetwork::check`] and then finds what only carving the addresses
//! shows, such as more fixed addresses than a rack range holds) and refused with every problem's field
//! path, so a bad topology fails at `kubectl apply` or Argo CD sync time instead of surfacing later in
//! the object's status. Compiling is pure and fast (tens of milliseconds for thousands of nodes).

use spiderpool_schema::{Problem, SpiderNetwork};

use super::Change;

/// Every problem the validating webhook finds with a create or update.
pub fn validate(change: Change<'_, SpiderNetwork>) -> Vec<Problem> {
    crate::compile::compile(change.object()).err().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn examples(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        files
    }

    /// The path the example's comment promises ("Expected problem: <path>").
    fn expected_path(text: &str) -> String {
        let comment: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .collect();
        let joined = comment.join(" ");
        let after = joined.split("Expected problem:").nth(1).unwrap();
        after
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(['.', ','])
            .to_string()
    }

    #[test]
    fn every_invalid_example_is_refused_at_its_path_and_every_valid_one_admitted() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/topologies");
        let invalid = examples(&root.join("invalid"));
        assert_eq!(invalid.len(), 13);
        for file in invalid {
            let text = std::fs::read_to_string(&file).unwrap();
            let network: SpiderNetwork = serde_saphyr::from_str(&text).unwrap();
            let paths: Vec<String> = validate(Change::Create(&network))
                .into_iter()
                .map(|p| p.path)
                .collect();
            let expected = expected_path(&text);
            assert!(
                paths.contains(&expected),
                "{}: expected {expected} in {paths:?}",
                file.display()
            );
        }
        let valid = examples(&root);
        assert!(valid.len() >= 6);
        for file in valid {
            let network: SpiderNetwork =
                serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            assert_eq!(validate(Change::Create(&network)), vec![], "{}", file.display());
        }
    }
}
