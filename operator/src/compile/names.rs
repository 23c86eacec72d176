//! Names of generated objects: derived from spec entry names, never from positions.

use sha2::{Digest, Sha256};
use spiderpool_ipmath::IpFamily;

/// `v4` / `v6` name suffixes.
pub(super) fn family_suffix(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "v4",
        IpFamily::V6 => "v6",
    }
}

/// Joins name parts with `-`; a result longer than an object name may be (253) is cut and given a hash
/// suffix of the whole, so distinct inputs keep distinct names.
pub fn object_name(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("-")
        .to_lowercase();
    if joined.len() <= 253 {
        return joined;
    }
    let digest = hex8(&joined);
    let mut cut = joined[..243].trim_end_matches(['-', '.']).to_string();
    cut.push('-');
    cut.push_str(&digest);
    cut
}

fn hex8(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_with_a_hash() {
        let long = "a".repeat(300);
        let name = object_name(&[&long, "b"]);
        assert_eq!(name.len(), 252);
        assert_ne!(object_name(&[&long, "b"]), object_name(&[&long, "c"]));
        assert_eq!(object_name(&["Topo", "", "r1"]), "topo-r1");
    }
}
