//! Ingestion of the real textbooks in the corpus folder: `LEARNTRAC_CORPUS`,
//! or `../shared/corpus` beside the repository. Without it each test
//! reports itself skipped, unless `LEARNTRAC_REQUIRE_CORPUS=1` makes that a
//! failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use learntrac_core::book::{Book, Format, Window};
use learntrac_core::embed;
use learntrac_core::ingest;
use learntrac_core::search::{Index, Passage, Scoring, embedding_text};
use learntrac_core::text;

fn corpus_dir() -> PathBuf {
    std::env::var_os("LEARNTRAC_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"))
}

/// Returns the path of a corpus file, or `None` (after saying so) when the
/// corpus is absent and not required.
fn corpus_file(name: &str) -> Option<PathBuf> {
    let path = corpus_dir().join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("LEARNTRAC_REQUIRE_CORPUS").as_deref() != Ok("1"),
        "LEARNTRAC_REQUIRE_CORPUS=1 but {} is missing; set LEARNTRAC_CORPUS",
        path.display()
    );
    eprintln!("skipped: {} is missing; set LEARNTRAC_CORPUS", path.display());
    None
}

/// Parses a corpus book once per test binary, because the long PDF takes
/// seconds in a debug build.
fn load(name: &str) -> Option<Book> {
    static BOOKS: OnceLock<Mutex<HashMap<String, Book>>> = OnceLock::new();
    let path = corpus_file(name)?;
    // The lock is held while parsing, so that two tests never parse one book twice.
    let mut books = BOOKS.get_or_init(|| Mutex::new(HashMap::new())).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(book) = books.get(name) {
        return Some(book.clone());
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| unreachable!("cannot read {}: {e}", path.display()));
    let format = Format::from_file_name(name).unwrap_or(Format::Pdf);
    let book = ingest::parse(&bytes, format, name).unwrap_or_else(|e| unreachable!("cannot parse {name}: {e}"));
    books.insert(name.to_string(), book.clone());
    Some(book)
}

fn headings(book: &Book) -> Vec<&str> {
    book.sections.iter().map(|s| s.heading.as_str()).collect()
}

/// Counts tokens the way a WordPiece tokenizer at least would: one per
/// word and one per punctuation mark, plus `[CLS]` and `[SEP]`.
fn count_tokens(text: &str) -> usize {
    2 + text.split_whitespace().count() + text.chars().filter(|c| c.is_ascii_punctuation()).count()
}

/// Checks that every passage of `book` fits a window of 128 tokens as
/// [`count_tokens`] counts them, and returns the passages.
fn assert_passages_fit(book: &Book) -> Vec<learntrac_core::book::Chunk> {
    let window = Window { max_tokens: 128, count: &count_tokens, overlap_tokens: 24 };
    let chunks = book.chunks_within(&window);
    assert!(!chunks.is_empty());
    for chunk in &chunks {
        let tokens = count_tokens(&book.embedding_text(chunk));
        assert!(
            tokens <= 128,
            "{tokens} tokens in a passage of {}: {:?}",
            book.sections[chunk.section].heading,
            chunk.text
        );
    }
    chunks
}

/// Returns the headings that look like page furniture: a bare number, or
/// a running header such as "CHAPTER 3. TRIGONOMETRY 75".
fn furniture_headings(book: &Book) -> Vec<&str> {
    headings(book)
        .into_iter()
        .filter(|h| {
            let bare_number = h.chars().all(|c| c.is_ascii_digit() || c.is_whitespace());
            let upper_case = h.chars().filter(|c| c.is_alphabetic()).all(char::is_uppercase);
            let running =
                h.starts_with("Chapter ") || h.contains("CHAPTER") || (upper_case && h.ends_with(char::is_numeric));
            bare_number || running
        })
        .collect()
}

