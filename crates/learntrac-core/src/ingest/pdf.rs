//! PDF ingestion: sections from the document outline (bookmarks) when the
//! PDF has one, from numbered heading lines otherwise.

use std::collections::HashMap;

use pdf_extract::{Document, PlainTextOutput};

use super::IngestError;
use crate::book::{Book, Format, Section, is_outline_number, strip_number};
use crate::text::collapse_whitespace;

/// One line of page text, white space collapsed.
struct Line {
    page: usize,
    text: String,
}

/// An outline entry: level (1 = top) and title, and the 1-based page it points at.
struct Heading {
    level: u8,
    title: String,
    page: usize,
}

pub fn parse(bytes: &[u8]) -> Result<Book, IngestError> {
    // pdf-extract panics on some malformed files instead of returning an
    // error; `ingest::parse` turns such a panic into an error.
    let document = Document::load_mem(bytes).map_err(|e| IngestError::Pdf(e.to_string()))?;
    if document.is_encrypted() {
        return Err(IngestError::Pdf("the file is encrypted; decrypt it first".into()));
    }
    let pages = extract_pages(&document)?;
    let outline = outline(&document);
    let title = document_title(&document);

    let lines = page_lines(&pages);
    let Some(first_line) = lines.iter().find(|l| !l.text.is_empty()) else {
        return Err(IngestError::NoText);
    };
    let title = title.unwrap_or_else(|| first_line.text.clone());
    let from_outline = !outline.is_empty();
    let headings = if from_outline { outline } else { headings_from_lines(&lines) };
    Ok(Book { title, format: Format::Pdf, sections: split_at_headings(&lines, &headings, from_outline) })
}

fn extract_pages(document: &Document) -> Result<Vec<String>, IngestError> {
    let count = document.get_pages().len() as u32;
    let mut pages = Vec::with_capacity(count as usize);
    for number in 1..=count {
        let mut text = String::new();
        let mut output = PlainTextOutput::new(&mut text);
        // A page whose content cannot be decoded contributes no text rather
        // than failing the whole book.
        if pdf_extract::output_doc_page(document, &mut output, number).is_err() {
            text.clear();
        }
        pages.push(text);
    }
    Ok(pages)
}

