//! Detection of a PDF's chapters and sections from the best source it
//! has: its outline (bookmarks), else its printed table of contents, else
//! the font size and numbering of its heading lines.

use std::collections::HashMap;

use pdf_extract::Document;

use super::layout::Line;
use crate::book::{is_outline_number, printed_number, strip_number};
use crate::text::collapse_whitespace;

/// A heading to look for: its level (1 = top), its title and the 1-based
/// PDF page it is printed on.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Heading {
    pub level: u8,
    pub title: String,
    pub page: u32,
}

/// Headings whose font is at least this much larger than the body text's.
const HEADING_SIZE_RATIO: f32 = 1.15;

/// Maximum length in bytes of a heading or a table of contents entry.
const MAX_HEADING_LEN: usize = 100;

/// Returns the outline's entries, or nothing when the PDF has none.
pub(super) fn outline(document: &Document) -> Vec<Heading> {
    let Ok(toc) = document.get_toc() else {
        return Vec::new();
    };
    let mut headings: Vec<Heading> = toc
        .toc
        .into_iter()
        .map(|entry| Heading {
            level: entry.level.clamp(1, 9) as u8,
            title: collapse_whitespace(&entry.title),
            page: u32::try_from(entry.page).unwrap_or(u32::MAX),
        })
        .filter(|h| !h.title.is_empty())
        .collect();
    repair_pages(&mut headings);
    headings
}

/// Repairs outline pages that run backwards. Entries are in reading order,
/// so an entry whose page lies beyond the next entry's is wrong: lopdf 0.38
/// keys its outline by title, so of two entries named "Summary" the first
/// gets the second's page. Such an entry gets the previous entry's page, and
/// the heading search finds its printed line from there.
pub(super) fn repair_pages(headings: &mut [Heading]) {
    for i in 0..headings.len() {
        let next = headings.get(i + 1).map(|h| h.page);
        if next.is_some_and(|next| headings[i].page > next) {
            headings[i].page = if i == 0 { next.unwrap_or(1) } else { headings[i - 1].page };
        }
    }
}

/// Reads the printed table of contents: the entries after a "Contents"
/// line, each ending in a printed page number, often after dot leaders
/// ("2.5 Missing values . . . . . 10"). Printed numbers become PDF pages by
/// the most common offset between the two, so a book whose pages carry no
/// number yields nothing here.
///
/// NOTE: entries numbered in roman numerals (front matter such as a
/// preface) are skipped, because their offset cannot be distinguished
/// from the body's.
pub(super) fn contents(lines: &[Line], page_offsets: &[i64]) -> Vec<Heading> {
    let Some(&offset) = page_offsets.first() else {
        return Vec::new();
    };
    let last_page = lines.last().map_or(0, |l| l.page);
    // The contents are printed near the front.
    let Some(start) = lines
        .iter()
        .take_while(|l| l.page <= 20.max(last_page / 5))
        .position(|l| matches!(normalized(&l.text).as_str(), "contents" | "tableofcontents"))
    else {
        return Vec::new();
    };

    let mut headings = Vec::new();
    let mut pending = String::new();
    let mut misses = 0;
    for line in &lines[start + 1..] {
        let Some((title, printed)) = contents_entry(&line.text) else {
            // A long title wraps onto the next line, which ends in the number.
            misses += 1;
            if misses > 3 && !headings.is_empty() {
                break;
            }
            pending = if pending.is_empty() { line.text.clone() } else { format!("{pending} {}", line.text) };
            if pending.len() > MAX_HEADING_LEN {
                pending.clear();
            }
            continue;
        };
        misses = 0;
        let title = if pending.is_empty() { title } else { format!("{pending} {title}") };
        pending.clear();
        let Ok(page) = u32::try_from(printed + offset) else {
            continue;
        };
        if page < line.page || page > last_page {
            continue;
        }
        headings.push(Heading { level: numbering_level(&title).unwrap_or(1), title, page });
    }
    // Entries must run forwards through the book.
    headings.dedup_by(|b, a| b.page < a.page);
    if headings.len() < 3 { Vec::new() } else { headings }
}

