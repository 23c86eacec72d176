//! Pool-name wildcards as upstream matches them (Go's `filepath.Match`: `*`, `?`, `[...]` with ranges
//! and `^`/`!` negation, `\` escapes). Pool names contain no `/`, so the path-separator rules never apply.
//!
//! Patterns come from pod and namespace annotations, so a hostile one must not cost more than its
//! size: a pattern is parsed once into single-character tokens and stars, and a name is matched in
//! one pass, updating the set of pattern positions reached (a 256-bit vector: annotations bound
//! patterns to 253 characters, [`super::annotations`]) once per character of the name, so a match
//! takes time linear in the name whatever the pattern. Longer patterns match nothing.

/// Whether `pattern` has any wildcard character (a plain name is looked up, not matched).
pub fn is_pattern(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '\\'])
}

/// One element of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: any run of characters.
    Star,
    /// `?`: any one character.
    Any,
    /// One character.
    Literal(char),
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Positions in a pattern: bit `i` means "the first `i` tokens matched"; at most [`MAX_TOKENS`] + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Positions([u64; 4]);

/// The most tokens a pattern may have (one bit per position, the last for "all matched").
pub const MAX_TOKENS: usize = 255;

impl Positions {
    fn bit(i: usize) -> Self {
        let mut p = Positions::default();
        p.0[i / 64] |= 1 << (i % 64);
        p
    }

    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn and(self, other: Self) -> Self {
        Positions(std::array::from_fn(|w| self.0[w] & other.0[w]))
    }

    fn or(self, other: Self) -> Self {
        Positions(std::array::from_fn(|w| self.0[w] | other.0[w]))
    }

    /// Every position one further.
    fn next(self) -> Self {
        Positions(std::array::from_fn(|w| {
            (self.0[w] << 1) | if w == 0 { 0 } else { self.0[w - 1] >> 63 }
        }))
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

impl Token {
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Star => false,
            Token::Any => true,
            Token::Literal(l) => *l == c,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
            }
        }
    }
}

/// A parsed pattern, ready to match many names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// `None`: malformed (an unclosed `[`, a trailing `\\`) or too long; matches nothing.
    tokens: Option<Vec<Token>>,
    /// Positions at a star (where a character may be taken without moving on).
    stars: Positions,
    /// For each ASCII character, the positions whose token accepts it (pool names are ASCII).
    ascii: Vec<Positions>,
}

impl Pattern {
    /// Parses `pattern`.
    pub fn new(pattern: &str) -> Self {
        let tokens = tokens(pattern).filter(|t| t.len() <= MAX_TOKENS);
        let mut stars = Positions::default();
        let mut ascii = Vec::new();
        if let Some(tokens) = &tokens {
            for (i, token) in tokens.iter().enumerate() {
                if *token == Token::Star {
                    stars = stars.or(Positions::bit(i));
                }
            }
            ascii = (0u8..128).map(|c| accepting(tokens, char::from(c))).collect();
        }
        Pattern { tokens, stars, ascii }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        self.matches_counting(name).0
    }

    /// Whether `name` matches, and how many steps (one per character of the name) that took.
    fn matches_counting(&self, name: &str) -> (bool, usize) {
        let Some(tokens) = &self.tokens else {
            return (false, 0);
        };
        // A star may match nothing: from a star's position, the position after it is reached too
        // (runs of stars are one star, so one step suffices).
        let close = |p: Positions| p.or(p.and(self.stars).next());
        let mut reached = close(Positions::bit(0));
        let mut steps = 0;
        for c in name.chars() {
            steps += 1;
            let accepting = match self.ascii.get(c as usize) {
                Some(positions) => *positions,
                None => accepting(tokens, c),
            };
            reached = close(reached.and(self.stars).or(reached.and(accepting).next()));
            if reached.is_empty() {
                return (false, steps);
            }
        }
        (reached.has(tokens.len()), steps)
    }
}

/// The positions whose token accepts `c`.
fn accepting(tokens: &[Token], c: char) -> Positions {
    tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| t.accepts(c))
        .fold(Positions::default(), |p, (i, _)| p.or(Positions::bit(i)))
}

/// Whether `name` matches `pattern`. A malformed pattern (an unclosed `[`) matches nothing.
pub fn matches(pattern: &str, name: &str) -> bool {
    Pattern::new(pattern).matches(name)
}

fn tokens(pattern: &str) -> Option<Vec<Token>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::with_capacity(chars.len());
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        match c {
            '*' => {
                // A run of stars is one star.
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
            }
            '?' => out.push(Token::Any),
            '\\' => {
                out.push(Token::Literal(*chars.get(i)?));
                i += 1;
            }
            '[' => {
                let (token, next) = class(&chars, i)?;
                out.push(token);
                i = next;
            }
            literal => out.push(Token::Literal(literal)),
        }
    }
    Some(out)
}

/// The class starting at `chars[start]` (after its `[`), and where the pattern goes on after its
/// `]`; `None` when it is not closed. A `]` right after `[` (or `[^`) is a literal.
fn class(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut i = start;
    let negated = matches!(chars.get(i), Some('^' | '!'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut lo = *chars.get(i)?;
        i += 1;
        if lo == ']' && !first {
            return Some((Token::Class { negated, ranges }, i));
        }
        first = false;
        if lo == '\\' {
            lo = *chars.get(i)?;
            i += 1;
        }
        match (chars.get(i), chars.get(i + 1)) {
            (Some('-'), Some(&hi)) if hi != ']' => {
                ranges.push((lo, hi));
                i += 2;
            }
            _ => ranges.push((lo, lo)),
        }
    }
}

#[cfg(test)]
fn matches_counting(pattern: &str, name: &str) -> (bool, usize) {
    Pattern::new(pattern).matches_counting(name)
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

    /// A pattern a pod author wrote costs one step per character of the name, whatever it is.
    #[test]
    fn hostile_patterns_are_matched_in_bounded_steps() {
        let name = "a".repeat(253);
        let hostile = [
            format!("{}b", "*a".repeat(126)),
            format!("{}b", "*?".repeat(126)),
            format!("{}b", "*[a-z]".repeat(42)),
            "*".repeat(253),
        ];
        for pattern in &hostile {
            assert!(pattern.len() <= 253, "{}", pattern.len());
            let (matched, steps) = matches_counting(pattern, &name);
            assert_eq!(matched, pattern.chars().all(|c| c == '*'), "{pattern}");
            assert!(steps <= name.len(), "{steps} steps for a name of {}", name.len());
        }
    }

    /// The recursive matcher this module had before (exponential on hostile patterns, fine on short
    /// ones): the reference the linear one must agree with.
    fn oracle(pattern: &str, name: &str) -> bool {
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
        let pattern: Vec<char> = pattern.chars().collect();
        let name: Vec<char> = name.chars().collect();
        match_from(&pattern, &name)
    }

    proptest::proptest! {
        /// Short patterns and names (where the old matcher is fast): the same answers.
        #[test]
        fn agrees_with_the_recursive_matcher(pattern in "[ab*?\\[\\]^!\\\\-]{0,8}", name in "[ab\\-]{0,8}") {
            proptest::prop_assert_eq!(matches(&pattern, &name), oracle(&pattern, &name), "{} vs {}", pattern, name);
        }
    }
}