#[test]
fn r_intro_keeps_outline_titles() {
    let Some(book) = load("R-intro.pdf") else {
        return;
    };
    assert_eq!(book.title, "An Introduction to R");
    let headings: Vec<&str> = book.sections.iter().map(|s| s.heading.as_str()).collect();
    if std::env::var_os("LEARNTRAC_PRINT_SECTIONS").is_some() {
        for s in &book.sections {
            println!(
                "{} [{}] {} chars: {}",
                s.level,
                s.heading,
                s.text.len(),
                s.text.chars().take(100).collect::<String>()
            );
        }
    }
    for expected in
        ["2.5 Missing values", "2 Simple manipulations; numbers and vectors", "1.1 The R environment", "5.1 Arrays"]
    {
        assert!(headings.contains(&expected), "{expected:?} missing from {headings:?}");
    }
    let missing =
        book.sections.iter().find(|s| s.heading == "2.5 Missing values").map(|s| s.text.as_str()).unwrap_or_default();
    assert!(missing.contains("NA"), "{missing}");
    assert!(missing.contains("not available"), "{missing}");
    assert!(!missing.contains("2.6 Character vectors"), "section text runs into the next section: {missing}");
    let with_running_header: Vec<&str> = book
        .sections
        .iter()
        .filter(|s| {
            s.text.contains("Chapter 3: Objects, their modes and attributes")
                || s.text.contains("Chapter 2: Simple manipulations")
        })
        .map(|s| s.heading.as_str())
        .collect();
    assert!(with_running_header.is_empty(), "running headers left in {with_running_header:?}");
    let chapter = book.sections.iter().find(|s| s.heading.starts_with("2 Simple")).map(|s| s.level);
    assert_eq!(chapter, Some(1));
    assert_eq!(book.sections.iter().find(|s| s.heading == "2.5 Missing values").map(|s| s.level), Some(2));
}

#[test]
fn r_intro_search_finds_missing_values() {
    let Some(book) = load("R-intro.pdf") else {
        return;
    };
    let mut index = Index::new("builtin", Scoring::Hybrid);
    for (i, chunk) in book.chunks().into_iter().enumerate() {
        assert!(!text::has_ligature(&chunk.text));
        let heading = &book.sections[chunk.section].heading;
        let context = book.context(chunk.section);
        let vector = embed::embed(&embedding_text(&context, heading, &chunk.text));
        index
            .insert(
                Passage {
                    chunk_id: i as i64,
                    book_id: 1,
                    section_id: chunk.section as i64,
                    book_title: book.title.clone(),
                    heading: heading.clone(),
                    context,
                    text: chunk.text,
                    page: chunk.page.map(i64::from),
                },
                vector,
            )
            .expect("insert");
    }
    let query = "I want to understand how R handles missing values";
    let hits = index.search(query, &embed::embed(query), 5, 0.0);
    if std::env::var_os("LEARNTRAC_PRINT_SECTIONS").is_some() {
        for h in &hits {
            println!("{:.3} lex {:.3} sem {:.3} {}", h.relevance, h.lexical, h.semantic, h.passage.heading);
        }
    }
    assert_eq!(hits[0].passage.heading, "2.5 Missing values");
}

#[test]
fn python_tutorial_html_has_numbered_sections() {
    let Some(book) = load("python-tutorial/controlflow.html") else {
        return;
    };
    assert!(book.title.contains("More Control Flow Tools"), "{}", book.title);
    assert!(
        book.sections.iter().any(|s| s.heading.starts_with("4.1. if Statements")),
        "{:?}",
        book.sections.iter().map(|s| &s.heading).collect::<Vec<_>>()
    );
    assert!(book.sections.iter().all(|s| !s.text.contains("Navigation")));
}

