//! A textbook as LearnTrac stores it: a title and a flat, ordered list of
//! sections, each with its level in the book's hierarchy (1 for a chapter,
//! 2 for a section, 3 and deeper for subsections) and its own text.

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
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    /// 1 for a chapter, 2 for a section, 3 and more for subsections.
    pub level: u8,
    /// The heading as the book prints it, number included ("2.5 Missing values").
    pub heading: String,
    pub text: String,
}

impl Section {
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
    title == "index"
        || title.ends_with(" index")
        || title.ends_with(" indices")
        || title.ends_with("bibliography")
        || title.ends_with("references")
        || matches!(title, "contents" | "table of contents")
}

/// A passage of a section, small enough to embed and show as a search hit.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// Index of the section in [`Book::sections`].
    pub section: usize,
    pub text: String,
}

/// Target size of a chunk in characters; paragraphs are joined up to it and
/// longer paragraphs are split at sentence boundaries.
pub const CHUNK_CHARS: usize = 1000;

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

    /// Splits every section's text into chunks of about [`CHUNK_CHARS`].
    /// Back matter (indexes, bibliographies) gets none, so it is never
    /// found by search nor made into a concept.
    pub fn chunks(&self) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        for (index, section) in self.sections.iter().enumerate() {
            if is_back_matter(&section.heading) {
                continue;
            }
            for text in split_into_chunks(&section.text, CHUNK_CHARS) {
                chunks.push(Chunk { section: index, text });
            }
        }
        chunks
    }
}

/// Joins paragraphs (separated by blank lines) into pieces of at most
/// `target` characters; a longer paragraph is split between sentences.
pub fn split_into_chunks(body: &str, target: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for paragraph in body.split("\n\n") {
        let paragraph = text::collapse_whitespace(paragraph);
        if paragraph.is_empty() {
            continue;
        }
        let parts = if paragraph.len() > target { text::sentences(&paragraph) } else { vec![paragraph] };
        for part in parts {
            if !current.is_empty() && current.len() + part.len() + 1 > target {
                pieces.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(&part);
        }
    }
    if !current.trim().is_empty() {
        pieces.push(current);
    }
    pieces
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
    }

    #[test]
    fn chunks_stay_near_target() {
        let body = "First paragraph here.\n\nSecond one. ".repeat(100);
        let pieces = split_into_chunks(&body, 200);
        assert!(pieces.len() > 10);
        assert!(pieces.iter().all(|p| p.len() <= 200), "{pieces:?}");
    }
}
