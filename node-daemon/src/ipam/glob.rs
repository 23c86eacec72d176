//! Pool-name wildcards as upstream matches them (Go's `filepath.Match`: `*`, `?`, `[...]` with ranges
//! and `^`/`!` negation, `\` escapes). Pool names contain no `/`, so the path-separator rules never apply.

/// Whether `pattern` has any wildcard character (a plain name is looked up, not matched).
pub fn is_pattern(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '\\'])
}

/// Whether `name` matches `pattern`. A malformed pattern (an unclosed `[`) matches nothing.
pub fn matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    match_from(&pattern, &name)
}

fn match_from(pattern: &[char], name: &[char]) -> bool {
    let Some((&first, rest)) = pattern.split_first() else {
        return name.is_empty();
    };
    match first {
        '*' => (0..=name.len()).any(|skip| match_from(rest, &name[skip..])),
        '?' => !name.is_empty() && match_from(rest, &name[1..]),
        '[' => {
            let Some((&c, name_rest)) = name.split_first() else {
                return false;
            };
            match class_matches(rest, c) {
                Some((true, after)) => match_from(after, name_rest),
                _ => false,
            }
        }
        '\\' => match rest.split_first() {
            Some((&escaped, rest)) => name.first() == Some(&escaped) && match_from(rest, &name[1..]),
            None => false,
        },
        literal => name.first() == Some(&literal) && match_from(rest, &name[1..]),
    }
}

/// Matches `c` against the class starting after `[`; returns whether it matched and the pattern after
/// the closing `]`, or `None` for an unclosed class.
fn class_matches(class: &[char], c: char) -> Option<(bool, &[char])> {
    let (negated, mut rest) = match class.first() {
        Some('^') | Some('!') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        let (&lo, after) = rest.split_first()?;
        if lo == ']' && !first {
            return Some((matched != negated, after));
        }
        first = false;
        let (lo, after) = if lo == '\\' {
            let (&escaped, after) = after.split_first()?;
            (escaped, after)
        } else {
            (lo, after)
        };
        if let (Some('-'), Some(&hi)) = (after.first(), after.get(1))
            && hi != ']'
        {
            matched |= lo <= c && c <= hi;
            rest = &after[2..];
        } else {
            matched |= lo == c;
            rest = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match_semantics() {
        let cases = [
            ("pool-*", "pool-a", true),
            ("pool-*", "pool-", true),
            ("pool-*", "pol-a", false),
            ("p?ol", "pool", true),
            ("p?ol", "pol", false),
            ("v4-[ab]", "v4-a", true),
            ("v4-[ab]", "v4-c", false),
            ("v4-[a-c]", "v4-b", true),
            ("v4-[^a-c]", "v4-b", false),
            ("v4-[!a-c]", "v4-d", true),
            ("v4-[ab", "v4-a", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*", "", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("*-v6", "rack1-v6", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(matches(pattern, name), want, "{pattern} vs {name}");
        }
        assert!(is_pattern("a*"));
        assert!(!is_pattern("plain-name"));
    }
}
