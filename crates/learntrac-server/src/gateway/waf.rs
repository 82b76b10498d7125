//! Filtering rules against common attacks in query strings, form and JSON
//! bodies and headers. Each rule has an id and a mode (block, count or
//! off). Learners' own writing (answers, wiki text, goals) is checked only
//! with the free-text rules, because an answer about SQL or HTML is
//! supposed to contain SQL or HTML; the pages escape it and the database
//! takes it as a bound parameter.

use std::collections::{BTreeMap, HashSet};

use axum::http::HeaderMap;
use regex::{Regex, RegexSet};

use super::settings::{RuleMode, WafSettings};

/// The values a rule applies to; the discriminant indexes the rule sets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Query values, form and JSON fields other than free text, and headers.
    Injection = 0,
    /// The `User-Agent` header.
    UserAgent = 1,
    /// Free-text fields.
    FreeText = 2,
}

struct Rule {
    id: &'static str,
    scope: Scope,
    /// The mode when the settings name none; free-text rules that would
    /// also match honest writing only count by default.
    default_mode: Option<RuleMode>,
    pattern: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        id: "sqli-union",
        scope: Scope::Injection,
        default_mode: None,
        pattern: r"(?i)(\b|/\*!\d*)union(\s|/\*.*?\*/|\*/|\+)+((all|distinct)(\s|/\*.*?\*/|\+)+)?select\b",
    },
    Rule {
        id: "sqli-tautology",
        scope: Scope::Injection,
        default_mode: None,
        pattern: r#"(?i)(['"`)]\s*\b(or|and|xor)\b\s*[('"`]?\s*[\w'"`]+\s*(=|<|>|\blike\b|\bis\b)|\bor\s+\d+\s*=\s*\d+|['"`)]\s*(or|and)\s+(not\s+)?(true|false|null)\b|\b(or|and)\s+\d+\s+(not\s+)?(between|in|is|like)\b|['"`)]\s*(or|and|\|\|)\s*\d+\s*(--|#|/\*|=|$))"#,
    },
    Rule { id: "sqli-comment", scope: Scope::Injection, default_mode: None, pattern: r#"['"`]\s*(--|#|/\*|;)"# },
    Rule {
        id: "sqli-stacked",
        scope: Scope::Injection,
        default_mode: None,
        pattern: r"(?i);(\s|/\*.*?\*/)*(drop|delete|truncate|alter|insert|update|replace|create|exec|execute|shutdown|declare|select|attach|detach|pragma|vacuum|reindex)(\s|/\*|\(|$)",
    },
    Rule {
        id: "sqli-subquery",
        scope: Scope::Injection,
        default_mode: None,
        pattern: r"(?i)\(\s*select\b|\|\|\s*\(?\s*select\b",
    },
    Rule {
        id: "sqli-function",
        scope: Scope::Injection,
        default_mode: None,
        pattern: r"(?i)\b(sleep|pg_sleep|benchmark|waitfor\s+delay|dbms_pipe\.receive_message|extractvalue|updatexml|load_file|load_extension|randomblob|zeroblob|sqlite_version|version)\s*\(|\b(information_schema|pg_catalog|sqlite_master|sqlite_schema|sqlite_temp_master|xp_cmdshell)\b",
    },
    Rule { id: "xss-script", scope: Scope::Injection, default_mode: None, pattern: r"(?i)<\s*/?\s*script\b" },
    Rule { id: "xss-handler", scope: Scope::Injection, default_mode: None, pattern: r"(?i)<[^>]*\bon[a-z]+\s*=" },
    Rule {
        id: "xss-url",
        scope: Scope::Injection,
        default_mode: None,
        pattern: r"(?i)j\s*a\s*v\s*a\s*s\s*c\s*r\s*i\s*p\s*t\s*:|v\s*b\s*s\s*c\s*r\s*i\s*p\s*t\s*:|\blivescript\s*:|\bdata\s*:\s*text/html",
    },
    Rule {
        id: "xss-tag",
        scope: Scope::Injection,
        default_mode: None,
        pattern: r"(?i)<\s*(iframe|frame|object|embed|svg|math|base|meta|link|style|applet|form)\b",
    },
    Rule {
        id: "traversal",
        scope: Scope::Injection,
        default_mode: None,
        pattern: r"(?i)(^|[/\\])\.\.([/\\]|$)|/etc/(passwd|shadow|group|hosts)\b|/proc/self/|\bc:\\windows\\|\bboot\.ini\b",
    },
    Rule {
        id: "command",
        scope: Scope::Injection,
        default_mode: None,
        pattern: r"(?i)(;|&&|\|\|?|`|\$\(|\n)\s*(/[\w./-]*/)?(cat|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|busybox|bash|sh|zsh|dash|rm|ping|nslookup|python[0-9.]*|perl|ruby|php|chmod|chown|echo|sleep|env|kill|telnet|socat)(\s|$|[;|&`)<>])|\$\{?IFS\b",
    },
    Rule {
        id: "scanner",
        scope: Scope::UserAgent,
        default_mode: None,
        pattern: r"(?i)(sqlmap|nikto|nmap|masscan|wapiti|acunetix|nessus|openvas|dirbuster|gobuster|feroxbuster|ffuf|wfuzz|w3af|nuclei|zgrab|havij|netsparker|arachni|skipfish|whatweb|jaeles|commix)",
    },
    Rule { id: "text-control", scope: Scope::FreeText, default_mode: None, pattern: r"[\x00-\x08\x0b\x0e-\x1f\x7f]" },
    Rule {
        id: "text-script",
        scope: Scope::FreeText,
        default_mode: Some(RuleMode::Count),
        pattern: r"(?i)<\s*script\b[^>]*>[^<]*\b(document\.cookie|fetch|XMLHttpRequest|eval)\b",
    },
];

