//! Tokenising, stemming and sentence splitting shared by the embedding,
//! the lexical index, the question generator and the grader.

/// English function words that carry no topic. Sorted, for binary search.
const STOPWORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "done",
    "down",
    "during",
    "each",
    "either",
    "etc",
    "few",
    "for",
    "from",
    "further",
    "get",
    "gets",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "him",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "know",
    "learn",
    "like",
    "made",
    "make",
    "many",
    "may",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "my",
    "need",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "one",
    "only",
    "or",
    "other",
    "our",
    "out",
    "over",
    "own",
    "same",
    "see",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "understand",
    "until",
    "up",
    "us",
    "use",
    "used",
    "uses",
    "using",
    "very",
    "want",
    "was",
    "way",
    "we",
    "well",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "within",
    "without",
    "would",
    "you",
    "your",
];

/// Returns whether `word` (lower case) is a stopword.
pub fn is_stopword(word: &str) -> bool {
    STOPWORDS.binary_search(&word).is_ok()
}

/// Splits `text` into lower-case words of letters and digits. Apostrophes
/// inside a word are dropped ("don't" becomes "dont"); every other
/// character separates words.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if ch.is_alphanumeric() {
            current.extend(ch.to_lowercase());
        } else if (ch == '\'' || ch == '\u{2019}') && !current.is_empty() {
            continue;
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Reduces an English word to a stem by stripping common inflections, so
/// that "values", "valued" and "value" meet. It is deliberately light: the
/// same stem for the same word matters more here than linguistic accuracy.
pub fn stem(word: &str) -> String {
    let w = word;
    if w.len() <= 3 || !w.is_ascii() {
        return w.to_string();
    }
    for (suffix, replacement) in [
        ("ational", "ate"),
        ("ization", "ize"),
        ("fulness", "ful"),
        ("iveness", "ive"),
        ("ations", "ate"),
        ("ation", "ate"),
        ("ies", "y"),
        ("ied", "y"),
        ("sses", "ss"),
        ("ing", ""),
        ("ed", ""),
        ("es", "e"),
        ("ly", ""),
        ("s", ""),
    ] {
        if let Some(base) = w.strip_suffix(suffix) {
            if base.len() < 3 || (suffix == "s" && (base.ends_with('s') || base.ends_with('u'))) {
                continue;
            }
            let mut stemmed = format!("{base}{replacement}");
            // "running" -> "runn" -> "run": undo a doubled final consonant.
            if (suffix == "ing" || suffix == "ed") && stemmed.len() > 3 {
                let bytes = stemmed.as_bytes();
                let last = bytes[bytes.len() - 1];
                if last == bytes[bytes.len() - 2] && !b"aeiouls".contains(&last) {
                    stemmed.pop();
                }
            }
            return stemmed;
        }
    }
    w.to_string()
}

/// Returns the stems of the words of `text` that are not stopwords and
/// contain at least one letter or are at least two characters long.
pub fn terms(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| !is_stopword(w))
        .filter(|w| w.len() > 1 || w.chars().all(char::is_alphabetic))
        .map(|w| stem(&w))
        .collect()
}

/// Splits prose into sentences at '.', '!' or '?' followed by white space
/// and an upper-case letter, digit or quote. Abbreviations such as "e.g."
/// and "i.e." do not end a sentence.
pub fn sentences(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if matches!(ch, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j], ')' | '"' | '\'' | '\u{201d}') {
                j += 1;
            }
            let spaced = j < chars.len() && chars[j].is_whitespace();
            let mut k = j;
            while k < chars.len() && chars[k].is_whitespace() {
                k += 1;
            }
            let next_starts = k >= chars.len()
                || chars[k].is_uppercase()
                || chars[k].is_ascii_digit()
                || matches!(chars[k], '"' | '\u{201c}' | '(');
            let word_before: String = chars[start..i]
                .iter()
                .rev()
                .take_while(|c| !c.is_whitespace())
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            let abbreviation = matches!(
                word_before.to_lowercase().as_str(),
                "e.g" | "i.e" | "etc" | "vs" | "cf" | "fig" | "eq" | "mr" | "dr" | "no"
            );
            if (spaced || j >= chars.len()) && next_starts && !abbreviation {
                push_sentence(&mut out, &chars[start..j]);
                start = k;
                i = k;
                continue;
            }
        }
        i += 1;
    }
    if start < chars.len() {
        push_sentence(&mut out, &chars[start..]);
    }
    out
}

fn push_sentence(out: &mut Vec<String>, chars: &[char]) {
    let sentence: String = chars.iter().collect();
    let sentence = collapse_whitespace(&sentence);
    if !sentence.is_empty() {
        out.push(sentence);
    }
}

/// Replaces every run of white space with one space and trims the ends.
pub fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Returns at most `max` characters of `text`, cut at a word boundary and
/// marked with an ellipsis when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    let end = cut.rfind(char::is_whitespace).unwrap_or(cut.len());
    format!("{}…", cut[..end].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopwords_are_sorted() {
        assert!(STOPWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn stem_joins_inflections() {
        assert_eq!(stem("values"), stem("value"));
        assert_eq!(stem("handles"), stem("handle"));
        assert_eq!(stem("running"), "run");
        assert_eq!(stem("missing"), "miss");
        assert_eq!(stem("class"), "class");
        assert_eq!(stem("status"), "status");
    }

    #[test]
    fn terms_drop_stopwords() {
        assert_eq!(terms("How does R handle the missing values?"), ["r", "handle", "miss", "value"]);
    }

    #[test]
    fn sentences_respect_abbreviations() {
        let text = "R has vectors, e.g. numbers. Missing values are NA. Is that so? Yes.";
        assert_eq!(sentences(text), ["R has vectors, e.g. numbers.", "Missing values are NA.", "Is that so?", "Yes."]);
    }

    #[test]
    fn excerpt_cuts_at_word() {
        assert_eq!(excerpt("one two three", 9), "one two…");
        assert_eq!(excerpt("short", 9), "short");
    }
}
