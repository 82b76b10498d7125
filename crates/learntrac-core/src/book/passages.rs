//! Cutting sections into passages (chunks) that fit an embedding model's
//! window of tokens.

use std::ops::Range;

use super::{Book, Section, is_back_matter};
use crate::text;

/// Target size of a passage in characters. Paragraphs are joined up to it
/// and longer paragraphs are split between sentences. A passage exceeds it
/// only when one word is longer.
pub const CHUNK_CHARS: usize = 1000;

/// Window of all-MiniLM-L6-v2 in tokens, `[CLS]` and `[SEP]` included
/// (`max_seq_length` in its `sentence_bert_config.json`).
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Tokens repeated between consecutive passages by [`Window::estimated`]:
/// about one sentence.
pub const DEFAULT_OVERLAP_TOKENS: usize = 40;

/// A passage of a section, small enough to embed and show as a search hit.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// Index of the section in [`Book::sections`].
    pub section: usize,
    /// The 1-based PDF page the passage starts on; `None` for HTML and Markdown.
    pub page: Option<u32>,
    /// Paragraphs separated by blank lines.
    pub text: String,
}

/// The limit that every passage's embedded text must keep to.
pub struct Window<'a> {
    /// Maximum number of tokens, as `count` counts them, of the text that
    /// [`embedding_text`] builds for a passage.
    pub max_tokens: usize,
    /// Counts the tokens of a text as the embedding model's tokenizer does,
    /// special tokens included.
    pub count: &'a dyn Fn(&str) -> usize,
    /// Tokens of whole sentences that a passage repeats from the end of the
    /// previous passage of its section; 0 for none.
    pub overlap_tokens: usize,
}

impl Window<'static> {
    /// Returns a window of `max_tokens` counted by [`text::estimate_tokens`],
    /// for callers without the model's tokenizer, with an overlap of
    /// [`DEFAULT_OVERLAP_TOKENS`].
    pub fn estimated(max_tokens: usize) -> Window<'static> {
        Window { max_tokens, count: &text::estimate_tokens, overlap_tokens: DEFAULT_OVERLAP_TOKENS }
    }
}

/// Returns the text embedded for a passage. The headings give context to a
/// passage that does not repeat its own topic.
pub fn embedding_text(context: &str, heading: &str, chunk: &str) -> String {
    if context.is_empty() { format!("{heading}. {chunk}") } else { format!("{context}. {heading}. {chunk}") }
}

impl Book {
    /// Cuts the book into passages for a window of [`DEFAULT_MAX_TOKENS`]
    /// estimated tokens; see [`Book::chunks_within`].
    pub fn chunks(&self) -> Vec<Chunk> {
        self.chunks_within(&Window::estimated(DEFAULT_MAX_TOKENS))
    }

    /// Cuts every section's text into passages of about [`CHUNK_CHARS`]
    /// characters whose [`Book::embedding_text`] counts at most
    /// `window.max_tokens`. Passages end between paragraphs where they can,
    /// else between sentences, and a sentence longer than the window is
    /// split between words. No text is dropped. Back matter (indexes,
    /// bibliographies) gets no passages, so it is never found by search
    /// nor made into a concept.
    ///
    /// NOTE: when a section's headings alone fill the window, its passages
    /// hold one character each and may still exceed it.
    pub fn chunks_within(&self, window: &Window<'_>) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        for (index, section) in self.sections.iter().enumerate() {
            if is_back_matter(&section.heading) {
                continue;
            }
            let context = self.context(index);
            let fits = |passage: &str| {
                passage.len() <= CHUNK_CHARS
                    && (window.count)(&embedding_text(&context, &section.heading, passage)) <= window.max_tokens
            };
            for (offset, text) in split_section(&section.text, &fits, window) {
                chunks.push(Chunk { section: index, page: section.page_at(offset), text });
            }
        }
        chunks
    }

    /// Returns the text to embed for `chunk`: the enclosing headings, the
    /// section's heading and the passage, as [`Book::chunks_within`]
    /// counted it.
    pub fn embedding_text(&self, chunk: &Chunk) -> String {
        let heading = self.sections.get(chunk.section).map_or("", |s: &Section| s.heading.as_str());
        embedding_text(&self.context(chunk.section), heading, &chunk.text)
    }
}

/// A sentence, or a part of one too long for a passage, of a section's text.
struct Piece {
    /// Collapsed white space.
    text: String,
    /// Byte offset in the section's text.
    offset: usize,
    /// Index of the paragraph the piece belongs to.
    paragraph: usize,
    /// Whether the piece is a whole sentence, which overlap may repeat.
    whole: bool,
}

