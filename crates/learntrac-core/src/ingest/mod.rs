//! Turns a textbook file into a [`Book`](crate::book::Book).

mod html;
mod markdown;
mod pdf;

use crate::book::{Book, Format};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the PDF could not be read: {0}")]
    Pdf(String),
    #[error("the file is not a PDF: it has no %PDF- header; upload the PDF itself, not a renamed file")]
    NotPdf,
    #[error("the PDF is truncated: its end marker (%%EOF) is missing; upload the complete file")]
    Truncated,
    #[error("the PDF is encrypted with a password; decrypt it first (for example with qpdf --decrypt)")]
    Encrypted,
    #[error(
        "the file is not valid UTF-8 text (the first invalid byte is at offset {offset}); convert it, for example with iconv -f latin1 -t utf-8"
    )]
    Encoding { offset: usize },
    #[error("no text was found in the file; if it is a scanned PDF, run OCR on it first")]
    NoText,
    #[error("parsing was cancelled")]
    Cancelled,
    #[error("the {} parser failed on this file; it may be malformed", .0.as_str())]
    Parser(Format),
}

/// Parses `bytes` as a book in `format`; `fallback_title` (such as the
/// file name) names a book whose file gives no title. Parsing is CPU-bound
/// and can take seconds for a long PDF, so async callers should run it on a
/// blocking thread.
pub fn parse(bytes: &[u8], format: Format, fallback_title: &str) -> Result<Book, IngestError> {
    parse_reporting(bytes, format, fallback_title, &|_, _| true)
}

/// Parses like [`parse`] and calls `pages(done, total)` after each page of
/// a PDF has been read, so that a long book can show its progress. When
/// `pages` returns false, parsing stops with [`IngestError::Cancelled`].
pub fn parse_reporting(
    bytes: &[u8],
    format: Format,
    fallback_title: &str,
    pages: &dyn Fn(usize, usize) -> bool,
) -> Result<Book, IngestError> {
    // A bug in a parser must not take the server down with it. The progress
    // callback reads no state that a panic could leave half-changed.
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match format {
        Format::Pdf => pdf::parse(bytes, pages),
        Format::Html => html::parse(bytes),
        Format::Markdown => markdown::parse(bytes),
    }));
    let mut book = match parsed {
        Ok(result) => result?,
        Err(_) => return Err(IngestError::Parser(format)),
    };
    if book.title.trim().is_empty() {
        book.title = fallback_title.to_string();
    }
    book.prune();
    if book.sections.iter().all(|s| s.text.trim().is_empty()) {
        return Err(IngestError::NoText);
    }
    book.expand_ligatures();
    book.resolve_references();
    Ok(book)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_headings_is_one_section() {
        let book = parse(b"First paragraph of notes.\n\nSecond paragraph.", Format::Markdown, "notes").expect("parse");
        assert_eq!(book.title, "notes");
        assert_eq!(book.sections.len(), 1);
        assert_eq!(book.sections[0].heading, "notes");
        let book = parse(b"<html><body><p>Only a paragraph.</p></body></html>", Format::Html, "page").expect("parse");
        assert_eq!(book.title, "page");
        assert_eq!(book.sections[0].text, "Only a paragraph.");
    }

    #[test]
    fn empty_files_have_no_text() {
        assert!(matches!(parse(b"", Format::Markdown, "x"), Err(IngestError::NoText)));
        assert!(matches!(parse(b"<html><body></body></html>", Format::Html, "x"), Err(IngestError::NoText)));
    }
}
