//! A textbook as LearnTrac stores it: a title and a flat, ordered list of
//! sections, each with its level in the book's hierarchy (1 for a chapter,
//! 2 for a section, 3 and deeper for subsections), its own text, the PDF
//! pages that text is printed on and the sections it refers to.
//!
//! A section is also a concept of the learning path. [`Book::chunks_within`]
//! cuts the sections into passages that fit an embedding model's window,
//! and each passage keeps its section and the page it starts on, so that a
//! search hit can show book, chapter, section and page.

mod passages;
mod references;

pub use passages::{CHUNK_CHARS, Chunk, DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS, Window, embedding_text};
pub use references::{find_references, is_letter, printed_number};

use std::collections::HashMap;

use crate::text;

/// The file formats that can be ingested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Pdf,
    Html,
    Markdown,
}

impl Format {
    /// Guesses the format from a file name's extension.
    pub fn from_file_name(name: &str) -> Option<Format> {
        let extension = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match extension.as_str() {
            "pdf" => Some(Format::Pdf),
            "html" | "htm" | "xhtml" => Some(Format::Html),
            "md" | "markdown" => Some(Format::Markdown),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Html => "html",
            Format::Markdown => "markdown",
        }
    }
}

/// A parsed textbook.
#[derive(Clone, Debug)]
pub struct Book {
    pub title: String,
    pub format: Format,
    pub sections: Vec<Section>,
}

/// One heading of a book and the text under it up to the next heading.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    /// 1 for a chapter, 2 for a section, 3 and more for subsections.
    pub level: u8,
    /// The heading as the book prints it, number included ("2.5 Missing values").
    pub heading: String,
    /// Paragraphs separated by blank lines ("\n\n").
    pub text: String,
    /// The 1-based PDF page the section starts on (where its heading is
    /// printed, or its first text line); `None` for HTML and Markdown.
    pub page: Option<u32>,
    /// The later pages that `text` runs onto, in ascending order. Each
    /// entry is where a page's text begins, so [`Section::page_at`] can
    /// name the page of any passage. Empty for a one-page section and for
    /// formats without pages.
    pub page_starts: Vec<PageStart>,
    /// Indices into [`Book::sections`] of the sections that `text` names
    /// explicitly ("see Section 2.5", "Chapter 3", "Appendix A", "§2.5"),
    /// in ascending order and without this section itself.
    pub references: Vec<usize>,
}

/// The start of a page within a section's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageStart {
    /// Byte offset in [`Section::text`] of the page's first character.
    pub offset: usize,
    /// 1-based PDF page number.
    pub page: u32,
}

impl Section {
    /// Creates a section without page numbers or references, as HTML and
    /// Markdown books have them.
    pub fn new(level: u8, heading: impl Into<String>, text: impl Into<String>) -> Section {
        Section { level, heading: heading.into(), text: text.into(), ..Section::default() }
    }

    /// Returns the page on which byte `offset` of [`Section::text`] is
    /// printed, or `None` when the book has no pages.
    pub fn page_at(&self, offset: usize) -> Option<u32> {
        let later = self.page_starts.iter().take_while(|start| start.offset <= offset).last();
        later.map(|start| start.page).or(self.page)
    }

    /// Returns the heading without a leading section number
    /// ("2.5 Missing values" gives "Missing values").
    pub fn concept(&self) -> &str {
        strip_number(&self.heading)
    }
}

/// Removes a leading outline number such as "2.5", "A.1" or "3." and the
/// space after it.
pub fn strip_number(heading: &str) -> &str {
    let trimmed = heading.trim();
    if let Some((first, rest)) = trimmed.split_once(char::is_whitespace) {
        if is_outline_number(first) && !rest.trim().is_empty() {
            return rest.trim();
        }
    }
    trimmed
}

/// Returns whether `token` looks like "2", "2.5", "2.5.1", "A.3" or "2.".
pub fn is_outline_number(token: &str) -> bool {
    let token = token.trim_end_matches('.');
    if token.is_empty() {
        return false;
    }
    token.split('.').enumerate().all(|(i, part)| {
        !part.is_empty()
            && (part.chars().all(|c| c.is_ascii_digit())
                || (i == 0 && part.len() == 1 && part.chars().all(|c| c.is_ascii_uppercase())))
    }) && token.chars().any(|c| c.is_ascii_digit() || c == '.')
}

/// Returns the indices of the sections that enclose section `index`,
/// outermost first, from the sections' levels in book order: the nearest
/// earlier section of each lower level.
pub fn ancestors(levels: &[u8], index: usize) -> Vec<usize> {
    let mut chain = Vec::new();
    let mut level = levels.get(index).copied().unwrap_or(1);
    for i in (0..index).rev() {
        if levels[i] < level {
            chain.push(i);
            level = levels[i];
        }
    }
    chain.reverse();
    chain
}

/// Returns whether a heading names back matter that teaches nothing:
/// an index, a bibliography, a list of references or a table of contents.
pub fn is_back_matter(heading: &str) -> bool {
    let title = strip_number(heading).to_lowercase();
    let title = title.trim_end_matches('.');
    // "Appendix F References" is back matter, "11.6 Weak References" is not.
    let title = title.strip_prefix("appendix ").and_then(|rest| rest.split_once(' ')).map_or(title, |(_, t)| t);
    title == "index"
        || title.ends_with(" index")
        || title.ends_with(" indices")
        || title.ends_with("bibliography")
        || matches!(title, "references" | "contents" | "table of contents")
}