/// Splits `body` into passages that satisfy `fits`, returning each with the
/// byte offset in `body` where it starts.
fn split_section(body: &str, fits: &dyn Fn(&str) -> bool, window: &Window<'_>) -> Vec<(usize, String)> {
    let pieces = pieces(body, fits);
    let mut passages = Vec::new();
    let mut current: Vec<&Piece> = Vec::new();
    let mut index = 0;
    while index < pieces.len() {
        let piece = &pieces[index];
        let starts_paragraph = current.last().is_none_or(|last| last.paragraph != piece.paragraph);

        // A paragraph that fits in a passage of its own is not split
        // between two passages.
        if starts_paragraph && !current.is_empty() {
            let end =
                pieces[index..].iter().position(|p| p.paragraph != piece.paragraph).map_or(pieces.len(), |n| index + n);
            let paragraph: Vec<&Piece> = pieces[index..end].iter().collect();
            let together: Vec<&Piece> = current.iter().chain(&paragraph).copied().collect();
            if !fits(&join(&together)) && fits(&join(&paragraph)) {
                let overlap = overlap(&current, window);
                passages.push((current[0].offset, join(&current)));
                let with_overlap: Vec<&Piece> = overlap.iter().chain(&paragraph).copied().collect();
                current = if fits(&join(&with_overlap)) { overlap } else { Vec::new() };
            }
        }

        let mut extended = current.clone();
        extended.push(piece);
        if current.is_empty() || fits(&join(&extended)) {
            current = extended;
        } else {
            let overlap = overlap(&current, window);
            passages.push((current[0].offset, join(&current)));
            let mut next = overlap;
            next.push(piece);
            current = if fits(&join(&next)) { next } else { vec![piece] };
        }
        index += 1;
    }
    if !current.is_empty() {
        passages.push((current[0].offset, join(&current)));
    }
    passages
}

/// Returns the whole sentences at the end of `passage` that count at most
/// `window.overlap_tokens` together, never the whole passage.
fn overlap<'p>(passage: &[&'p Piece], window: &Window<'_>) -> Vec<&'p Piece> {
    let mut taken = Vec::new();
    let mut tokens = 0;
    for piece in passage.iter().skip(1).rev() {
        if !piece.whole {
            break;
        }
        tokens += (window.count)(&piece.text);
        if tokens > window.overlap_tokens {
            break;
        }
        taken.push(*piece);
    }
    taken.reverse();
    taken
}

/// Joins pieces with a space within a paragraph and a blank line between
/// paragraphs.
fn join(pieces: &[&Piece]) -> String {
    let mut out = String::new();
    let mut paragraph = None;
    for piece in pieces {
        match paragraph {
            None => {}
            Some(p) if p == piece.paragraph => out.push(' '),
            Some(_) => out.push_str("\n\n"),
        }
        out.push_str(&piece.text);
        paragraph = Some(piece.paragraph);
    }
    out
}

/// Splits `body` into paragraphs (at blank lines) and sentences, and a
/// sentence that does not fit a passage alone between words.
fn pieces(body: &str, fits: &dyn Fn(&str) -> bool) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut paragraph_start = 0;
    let mut paragraph = 0;
    for raw in body.split("\n\n") {
        let offset = paragraph_start;
        paragraph_start += raw.len() + 2;
        if raw.trim().is_empty() {
            continue;
        }
        for span in text::sentence_spans(raw) {
            let sentence = text::collapse_whitespace(&raw[span.clone()]);
            let start = offset + span.start;
            if fits(&sentence) {
                out.push(Piece { text: sentence, offset: start, paragraph, whole: true });
                continue;
            }
            for (part, part_offset) in split_words(&raw[span.clone()], fits) {
                out.push(Piece { text: part, offset: start + part_offset, paragraph, whole: false });
            }
        }
        paragraph += 1;
    }
    out
}

/// Splits `sentence` between words into the longest parts that satisfy
/// `fits`, and a word that does not fit alone between characters.
fn split_words(sentence: &str, fits: &dyn Fn(&str) -> bool) -> Vec<(String, usize)> {
    let mut parts = Vec::new();
    let mut current: Option<Range<usize>> = None;
    for word in text::word_spans(sentence) {
        if let Some(range) = &current {
            let candidate = text::collapse_whitespace(&sentence[range.start..word.end]);
            if fits(&candidate) {
                current = Some(range.start..word.end);
                continue;
            }
            parts.push((text::collapse_whitespace(&sentence[range.clone()]), range.start));
            current = None;
        }
        if fits(&sentence[word.clone()]) {
            current = Some(word);
            continue;
        }
        for (part, offset) in split_characters(&sentence[word.clone()], fits) {
            parts.push((part, word.start + offset));
        }
    }
    if let Some(range) = current {
        parts.push((text::collapse_whitespace(&sentence[range.clone()]), range.start));
    }
    parts
}

