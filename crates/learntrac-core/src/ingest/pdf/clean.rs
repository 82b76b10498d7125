//! Removal of what the page layout adds to a book's text: running headers
//! and footers, bare page numbers, and hyphens that break words across lines.

use std::collections::{HashMap, HashSet};

use super::layout::Line;

/// Lines at each end of a page that may be a running header or footer.
const EDGE_LINES: usize = 2;

/// Pages on which one offset between PDF page and printed page number must
/// be seen before edge lines that carry such a number count as running
/// headers or footers.
const MIN_NUMBERED_PAGES: usize = 3;

/// The lines of all pages without running headers, footers and page
/// numbers, and the offsets between PDF page and printed page number that
/// the book uses, most used first.
pub(super) struct Cleaned {
    pub lines: Vec<Line>,
    pub page_offsets: Vec<i64>,
}

/// Drops running headers and footers and bare page numbers. A running
/// header is an edge line that carries the page's printed number, as the
/// offset between PDF page and printed number that most pages share
/// predicts, or an edge line that recurs on several pages once digits are
/// removed. Bare page numbers may be arabic or roman numerals.
pub(super) fn remove_page_furniture(pages: Vec<Vec<Line>>) -> Cleaned {
    let page_offsets = page_number_offsets(&pages);
    let mut edge_counts: HashMap<String, usize> = HashMap::new();
    for lines in &pages {
        for line in edge_lines(lines) {
            *edge_counts.entry(without_digits(&line.text)).or_default() += 1;
        }
    }

    let mut out = Vec::new();
    for lines in pages {
        let edges: Vec<usize> = edge_indices(lines.len());
        for (index, line) in lines.into_iter().enumerate() {
            let at_edge = edges.contains(&index);
            let key = without_digits(&line.text);
            let count = edge_counts.get(&key).copied().unwrap_or(0);
            let numbered = has_page_number(&line.text);
            let printed_page = edge_numbers(&line.text).any(|n| page_offsets.contains(&(i64::from(line.page) - n)));
            // A line seen at the edge of three pages is a running header or
            // footer ("Chapter 2: Simple manipulations 10"). One with a page
            // number recurs only within its chapter, so twice is enough. A
            // "Chapter 3" line recurs because it opens every chapter, so it stays.
            let label = super::structure::label_number(&line.text).is_some_and(|(_, rest)| rest.is_empty());
            let recurring = !label && (count >= 3 || (numbered && count >= 2));
            let furniture = (at_edge && (printed_page || recurring || is_bare_page_number(&line.text)))
                // Figures or footnotes can push a numbered running header
                // off the edge.
                || (recurring && numbered);
            if !furniture {
                out.push(line);
            }
        }
    }
    Cleaned { lines: out, page_offsets }
}

/// Returns the offsets (PDF page minus printed number) seen at the edges of
/// at least [`MIN_NUMBERED_PAGES`] pages, most frequent first. A book
/// numbers its front matter and its body separately, so there can be more
/// than one.
fn page_number_offsets(pages: &[Vec<Line>]) -> Vec<i64> {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for lines in pages {
        let mut seen = HashSet::new();
        for line in edge_lines(lines) {
            for number in edge_numbers(&line.text) {
                seen.insert(i64::from(line.page) - number);
            }
        }
        for offset in seen {
            *counts.entry(offset).or_default() += 1;
        }
    }
    let mut offsets: Vec<(i64, usize)> = counts.into_iter().filter(|&(_, count)| count >= MIN_NUMBERED_PAGES).collect();
    offsets.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    offsets.into_iter().map(|(offset, _)| offset).collect()
}

fn edge_indices(count: usize) -> Vec<usize> {
    (0..count.min(EDGE_LINES)).chain(count.saturating_sub(EDGE_LINES)..count).collect()
}

fn edge_lines(lines: &[Line]) -> impl Iterator<Item = &Line> {
    edge_indices(lines.len()).into_iter().filter_map(|i| lines.get(i))
}

/// Returns the numbers (arabic, or roman in lower case) that start or end a line.
fn edge_numbers(line: &str) -> impl Iterator<Item = i64> {
    let mut tokens = line.split_whitespace();
    let first = tokens.next();
    let last = tokens.next_back();
    first.into_iter().chain(last).filter_map(page_number_value)
}

fn page_number_value(token: &str) -> Option<i64> {
    if !token.is_empty() && token.len() <= 5 && token.chars().all(|c| c.is_ascii_digit()) {
        return token.parse().ok();
    }
    roman_value(token)
}

/// Returns the value of a lower-case roman numeral up to 89 ("xlii"), the
/// way front matter is numbered.
fn roman_value(token: &str) -> Option<i64> {
    if token.is_empty() || token.len() > 7 {
        return None;
    }
    let mut total = 0;
    let mut previous = 0;
    for ch in token.chars().rev() {
        let value = match ch {
            'i' => 1,
            'v' => 5,
            'x' => 10,
            'l' => 50,
            _ => return None,
        };
        if value < previous {
            total -= value;
        } else {
            total += value;
            previous = value;
        }
    }
    (total > 0).then_some(total)
}

/// Returns whether a line is only a page number ("12", "xiv", "- 12 -").
fn is_bare_page_number(line: &str) -> bool {
    let inner = line.trim_matches(|c: char| c == '-' || c == '\u{2013}' || c.is_whitespace());
    page_number_value(inner).is_some()
}

/// Returns whether a line starts or ends with a number.
fn has_page_number(line: &str) -> bool {
    let is_number = |token: Option<&str>| token.is_some_and(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()));
    is_number(line.split_whitespace().next_back()) || is_number(line.split_whitespace().next())
}

