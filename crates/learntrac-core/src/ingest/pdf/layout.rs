//! Page text as lines with their font size, from pdf-extract's glyph stream.
//!
//! pdf-extract's `PlainTextOutput` writes plain text and drops the font
//! size, which the heading detection needs, so this module implements its
//! `OutputDev` trait instead. Lines and spaces follow the rules of
//! `PlainTextOutput` in pdf-extract 0.12, with glyphs in content order. A
//! new line starts when the baseline moves down by more than half the font
//! size while the pen moves left, or by more than one and a half font
//! sizes. A space goes where the pen jumps right by more than a tenth of
//! the font size.

use pdf_extract::{Document, MediaBox, OutputDev, OutputError, Transform};

use crate::text;

/// One printed line of a page.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Line {
    /// 1-based PDF page.
    pub page: u32,
    /// White space collapsed, ligatures expanded.
    pub text: String,
    /// Font size in points of most of the line's characters.
    pub size: f32,
    /// Whether more than a blank line's height separates the line from
    /// the one before it, which ends a paragraph.
    pub gap_before: bool,
}

/// Returns the lines of every page, in page order, calling
/// `progress(done, total)` after each page; `None` when it returns false.
/// A page whose content cannot be decoded has no lines rather than failing
/// the whole book.
pub(super) fn extract_pages(document: &Document, progress: &dyn Fn(usize, usize) -> bool) -> Option<Vec<Vec<Line>>> {
    let count = document.get_pages().len() as u32;
    let mut pages = Vec::with_capacity(count as usize);
    for number in 1..=count {
        let mut collector = Collector::default();
        let lines = match pdf_extract::output_doc_page(document, &mut collector, number) {
            Ok(()) => collector.finish(number),
            Err(_) => Vec::new(),
        };
        pages.push(lines);
        if !progress(number as usize, count as usize) {
            return None;
        }
    }
    Some(pages)
}

/// A line while its glyphs arrive: text and characters per font size.
#[derive(Default)]
struct RawLine {
    text: String,
    /// (size in tenths of a point, characters).
    sizes: Vec<(u32, usize)>,
    gap_before: bool,
}

#[derive(Default)]
struct Collector {
    lines: Vec<RawLine>,
    page_height: f64,
    /// Horizontal end of the previous glyph, and its baseline.
    last_end: f64,
    last_y: f64,
    /// Whether the next glyph starts a text-showing operation.
    word_start: bool,
}

impl Collector {
    fn finish(self, page: u32) -> Vec<Line> {
        let mut lines = Vec::new();
        let mut gap = false;
        for raw in self.lines {
            let line_text = text::collapse_whitespace(&text::expand_ligatures(&raw.text));
            if line_text.is_empty() {
                gap = true;
                continue;
            }
            let size =
                raw.sizes.iter().max_by_key(|(_, count)| *count).map_or(0.0, |(tenths, _)| *tenths as f32 / 10.0);
            lines.push(Line { page, text: line_text, size, gap_before: raw.gap_before || gap });
            gap = false;
        }
        lines
    }
}

impl OutputDev for Collector {
    fn begin_page(
        &mut self,
        _page_num: u32,
        media_box: &MediaBox,
        _art_box: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), OutputError> {
        self.page_height = media_box.ury - media_box.lly;
        Ok(())
    }

    fn end_page(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn output_character(
        &mut self,
        trm: &Transform,
        width: f64,
        _spacing: f64,
        font_size: f64,
        char: &str,
    ) -> Result<(), OutputError> {
        // The text rendering matrix maps text space to the page. The font
        // size in points is the side of a square with the area that a
        // font-size square has after that mapping.
        let scaled_x = font_size * (trm.m11 + trm.m21);
        let scaled_y = font_size * (trm.m12 + trm.m22);
        let size = (scaled_x * scaled_y).abs().sqrt();
        let (x, y) = (trm.m31, self.page_height - trm.m32);

        if self.lines.is_empty() {
            self.lines.push(RawLine::default());
        } else if self.word_start {
            let drop = (y - self.last_y).abs();
            let moved_left = x < self.last_end;
            if drop > size * 1.5 || (moved_left && drop > size * 0.5) {
                let gap_before = drop > size * 1.5 && moved_left;
                self.lines.push(RawLine { gap_before, ..RawLine::default() });
            } else if x > self.last_end + size * 0.1 {
                self.push_text(" ", size);
            }
        }
        self.push_text(char, size);
        self.word_start = false;
        self.last_y = y;
        self.last_end = x + width * size;
        Ok(())
    }

    fn begin_word(&mut self) -> Result<(), OutputError> {
        self.word_start = true;
        Ok(())
    }

    fn end_word(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
}

impl Collector {
    fn push_text(&mut self, glyph: &str, size: f64) {
        let Some(line) = self.lines.last_mut() else {
            return;
        };
        line.text.push_str(glyph);
        let visible = glyph.chars().filter(|c| !c.is_whitespace()).count();
        if visible == 0 {
            return;
        }
        let tenths = (size * 10.0).round().clamp(0.0, 100_000.0) as u32;
        match line.sizes.iter_mut().find(|(s, _)| *s == tenths) {
            Some(entry) => entry.1 += visible,
            None => line.sizes.push((tenths, visible)),
        }
    }
}
