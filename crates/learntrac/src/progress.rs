//! A one-line progress bar on standard error for `learntrac ingest`. It is
//! drawn only when standard error is a terminal, so logs and pipes get
//! the final summary alone.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use learntrac_store::JobProgress;

/// Width of the bar itself, in characters.
const WIDTH: usize = 30;

pub struct Bar {
    label: String,
    terminal: bool,
    started: Instant,
    /// The last line drawn, so that an unchanged line is not drawn again.
    last: Mutex<String>,
}

impl Bar {
    pub fn new(label: &str) -> Bar {
        Bar {
            label: label.to_string(),
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: Mutex::new(String::new()),
        }
    }

    /// Draws the bar for `progress`.
    pub fn show(&self, progress: JobProgress) {
        if !self.terminal {
            return;
        }
        let line = render(&self.label, progress, self.started.elapsed().as_secs());
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last != line {
            let mut err = std::io::stderr().lock();
            // The cursor goes back to the line's start, so that a log line
            // written meanwhile replaces the bar instead of following it.
            let _ = write!(err, "\r\x1b[2K{line}\r");
            let _ = err.flush();
            *last = line;
        }
    }

    /// Ends the bar's line, so that what follows starts on a new one.
    pub fn finish(&self) {
        if self.terminal && !self.last.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Returns the bar's text: what is ingested, the share done, the counts
/// and the time taken. While a PDF is read the bar follows its pages, then the
/// passages embedded.
fn render(label: &str, progress: JobProgress, seconds: u64) -> String {
    let (done, total, counts) = if progress.passages_total == 0 && progress.pages_total > 0 {
        let (done, total) = (progress.pages_done, progress.pages_total);
        (done, total, format!("reading page {done}/{total}"))
    } else {
        let (done, total) = (progress.passages_done, progress.passages_total);
        let pages = if progress.pages_total > 0 { format!("{} pages, ", progress.pages_total) } else { String::new() };
        (done, total, format!("{pages}{done}/{total} passages"))
    };
    let total_units = total.max(1) as usize;
    let done_units = (done.max(0) as usize).min(total_units);
    let filled = done_units * WIDTH / total_units;
    format!(
        "{label} [{}{}] {:>3}% {counts} {}:{:02}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        done_units * 100 / total_units,
        seconds / 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_shows_passages_and_pages() {
        let progress = JobProgress { pages_done: 12, pages_total: 12, passages_done: 15, passages_total: 60 };
        let line = render("R-intro.pdf", progress, 75);
        assert_eq!(
            line,
            format!("R-intro.pdf [{}{}]  25% 12 pages, 15/60 passages 1:15", "#".repeat(7), "-".repeat(23))
        );
        let reading = JobProgress { pages_done: 30, pages_total: 120, passages_done: 0, passages_total: 0 };
        let line = render("derivations.pdf", reading, 4);
        assert!(line.ends_with(" 25% reading page 30/120 0:04"), "{line}");
        let empty = render("notes.md", JobProgress::default(), 0);
        assert!(empty.contains("0/0 passages"), "{empty}");
    }
}
