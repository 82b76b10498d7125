//! The pattern language of `learntrac logs filter`, and reading a log
//! group's files within a time range.
//!
//! A pattern is one or more clauses separated by `OR`; a line matches when
//! any clause matches. A clause is a list of items that must all match:
//!
//! - `term` or `"a phrase"`: the line contains it, ignoring case;
//! - `-term` or `-"a phrase"`: the line does not contain it;
//! - `field=value`, `field!=value`: a JSON field equals, or does not equal,
//!   the value. Fields are looked up at the top level and under `fields`,
//!   where tracing writes them, and `a.b` descends into objects;
//! - `field>N`, `field>=N`, `field<N`, `field<=N`: a numeric comparison;
//! - `-field=value` and the like: the condition does not hold.
//!
//! Terms ignore case; field values are compared exactly (`level=WARN`).
//! A pattern that starts with `-` is given as `--pattern=-term`.

use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

#[derive(Debug, PartialEq, Clone, Copy)]
enum Comparison {
    Equal,
    NotEqual,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

#[derive(Debug, PartialEq)]
enum Item {
    Contains(String),
    Excludes(String),
    Field { path: String, comparison: Comparison, value: String },
    Not(Box<Item>),
}

/// A parsed pattern.
#[derive(Debug, PartialEq)]
pub struct Pattern {
    clauses: Vec<Vec<Item>>,
}

/// Splits a pattern into words, keeping quoted phrases (with a leading `-`
/// if any) whole and marking them as quoted.
fn words(text: &str) -> Result<Vec<(String, bool)>, String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        let mut quoted = false;
        if c == '-' {
            word.push('-');
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            quoted = true;
            let mut closed = false;
            for c in chars.by_ref() {
                if c == '"' {
                    closed = true;
                    break;
                }
                word.push(c);
            }
            if !closed {
                return Err(format!("pattern {text:?} has a quote that is not closed"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push((word, quoted));
    }
    Ok(words)
}

/// Parses `field OP value`; `None` when `word` is not a condition, and an
/// error when it is one that can never match.
fn field_condition(word: &str) -> Result<Option<Item>, String> {
    const OPERATORS: &[(&str, Comparison)] = &[
        (">=", Comparison::GreaterOrEqual),
        ("<=", Comparison::LessOrEqual),
        ("!=", Comparison::NotEqual),
        ("=", Comparison::Equal),
        (">", Comparison::Greater),
        ("<", Comparison::Less),
    ];
    let Some(position) = word.find(['=', '>', '<', '!']) else { return Ok(None) };
    let path = &word[..position];
    let is_path = !path.is_empty() && path.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !is_path {
        return Ok(None);
    }
    let rest = &word[position..];
    let Some((operator, comparison)) = OPERATORS.iter().find(|(operator, _)| rest.starts_with(operator)) else {
        return Ok(None);
    };
    let value = rest[operator.len()..].to_string();
    let numeric = !matches!(comparison, Comparison::Equal | Comparison::NotEqual);
    if numeric && value.parse::<f64>().is_err() {
        return Err(format!("condition {word:?} compares with {value:?}, which is not a number"));
    }
    Ok(Some(Item::Field { path: path.to_string(), comparison: *comparison, value }))
}

impl std::str::FromStr for Pattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Pattern, String> {
        let mut clauses = vec![Vec::new()];
        for (word, quoted) in words(text)? {
            if word == "OR" && !quoted {
                clauses.push(Vec::new());
                continue;
            }
            let item = match word.strip_prefix('-') {
                Some(excluded) if !excluded.is_empty() && !quoted => match field_condition(excluded)? {
                    Some(condition) => Item::Not(Box::new(condition)),
                    None => Item::Excludes(excluded.to_lowercase()),
                },
                Some(excluded) if !excluded.is_empty() => Item::Excludes(excluded.to_lowercase()),
                _ if quoted => Item::Contains(word.to_lowercase()),
                _ => field_condition(&word)?.unwrap_or_else(|| Item::Contains(word.to_lowercase())),
            };
            if let Some(clause) = clauses.last_mut() {
                clause.push(item);
            }
        }
        if clauses.iter().any(Vec::is_empty) {
            return Err(format!(
                "pattern {text:?} has an empty clause; write terms on both sides of OR, such as 'unauthorized OR 401'"
            ));
        }
        Ok(Pattern { clauses })
    }
}

/// Finds a field at the top level or under `fields`; `a.b` descends.
fn lookup<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    let descend = |root: &'a Value| path.split('.').try_fold(root, |value, key| value.get(key));
    descend(event).or_else(|| event.get("fields").and_then(descend))
}

fn field_matches(event: &Value, path: &str, comparison: &Comparison, expected: &str) -> bool {
    let Some(value) = lookup(event, path) else {
        return *comparison == Comparison::NotEqual;
    };
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let numbers = value.as_f64().or_else(|| text.parse().ok()).zip(expected.parse::<f64>().ok());
    match comparison {
        Comparison::Equal => text == expected,
        Comparison::NotEqual => text != expected,
        Comparison::Greater => numbers.is_some_and(|(a, b)| a > b),
        Comparison::GreaterOrEqual => numbers.is_some_and(|(a, b)| a >= b),
        Comparison::Less => numbers.is_some_and(|(a, b)| a < b),
        Comparison::LessOrEqual => numbers.is_some_and(|(a, b)| a <= b),
    }
}

impl Pattern {
    /// Tests one log line; `event` is the line parsed as JSON, if it is JSON.
    pub fn matches(&self, line: &str, event: Option<&Value>) -> bool {
        let lower = line.to_lowercase();
        self.clauses.iter().any(|clause| clause.iter().all(|item| item_matches(item, &lower, event)))
    }
}

fn item_matches(item: &Item, lower: &str, event: Option<&Value>) -> bool {
    match item {
        Item::Contains(term) => lower.contains(term.as_str()),
        Item::Excludes(term) => !lower.contains(term.as_str()),
        Item::Field { path, comparison, value } => {
            event.is_some_and(|event| field_matches(event, path, comparison, value))
        }
        Item::Not(inner) => !item_matches(inner, lower, event),
    }
}

/// Reads the time of a log line from its `timestamp` field, in Unix seconds.
pub fn line_time(event: &Value) -> Option<i64> {
    event.get("timestamp").and_then(Value::as_str).and_then(crate::time::parse_rfc3339)
}

/// Calls `visit` with each line of a group's files (oldest first) whose
/// time is within `since..=until`, with the line parsed as JSON. Lines
/// without a time are kept only when no range is given.
pub fn scan_group(
    dir: &Path,
    group: &str,
    since: Option<i64>,
    until: Option<i64>,
    mut visit: impl FnMut(&str, &Value),
) -> std::io::Result<usize> {
    let files = super::group_files(dir, group);
    for file in &files {
        let reader = std::io::BufReader::new(std::fs::File::open(file)?);
        for line in reader.lines() {
            let line = line?;
            let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let time = line_time(&event);
            let in_range = match time {
                Some(time) => since.is_none_or(|s| time >= s) && until.is_none_or(|u| time <= u),
                None => since.is_none() && until.is_none(),
            };
            if in_range {
                visit(&line, &event);
            }
        }
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, line: &str) -> bool {
        let pattern: Pattern = pattern.parse().expect("pattern");
        let event: Option<Value> = serde_json::from_str(line).ok();
        pattern.matches(line, event.as_ref())
    }

    const DENIED: &str =
        r#"{"timestamp":"2026-12-04T10:00:00Z","fields":{"status":401,"path":"/api/v1/paths","message":"request"}}"#;
    const SERVED: &str =
        r#"{"timestamp":"2026-12-04T10:00:01Z","fields":{"status":200,"path":"/wiki/WikiStart","message":"request"}}"#;

    #[test]
    fn terms_or_and_exclusion() {
        assert!(check("unauthorized OR 401 OR 403", DENIED));
        assert!(!check("unauthorized OR 403", DENIED));
        assert!(check("request -wiki", DENIED));
        assert!(!check("request -wiki", SERVED));
        assert!(check("REQUEST", SERVED), "terms ignore case");
    }

    #[test]
    fn phrases_stay_whole() {
        assert!(check(r#""/api/v1/paths""#, DENIED));
        assert!(!check(r#""api paths""#, DENIED));
        assert!(check(r#"-"wiki/WikiStart""#, DENIED));
        assert!(r#"oops "unclosed"#.parse::<Pattern>().is_err());
    }

    #[test]
    fn field_conditions() {
        assert!(check("status=401", DENIED));
        assert!(!check("status=401", SERVED));
        assert!(check("status>=400", DENIED));
        assert!(check("status<300 path=/wiki/WikiStart", SERVED));
        assert!(check("status!=200", DENIED));
        assert!(check("missing!=x", DENIED), "an absent field differs from any value");
        assert!(!check("missing=x", DENIED));
        assert!(!check("-status=401", DENIED), "a negated condition excludes");
        assert!(check("-status=401", SERVED));
        assert!("status>abc".parse::<Pattern>().is_err(), "a comparison with text can never match");
    }

    #[test]
    fn empty_clauses_are_rejected() {
        for bad in ["", "OR", "401 OR", "OR 401"] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad:?}");
        }
    }
}