impl Book {
    /// Drops untitled sections without text, so that an empty title page
    /// does not become a concept, and names the remaining untitled text
    /// (before the first heading) after the book.
    pub fn prune(&mut self) {
        self.sections.retain(|s| !s.heading.trim().is_empty() || !s.text.trim().is_empty());
        for section in &mut self.sections {
            if section.heading.trim().is_empty() {
                section.heading = self.title.clone();
            }
        }
    }

    /// Returns the headings that enclose section `index`, outermost first,
    /// joined with " > " ("2 Simple manipulations > 2.5 Missing values"
    /// gives "2 Simple manipulations").
    pub fn context(&self, index: usize) -> String {
        let levels: Vec<u8> = self.sections.iter().map(|s| s.level).collect();
        ancestors(&levels, index).iter().map(|&i| self.sections[i].heading.as_str()).collect::<Vec<_>>().join(" > ")
    }

    /// Replaces the typographic ligatures ("ﬁ", "ﬂ", "ﬀ", ...) in every
    /// heading and text with the letters they join, moving the page starts
    /// with the text.
    pub fn expand_ligatures(&mut self) {
        for section in &mut self.sections {
            if text::has_ligature(&section.heading) {
                section.heading = text::expand_ligatures(&section.heading);
            }
            if !text::has_ligature(&section.text) {
                continue;
            }
            for start in &mut section.page_starts {
                start.offset = text::expand_ligatures(&section.text[..start.offset]).len();
            }
            section.text = text::expand_ligatures(&section.text);
        }
    }

    /// Fills in every section's [`Section::references`] from the section
    /// numbers its text names, resolved by the numbers printed in the
    /// headings of this book.
    pub fn resolve_references(&mut self) {
        let mut by_number: HashMap<String, usize> = HashMap::new();
        for (index, section) in self.sections.iter().enumerate() {
            // Appendix letters head top-level sections only.
            let number = printed_number(&section.heading).filter(|n| section.level == 1 || !is_letter(n));
            if let Some(number) = number {
                by_number.entry(number.to_string()).or_insert(index);
            }
        }
        for index in 0..self.sections.len() {
            let mut targets: Vec<usize> = find_references(&self.sections[index].text)
                .iter()
                .filter_map(|number| by_number.get(number.as_str()).copied())
                .filter(|&target| target != index)
                .collect();
            targets.sort_unstable();
            targets.dedup();
            self.sections[index].references = targets;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_number_keeps_plain_titles() {
        assert_eq!(strip_number("2.5 Missing values"), "Missing values");
        assert_eq!(strip_number("A.1 Sample session"), "Sample session");
        assert_eq!(strip_number("Preface"), "Preface");
        assert_eq!(strip_number("R and statistics"), "R and statistics");
        assert_eq!(strip_number("4 Ordered factors"), "Ordered factors");
    }

    #[test]
    fn ancestors_follow_levels() {
        let levels = [1, 2, 3, 3, 2, 1, 2];
        assert_eq!(ancestors(&levels, 3), [0, 1]);
        assert_eq!(ancestors(&levels, 4), [0]);
        assert_eq!(ancestors(&levels, 6), [5]);
        assert!(ancestors(&levels, 0).is_empty());
    }

    #[test]
    fn back_matter_is_recognised() {
        assert!(is_back_matter("E Concept index"));
        assert!(is_back_matter("Index"));
        assert!(is_back_matter("D Function and variable index"));
        assert!(is_back_matter("Appendix F References"));
        assert!(!is_back_matter("2.7 Index vectors; selecting and modifying subsets"));
        assert!(!is_back_matter("5.3 Index matrices"));
        assert!(!is_back_matter("6.4.2. Intra-package References"));
        assert!(!is_back_matter("11.6. Weak References"));
        assert!(is_back_matter("References"));
    }

    #[test]
    fn page_at_follows_page_starts() {
        let mut section = Section::new(2, "2.5 Missing values", "First page. Second page. Third page.");
        section.page = Some(12);
        section.page_starts = vec![PageStart { offset: 12, page: 13 }, PageStart { offset: 25, page: 14 }];
        assert_eq!(section.page_at(0), Some(12));
        assert_eq!(section.page_at(11), Some(12));
        assert_eq!(section.page_at(12), Some(13));
        assert_eq!(section.page_at(30), Some(14));
        assert_eq!(Section::new(1, "Intro", "Text").page_at(0), None);
    }

    #[test]
    fn ligatures_expand_with_page_starts() {
        let mut section = Section::new(1, "E\u{fb03}ciency", "\u{fb01}rst. Next");
        section.page_starts = vec![PageStart { offset: "\u{fb01}rst. ".len(), page: 2 }];
        let mut book = Book { title: "T".into(), format: Format::Pdf, sections: vec![section] };
        book.expand_ligatures();
        let section = &book.sections[0];
        assert_eq!(section.heading, "Efficiency");
        assert_eq!(section.text, "first. Next");
        assert_eq!(&section.text[section.page_starts[0].offset..], "Next");
    }

    #[test]
    fn references_resolve_to_numbered_sections() {
        let sections = vec![
            Section::new(1, "2 Simple manipulations", "Vectors come first; see Section 2.5 and Appendix A."),
            Section::new(2, "2.5 Missing values", "As in Chapter 2, values may be missing (see §2.5.1 and Chapter 9)."),
            Section::new(3, "2.5.1 NaN", "Section 2.5 covers NA."),
            Section::new(1, "A A sample session", "Try the commands of Chapter 2."),
        ];
        let mut book = Book { title: "R".into(), format: Format::Pdf, sections };
        book.resolve_references();
        let references: Vec<&[usize]> = book.sections.iter().map(|s| s.references.as_slice()).collect();
        assert_eq!(references, [&[1, 3][..], &[0, 2], &[1], &[0]]);
    }
}
