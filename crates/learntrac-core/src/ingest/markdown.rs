//! Markdown ingestion: one section per ATX or setext heading.

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

use super::IngestError;
use super::html::tidy_paragraphs;
use crate::book::{Book, Format, Section};
use crate::text::collapse_whitespace;

pub fn parse(bytes: &[u8]) -> Result<Book, IngestError> {
    let source = std::str::from_utf8(bytes).map_err(|e| IngestError::Encoding { offset: e.valid_up_to() })?;
    let mut sections = vec![Section::new(1, "", "")];
    let mut in_heading: Option<u8> = None;
    let mut heading = String::new();

    for event in Parser::new(source) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                in_heading = Some(level_number(level));
                heading.clear();
            }
            Event::End(TagEnd::Heading(_)) => {
                let level = in_heading.take().unwrap_or(1);
                sections.push(Section::new(level, collapse_whitespace(&heading), ""));
            }
            Event::Text(text) | Event::Code(text) => match in_heading {
                Some(_) => heading.push_str(&text),
                None => push_text(&mut sections, &text),
            },
            Event::SoftBreak | Event::HardBreak => push_text(&mut sections, " "),
            Event::End(TagEnd::Paragraph | TagEnd::Item | TagEnd::CodeBlock | TagEnd::BlockQuote(_)) => {
                push_text(&mut sections, "\n\n");
            }
            _ => {}
        }
    }

    let title = sections.iter().find(|s| !s.heading.is_empty()).map(|s| s.heading.clone()).unwrap_or_default();
    let mut book = Book { title, format: Format::Markdown, sections };
    for section in &mut book.sections {
        section.text = tidy_paragraphs(&section.text);
    }
    Ok(book)
}

fn push_text(sections: &mut [Section], text: &str) {
    if let Some(current) = sections.last_mut() {
        current.text.push_str(text);
    }
}

fn level_number(level: HeadingLevel) -> u8 {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_and_paragraphs() {
        let md = b"# Statistics\n\nIntro.\n\n## 1.1 Mean\n\nThe mean is the sum divided by the count.\n\nSecond paragraph.\n";
        let book = crate::ingest::parse(md, Format::Markdown, "fallback").expect("parse");
        assert_eq!(book.title, "Statistics");
        assert_eq!(book.sections.len(), 2);
        assert_eq!(book.sections[1].heading, "1.1 Mean");
        assert_eq!(book.sections[1].text, "The mean is the sum divided by the count.\n\nSecond paragraph.");
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        assert!(matches!(parse(&[0xff, 0xfe, 0x00]), Err(IngestError::Encoding { offset: 0 })));
    }
}