#[test]
fn expected_answers_master_every_r_intro_question() {
    use learntrac_core::grade::grade;
    use learntrac_core::question::{Source, generate};

    let Some(book) = load("R-intro.pdf") else {
        return;
    };
    let unrelated = "Football teams score goals when the ball crosses the line between the posts.";
    let mut failures = Vec::new();
    for (i, section) in book.sections.iter().enumerate() {
        // Back matter is never searched, so it never becomes a ticket.
        if section.text.trim().is_empty() || learntrac_core::book::is_back_matter(&section.heading) {
            continue;
        }
        let q = generate(&Source {
            concept: section.concept(),
            text: &section.text,
            book_position: i as f32 / book.sections.len() as f32,
        });
        let own = grade(&q.expected_answer, &q.expected_answer, &q.key_terms, &section.heading)
            .map(|g| g.score)
            .unwrap_or(0.0);
        let other =
            grade(unrelated, &q.expected_answer, &q.key_terms, &section.heading).map(|g| g.score).unwrap_or(1.0);
        if own < 0.9 || other > 0.2 {
            failures.push(format!(
                "{}: own {own:.2}, unrelated {other:.2}, answer {:?}",
                section.heading, q.expected_answer
            ));
        }
    }
    assert!(failures.is_empty(), "{} sections fail:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn derivations_sections_have_their_text() {
    let Some(book) = load("derivations.pdf") else {
        return;
    };
    let empty = book.sections.iter().filter(|s| s.text.trim().is_empty()).count();
    assert!(empty * 10 < book.sections.len(), "{empty} of {} sections are empty", book.sections.len());
    assert!(book.sections.iter().any(|s| s.heading == "2.5 Powers and roots"));
    let largest =
        book.sections.iter().filter(|s| s.heading.starts_with("3.7")).map(|s| s.text.len()).max().unwrap_or(0);
    assert!(largest < 50_000, "3.7 swallowed {largest} bytes of later sections");
}

#[test]
fn r_intro_sections_have_titles_and_pages() {
    let Some(book) = load("R-intro.pdf") else {
        return;
    };
    let found = headings(&book);
    for expected in [
        "Preface",
        "1 Introduction and preliminaries",
        "1.10 Executing commands from or diverting output to a file",
        "2.7 Index vectors; selecting and modifying subsets of a data set",
        "5.4.1 Mixed vector and array arithmetic. The recycling rule",
        "11.7 Nonlinear least squares and maximum likelihood models",
        "12 Graphical procedures",
        "A A sample session",
        "B.1 Invoking R from the command line",
    ] {
        assert!(found.contains(&expected), "{expected:?} missing from {found:?}");
    }
    assert!(furniture_headings(&book).is_empty(), "{:?}", furniture_headings(&book));
    assert!(book.sections.iter().all(|s| s.page.is_some()), "every PDF section has a page");
    let pages: Vec<u32> = book.sections.iter().filter_map(|s| s.page).collect();
    assert!(pages.windows(2).all(|w| w[0] <= w[1]), "pages run forwards: {pages:?}");
    let missing = book.sections.iter().find(|s| s.heading == "2.5 Missing values").and_then(|s| s.page);
    assert!(missing.is_some_and(|p| (14..=18).contains(&p)), "2.5 starts on PDF page {missing:?}");
    let appendix = book.sections.iter().find(|s| s.heading == "A A sample session").map(|s| s.text.as_str());
    assert!(appendix.is_some_and(|t| !t.starts_with("Appendix A")), "printed heading left in the text");
    assert!(book.sections.iter().all(|s| !text::has_ligature(&s.text) && !text::has_ligature(&s.heading)));
    // Page numbers may not be left at the ends of paragraphs.
    let runaway = book.sections.iter().filter(|s| s.text.contains("Chapter 2: Simple manipulations")).count();
    assert_eq!(runaway, 0);
}

#[test]
fn r_intro_passages_carry_pages_and_fit() {
    let Some(book) = load("R-intro.pdf") else {
        return;
    };
    let chunks = assert_passages_fit(&book);
    assert!(chunks.iter().all(|c| c.page.is_some()));
    for chunk in &chunks {
        let section = &book.sections[chunk.section];
        let start = section.page.unwrap_or(0);
        let end = section.page_starts.last().map_or(start, |p| p.page);
        assert!(chunk.page.is_some_and(|p| (start..=end).contains(&p)), "{chunk:?} outside pages {start}..={end}");
    }
    let pages: Vec<Option<u32>> =
        chunks.iter().filter(|c| book.sections[c.section].heading.starts_with("2.")).map(|c| c.page).collect();
    assert!(pages.windows(2).all(|w| w[0] <= w[1]), "{pages:?}");
}

#[test]
fn r_intro_references_resolve() {
    let Some(book) = load("R-intro.pdf") else {
        return;
    };
    let with_references = book.sections.iter().filter(|s| !s.references.is_empty()).count();
    assert!(with_references >= 5, "only {with_references} sections refer to others");
    for section in &book.sections {
        assert!(section.references.iter().all(|&r| r < book.sections.len()));
    }
}

#[test]
fn derivations_keeps_chapter_titles() {
    let Some(book) = load("derivations.pdf") else {
        return;
    };
    let found = headings(&book);
    for expected in [
        "1 Introduction",
        "1.2.1 Axiom and definition",
        "2 Classical algebra and geometry",
        "2.1.1 Commutivity, associativity, distributivity, identity and inversion",
        "2.5 Powers and roots",
        "3 Trigonometry",
        "II Matrices and vectors",
        "11 The matrix",
    ] {
        assert!(found.contains(&expected), "{expected:?} missing from {:?}", &found[..60.min(found.len())]);
    }
    assert!(furniture_headings(&book).is_empty(), "{:?}", furniture_headings(&book));
    assert!(book.sections.iter().all(|s| s.page.is_some()));
    let running: Vec<&str> = book
        .sections
        .iter()
        .filter(|s| s.text.contains("TRIGONOMETRIC SUMS AND DIFFERENCES") || s.text.contains("CHAPTER 3. TRIGONOMETRY"))
        .map(|s| s.heading.as_str())
        .collect();
    assert!(running.is_empty(), "running headers left in {running:?}");
    assert!(book.sections.iter().all(|s| !text::has_ligature(&s.text)), "ligatures left");
    let with_references = book.sections.iter().filter(|s| !s.references.is_empty()).count();
    assert!(with_references > 50, "only {with_references} sections refer to others");
    assert_passages_fit(&book);
}

#[test]
fn python_tutorial_keeps_printed_titles() {
    let Some(dir) = corpus_file("python-tutorial") else {
        return;
    };
    let mut all = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| unreachable!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "html"))
        .collect();
    entries.sort();
    for path in entries {
        let name = format!("python-tutorial/{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let Some(book) = load(&name) else {
            return;
        };
        for section in &book.sections {
            assert!(!section.heading.contains('\u{b6}'), "permalink sign in {:?}", section.heading);
            assert_eq!(section.page, None);
            assert!(!text::has_ligature(&section.text));
        }
        assert_passages_fit(&book);
        all.extend(book.sections.iter().map(|s| (s.level, s.heading.clone())));
    }
    for (level, heading) in [
        (1, "5. Data Structures"),
        (2, "5.1. More on Lists"),
        (3, "5.1.3. List Comprehensions"),
        (2, "4.1. if Statements"),
        (1, "9. Classes"),
        (2, "9.3. A First Look at Classes"),
    ] {
        assert!(all.iter().any(|(l, h)| *l == level && h == heading), "{heading:?} at level {level} missing");
    }
}

#[test]
fn truncated_corpus_pdf_is_reported() {
    let Some(path) = corpus_file("R-intro.pdf") else {
        return;
    };
    let bytes = std::fs::read(&path).unwrap_or_else(|e| unreachable!("cannot read {}: {e}", path.display()));
    let result = ingest::parse(&bytes[..10 * 1024], Format::Pdf, "R-intro.pdf");
    assert!(matches!(result, Err(ingest::IngestError::Truncated)), "{result:?}");
}
