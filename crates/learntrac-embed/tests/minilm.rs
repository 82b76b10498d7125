//! Tests against the real all-MiniLM-L6-v2 files in the directory that
//! `LEARNTRAC_MINILM_DIR` names (the sentence-transformers layout, with
//! `model.safetensors`). Without it each test reports itself skipped,
//! unless `LEARNTRAC_REQUIRE_MODEL=1` makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use learntrac_embed::MiniLm;

const WEATHER: &str = "The weather is lovely today.";
const SUNNY: &str = "It's so sunny outside!";
const STADIUM: &str = "He drove to the stadium.";

/// The model files other than the weights.
const SMALL_FILES: [&str; 5] =
    ["config.json", "sentence_bert_config.json", "tokenizer.json", "vocab.txt", "1_Pooling/config.json"];

fn model_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LEARNTRAC_MINILM_DIR") {
        return Some(PathBuf::from(dir));
    }
    assert!(
        std::env::var("LEARNTRAC_REQUIRE_MODEL").as_deref() != Ok("1"),
        "LEARNTRAC_REQUIRE_MODEL=1 but LEARNTRAC_MINILM_DIR is not set"
    );
    eprintln!("skipped: set LEARNTRAC_MINILM_DIR");
    None
}

/// Returns the model, loaded once for all tests of this binary, or `None`
/// when the tests are skipped.
fn model() -> Option<&'static MiniLm> {
    static MODEL: OnceLock<MiniLm> = OnceLock::new();
    let dir = model_dir()?;
    Some(MODEL.get_or_init(|| MiniLm::load(&dir).expect("load the model in LEARNTRAC_MINILM_DIR")))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("learntrac-embed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("1_Pooling")).unwrap();
        TempDir(path)
    }

    /// Copies the named files of the model directory.
    fn copy_from(&self, model_dir: &Path, files: &[&str]) {
        for file in files {
            std::fs::copy(model_dir.join(file), self.0.join(file)).unwrap();
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_error(dir: &Path) -> String {
    format!("{:#}", MiniLm::load(dir).expect_err("loading should fail"))
}

#[test]
fn model_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MiniLm>();
}

#[test]
fn model_reports_its_shape_and_id() {
    let Some(model) = model() else { return };
    assert_eq!(model.dimensions(), 384);
    assert_eq!(model.max_tokens(), 256);
    let hash = model.model_id().strip_prefix("all-MiniLM-L6-v2:").expect("model id prefix");
    assert_eq!(hash.len(), 12);
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{hash}");
}

#[test]
fn tokenizer_splits_punctuation() {
    let Some(model) = model() else { return };
    assert_eq!(model.token_ids("Hello, world!"), [101, 7592, 1010, 2088, 999, 102]);
}

#[test]
fn tokenizer_strips_accents() {
    let Some(model) = model() else { return };
    assert_eq!(model.token_ids("Café"), [101, 7668, 102]);
    assert_eq!(model.token_ids("Café"), model.token_ids("cafe"));
    assert_eq!(model.token_ids("NAÏVE façade"), [101, 15743, 8508, 102]);
}

#[test]
fn tokenizer_splits_long_word_into_pieces() {
    let Some(model) = model() else { return };
    // super ##cal ##if ##rag ##ilis ##tic ##ex ##pia ##lid ##oc ##ious
    assert_eq!(
        model.token_ids("Supercalifragilisticexpialidocious"),
        [101, 3565, 9289, 10128, 29181, 24411, 4588, 10288, 19312, 21273, 10085, 6313, 102]
    );
}

#[test]
fn tokenizer_word_over_100_chars_is_unknown() {
    let Some(model) = model() else { return };
    assert_eq!(model.token_ids(&"x".repeat(101)), [101, 100, 102]);
    // 100 characters are still split: xx, then 49 × ##xx.
    assert_eq!(model.token_count(&"x".repeat(100)), 52);
}

#[test]
fn token_count_includes_cls_and_sep() {
    let Some(model) = model() else { return };
    assert_eq!(model.token_count(""), 2);
    assert_eq!(model.token_count(WEATHER), 8);
    let long = "word ".repeat(300);
    assert_eq!(model.token_count(&long), 302);
}

#[test]
fn embeddings_match_sentence_transformers() {
    let Some(model) = model() else { return };
    let weather = model.embed(WEATHER);
    let sunny = model.embed(SUNNY);
    let stadium = model.embed(STADIUM);

    for embedding in [&weather, &sunny, &stadium] {
        assert_eq!(embedding.len(), 384);
        assert!((norm(embedding) - 1.0).abs() < 1e-4, "norm {}", norm(embedding));
    }
    // The similarities that sentence-transformers' quickstart prints for
    // this model.
    let weather_sunny = cosine(&weather, &sunny);
    let weather_stadium = cosine(&weather, &stadium);
    let sunny_stadium = cosine(&sunny, &stadium);
    assert!((weather_sunny - 0.6660).abs() < 0.002, "weather/sunny {weather_sunny}");
    assert!((weather_stadium - 0.1046).abs() < 0.002, "weather/stadium {weather_stadium}");
    assert!((sunny_stadium - 0.1411).abs() < 0.002, "sunny/stadium {sunny_stadium}");
}

#[test]
fn embed_truncates_to_window() {
    let Some(model) = model() else { return };
    let long = "The interpreter reads one statement at a time. ".repeat(40);
    assert!(model.token_count(&long) > model.max_tokens());
    let longer = format!("{long} Anything past the window changes nothing.");
    assert_eq!(model.embed(&long), model.embed(&longer));
    assert!((norm(&model.embed(&long)) - 1.0).abs() < 1e-4);
}

#[test]
fn embed_of_empty_text_is_unit_vector() {
    let Some(model) = model() else { return };
    let embedding = model.embed("");
    assert_eq!(embedding.len(), 384);
    assert!((norm(&embedding) - 1.0).abs() < 1e-4);
}

#[test]
fn embed_batch_equals_embed() {
    let Some(model) = model() else { return };
    let long = "Lists can be sliced, and slices return new lists. ".repeat(30);
    let texts = [WEATHER, SUNNY, "", STADIUM, long.as_str(), "Café, naïve!"];
    let batch = model.embed_batch(&texts);
    assert_eq!(batch.len(), texts.len());
    for (text, embedding) in texts.iter().zip(&batch) {
        assert_eq!(embedding, &model.embed(text), "{text:?}");
    }
    assert!(model.embed_batch(&[]).is_empty());
}

#[test]
fn vocab_txt_replaces_missing_tokenizer_json() {
    let Some(model) = model() else { return };
    let Some(source) = model_dir() else { return };
    let dir = TempDir::new("vocab-txt");
    dir.copy_from(&source, &["config.json", "sentence_bert_config.json", "vocab.txt", "model.safetensors"]);
    let fallback = MiniLm::load(&dir.0).unwrap();
    for text in ["Hello, world!", "Café [MASK] 野口", "Supercalifragilisticexpialidocious"] {
        assert_eq!(fallback.token_ids(text), model.token_ids(text), "{text:?}");
    }
    assert_eq!(fallback.embed(WEATHER), model.embed(WEATHER));
}

#[test]
fn missing_files_are_named() {
    let Some(source) = model_dir() else { return };
    let dir = TempDir::new("missing");

    let error = load_error(&dir.0);
    assert!(error.contains("config.json"), "{error}");

    dir.copy_from(&source, &["config.json", "sentence_bert_config.json", "1_Pooling/config.json"]);
    let error = load_error(&dir.0);
    assert!(error.contains("tokenizer.json"), "{error}");
    assert!(error.contains("vocab.txt"), "{error}");

    dir.copy_from(&source, &["tokenizer.json"]);
    let error = load_error(&dir.0);
    assert!(error.contains("model.safetensors"), "{error}");
}

#[test]
fn truncated_weights_are_named() {
    let Some(source) = model_dir() else { return };
    let dir = TempDir::new("truncated");
    dir.copy_from(&source, &SMALL_FILES);
    let weights = std::fs::read(source.join("model.safetensors")).unwrap();

    for length in [4, 100, 1_000_000, weights.len() - 1] {
        std::fs::write(dir.0.join("model.safetensors"), &weights[..length]).unwrap();
        let error = load_error(&dir.0);
        assert!(error.contains("model.safetensors"), "{length} bytes: {error}");
    }
}

#[test]
fn other_pooling_is_rejected() {
    let Some(source) = model_dir() else { return };
    let dir = TempDir::new("pooling");
    dir.copy_from(&source, &SMALL_FILES);
    std::fs::write(
        dir.0.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let error = load_error(&dir.0);
    assert!(error.contains("1_Pooling"), "{error}");
    assert!(error.contains("mean pooling"), "{error}");
}
