//! Turns a textbook file into a [`Book`](crate::book::Book).

mod html;
mod markdown;
mod pdf;

use crate::book::{Book, Format};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the PDF could not be read: {0}")]
    Pdf(String),
    #[error("the file is not valid UTF-8 text")]
    Encoding,
    #[error("no text was found in the file; a scanned PDF needs OCR before it can be ingested")]
    NoText,
}

/// Parses `bytes` as a book in `format`. Parsing is CPU-bound and can take
/// seconds for a long PDF, so async callers should run it on a blocking thread.
pub fn parse(bytes: &[u8], format: Format) -> Result<Book, IngestError> {
    match format {
        Format::Pdf => pdf::parse(bytes),
        Format::Html => html::parse(bytes),
        Format::Markdown => markdown::parse(bytes),
    }
}