/// Splits a table of contents line into its title and its printed page
/// number, dropping dot leaders.
fn contents_entry(line: &str) -> Option<(String, i64)> {
    let (rest, number) = line.rsplit_once(' ')?;
    if number.is_empty() || number.len() > 5 || !number.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let printed: i64 = number.parse().ok()?;
    let title = rest.trim_end_matches(|c: char| c == '.' || c == '\u{2026}' || c.is_whitespace());
    let has_leader = title.len() + 2 < rest.len();
    let title = collapse_whitespace(title);
    let starts_numbered = title.split_whitespace().next().is_some_and(is_outline_number);
    let plausible = title.chars().any(char::is_alphabetic) && title.len() <= MAX_HEADING_LEN;
    (plausible && (has_leader || starts_numbered)).then_some((title, printed))
}

/// Finds headings by font size: lines set noticeably larger than the body
/// text, which is the size most characters have. Sizes rank into levels
/// (the largest is 1), except that a numbered heading takes its level from
/// its number's depth ("2.5" is 2). Consecutive heading lines of one size
/// on one page are one wrapped heading. A book set in one size falls back
/// to numbered lines.
pub(super) fn headings_from_fonts(lines: &[Line]) -> Vec<Heading> {
    let body = body_size(lines);
    let is_heading_line = |line: &Line| {
        let numbered = line.text.split_whitespace().next().is_some_and(is_outline_number);
        line.size >= body * HEADING_SIZE_RATIO
            && line.text.len() <= MAX_HEADING_LEN
            && line.text.chars().any(char::is_alphabetic)
            // A sentence ends in a period, but "1.8 R commands, etc." is a heading.
            && (numbered || !line.text.ends_with(['.', ',', ';']))
            // Table of contents entries are often set in the heading font.
            && contents_entry(&line.text).is_none()
    };

    let mut found: Vec<(Heading, f32)> = Vec::new();
    let mut previous: Option<&Line> = None;
    for line in lines {
        if !is_heading_line(line) {
            previous = None;
            continue;
        }
        let continues = previous.is_some_and(|p| p.page == line.page && (p.size - line.size).abs() < 0.2);
        match found.last_mut() {
            Some((heading, _)) if continues && heading.title.len() + line.text.len() < MAX_HEADING_LEN => {
                heading.title = format!("{} {}", heading.title, line.text);
            }
            _ => found.push((Heading { level: 1, title: line.text.clone(), page: line.page }, line.size)),
        }
        previous = Some(line);
    }
    if found.is_empty() {
        return numbered_lines(lines);
    }

    let mut sizes: Vec<u32> = found.iter().map(|(_, size)| tenths(*size) / 5).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    found
        .into_iter()
        .map(|(mut heading, size)| {
            let rank = sizes.iter().position(|&s| s == tenths(size) / 5).unwrap_or(0);
            heading.level = numbering_level(&heading.title).unwrap_or((rank + 1).min(6) as u8);
            heading
        })
        .collect()
}

/// Returns the font size of the body text: the size most characters have
/// (0 for a book without text).
pub(super) fn body_size(lines: &[Line]) -> f32 {
    let mut characters: HashMap<u32, usize> = HashMap::new();
    for line in lines {
        *characters.entry(tenths(line.size)).or_default() += line.text.len();
    }
    characters.iter().max_by_key(|&(size, count)| (*count, *size)).map_or(0.0, |(size, _)| *size as f32 / 10.0)
}

/// Finds numbered heading lines ("2.5 Missing values") in a book set in
/// one size: a short line whose first token is an outline number and whose
/// next word starts with a capital letter.
pub(super) fn numbered_lines(lines: &[Line]) -> Vec<Heading> {
    let mut headings = Vec::new();
    for line in lines {
        let text = &line.text;
        if text.len() > 90 || text.ends_with('.') {
            continue;
        }
        let Some((number, rest)) = text.split_once(' ') else {
            continue;
        };
        let starts_upper = rest.chars().next().is_some_and(char::is_uppercase);
        if is_outline_number(number) && starts_upper && !text.contains(" . . ") {
            let level = number.trim_end_matches('.').split('.').count().min(9) as u8;
            headings.push(Heading { level, title: text.clone(), page: line.page });
        }
    }
    headings
}

