//! PDF ingestion. The book's structure comes from the document outline
//! (bookmarks) when the PDF has one, else from its printed table of
//! contents, else from heading lines found by font size and numbering.
//! Running headers, footers and page numbers are removed, words hyphenated
//! across lines are joined, and every section records the pages its text
//! is printed on.

mod clean;
mod layout;
mod structure;

use pdf_extract::Document;

use super::IngestError;
use crate::book::{Book, Format, PageStart, Section, printed_number};
use crate::text::collapse_whitespace;
use clean::Vocabulary;
use layout::Line;
use structure::{Heading, label_number, normalized};

/// How far from the top of a page a heading's printed line is looked for.
const HEADING_SEARCH_LINES: usize = 80;

/// The source of a book's headings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Outline,
    Contents,
    Fonts,
}

/// Parses a PDF; `pages(done, total)` follows the reading of its pages
/// and stops it by returning false.
pub fn parse(bytes: &[u8], pages: &dyn Fn(usize, usize) -> bool) -> Result<Book, IngestError> {
    parse_from(bytes, Source::Outline, pages)
}

/// Parses a PDF, taking its headings from the first source, starting at
/// `best`, that yields any. Tests start lower to exercise the fallbacks on
/// books that have an outline.
fn parse_from(bytes: &[u8], best: Source, pages: &dyn Fn(usize, usize) -> bool) -> Result<Book, IngestError> {
    let document = load(bytes)?;
    let title = document_title(&document);
    let read = layout::extract_pages(&document, pages).ok_or(IngestError::Cancelled)?;
    let cleaned = clean::remove_page_furniture(read);
    let lines = cleaned.lines;
    if lines.is_empty() {
        return Err(IngestError::NoText);
    }
    let title = title.or_else(|| title_from_cover(&lines)).unwrap_or_default();

    let mut headings = Vec::new();
    let mut source = best;
    if source == Source::Outline {
        headings = structure::outline(&document);
        if headings.is_empty() {
            source = Source::Contents;
        }
    }
    if source == Source::Contents {
        headings = structure::contents(&lines, &cleaned.page_offsets);
        if headings.is_empty() {
            source = Source::Fonts;
        }
    }
    if source == Source::Fonts {
        headings = structure::headings_from_fonts(&lines);
    }
    let vocabulary = Vocabulary::new(&lines);
    let sections = split_at_headings(&lines, &headings, source != Source::Fonts, &vocabulary);
    Ok(Book { title, format: Format::Pdf, sections })
}

/// Loads the document, telling a file that is not a PDF, a truncated one
/// and an encrypted one apart. lopdf opens a PDF encrypted with an empty
/// user password by itself; any other password is rejected here.
fn load(bytes: &[u8]) -> Result<Document, IngestError> {
    // The header may follow up to 1024 bytes of other data.
    let head = &bytes[..bytes.len().min(1024)];
    if !head.windows(5).any(|w| w == b"%PDF-") {
        return Err(IngestError::NotPdf);
    }
    let tail = &bytes[bytes.len().saturating_sub(2048)..];
    let complete = tail.windows(5).any(|w| w == b"%%EOF");
    let encrypted = bytes.windows(8).any(|w| w == b"/Encrypt");
    let document = match Document::load_mem(bytes) {
        Ok(document) => document,
        Err(pdf_extract::Error::Decryption(_)) => return Err(IngestError::Encrypted),
        Err(_) if encrypted => return Err(IngestError::Encrypted),
        Err(_) if !complete => return Err(IngestError::Truncated),
        Err(error) => return Err(IngestError::Pdf(error.to_string())),
    };
    // lopdf loads an encrypted file whose password it lacks without its
    // objects, so it shows no pages.
    if document.is_encrypted() || (encrypted && document.get_pages().is_empty()) {
        return Err(IngestError::Encrypted);
    }
    if document.get_pages().is_empty() {
        return Err(if complete {
            IngestError::Pdf("the document has no pages".into())
        } else {
            IngestError::Truncated
        });
    }
    Ok(document)
}