fn without_digits(line: &str) -> String {
    line.chars().filter(|c| !c.is_ascii_digit()).collect::<String>().trim().to_lowercase()
}

/// The words of a book as they occur inside lines, which distinguish a
/// word broken at a line end from a compound.
pub(super) struct Vocabulary {
    joined: HashSet<String>,
    hyphenated: HashSet<String>,
}

impl Vocabulary {
    pub fn new(lines: &[Line]) -> Vocabulary {
        let mut joined = HashSet::new();
        let mut hyphenated = HashSet::new();
        for line in lines {
            let words: Vec<&str> = line.text.split_whitespace().collect();
            // The last word may itself be broken, so only inner ones count.
            for word in words.iter().take(words.len().saturating_sub(1)) {
                let word = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '-').to_lowercase();
                if word.contains('-') {
                    hyphenated.insert(word);
                } else if !word.is_empty() {
                    joined.insert(word);
                }
            }
        }
        Vocabulary { joined, hyphenated }
    }

    /// Decides whether `head` (ending in a hyphen at a line end) and `tail`
    /// (the start of the next line) are one word broken by hyphenation. They
    /// are when the book prints the joined word elsewhere, and are not when
    /// it prints the hyphenated compound. Otherwise a lower-case `tail`
    /// counts as broken, because justified text hyphenates far more words
    /// than it breaks compounds.
    fn is_broken_word(&self, head: &str, tail: &str) -> bool {
        let head = head.trim_start_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
        let tail_word = tail.trim_end_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
        let joined = format!("{}{}", head.trim_end_matches('-'), tail_word);
        if self.joined.contains(&joined) {
            return true;
        }
        if self.hyphenated.contains(&format!("{head}{tail_word}")) {
            return false;
        }
        tail.chars().next().is_some_and(char::is_lowercase)
    }
}

/// Joins lines into paragraphs: a blank line (`gap_before`) separates
/// paragraphs, and a word hyphenated across a line break is joined.
/// Returns the text and, for each line, the byte offset where its text
/// starts.
pub(super) fn join_lines(lines: &[&Line], vocabulary: &Vocabulary) -> (String, Vec<usize>) {
    let mut out = String::new();
    let mut starts = Vec::with_capacity(lines.len());
    for line in lines {
        if !out.is_empty() {
            let last_word = out.rsplit(char::is_whitespace).next().unwrap_or_default();
            let first_word = line.text.split_whitespace().next().unwrap_or_default();
            let hyphen_end = last_word.len() > 1
                && last_word.ends_with('-')
                && last_word.chars().rev().nth(1).is_some_and(char::is_alphabetic);
            if line.gap_before {
                out.push_str("\n\n");
            } else if hyphen_end && vocabulary.is_broken_word(last_word, first_word) {
                out.pop();
            } else if !hyphen_end {
                out.push(' ');
            }
        }
        starts.push(out.len());
        out.push_str(&line.text);
    }
    (out, starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(page: u32, text: &str) -> Line {
        Line { page, text: text.into(), size: 10.0, gap_before: false }
    }

    #[test]
    fn hyphens_at_line_ends_join_words() {
        let lines = [
            line(1, "Some infor-"),
            line(1, "mation about well-known S-"),
            line(1, "Plus and the Gauss-"),
            line(1, "Jordan method."),
        ];
        let refs: Vec<&Line> = lines.iter().collect();
        let (text, starts) = join_lines(&refs, &Vocabulary::new(&lines));
        assert_eq!(text, "Some information about well-known S-Plus and the Gauss-Jordan method.");
        assert_eq!(&text[starts[1]..starts[1] + 6], "mation");
    }

    #[test]
    fn known_compounds_keep_their_hyphen() {
        let lines = [line(1, "a well-known fact and a well-"), line(1, "known one")];
        let refs: Vec<&Line> = lines.iter().collect();
        let (text, _) = join_lines(&refs, &Vocabulary::new(&lines));
        assert_eq!(text, "a well-known fact and a well-known one");
    }

    #[test]
    fn gaps_make_paragraphs() {
        let mut second = line(1, "Next para.");
        second.gap_before = true;
        let lines = [line(1, "First."), second];
        let refs: Vec<&Line> = lines.iter().collect();
        assert_eq!(join_lines(&refs, &Vocabulary::new(&lines)).0, "First.\n\nNext para.");
    }

    #[test]
    fn running_headers_and_page_numbers_go() {
        let words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
        let mut pages = Vec::new();
        for page in 1..=6u32 {
            let printed = page + 10;
            let header = if page % 2 == 0 {
                format!("{printed} CHAPTER 3. TRIGONOMETRY")
            } else {
                format!("3.{page}. SECTION TITLE {page} {printed}")
            };
            let word = words[page as usize - 1];
            pages.push(vec![
                line(page, &header),
                line(page, &format!("Body text about {word}.")),
                line(page, &format!("Middle text about {word}.")),
                line(page, &format!("More text about 12 {word}.")),
                line(page, &printed.to_string()),
            ]);
        }
        pages[2].push(line(3, "xiv"));
        let cleaned = remove_page_furniture(pages);
        assert_eq!(cleaned.page_offsets, [-10]);
        assert_eq!(cleaned.lines.len(), 18, "{:?}", cleaned.lines);
        assert!(cleaned.lines.iter().all(|l| l.text.contains("text about")), "{:?}", cleaned.lines);
    }

    #[test]
    fn roman_numerals_are_read() {
        assert_eq!(roman_value("xiv"), Some(14));
        assert_eq!(roman_value("ix"), Some(9));
        assert_eq!(roman_value("vi"), Some(6));
        assert_eq!(roman_value("mix"), None);
    }
}
