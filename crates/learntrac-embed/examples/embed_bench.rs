//! Measures how fast `MiniLm::embed_batch` embeds passages of about 1000
//! characters, cut at sentence ends from real text.
//!
//! ```text
//! cargo run --release -p learntrac-embed --example embed_bench -- MODEL_DIR CORPUS [PASSAGES]
//! ```
//!
//! `CORPUS` is a folder whose `.html` files are read (tags removed) or a
//! single text or HTML file. `PASSAGES` defaults to 200; when the text
//! has fewer passages, they are used again in turn. Prints the load time,
//! the passages' mean length in characters and tokens, and passages per
//! second on all threads and on one.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use learntrac_embed::MiniLm;

const PASSAGE_CHARS: usize = 1000;
const MAX_PASSAGE_CHARS: usize = 1500;
const DEFAULT_PASSAGES: usize = 200;
/// Passages embedded one by one on the calling thread for the
/// single-thread rate.
const SINGLE_THREAD_PASSAGES: usize = 20;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_dir, corpus, count) = match args.as_slice() {
        [model_dir, corpus] => (model_dir, corpus, DEFAULT_PASSAGES),
        [model_dir, corpus, count] => {
            (model_dir, corpus, count.parse().context("PASSAGES must be a positive integer")?)
        }
        _ => bail!("usage: embed_bench MODEL_DIR CORPUS [PASSAGES]"),
    };
    if count == 0 {
        bail!("PASSAGES must be a positive integer");
    }

    let started = Instant::now();
    let model = MiniLm::load(Path::new(model_dir))?;
    println!("model: {} loaded in {:.2} s", model.model_id(), started.elapsed().as_secs_f64());

    let text = read_corpus(Path::new(corpus))?;
    let unique = split_passages(&text);
    if unique.is_empty() {
        bail!("no text in {corpus}");
    }
    let passages: Vec<&str> = unique.iter().cycle().take(count).map(String::as_str).collect();

    let chars: usize = passages.iter().map(|passage| passage.chars().count()).sum();
    let token_counts: Vec<usize> = passages.iter().map(|passage| model.token_count(passage)).collect();
    let tokens: usize = token_counts.iter().map(|&tokens| tokens.min(model.max_tokens())).sum();
    let truncated = token_counts.iter().filter(|&&tokens| tokens > model.max_tokens()).count();
    println!(
        "passages: {count} ({} distinct), mean {:.0} characters, mean {:.1} tokens after truncation to {} ({truncated} truncated)",
        unique.len(),
        chars as f64 / count as f64,
        tokens as f64 / count as f64,
        model.max_tokens()
    );

    // One untimed passage, so that first-touch page faults stay out of the rate.
    model.embed(passages[0]);

    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let started = Instant::now();
    let embeddings = model.embed_batch(&passages);
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(embeddings.len(), count);
    println!("embed_batch: {:.1} passages/s on {threads} threads ({seconds:.2} s)", count as f64 / seconds);

    let single = &passages[..count.min(SINGLE_THREAD_PASSAGES)];
    let started = Instant::now();
    for passage in single {
        model.embed(passage);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("embed: {:.1} passages/s on 1 thread ({} passages)", single.len() as f64 / seconds, single.len());
    Ok(())
}

/// Returns the text of `path`: every `.html` file of a folder in name
/// order, or one file, with HTML tags removed from `.html` files.
fn read_corpus(path: &Path) -> anyhow::Result<String> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("failed to list {}", path.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|file| file.extension().is_some_and(|extension| extension == "html"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };

    let mut text = String::new();
    for file in files {
        let contents = std::fs::read_to_string(&file).with_context(|| format!("failed to read {}", file.display()))?;
        if file.extension().is_some_and(|extension| extension == "html") {
            text.push_str(&html_to_text(&contents));
        } else {
            text.push_str(&contents);
        }
        text.push('\n');
    }
    Ok(text)
}

/// Drops tags, scripts and styles and decodes character references. This
/// is good enough for benchmark text but is not an HTML parser.
fn html_to_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        text.push_str(&decode_references(&rest[..start]));
        let tag = &rest[start..];
        let skip_to = ["<script", "<style"]
            .iter()
            .zip(["</script>", "</style>"])
            .find(|(open, _)| tag.get(..open.len()).is_some_and(|prefix| prefix.eq_ignore_ascii_case(open)))
            .map(|(_, close)| close)
            .unwrap_or(">");
        match tag.find(skip_to) {
            Some(end) => rest = &tag[end + skip_to.len()..],
            None => rest = "",
        }
        text.push(' ');
    }
    text.push_str(&decode_references(rest));
    text
}

fn decode_references(text: &str) -> String {
    let mut decoded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        decoded.push_str(&rest[..start]);
        let reference = &rest[start + 1..];
        let Some(end) = reference.find(';').filter(|&end| end <= 10) else {
            decoded.push('&');
            rest = reference;
            continue;
        };
        let name = &reference[..end];
        let character = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => name
                .strip_prefix("#x")
                .or_else(|| name.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| name.strip_prefix('#').and_then(|decimal| decimal.parse().ok()))
                .and_then(char::from_u32),
        };
        match character {
            Some(character) => {
                decoded.push(character);
                rest = &reference[end + 1..];
            }
            None => {
                decoded.push('&');
                rest = reference;
            }
        }
    }
    decoded.push_str(rest);
    decoded
}

/// Splits `text` into passages of whole sentences, each closed as soon as
/// it reaches `PASSAGE_CHARS` characters at a sentence end (`.`, `?` or `!`
/// before whitespace), or at any word past `MAX_PASSAGE_CHARS` in text
/// without sentence ends, such as code. The last, shorter passage is
/// dropped.
fn split_passages(text: &str) -> Vec<String> {
    let mut passages = Vec::new();
    let mut passage = String::new();
    let mut chars = 0;
    for word in text.split_whitespace() {
        if !passage.is_empty() {
            passage.push(' ');
            chars += 1;
        }
        passage.push_str(word);
        chars += word.chars().count();
        let sentence_end = word.ends_with(['.', '?', '!']);
        if (sentence_end && chars >= PASSAGE_CHARS) || chars >= MAX_PASSAGE_CHARS {
            passages.push(std::mem::take(&mut passage));
            chars = 0;
        }
    }
    passages
}