/// Returns the largest text on the first pages, as a title page prints the
/// title: the first run of consecutive lines in the largest font size.
fn title_from_cover(lines: &[Line]) -> Option<String> {
    const COVER_PAGES: u32 = 3;
    let first_page = lines.first()?.page;
    let cover: Vec<&Line> = lines.iter().take_while(|l| l.page < first_page + COVER_PAGES).collect();
    let largest = cover.iter().map(|l| l.size).fold(0.0f32, f32::max);
    let start = cover.iter().position(|l| (l.size - largest).abs() < 0.2)?;
    let words: Vec<&str> = cover[start..]
        .iter()
        .take_while(|l| (l.size - largest).abs() < 0.2 && l.page == cover[start].page)
        .take(3)
        .map(|l| l.text.as_str())
        .collect();
    let title = words.join(" ");
    (!title.is_empty()).then_some(title)
}

fn document_title(document: &Document) -> Option<String> {
    let info = document.trailer.get(b"Info").ok()?;
    let info = document.dereference(info).ok()?.1.as_dict().ok()?;
    let title = info.get(b"Title").ok()?.as_str().ok()?;
    let title = String::from_utf8_lossy(title);
    let title = collapse_whitespace(&title);
    (!title.is_empty()).then_some(title)
}

/// A heading found on its page: the index of its first printed line
/// (`None` when only its page is known), and how many lines it takes.
struct Start {
    line: usize,
    printed: Option<PrintedHeading>,
    heading: usize,
}

struct PrintedHeading {
    /// The heading as printed, with its number, when the page prints one.
    title: Option<String>,
    lines: usize,
}

/// Cuts the lines into sections, one per heading, each starting where its
/// heading is printed on or after its page. With `skip_front`, as for
/// headings from an outline or a table of contents, the text before the
/// first heading is dropped, because it is the title page and the
/// contents. Otherwise it becomes an untitled section that `prune` keeps
/// only if it has text.
fn split_at_headings(lines: &[Line], headings: &[Heading], skip_front: bool, vocabulary: &Vocabulary) -> Vec<Section> {
    let body_size = structure::body_size(lines);
    let mut starts: Vec<Start> = Vec::new();
    // `cursor` is the first line that no earlier heading's printed lines
    // took, and `floor` the previous section's start: sections never
    // start before it.
    let mut cursor = 0;
    let mut floor = 0;
    for (index, heading) in headings.iter().enumerate() {
        let Some(first_on_page) = lines[cursor..].iter().position(|l| l.page >= heading.page).map(|p| p + cursor)
        else {
            continue;
        };
        let found = find_heading_line(lines, first_on_page, heading, body_size).filter(|&(line, _)| line >= floor);
        let start = match found {
            Some((line, printed)) => {
                cursor = line + printed.lines;
                Start { line, printed: Some(printed), heading: index }
            }
            None => Start { line: first_on_page.max(floor), printed: None, heading: index },
        };
        floor = start.line;
        starts.push(start);
    }

    // A PDF with no outline, contents or headings is one section, named
    // after the book by `prune`.
    if starts.is_empty() {
        let all: Vec<&Line> = lines.iter().collect();
        return vec![section(1, String::new(), &all, vocabulary)];
    }
    let mut sections = Vec::new();
    if let Some(first) = starts.first().filter(|_| !skip_front) {
        let front: Vec<&Line> = lines[..first.line].iter().collect();
        sections.push(section(1, String::new(), &front, vocabulary));
    }
    let mut titled: Vec<(u8, String)> = Vec::new();
    for (i, start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(lines.len(), |next| next.line);
        let heading = &headings[start.heading];
        let skipped = start.printed.as_ref().map_or(0, |p| p.lines);
        // Two headings found on the same line leave the first one empty.
        let body_start = (start.line + skipped).min(end);
        let body: Vec<&Line> = lines[body_start..end].iter().collect();
        let title = start.printed.as_ref().and_then(|p| p.title.clone()).unwrap_or_else(|| heading.title.clone());
        let mut built = section(heading.level, title, &body, vocabulary);
        if built.page.is_none() || start.printed.is_some() {
            built.page = lines.get(start.line).map(|l| l.page);
        }
        titled.push((built.level, built.heading.clone()));
        sections.push(built);
    }
    structure::infer_numbers(&mut titled);
    let offset = sections.len() - titled.len();
    for (section, (_, title)) in sections[offset..].iter_mut().zip(titled) {
        section.heading = title;
    }
    sections
}