/// Splits a word into the longest runs of characters that satisfy `fits`,
/// at least one character each.
fn split_characters(word: &str, fits: &dyn Fn(&str) -> bool) -> Vec<(String, usize)> {
    let mut parts = Vec::new();
    let mut start = 0;
    while start < word.len() {
        let mut end = start;
        for (index, ch) in word[start..].char_indices() {
            let next = start + index + ch.len_utf8();
            if end > start && !fits(&word[start..next]) {
                break;
            }
            end = next;
        }
        parts.push((word[start..end].to_string(), start));
        start = end;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::{Format, PageStart};

    fn book(sections: Vec<Section>) -> Book {
        Book { title: "Book".into(), format: Format::Pdf, sections }
    }

    /// Counts one token per word, as a simple tokenizer would.
    fn count_words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    #[test]
    fn passages_fit_the_window() {
        let body = "The first paragraph has a sentence. It has a second one too.\n\n".repeat(40)
            + &"word ".repeat(300)
            + "\n\nA closing paragraph ends the section.";
        let book = book(vec![Section::new(1, "1 Chapter", ""), Section::new(2, "1.1 Section", body)]);
        for max_tokens in [20, 50, 256] {
            let window = Window { max_tokens, count: &count_words, overlap_tokens: 8 };
            let chunks = book.chunks_within(&window);
            assert!(chunks.len() > 1, "{max_tokens}: {chunks:?}");
            for chunk in &chunks {
                let tokens = count_words(&book.embedding_text(chunk));
                assert!(tokens <= max_tokens, "{tokens} > {max_tokens} tokens: {chunk:?}");
                assert!(chunk.text.len() <= CHUNK_CHARS, "{} characters", chunk.text.len());
            }
        }
    }

    #[test]
    fn long_words_are_split_to_fit() {
        let body = format!("Short start. {} end.", "x".repeat(50));
        let book = book(vec![Section::new(1, "Head", body)]);
        let count_characters = |text: &str| text.chars().count();
        let window = Window { max_tokens: 20, count: &count_characters, overlap_tokens: 0 };
        let chunks = book.chunks_within(&window);
        for chunk in &chunks {
            assert!(book.embedding_text(chunk).chars().count() <= 20, "{chunk:?}");
        }
        let letters: usize = chunks.iter().map(|c| c.text.matches('x').count()).sum();
        assert_eq!(letters, 50, "no character is lost");
    }

    #[test]
    fn no_text_is_lost_without_overlap() {
        let body = "Alpha beta gamma. Delta epsilon.\n\nZeta eta theta iota. Kappa lambda mu.\n\n".repeat(10);
        let book = book(vec![Section::new(1, "Greek", body.clone())]);
        let window = Window { max_tokens: 12, count: &count_words, overlap_tokens: 0 };
        let joined: Vec<String> = book.chunks_within(&window).into_iter().map(|c| c.text).collect();
        assert_eq!(text::collapse_whitespace(&joined.join(" ")), text::collapse_whitespace(&body));
    }

    #[test]
    fn consecutive_passages_overlap_by_a_sentence() {
        let body = (1..=30).map(|n| format!("Sentence number {n} is here.")).collect::<Vec<_>>().join(" ");
        let book = book(vec![Section::new(1, "Numbers", body)]);
        let window = Window { max_tokens: 30, count: &count_words, overlap_tokens: 6 };
        let chunks = book.chunks_within(&window);
        assert!(chunks.len() > 2);
        for pair in chunks.windows(2) {
            let last_sentence = text::sentences(&pair[0].text).pop().unwrap_or_default();
            assert!(pair[1].text.starts_with(&last_sentence), "{:?} does not repeat {last_sentence:?}", pair[1].text);
        }
    }

    #[test]
    fn short_paragraphs_stay_whole() {
        let body = "One two three four five six. Seven eight.\n\nNine ten eleven twelve thirteen. Fourteen.";
        let book = book(vec![Section::new(1, "H", body)]);
        let window = Window { max_tokens: 14, count: &count_words, overlap_tokens: 0 };
        let texts: Vec<String> = book.chunks_within(&window).into_iter().map(|c| c.text).collect();
        assert_eq!(texts, ["One two three four five six. Seven eight.", "Nine ten eleven twelve thirteen. Fourteen."]);
    }

    #[test]
    fn passages_carry_their_start_page() {
        let first = "Page five text. ".repeat(40);
        let body = format!("{first}\n\n{}", "Page six text. ".repeat(40));
        let mut section = Section::new(1, "Pages", body);
        section.page = Some(5);
        section.page_starts = vec![PageStart { offset: first.len() + 2, page: 6 }];
        let book = book(vec![section]);
        let window = Window { max_tokens: 100, count: &count_words, overlap_tokens: 0 };
        let chunks = book.chunks_within(&window);
        assert_eq!(chunks.first().and_then(|c| c.page), Some(5));
        assert_eq!(chunks.last().and_then(|c| c.page), Some(6));
        for chunk in &chunks {
            let expected = if chunk.text.starts_with("Page five") { Some(5) } else { Some(6) };
            assert_eq!(chunk.page, expected, "{chunk:?}");
        }
    }

    #[test]
    fn back_matter_has_no_passages() {
        let book = book(vec![Section::new(1, "Index", "apples, 3")]);
        assert!(book.chunks().is_empty());
    }
}