fn outline(document: &Document) -> Vec<Heading> {
    let Ok(toc) = document.get_toc() else {
        return Vec::new();
    };
    let mut headings: Vec<Heading> = toc
        .toc
        .into_iter()
        .map(|entry| Heading {
            level: entry.level.clamp(1, 9) as u8,
            title: collapse_whitespace(&entry.title),
            page: entry.page,
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
fn repair_pages(headings: &mut [Heading]) {
    for i in 0..headings.len() {
        let next = headings.get(i + 1).map(|h| h.page);
        if next.is_some_and(|next| headings[i].page > next) {
            headings[i].page = if i == 0 { next.unwrap_or(1) } else { headings[i - 1].page };
        }
    }
}

fn document_title(document: &Document) -> Option<String> {
    let info = document.trailer.get(b"Info").ok()?;
    let info = document.dereference(info).ok()?.1.as_dict().ok()?;
    let title = info.get(b"Title").ok()?.as_str().ok()?;
    let title = String::from_utf8_lossy(title);
    let title = collapse_whitespace(&title);
    (!title.is_empty()).then_some(title)
}

/// Splits pages into lines and drops running headers and footers: lines
/// that, with digits removed, recur at the top or bottom of many pages.
fn page_lines(pages: &[String]) -> Vec<Line> {
    let mut per_page: Vec<Vec<String>> = Vec::new();
    for page in pages {
        let lines: Vec<String> = page
            .lines()
            .map(|l| collapse_whitespace(&l.replace(['\u{fb01}'], "fi").replace('\u{fb02}', "fl")))
            .collect();
        per_page.push(lines);
    }

    let mut edge_counts: HashMap<String, usize> = HashMap::new();
    for lines in &per_page {
        let non_empty: Vec<&String> = lines.iter().filter(|l| !l.is_empty()).collect();
        let edges = non_empty.iter().take(2).chain(non_empty.iter().rev().take(2));
        for line in edges {
            *edge_counts.entry(without_digits(line)).or_default() += 1;
        }
    }
    // A line seen at the edge of three pages is a running header or footer
    // ("Chapter 2: Simple manipulations 10"); chapter-specific ones recur
    // only within their chapter.
    let threshold = 3;

    let mut out = Vec::new();
    for (index, lines) in per_page.iter().enumerate() {
        let non_empty: Vec<&String> = lines.iter().filter(|l| !l.is_empty()).collect();
        let first = non_empty.iter().take(2).map(|s| s.as_str()).collect::<Vec<_>>();
        let last = non_empty.iter().rev().take(2).map(|s| s.as_str()).collect::<Vec<_>>();
        for line in lines {
            let at_edge = first.contains(&line.as_str()) || last.contains(&line.as_str());
            let key = without_digits(line);
            let count = edge_counts.get(&key).copied().unwrap_or(0);
            let numbered = has_page_number(line);
            // A chapter of three pages shows its running header only twice.
            let recurring = key.is_empty() || count >= threshold || (numbered && count >= 2);
            // A recurring header with a page number is dropped wherever it
            // is, because figures or footnotes can push it off the edge.
            let running = recurring && (at_edge || numbered);
            if running {
                continue;
            }
            out.push(Line { page: index + 1, text: line.clone() });
        }
    }
    out
}

/// Returns whether a line starts or ends with a page number.
fn has_page_number(line: &str) -> bool {
    let is_number = |token: Option<&str>| token.is_some_and(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()));
    is_number(line.split_whitespace().next_back()) || is_number(line.split_whitespace().next())
}

fn without_digits(line: &str) -> String {
    line.chars().filter(|c| !c.is_ascii_digit()).collect::<String>().trim().to_lowercase()
}

/// Finds numbered heading lines ("2.5 Missing values") in a PDF without an
/// outline: a short line whose first token is an outline number and whose
/// next word starts with a capital letter.
fn headings_from_lines(lines: &[Line]) -> Vec<Heading> {
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

/// Cuts the lines into sections, one per heading, each starting where its
/// heading is printed on or after its page. With headings from numbered
/// lines, text before the first heading becomes an untitled section that
/// `prune` keeps only if it has text. With an outline, that text (title
/// page, table of contents) is dropped.
fn split_at_headings(lines: &[Line], headings: &[Heading], from_outline: bool) -> Vec<Section> {
    let mut starts: Vec<(usize, usize)> = Vec::new(); // (line index, heading index)
    let mut found_at: Vec<usize> = Vec::new();
    let mut cursor = 0;
    for (h, heading) in headings.iter().enumerate() {
        let first_on_page = lines[cursor..].iter().position(|l| l.page >= heading.page).map(|p| p + cursor);
        let Some(first_on_page) = first_on_page else {
            continue;
        };
        let found = find_heading_line(lines, first_on_page, heading);
        let start = found.unwrap_or(first_on_page).max(cursor);
        if found.is_some_and(|f| f >= cursor) {
            found_at.push(start);
        }
        starts.push((start, h));
        cursor = start;
    }

    let mut sections = Vec::new();
    // Before the first outline entry come the title page and the table of
    // contents, which teach nothing.
    if let Some(&(first, _)) = starts.first().filter(|_| !from_outline) {
        let front: Vec<&str> = lines[..first].iter().map(|l| l.text.as_str()).collect();
        sections.push(Section { level: 1, heading: String::new(), text: join_lines(&front) });
    }
    for (i, &(start, h)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(lines.len(), |&(next, _)| next);
        let heading = &headings[h];
        let printed = printed_heading(&lines[start].text, &heading.title);
        // Skip the printed heading itself, which may wrap onto a second line.
        let mut body_start = start;
        if found_at.contains(&start) {
            body_start += 1;
            let wanted = normalized(strip_number(&heading.title));
            let first = normalized(strip_number(&lines[start].text));
            if first != wanted && body_start < end {
                body_start += 1;
            }
        }
        // Two headings found on the same line leave the first one empty.
        let body_start = body_start.min(end);
        let body: Vec<&str> = lines[body_start..end].iter().map(|l| l.text.as_str()).collect();
        sections.push(Section {
            level: heading.level,
            heading: printed.unwrap_or_else(|| heading.title.clone()),
            text: join_lines(&body),
        });
    }
    sections
}

/// Returns the heading as printed when the page shows the outline title
/// with its section number ("2.5 Missing values" for "Missing values").
fn printed_heading(line: &str, title: &str) -> Option<String> {
    let (number, rest) = line.split_once(' ')?;
    let same_title = normalized(rest) == normalized(title);
    (is_outline_number(number) && same_title).then(|| format!("{number} {title}"))
}

/// Searches up to 80 lines from `from` for the line that prints `heading`,
/// with or without a section number in front, possibly wrapped onto a
/// second line.
fn find_heading_line(lines: &[Line], from: usize, heading: &Heading) -> Option<usize> {
    let wanted = normalized(strip_number(&heading.title));
    let end = (from + 80).min(lines.len());
    (from..end).find(|&i| {
        if lines[i].text.is_empty() || lines[i].page > heading.page + 1 {
            return false;
        }
        let line = normalized(strip_number(&lines[i].text));
        let joined = match lines.get(i + 1) {
            Some(next) => normalized(strip_number(&format!("{} {}", lines[i].text, next.text))),
            None => line.clone(),
        };
        line == wanted || (joined.starts_with(&wanted) && wanted.starts_with(&line) && !line.is_empty())
    })
}

/// Lower-case letters and digits only, so that spacing and punctuation
/// differences between the outline and the page text do not matter.
fn normalized(text: &str) -> String {
    text.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// Joins lines into paragraphs: an empty line separates paragraphs, and a
/// word hyphenated across a line break is joined.
fn join_lines(lines: &[&str]) -> String {
    let mut out = String::new();
    let mut blank_run = false;
    for line in lines {
        if line.is_empty() {
            blank_run = true;
            continue;
        }
        if blank_run && !out.is_empty() {
            out.push_str("\n\n");
        } else if !out.is_empty() {
            if out.ends_with('-') && line.chars().next().is_some_and(char::is_lowercase) {
                out.pop();
            } else {
                out.push(' ');
            }
        }
        blank_run = false;
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_lines_makes_paragraphs() {
        let text = join_lines(&["A hyphen-", "ated word", "", "Next para."]);
        assert_eq!(text, "A hyphenated word\n\nNext para.");
    }

    #[test]
    fn numbered_lines_become_headings() {
        let lines = vec![
            Line { page: 1, text: "2.5 Missing values".into() },
            Line { page: 1, text: "In some cases the components are not known.".into() },
            Line { page: 2, text: "3 Objects".into() },
        ];
        let headings = headings_from_lines(&lines);
        let titles: Vec<_> = headings.iter().map(|h| (h.level, h.title.as_str())).collect();
        assert_eq!(titles, [(2, "2.5 Missing values"), (1, "3 Objects")]);
    }

    #[test]
    fn out_of_order_outline_pages_are_repaired() {
        let mut headings: Vec<Heading> = [(1, "One", 3), (2, "Summary", 90), (1, "Two", 5), (2, "Summary", 90)]
            .into_iter()
            .map(|(level, title, page)| Heading { level, title: title.into(), page })
            .collect();
        repair_pages(&mut headings);
        let pages: Vec<usize> = headings.iter().map(|h| h.page).collect();
        assert_eq!(pages, [3, 3, 5, 90]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(b"%PDF-1.4 this is not really a pdf").is_err());
        assert!(parse(b"").is_err());
    }
}
