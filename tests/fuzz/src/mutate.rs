//! Mutations: byte-level for every input, structural for inputs that parse as JSON (or YAML, for
//! targets that read YAML).

use serde_json::{Map, Value};
use spiderpool_tests::chaos::rng::Rng;

use crate::targets::{Shape, Target};

/// Bytes that break parsers more often than random ones.
const INTERESTING_BYTES: &[u8] = b"\0\x01\x7f\x80\xff\"\\{}[]:,;=/-.%\n\r\t 0123456789:x";

/// Numbers at the edges of every integer type and of floats.
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211455",
    "1e308",
    "1e309",
    "-0",
    "0.5",
    "1e-400",
];

/// Hostile JSON values for structural replacement.
fn hostile_value(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => serde_json::from_str(INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())])
            .unwrap_or(Value::Null),
        3 => Value::String(String::new()),
        4 => Value::String("a".repeat(rng.below(70_000))),
        5 => Value::String("\u{0}\u{202e}ü/../..\\%00".to_owned()),
        6 => Value::Array(Vec::new()),
        7 => Value::Object(Map::new()),
        8 => {
            // Nesting beyond what any of our formats has.
            let mut value = Value::Null;
            for _ in 0..rng.between(10, 200) {
                value = Value::Array(vec![value]);
            }
            value
        }
        9 => Value::Array(
            (0..rng.between(2, 5000))
                .map(|i| Value::String(format!("x{i}")))
                .collect(),
        ),
        10 => Value::String(
            [
                "10.0.0.0/0",
                "::/0",
                "1.2.3.4-1.2.3.3",
                "fd00::1-fd00::ffff:ffff",
                "0.0.0.0",
                "1.2.3.4/33",
                "*",
                "a*b*c*d*e*f*g*",
            ][rng.below(8)]
            .to_owned(),
        ),
        _ => Value::String(INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())].to_owned()),
    }
}

/// A mutated copy of `base` (`other` is another corpus entry, for splices).
pub fn mutate(base: &[u8], other: &[u8], target: &Target, rng: &mut Rng) -> Vec<u8> {
    let structural = !matches!(target.shape, Shape::Text) && rng.chance(50);
    if structural && let Some(mutated) = mutate_structure(base, other, target.shape, rng) {
        return mutated;
    }
    let mut data = base.to_vec();
    for _ in 0..rng.between(1, 4) {
        mutate_bytes(&mut data, other, target.dictionary, rng);
    }
    data
}

fn mutate_bytes(data: &mut Vec<u8>, other: &[u8], dictionary: &[&[u8]], rng: &mut Rng) {
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
        }
        2 if len > 0 => {
            let start = rng.below(len);
            let end = (start + rng.between(1, 16) as usize).min(len);
            data.drain(start..end);
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + rng.between(1, 64) as usize).min(len);
            let chunk = data[start..end].to_vec();
            let at = rng.below(len + 1);
            for _ in 0..rng.between(1, 8) {
                data.splice(at..at, chunk.iter().copied());
            }
        }
        4 if !dictionary.is_empty() => {
            let token = dictionary[rng.below(dictionary.len())];
            let at = rng.below(len + 1);
            data.splice(at..at, token.iter().copied());
        }
        5 if !other.is_empty() => {
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        6 => {
            // Replace a run of digits by an edge number.
            let digits: Vec<usize> = (0..len).filter(|i| data[*i].is_ascii_digit()).collect();
            if let Some(&start) = digits.get(rng.below(digits.len().max(1))) {
                let mut end = start;
                while end < len && data[end].is_ascii_digit() {
                    end += 1;
                }
                let number = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())];
                data.splice(start..end, number.bytes());
            }
        }
        7 => {
            let at = rng.below(len + 1);
            let bytes: Vec<u8> = (0..rng.between(1, 8))
                .map(|_| (rng.next_u64() & 0xff) as u8)
                .collect();
            data.splice(at..at, bytes);
        }
        _ if len > 0 => {
            let at = rng.below(len);
            data.truncate(at);
        }
        _ => data.push(INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())]),
    }
}

fn parse(data: &[u8], shape: Shape) -> Option<Value> {
    match shape {
        Shape::Json => serde_json::from_slice(data).ok(),
        Shape::Yaml => serde_json::from_slice(data)
            .ok()
            .or_else(|| serde_saphyr::from_slice::<Value>(data).ok()),
        Shape::Text => None,
    }
}

fn mutate_structure(base: &[u8], other: &[u8], shape: Shape, rng: &mut Rng) -> Option<Vec<u8>> {
    let mut value = parse(base, shape)?;
    let donor = parse(other, shape);
    let count = count_nodes(&value);
    for _ in 0..rng.between(1, 3) {
        let index = rng.below(count.max(1));
        let replacement = match (&donor, rng.chance(25)) {
            (Some(donor), true) => nth_node(donor, rng.below(count_nodes(donor).max(1)))
                .cloned()
                .unwrap_or(Value::Null),
            _ => hostile_value(rng),
        };
        edit_nth(&mut value, index, rng, replacement);
    }
    serde_json::to_vec(&value).ok()
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn nth_node(value: &Value, n: usize) -> Option<&Value> {
    fn walk<'a>(value: &'a Value, n: &mut usize) -> Option<&'a Value> {
        if *n == 0 {
            return Some(value);
        }
        *n -= 1;
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => Box::new(std::iter::empty()),
        };
        for child in children {
            if let Some(found) = walk(child, n) {
                return Some(found);
            }
        }
        None
    }
    let mut n = n;
    walk(value, &mut n)
}

/// Edits the `n`-th node (pre-order): replaces it, or, for containers, removes or duplicates a child.
fn edit_nth(value: &mut Value, n: usize, rng: &mut Rng, replacement: Value) {
    fn walk(value: &mut Value, n: &mut usize, rng: &mut Rng, replacement: &mut Option<Value>) -> bool {
        if *n == 0 {
            let Some(new) = replacement.take() else {
                return true;
            };
            match value {
                Value::Object(map) if !map.is_empty() && rng.chance(30) => {
                    let keys: Vec<String> = map.keys().cloned().collect();
                    let key = &keys[rng.below(keys.len())];
                    if rng.chance(50) {
                        map.remove(key);
                    } else {
                        map.insert(key.clone(), new);
                    }
                }
                Value::Array(items) if !items.is_empty() && rng.chance(30) => {
                    let i = rng.below(items.len());
                    if rng.chance(50) {
                        items.remove(i);
                    } else {
                        let copy = items[i].clone();
                        for _ in 0..rng.between(1, 100) {
                            items.push(copy.clone());
                        }
                    }
                }
                _ => *value = new,
            }
            return true;
        }
        *n -= 1;
        match value {
            Value::Array(items) => items.iter_mut().any(|child| walk(child, n, rng, replacement)),
            Value::Object(map) => map.values_mut().any(|child| walk(child, n, rng, replacement)),
            _ => false,
        }
    }
    let mut n = n;
    let mut replacement = Some(replacement);
    walk(value, &mut n, rng, &mut replacement);
}