/// Every rule id, for settings validation and documentation.
pub const RULE_IDS: &[&str] = &[
    "sqli-union",
    "sqli-tautology",
    "sqli-comment",
    "sqli-stacked",
    "sqli-subquery",
    "sqli-function",
    "xss-script",
    "xss-handler",
    "xss-url",
    "xss-tag",
    "traversal",
    "command",
    "scanner",
    "text-control",
    "text-script",
];

/// Headers whose values are checked with the injection rules. The rest
/// (`Accept`, client hints, `Authorization`) are skipped, because their own
/// syntax of quotes and semicolons would look like attacks.
const INSPECTED_HEADERS: &[&str] = &["user-agent", "referer", "origin", "x-forwarded-host"];

/// A rule that matched, where, and what the gateway did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub rule: &'static str,
    /// Such as `query:q`, `form:email`, `json:goal` or `header:user-agent`.
    pub location: String,
    pub mode: RuleMode,
}

struct Compiled {
    id: &'static str,
    mode: RuleMode,
}

/// The rules of one scope, matched together in one pass over a value.
struct ScopeRules {
    rules: Vec<Compiled>,
    set: RegexSet,
}

impl ScopeRules {
    fn new(rules: Vec<(Compiled, &'static str)>) -> Result<ScopeRules, String> {
        let set =
            RegexSet::new(rules.iter().map(|(_, pattern)| *pattern)).map_err(|e| format!("filtering rules: {e}"))?;
        Ok(ScopeRules { rules: rules.into_iter().map(|(rule, _)| rule).collect(), set })
    }
}

pub struct Waf {
    injection: ScopeRules,
    user_agent: ScopeRules,
    free_text_rules: ScopeRules,
    free_text: HashSet<String>,
    secret: HashSet<String>,
}

/// The body of a request as the rules see it.
pub enum BodyKind<'a> {
    None,
    Form(&'a [u8]),
    Json(&'a [u8]),
    /// Another content type: checked whole with the injection rules.
    Other(&'a [u8]),
}

impl Waf {
    pub fn new(settings: &WafSettings) -> Result<Waf, String> {
        let modes: &BTreeMap<String, RuleMode> = &settings.rules;
        let mut by_scope: [Vec<(Compiled, &'static str)>; 3] = Default::default();
        for rule in RULES {
            let mode = modes.get(rule.id).copied().or(rule.default_mode).unwrap_or(settings.mode);
            let mode =
                if settings.mode == RuleMode::Off && !modes.contains_key(rule.id) { RuleMode::Off } else { mode };
            if mode == RuleMode::Off {
                continue;
            }
            Regex::new(rule.pattern).map_err(|e| format!("filtering rule {}: {e}", rule.id))?;
            by_scope[rule.scope as usize].push((Compiled { id: rule.id, mode }, rule.pattern));
        }
        let [injection, user_agent, free_text_rules] = by_scope;
        Ok(Waf {
            injection: ScopeRules::new(injection)?,
            user_agent: ScopeRules::new(user_agent)?,
            free_text_rules: ScopeRules::new(free_text_rules)?,
            free_text: settings.free_text_fields.iter().cloned().collect(),
            secret: settings.secret_fields.iter().cloned().collect(),
        })
    }

    /// Returns every rule that matches the request.
    pub fn inspect(&self, query: Option<&str>, headers: &HeaderMap, body: BodyKind<'_>) -> Vec<Match> {
        let mut matches = Vec::new();
        if self.injection.rules.is_empty() && self.user_agent.rules.is_empty() && self.free_text_rules.rules.is_empty()
        {
            return matches;
        }
        if let Some(query) = query {
            for (name, value) in form_pairs(query.as_bytes()) {
                self.check_decoded(Location { kind: "query-key", name: &name }, &name, &mut matches);
                self.check_field("query", &name, &value, &mut matches);
            }
        }
        for name in INSPECTED_HEADERS {
            for value in headers.get_all(*name) {
                let value = String::from_utf8_lossy(value.as_bytes());
                let at = Location { kind: "header", name };
                if *name == "user-agent" {
                    self.check(Scope::UserAgent, at, &value, &mut matches);
                    self.check(Scope::Injection, at, &value, &mut matches);
                } else {
                    self.check_decoded(at, &value, &mut matches);
                }
            }
        }
        for value in headers.get_all(axum::http::header::COOKIE) {
            for pair in String::from_utf8_lossy(value.as_bytes()).split(';') {
                match pair.split_once('=') {
                    Some((name, value)) => {
                        self.check_decoded(Location { kind: "cookie-key", name: name.trim() }, name, &mut matches);
                        self.check_decoded(Location { kind: "cookie", name: name.trim() }, value, &mut matches);
                    }
                    None => self.check_decoded(Location { kind: "cookie", name: "" }, pair, &mut matches),
                }
            }
        }
        let whole_body = Location { kind: "body", name: "" };
        match body {
            BodyKind::None => {}
            BodyKind::Form(bytes) => {
                for (name, value) in form_pairs(bytes) {
                    self.check_decoded(Location { kind: "form-key", name: &name }, &name, &mut matches);
                    self.check_field("form", &name, &value, &mut matches);
                }
            }
            // Invalid JSON is left to the role, which rejects it with 400.
            BodyKind::Json(bytes) => {
                if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
                    self.check_json(None, &value, &mut matches);
                }
            }
            BodyKind::Other(bytes) => self.check_decoded(whole_body, &String::from_utf8_lossy(bytes), &mut matches),
        }
        matches
    }

    /// Returns every rule that matches a segment of the request path, such
    /// as a wiki page name.
    pub fn inspect_path(&self, path: &str) -> Vec<Match> {
        let mut matches = Vec::new();
        for segment in path.split('/').filter(|segment| !segment.is_empty()) {
            self.check_decoded(Location { kind: "path", name: "" }, segment, &mut matches);
        }
        matches
    }

    fn check_json(&self, key: Option<&str>, value: &serde_json::Value, matches: &mut Vec<Match>) {
        match value {
            serde_json::Value::String(text) => self.check_field("json", key.unwrap_or(""), text, matches),
            serde_json::Value::Array(items) => {
                for item in items {
                    self.check_json(key, item, matches);
                }
            }
            serde_json::Value::Object(fields) => {
                for (name, item) in fields {
                    self.check_decoded(Location { kind: "json-key", name }, name, matches);
                    self.check_json(Some(name), item, matches);
                }
            }
            _ => {}
        }
    }

    /// Checks one named field with the rules its name calls for.
    fn check_field(&self, kind: &str, name: &str, value: &str, matches: &mut Vec<Match>) {
        if self.secret.contains(name) {
            return;
        }
        let at = Location { kind, name };
        if self.free_text.contains(name) {
            self.check(Scope::FreeText, at, value, matches);
            return;
        }
        self.check_decoded(at, value, matches);
    }

    /// Checks a value with the injection rules, and again after each round
    /// of percent-decoding, so that doubly encoded attacks are seen too.
    fn check_decoded(&self, at: Location<'_>, value: &str, matches: &mut Vec<Match>) {
        if is_plain_token(value) {
            return;
        }
        self.check(Scope::Injection, at, value, matches);
        let mut current = std::borrow::Cow::Borrowed(value);
        for _ in 0..3 {
            if !current.contains('%') {
                break;
            }
            let decoded = percent_decode_lenient(&current);
            if decoded == current {
                break;
            }
            self.check(Scope::Injection, at, &decoded, matches);
            current = std::borrow::Cow::Owned(decoded);
        }
        if let Some(decoded) = decode_html_entities(&current) {
            self.check(Scope::Injection, at, &decoded, matches);
        }
    }

    fn check(&self, scope: Scope, at: Location<'_>, value: &str, matches: &mut Vec<Match>) {
        let rules = match scope {
            Scope::Injection => &self.injection,
            Scope::UserAgent => &self.user_agent,
            Scope::FreeText => &self.free_text_rules,
        };
        for index in rules.set.matches(value).iter() {
            let rule = &rules.rules[index];
            let location = at.to_string();
            if !matches.iter().any(|m| m.rule == rule.id && m.location == location) {
                matches.push(Match { rule: rule.id, location, mode: rule.mode });
            }
        }
    }
}

/// The place of a value in the request, such as `query` and `q`; it is
/// formatted only for a match.
#[derive(Clone, Copy)]
struct Location<'a> {
    kind: &'a str,
    name: &'a str,
}

impl std::fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name.is_empty() && matches!(self.kind, "body" | "path") {
            f.write_str(self.kind)
        } else {
            write!(f, "{}:{}", self.kind, self.name)
        }
    }
}

/// Schema names that `sqli-function` matches as whole words.
const SCHEMA_NAMES: &[&str] =
    &["information_schema", "pg_catalog", "sqlite_master", "sqlite_schema", "sqlite_temp_master", "xp_cmdshell"];

/// Returns whether `value` is made only of letters, digits, `-`, `_` and
/// single dots, as ids, numbers and tokens (session cookies) are, and
/// contains no schema name as a word. No injection pattern can match such a value,
/// so it is skipped.
fn is_plain_token(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !value.contains("..")
        && !value.split(['.', '-']).any(|word| {
            SCHEMA_NAMES.iter().any(|name| word.len() >= name.len() && word[..name.len()].eq_ignore_ascii_case(name))
        })
}

/// Splits `a=1&b=2` into decoded pairs (`+` is a space).
fn form_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(bytes);
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |part: &str| percent_decode_lenient(&part.replace('+', " "));
            (decode(name), decode(value))
        })
        .collect()
}

