//! HTML ingestion: one section per heading element, text from the page's
//! main content with navigation, scripts and styles left out.

use scraper::{ElementRef, Html, Node, Selector};

use super::IngestError;
use crate::book::{Book, Format, Section};
use crate::text::collapse_whitespace;

/// Elements whose content is never book text.
const SKIPPED_TAGS: &[&str] =
    &["script", "style", "nav", "header", "footer", "noscript", "template", "form", "button", "svg"];
/// Classes of navigation boxes common in generated documentation (Sphinx, Javadoc).
const SKIPPED_CLASSES: &[&str] =
    &["headerlink", "related", "sphinxsidebar", "footer", "navigation", "toc-backref", "toctree-wrapper"];
/// Elements after which a paragraph ends.
const BLOCK_TAGS: &[&str] =
    &["p", "div", "pre", "li", "dt", "dd", "blockquote", "table", "tr", "section", "ul", "ol", "dl", "br"];

pub fn parse(bytes: &[u8]) -> Result<Book, IngestError> {
    let source = std::str::from_utf8(bytes).map_err(|e| IngestError::Encoding { offset: e.valid_up_to() })?;
    let document = Html::parse_document(source);

    let mut walker = Walker { sections: vec![Section::new(1, "", "")] };
    let root = main_content(&document);
    walker.walk(root);

    // The first top heading names the page better than <title>, which
    // generators often extend with the site's name.
    let title = select_text(&document, "h1").or_else(|| select_text(&document, "title")).unwrap_or_default();
    let mut book = Book { title, format: Format::Html, sections: walker.sections };
    for section in &mut book.sections {
        section.text = tidy_paragraphs(&section.text);
    }
    Ok(book)
}

fn main_content(document: &Html) -> ElementRef<'_> {
    for selector in ["[role=main]", "main", "article", "body"] {
        if let Ok(sel) = Selector::parse(selector) {
            if let Some(found) = document.select(&sel).next() {
                return found;
            }
        }
    }
    document.root_element()
}

fn select_text(document: &Html, selector: &str) -> Option<String> {
    let sel = Selector::parse(selector).ok()?;
    let element = document.select(&sel).next()?;
    let text = collapse_whitespace(&element.text().collect::<String>().replace('¶', ""));
    (!text.is_empty()).then_some(text)
}

struct Walker {
    sections: Vec<Section>,
}

impl Walker {
    fn walk(&mut self, element: ElementRef<'_>) {
        for child in element.children() {
            match child.value() {
                Node::Text(text) => {
                    if let Some(current) = self.sections.last_mut() {
                        current.text.push_str(text);
                    }
                }
                Node::Element(el) => {
                    let Some(child_element) = ElementRef::wrap(child) else {
                        continue;
                    };
                    let name = el.name();
                    if SKIPPED_TAGS.contains(&name) || el.classes().any(|c| SKIPPED_CLASSES.contains(&c)) {
                        continue;
                    }
                    if let Some(level) = heading_level(name) {
                        let heading = child_element.text().collect::<String>().replace('¶', "");
                        self.sections.push(Section::new(level, collapse_whitespace(&heading), ""));
                        continue;
                    }
                    if let Some(current) = self.sections.last_mut() {
                        if BLOCK_TAGS.contains(&name) {
                            current.text.push_str("\n\n");
                        }
                    }
                    self.walk(child_element);
                    if let Some(current) = self.sections.last_mut() {
                        if BLOCK_TAGS.contains(&name) {
                            current.text.push_str("\n\n");
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn heading_level(name: &str) -> Option<u8> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

/// Collapses white space inside paragraphs and keeps one blank line between them.
pub(crate) fn tidy_paragraphs(text: &str) -> String {
    text.split("\n\n").map(collapse_whitespace).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_that_is_not_utf8_is_rejected() {
        let latin1 = b"<html><body><h1>Caf\xe9</h1><p>Menu.</p></body></html>";
        assert!(matches!(parse(latin1), Err(IngestError::Encoding { offset: 19 })));
    }

    #[test]
    fn headings_split_sections() {
        let html = br#"<html><head><title>Tutorial</title></head><body>
            <div class="related"><a href="x">Next</a></div>
            <div role="main"><h1>4. More Control Flow<a class="headerlink">&#182;</a></h1><p>Intro text.</p>
            <h2>4.1. if Statements</h2><p>Perhaps the most well-known statement type is the if statement.</p>
            <script>var x = 1;</script></div></body></html>"#;
        let book = crate::ingest::parse(html, Format::Html, "fallback").expect("parse");
        assert_eq!(book.title, "4. More Control Flow");
        let headings: Vec<_> = book.sections.iter().map(|s| (s.level, s.heading.as_str())).collect();
        assert_eq!(headings, [(1, "4. More Control Flow"), (2, "4.1. if Statements")]);
        assert_eq!(book.sections[0].text, "Intro text.");
        assert!(!book.sections[1].text.contains("var x"));
    }
}