/// Returns the level that a title's number gives ("2.5 Missing values" is
/// 2), with "Chapter 3" and "Appendix A" at level 1.
fn numbering_level(title: &str) -> Option<u8> {
    if label_number(title).is_some() {
        return Some(1);
    }
    let first = title.split_whitespace().next()?;
    let number = first.trim_end_matches('.');
    // A lone letter or digit before a word is as often part of the title.
    (is_outline_number(first) && strip_number(title) != title)
        .then(|| number.split('.').count().min(9) as u8)
        .filter(|_| number.chars().any(|c| c.is_ascii_digit()))
}

/// Returns the number of a "Chapter 3", "Appendix A" or "Part II" label at
/// the start of `text`, and the rest of the text after it.
pub(super) fn label_number(text: &str) -> Option<(&str, &str)> {
    let mut words = text.splitn(3, ' ');
    let label = words.next()?;
    let number = words.next()?;
    let rest = words.next().unwrap_or("");
    let is_label = ["chapter", "appendix", "part"].iter().any(|l| label.eq_ignore_ascii_case(l));
    let number = number.trim_end_matches(['.', ':']);
    let is_number = is_outline_number(number) || is_roman(number) || crate::book::is_letter(number);
    (is_label && is_number).then_some((number, rest))
}

fn is_roman(token: &str) -> bool {
    !token.is_empty() && token.len() <= 6 && token.chars().all(|c| matches!(c, 'I' | 'V' | 'X' | 'L'))
}

/// Gives numbers to outline headings that the page prints without one,
/// from their subsections ("2.1", "2.2" under a heading make it "2") or
/// from their neighbours ("2.6" before and "2.8" after make it "2.7").
pub(super) fn infer_numbers(headings: &mut [(u8, String)]) {
    for index in (0..headings.len()).rev() {
        if printed_number(&headings[index].1).is_some() {
            continue;
        }
        if let Some(number) = number_from_children(headings, index).or_else(|| number_from_neighbours(headings, index))
        {
            headings[index].1 = format!("{number} {}", headings[index].1);
        }
    }
}

fn number_from_children(headings: &[(u8, String)], index: usize) -> Option<String> {
    let level = headings[index].0;
    let children: Vec<&(u8, String)> = headings[index + 1..].iter().take_while(|(l, _)| *l > level).collect();
    let child_level = children.iter().map(|(l, _)| *l).min()?;
    let mut prefix: Option<String> = None;
    for (_, heading) in children.iter().filter(|(l, _)| *l == child_level) {
        let number = printed_number(heading)?;
        let (parent, _) = number.rsplit_once('.')?;
        match &prefix {
            Some(p) if p != parent => return None,
            _ => prefix = Some(parent.to_string()),
        }
    }
    prefix
}

fn number_from_neighbours(headings: &[(u8, String)], index: usize) -> Option<String> {
    let level = headings[index].0;
    let before = headings[..index].iter().rev().find(|(l, _)| *l <= level).filter(|(l, _)| *l == level)?;
    let after = headings[index + 1..].iter().find(|(l, _)| *l <= level).filter(|(l, _)| *l == level)?;
    let (prefix, last) = split_last(printed_number(&before.1)?)?;
    let (next_prefix, next_last) = split_last(printed_number(&after.1)?)?;
    (prefix == next_prefix && next_last == last + 2).then(|| format!("{prefix}{}", last + 1))
}

/// Splits "2.6" into ("2.", 6) and "7" into ("", 7).
fn split_last(number: &str) -> Option<(&str, u32)> {
    let cut = number.rfind('.').map_or(0, |i| i + 1);
    Some((&number[..cut], number[cut..].parse().ok()?))
}

fn tenths(size: f32) -> u32 {
    (size * 10.0).round().clamp(0.0, 100_000.0) as u32
}