/// Decodes the valid `%XX` escapes and keeps malformed ones as they are,
/// as the form and query parsers of the roles do, so that a broken escape
/// cannot hide the rest of a value from the rules. Bytes that are not
/// UTF-8 are replaced.
pub fn percent_decode_lenient(text: &str) -> String {
    if !text.contains('%') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes the numeric character references (`&#97;`, `&#x61;`) and the
/// named ones that browsers accept inside URLs (`&colon;`, `&tab;`,
/// `&newline;`), which can spell `javascript:` in an attribute.
fn decode_html_entities(text: &str) -> Option<String> {
    if !text.contains('&') {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).unwrap_or(after.len());
        let name = &after[..end];
        let decoded = match name.strip_prefix('#') {
            Some(number) => match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => number.parse::<u32>().ok(),
            }
            .and_then(char::from_u32),
            None => match name.to_ascii_lowercase().as_str() {
                "colon" => Some(':'),
                "tab" => Some('\t'),
                "newline" => Some('\n'),
                "lpar" => Some('('),
                "rpar" => Some(')'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => None,
            },
        };
        match decoded {
            Some(c) if !name.is_empty() => {
                out.push(c);
                let skip = end + usize::from(after[end..].starts_with(';'));
                rest = &after[skip..];
            }
            _ => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

/// Decodes `%XX` escapes; `None` when an escape is malformed. Bytes that
/// are not UTF-8 are replaced.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waf() -> Waf {
        Waf::new(&WafSettings::default()).expect("rules compile")
    }

    fn query_rules(query: &str) -> Vec<&'static str> {
        waf().inspect(Some(query), &HeaderMap::new(), BodyKind::None).into_iter().map(|m| m.rule).collect()
    }

    #[test]
    fn rule_ids_list_every_rule() {
        let ids: Vec<&str> = RULES.iter().map(|rule| rule.id).collect();
        assert_eq!(ids, RULE_IDS);
    }

    #[test]
    fn attacks_in_query_strings_match_their_rule() {
        for (query, rule) in [
            ("id=1%20UNION%20SELECT%20password%20FROM%20users", "sqli-union"),
            ("id=1'%20OR%20'1'='1", "sqli-tautology"),
            ("id=1%20or%201=1", "sqli-tautology"),
            ("user=admin'--", "sqli-comment"),
            ("id=1;%20DROP%20TABLE%20users", "sqli-stacked"),
            ("id=1%20AND%20SLEEP(5)", "sqli-function"),
            ("q=%3Cscript%3Ealert(1)%3C/script%3E", "xss-script"),
            ("q=%3Cimg%20src=x%20onerror=alert(1)%3E", "xss-handler"),
            ("next=javascript:alert(1)", "xss-url"),
            ("q=%3Ciframe%20src=//evil%3E", "xss-tag"),
            ("file=../../etc/passwd", "traversal"),
            ("file=%252e%252e%252fetc%252fpasswd", "traversal"),
            ("host=127.0.0.1;cat%20/etc/hosts", "command"),
            ("host=x%60whoami%60", "command"),
            ("x=%27%20or%20not%20false%20--", "sqli-tautology"),
            ("x=%27%20or%20true--%20", "sqli-tautology"),
            ("x=1%20or%201%20between%200%20and%202", "sqli-tautology"),
            ("x=%27%7C%7C(select%20sqlite_version())%7C%7C%27", "sqli-subquery"),
            ("x=1%20and%20(select%20count(*)%20from%20sqlite_schema)%3E0", "sqli-subquery"),
            ("x=1%20and%201=randomblob(500000000)", "sqli-function"),
            ("x=1;SELECT%20load_extension(%27x%27)", "sqli-stacked"),
            ("x=1;/**/DROP/**/TABLE%20users", "sqli-stacked"),
            ("x=information_schema.tables", "sqli-function"),
            ("x=java%09script:alert(1)", "xss-url"),
            ("x=a;busybox%20nc", "command"),
            ("x=${IFS}cat", "command"),
            ("%3Cscript%3E=1", "xss-script"),
            ("1%20UNION%20SELECT%201", "sqli-union"),
            ("x=%zz%27%20or%201%3D1--", "sqli-tautology"),
            ("x=%zz1%20union%20select%201", "sqli-union"),
            ("x=1;vacuum%20into%20%27/tmp/x%27", "sqli-stacked"),
            ("x=%27%20or%201%20--%20", "sqli-tautology"),
            ("x=1%20or%201%20in%20(1)", "sqli-tautology"),
            ("x=%27%20%7C%7C%201=1%20--", "sqli-tautology"),
            ("x=1%20or%201%20is%20not%20null", "sqli-tautology"),
            ("x=1%20union%20distinct%20select%201", "sqli-union"),
            ("x=1/*!50000union*/%20select%201", "sqli-union"),
            ("x=jav%26%23x61;script:alert(1)", "xss-url"),
            ("x=%3Ca%20href=javascript%26colon;alert(1)%3E", "xss-url"),
            ("x=a;/bin/sh%20-c%20id", "command"),
        ] {
            assert!(query_rules(query).contains(&rule), "{query} should match {rule}: {:?}", query_rules(query));
        }
    }

    #[test]
    fn ordinary_values_match_nothing() {
        for query in ["q=missing+values+in+R", "page=2&sort=title", "goal=what%27s+a+data+frame", "x=a-b_c.d"] {
            assert_eq!(query_rules(query), Vec::<&str>::new(), "{query}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"
                .parse()
                .expect("header"),
        );
        headers.insert("sec-ch-ua", "\"Chromium\";v=\"156\", \"Not.A/Brand\";v=\"24\"".parse().expect("header"));
        assert!(waf().inspect(None, &headers, BodyKind::None).is_empty());
        headers.insert(
            "user-agent",
            "Mozilla/5.0 (Linux; U; Android 4.4.2; id-id; SM-G7102 Build/KOT49H) AppleWebKit/534.30 Mobile Safari/534.30"
                .parse()
                .expect("header"),
        );
        headers.insert("referer", "https://localhost:8443/wiki/WikiStart?x=1".parse().expect("header"));
        assert!(waf().inspect(None, &headers, BodyKind::None).is_empty());
    }

    #[test]
    fn path_segments_are_checked() {
        let rules = |path: &str| waf().inspect_path(path).into_iter().map(|m| m.rule).collect::<Vec<_>>();
        assert!(rules("/wiki/1%27%20or%20%271%27=%271").contains(&"sqli-tautology"));
        assert!(rules("/wiki/1%20union%20select%201").contains(&"sqli-union"));
        assert!(rules("/wiki/Don%27t_Panic").is_empty());
        assert!(rules("/api/v1/tickets/12/answers").is_empty());
    }

    #[test]
    fn scanners_are_known_by_their_user_agent() {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "sqlmap/1.7.2#stable (https://sqlmap.org)".parse().expect("header"));
        let found = waf().inspect(None, &headers, BodyKind::None);
        assert!(found.iter().any(|m| m.rule == "scanner" && m.mode == RuleMode::Block), "{found:?}");
    }

    #[test]
    fn free_text_fields_allow_learner_writing() {
        let answer = r#"{"answer": "SELECT name FROM users WHERE id = 1 OR 1=1; -- and <script>alert(1)</script> is XSS, as is <img onerror=x>; `ls` runs ls and ../ goes up"}"#;
        assert!(waf().inspect(None, &HeaderMap::new(), BodyKind::Json(answer.as_bytes())).is_empty());
        let form = b"text=%3Cb%3Ebold%3C%2Fb%3E+and+%27quoted%27--+text&goal=SQL+UNION+SELECT";
        assert!(waf().inspect(None, &HeaderMap::new(), BodyKind::Form(form)).is_empty());
        let other = br#"{"title_x": "1' OR '1'='1"}"#;
        assert!(!waf().inspect(None, &HeaderMap::new(), BodyKind::Json(other)).is_empty());
        let form_feed = "{\"answer\": \"end of page 1\\fPage 2\"}";
        assert!(waf().inspect(None, &HeaderMap::new(), BodyKind::Json(form_feed.as_bytes())).is_empty());
        let broken = br#"{"answer": "SELECT * FROM t UNION SELECT * FROM u",}"#;
        assert!(
            waf().inspect(None, &HeaderMap::new(), BodyKind::Json(broken)).is_empty(),
            "invalid JSON is the role's"
        );
        let control = "{\"answer\": \"a\\u0000b\"}";
        let found = waf().inspect(None, &HeaderMap::new(), BodyKind::Json(control.as_bytes()));
        assert_eq!(found.first().map(|m| m.rule), Some("text-control"));
    }

    #[test]
    fn passwords_are_never_inspected() {
        let form = b"email=a%40example.org&password=Pa%27ss--w0rd%3Cscript%3E";
        assert!(waf().inspect(None, &HeaderMap::new(), BodyKind::Form(form)).is_empty());
    }

    #[test]
    fn modes_come_from_the_settings() {
        let mut settings = WafSettings::default();
        settings.rules.insert("sqli-union".into(), RuleMode::Count);
        settings.rules.insert("xss-script".into(), RuleMode::Off);
        let waf = Waf::new(&settings).expect("rules");
        let found = waf.inspect(Some("q=1+union+select+2&r=%3Cscript%3E"), &HeaderMap::new(), BodyKind::None);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].mode, RuleMode::Count);
        settings.mode = RuleMode::Off;
        settings.rules.clear();
        assert!(
            Waf::new(&settings)
                .expect("rules")
                .inspect(Some("q=1+union+select+2"), &HeaderMap::new(), BodyKind::None)
                .is_empty()
        );
    }

    #[test]
    fn plain_tokens_skip_the_rules() {
        assert!(is_plain_token("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln-_"));
        assert!(!is_plain_token(".."));
        assert!(!is_plain_token("a..b"));
        assert!(!is_plain_token("a b"));
        assert!(!is_plain_token("information_schema.tables"));
        assert!(!is_plain_token("x-SQLITE_MASTER"));
        assert!(is_plain_token("my_information_schema_notes"));
        assert!(query_rules("file=..").contains(&"traversal"));
    }

    #[test]
    fn malformed_escapes_are_not_decoded() {
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("a%2e%2E").as_deref(), Some("a.."));
    }
}