/// Builds a section from its body lines, recording where each page begins.
fn section(level: u8, heading: String, body: &[&Line], vocabulary: &Vocabulary) -> Section {
    let (text, line_starts) = clean::join_lines(body, vocabulary);
    let mut page_starts: Vec<PageStart> = Vec::new();
    for (line, &offset) in body.iter().zip(&line_starts).skip(1) {
        let current = page_starts.last().map_or(body[0].page, |p| p.page);
        if line.page != current {
            page_starts.push(PageStart { offset, page: line.page });
        }
    }
    Section {
        level,
        heading: normalize_label(&heading),
        page: body.first().map(|l| l.page),
        page_starts,
        text,
        references: Vec::new(),
    }
}

/// Writes a "Chapter 3 Trigonometry" or "Appendix E Concept index" heading
/// as "3 Trigonometry" or "E Concept index", the form outlines use, so that
/// references find it by its number.
fn normalize_label(heading: &str) -> String {
    match label_number(heading) {
        Some((number, rest)) if !rest.trim().is_empty() => format!("{number} {}", rest.trim()),
        _ => heading.to_string(),
    }
}

/// Searches up to [`HEADING_SEARCH_LINES`] lines from `from` for the line
/// that prints `heading`, with or without a number or a "Chapter 3" label
/// in front, possibly wrapped onto more lines or preceded by its label on
/// a line of its own. A numbered line that starts with the title also
/// matches, because outlines often shorten long titles. Returns the first
/// line and the printed heading.
fn find_heading_line(
    lines: &[Line],
    from: usize,
    heading: &Heading,
    body_size: f32,
) -> Option<(usize, PrintedHeading)> {
    let target = normalized(bare_title(&heading.title));
    if target.is_empty() {
        return None;
    }
    let end = (from + HEADING_SEARCH_LINES).min(lines.len());
    for i in from..end {
        let line = &lines[i];
        if line.page > heading.page + 1 {
            return None;
        }
        let single = normalized(bare_title(&line.text));
        let numbered = bare_title(&line.text) != line.text;
        let matches = single == target
            || (!single.is_empty() && target.starts_with(&single))
            || (numbered && single.starts_with(&target));
        if !matches {
            continue;
        }
        // A heading set larger than the body text continues on the lines
        // of its size that follow it.
        let mut count = 1;
        let mut text = line.text.clone();
        while count < 3 {
            let Some(next) = lines.get(i + count).filter(|n| n.page == line.page) else {
                break;
            };
            let same_size = (next.size - line.size).abs() < 0.2 && line.size > body_size * 1.05;
            let completes = normalized(bare_title(&text)) != target
                && target.starts_with(&normalized(bare_title(&join_wrapped(&text, &next.text))));
            if !same_size && !completes {
                break;
            }
            text = join_wrapped(&text, &next.text);
            count += 1;
        }
        if !normalized(bare_title(&text)).starts_with(&target) {
            continue;
        }
        // "Chapter 3" or "Part I" printed on the line above the title.
        let label = i.checked_sub(1).map(|p| &lines[p]).filter(|p| p.page == line.page).and_then(|p| {
            label_number(&p.text).filter(|(_, rest)| rest.is_empty()).map(|(number, _)| number.to_string())
        });
        if let Some(number) = label {
            let title = format!("{number} {}", bare_title(&text));
            return Some((i - 1, PrintedHeading { title: Some(title), lines: count + 1 }));
        }
        let title = numbered_title(&text);
        return Some((i, PrintedHeading { title, lines: count }));
    }
    None
}

/// Joins a heading line and its continuation. A hyphen at the line end
/// goes when it breaks a word ("vari-" and "able") and stays, without a
/// space, before a capital ("Gauss-" and "Jordan").
fn join_wrapped(line: &str, next: &str) -> String {
    let Some(head) = line.strip_suffix('-').filter(|h| h.ends_with(char::is_alphabetic)) else {
        return format!("{line} {next}");
    };
    if next.starts_with(char::is_lowercase) { format!("{head}{next}") } else { format!("{line}{next}") }
}