/// Lower-case letters and digits only, so that spacing and punctuation
/// differences between the outline and the page text do not matter.
pub(super) fn normalized(text: &str) -> String {
    text.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(page: u32, text: &str, size: f32) -> Line {
        Line { page, text: text.into(), size, gap_before: false }
    }

    #[test]
    fn out_of_order_outline_pages_are_repaired() {
        let mut headings: Vec<Heading> = [(1, "One", 3), (2, "Summary", 90), (1, "Two", 5), (2, "Summary", 90)]
            .into_iter()
            .map(|(level, title, page)| Heading { level, title: title.into(), page })
            .collect();
        repair_pages(&mut headings);
        let pages: Vec<u32> = headings.iter().map(|h| h.page).collect();
        assert_eq!(pages, [3, 3, 5, 90]);
    }

    #[test]
    fn numbered_lines_become_headings() {
        let lines = vec![
            line(1, "2.5 Missing values", 10.0),
            line(1, "In some cases the components are not known.", 10.0),
            line(2, "3 Objects", 10.0),
        ];
        let headings = numbered_lines(&lines);
        let titles: Vec<_> = headings.iter().map(|h| (h.level, h.title.as_str())).collect();
        assert_eq!(titles, [(2, "2.5 Missing values"), (1, "3 Objects")]);
    }

    #[test]
    fn large_lines_become_headings() {
        let mut lines = vec![
            line(1, "Chapter 3", 20.0),
            line(1, "Trigonometry", 20.0),
            line(1, "Body text in the usual size, long enough to count.", 10.0),
            line(2, "3.1 Definitions", 14.0),
            line(2, "More body text in the usual size follows here.", 10.0),
            line(3, "Remarks", 12.0),
        ];
        lines.extend((0..10).map(|_| line(3, "Filler body text of the page.", 10.0)));
        let headings = headings_from_fonts(&lines);
        let found: Vec<_> = headings.iter().map(|h| (h.level, h.title.as_str(), h.page)).collect();
        assert_eq!(found, [(1, "Chapter 3 Trigonometry", 1), (2, "3.1 Definitions", 2), (3, "Remarks", 3)]);
    }

    #[test]
    fn contents_entries_map_to_pages() {
        let mut lines = vec![line(2, "Table of Contents", 12.0)];
        for (title, printed) in [("1 Introduction", 1), ("1.1 The R environment", 1), ("2 Simple manipulations", 7)] {
            lines.push(line(2, &format!("{title} . . . . . . . . {printed}"), 10.0));
        }
        lines.push(line(2, "2.7 Index vectors; selecting and modifying subsets of a", 10.0));
        lines.push(line(2, "data set . . . . . . 11", 10.0));
        lines.extend((3..=30).map(|page| line(page, "Text.", 10.0)));
        let headings = contents(&lines, &[4]);
        let found: Vec<_> = headings.iter().map(|h| (h.level, h.title.as_str(), h.page)).collect();
        assert_eq!(
            found,
            [
                (1, "1 Introduction", 5),
                (2, "1.1 The R environment", 5),
                (1, "2 Simple manipulations", 11),
                (2, "2.7 Index vectors; selecting and modifying subsets of a data set", 15)
            ]
        );
    }

    #[test]
    fn missing_numbers_are_inferred() {
        let mut headings: Vec<(u8, String)> = [
            (1, "Classical algebra"),
            (2, "2.1 Basic arithmetic"),
            (2, "2.2 Quadratics"),
            (2, "Integer notation"),
            (2, "2.4 Arithmetic series"),
            (1, "Preface"),
        ]
        .into_iter()
        .map(|(level, title)| (level, title.to_string()))
        .collect();
        infer_numbers(&mut headings);
        let titles: Vec<&str> = headings.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            titles,
            [
                "2 Classical algebra",
                "2.1 Basic arithmetic",
                "2.2 Quadratics",
                "2.3 Integer notation",
                "2.4 Arithmetic series",
                "Preface"
            ]
        );
    }

    #[test]
    fn labels_are_read() {
        assert_eq!(label_number("Chapter 3"), Some(("3", "")));
        assert_eq!(label_number("Appendix E Concept index"), Some(("E", "Concept index")));
        assert_eq!(label_number("Part II"), Some(("II", "")));
        assert_eq!(label_number("Chapter four"), None);
    }
}