/// Returns the heading as printed when the page prints it with a number
/// or a "Chapter 3" label, in the form "2.5 Missing values".
fn numbered_title(printed: &str) -> Option<String> {
    if let Some((number, rest)) = label_number(printed) {
        return (!rest.is_empty()).then(|| format!("{number} {rest}"));
    }
    let number = printed_number(printed)?;
    Some(format!("{number} {}", bare_title(printed)))
}

/// Returns a title without its number or "Chapter 3" label.
fn bare_title(title: &str) -> &str {
    match label_number(title) {
        Some((_, rest)) if !rest.is_empty() => rest,
        _ => match printed_number(title) {
            Some(_) => title.split_once(' ').map_or(title, |(_, rest)| rest.trim_start()),
            None => title,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a one-page PDF whose page shows `lines` in Helvetica, each
    /// with its font size, top to bottom, with `trailer_extra` added to the
    /// trailer dictionary.
    fn tiny_pdf(lines: &[(&str, u32)], trailer_extra: &str) -> Vec<u8> {
        let mut content = String::from("BT\n");
        let mut y = 720;
        for (text, size) in lines {
            content.push_str(&format!("/F1 {size} Tf 1 0 0 1 72 {y} Tm ({text}) Tj\n"));
            y -= size + size / 4;
        }
        content.push_str("ET");
        let objects = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
             /Resources << /Font << /F1 5 0 R >> >> >>"
                .to_string(),
            format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
        ];
        let mut pdf = b"%PDF-1.4\n".to_vec();
        let mut offsets = Vec::new();
        for (index, object) in objects.iter().enumerate() {
            offsets.push(pdf.len());
            pdf.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", index + 1).as_bytes());
        }
        let xref = pdf.len();
        pdf.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
        for offset in offsets {
            pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
        }
        let trailer = format!(
            "trailer\n<< /Size {} /Root 1 0 R {trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        );
        pdf.extend_from_slice(trailer.as_bytes());
        pdf
    }

    #[test]
    fn tiny_pdf_is_read() {
        let pdf = tiny_pdf(&[("1 Basics", 18), ("Some infor-", 10), ("mation on the \\(first\\) page.", 10)], "");
        let book = match crate::ingest::parse(&pdf, Format::Pdf, "tiny") {
            Ok(book) => book,
            Err(error) => unreachable!("the tiny PDF does not parse: {error}"),
        };
        let headings: Vec<(&str, Option<u32>)> = book.sections.iter().map(|s| (s.heading.as_str(), s.page)).collect();
        assert_eq!(headings, [("1 Basics", Some(1))]);
        assert_eq!(book.sections[0].text, "Some information on the (first) page.");
    }

    #[test]
    fn pdf_without_headings_is_one_section() {
        let lines = [("Plain notes without any heading.", 10), ("A second line of the same notes.", 10)];
        let book = match crate::ingest::parse(&tiny_pdf(&lines, ""), Format::Pdf, "notes") {
            Ok(book) => book,
            Err(error) => unreachable!("a PDF of plain text does not parse: {error}"),
        };
        assert_eq!(book.sections.len(), 1);
        assert_eq!(book.sections[0].page, Some(1));
        assert!(book.sections[0].text.contains("second line"), "{:?}", book.sections[0].text);
    }

    #[test]
    fn wrapped_headings_lose_their_hyphen() {
        assert_eq!(
            join_wrapped("1.4 Deduction and the complex vari-", "able"),
            "1.4 Deduction and the complex variable"
        );
        assert_eq!(join_wrapped("12.3 The Gauss-", "Jordan decomposition"), "12.3 The Gauss-Jordan decomposition");
        assert_eq!(join_wrapped("2.7 Index vectors", "and subsets"), "2.7 Index vectors and subsets");
    }

    #[test]
    fn random_bytes_are_not_a_pdf() {
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert!(matches!(parse(&bytes, &|_, _| true), Err(IngestError::NotPdf)));
        assert!(matches!(parse(b"", &|_, _| true), Err(IngestError::NotPdf)));
        assert!(matches!(parse(b"<html><body>not a pdf</body></html>", &|_, _| true), Err(IngestError::NotPdf)));
    }

    #[test]
    fn truncated_pdf_is_reported() {
        let pdf = tiny_pdf(&[("Hello", 12)], "");
        for cut in [pdf.len() / 2, pdf.len() - 20, 12] {
            let result = parse(&pdf[..cut], &|_, _| true);
            assert!(matches!(result, Err(IngestError::Truncated)), "cut at {cut}: {result:?}");
        }
        assert!(matches!(parse(b"%PDF-1.4 this is not really a pdf", &|_, _| true), Err(IngestError::Truncated)));
    }

    #[test]
    fn encrypted_pdf_is_reported() {
        let encrypt = "/Encrypt << /Filter /Standard /V 2 /R 3 /Length 128 /P -3904 \
                       /O <0000000000000000000000000000000000000000000000000000000000000000> \
                       /U <1111111111111111111111111111111111111111111111111111111111111111> >> \
                       /ID [<00112233445566778899aabbccddeeff> <00112233445566778899aabbccddeeff>]";
        let result = parse(&tiny_pdf(&[("Secret", 12)], encrypt), &|_, _| true);
        assert!(matches!(result, Err(IngestError::Encrypted)), "{result:?}");
    }

    #[test]
    fn page_without_text_needs_ocr() {
        let result = crate::ingest::parse(&tiny_pdf(&[], ""), Format::Pdf, "scan");
        assert!(matches!(result, Err(IngestError::NoText)), "{result:?}");
    }
}

#[cfg(test)]
mod corpus_tests {
    use super::*;

    /// Parses a corpus PDF with headings from `source` or a weaker one, or
    /// returns `None` (after saying so) when the corpus is absent and not
    /// required.
    fn corpus_book(name: &str, source: Source) -> Option<Book> {
        let dir = std::env::var_os("LEARNTRAC_CORPUS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
        let path = dir.join(name);
        let Ok(bytes) = std::fs::read(&path) else {
            assert!(
                std::env::var("LEARNTRAC_REQUIRE_CORPUS").as_deref() != Ok("1"),
                "LEARNTRAC_REQUIRE_CORPUS=1 but {} is missing; set LEARNTRAC_CORPUS",
                path.display()
            );
            eprintln!("skipped: {} is missing; set LEARNTRAC_CORPUS", path.display());
            return None;
        };
        match parse_from(&bytes, source, &|_, _| true) {
            Ok(book) => Some(book),
            Err(error) => unreachable!("cannot parse {name}: {error}"),
        }
    }

    fn headings(book: &Book) -> Vec<(u8, &str)> {
        book.sections.iter().map(|s| (s.level, s.heading.as_str())).collect()
    }

    #[test]
    fn r_intro_contents_give_sections() {
        let Some(book) = corpus_book("R-intro.pdf", Source::Contents) else {
            return;
        };
        let found = headings(&book);
        for expected in [
            (1, "Preface"),
            (1, "2 Simple manipulations; numbers and vectors"),
            (2, "2.5 Missing values"),
            (2, "2.7 Index vectors; selecting and modifying subsets of a data set"),
            (3, "5.4.1 Mixed vector and array arithmetic. The recycling rule"),
            (1, "A A sample session"),
        ] {
            assert!(found.contains(&expected), "{expected:?} missing from {found:?}");
        }
        let missing = book.sections.iter().find(|s| s.heading == "2.5 Missing values");
        assert_eq!(missing.and_then(|s| s.page), Some(17));
        assert!(missing.is_some_and(|s| s.text.contains("not available")));
    }

    #[test]
    fn r_intro_fonts_give_sections() {
        let Some(book) = corpus_book("R-intro.pdf", Source::Fonts) else {
            return;
        };
        let found = headings(&book);
        for expected in [
            (1, "2 Simple manipulations; numbers and vectors"),
            (2, "1.8 R commands, case sensitivity, etc."),
            (2, "2.5 Missing values"),
            (2, "5.1 Arrays"),
            (3, "5.4.1 Mixed vector and array arithmetic. The recycling rule"),
        ] {
            assert!(found.contains(&expected), "{expected:?} missing from {found:?}");
        }
        let contents_entries: Vec<&str> = found.iter().map(|(_, h)| *h).filter(|h| h.contains(" . . ")).collect();
        assert!(contents_entries.is_empty(), "{contents_entries:?}");
        let missing = book.sections.iter().find(|s| s.heading == "2.5 Missing values");
        assert_eq!(missing.and_then(|s| s.page), Some(17));
    }
}
