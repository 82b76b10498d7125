//! BERT's uncased WordPiece tokenizer, as Hugging Face `tokenizers` runs it
//! for a `tokenizer.json` with a `BertNormalizer`, the `BertPreTokenizer`
//! and a `WordPiece` model:
//!
//! 1. Added tokens such as `[SEP]` are matched in the raw text first and
//!    map to their ids directly.
//! 2. The normalizer removes control characters, turns whitespace into
//!    spaces, puts spaces around CJK ideographs, strips accents (NFD, then
//!    drops nonspacing marks) and lowercases.
//! 3. The pre-tokenizer splits on whitespace and isolates every
//!    punctuation character.
//! 4. WordPiece splits each word greedily into the longest pieces in the
//!    vocabulary, continuation pieces carrying the `##` prefix. A word with
//!    an unknown part, or longer than `max_input_chars_per_word`, becomes
//!    the unknown token.
//!
//! NOTE: the character classes come from the Unicode 18 tables of
//! `unicode-properties`, newer than those in `tokenizers` 0.23. About 700
//! code points assigned in later Unicode versions (marks and punctuation
//! of rare scripts) tokenize differently. All other text gets the same ids.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

const CLS_TOKEN: &str = "[CLS]";
const SEP_TOKEN: &str = "[SEP]";
/// The special tokens of BERT's `vocab.txt`, matched in the raw text when
/// there is no `tokenizer.json` to list them.
const BERT_SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// The steps of `tokenizers`' `BertNormalizer`, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BertNormalizer {
    pub clean_text: bool,
    pub handle_chinese_chars: bool,
    pub strip_accents: bool,
    pub lowercase: bool,
}

impl BertNormalizer {
    /// The normalizer of uncased BERT models.
    pub const UNCASED: BertNormalizer =
        BertNormalizer { clean_text: true, handle_chinese_chars: true, strip_accents: true, lowercase: true };

    pub fn normalize(&self, text: &str) -> String {
        let mut chars: Vec<char> = text.chars().collect();

        if self.clean_text {
            chars.retain(|&c| c != '\0' && c != '\u{fffd}' && !is_control(c));
            for c in &mut chars {
                if c.is_whitespace() {
                    *c = ' ';
                }
            }
        }

        if self.handle_chinese_chars && chars.iter().any(|&c| is_chinese_char(c)) {
            let mut spaced = Vec::with_capacity(chars.len() + 16);
            for c in chars {
                if is_chinese_char(c) {
                    spaced.extend([' ', c, ' ']);
                } else {
                    spaced.push(c);
                }
            }
            chars = spaced;
        }

        if self.strip_accents {
            chars =
                chars.into_iter().nfd().filter(|c| c.general_category() != GeneralCategory::NonspacingMark).collect();
        }

        // Character by character, as `tokenizers` does: `str::to_lowercase`
        // would also apply the final-sigma rule.
        if self.lowercase {
            chars.into_iter().flat_map(char::to_lowercase).collect()
        } else {
            chars.into_iter().collect()
        }
    }
}

/// Cc, Cf, Cs and Co, except tab, newline and carriage return, which
/// count as whitespace. Unassigned code points (Cn) are kept, as
/// `tokenizers` keeps them, and WordPiece then makes them unknown tokens.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r')
        && c.general_category_group() == GeneralCategoryGroup::Other
        && c.general_category() != GeneralCategory::Unassigned
}

/// The CJK Unified Ideographs blocks and their extensions and compatibility
/// blocks. Hangul, Hiragana and Katakana are written with spaces between
/// words and are not in these blocks.
fn is_chinese_char(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// ASCII punctuation includes symbols such as `$`, `+` and `^`, which the
/// Unicode punctuation categories do not.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.general_category_group() == GeneralCategoryGroup::Punctuation
}

/// Calls `word` for each word of normalized text: runs between whitespace,
/// with every punctuation character as a word of its own.
fn pre_tokenize<'a>(text: &'a str, mut word: impl FnMut(&'a str)) {
    for chunk in text.split(char::is_whitespace).filter(|chunk| !chunk.is_empty()) {
        let mut start = 0;
        for (index, c) in chunk.char_indices() {
            if is_punctuation(c) {
                if start < index {
                    word(&chunk[start..index]);
                }
                start = index + c.len_utf8();
                word(&chunk[index..start]);
            }
        }
        if start < chunk.len() {
            word(&chunk[start..]);
        }
    }
}

/// A WordPiece tokenizer with its vocabulary.
#[derive(Debug)]
pub(crate) struct Tokenizer {
    normalizer: BertNormalizer,
    /// Pieces that may start a word.
    word_starts: HashMap<Box<str>, u32>,
    /// Pieces that continue a word, stored without the continuation prefix
    /// so that a lookup needs no allocation.
    continuations: HashMap<Box<str>, u32>,
    /// Tokens matched in the raw text before normalization.
    added_tokens: Vec<(Box<str>, u32)>,
    max_input_chars_per_word: usize,
    unk_id: u32,
    cls_id: u32,
    sep_id: u32,
    max_id: u32,
}

impl Tokenizer {
    /// Builds a tokenizer from a vocabulary that maps each piece to its id.
    fn new(
        vocab: HashMap<String, u32>,
        normalizer: BertNormalizer,
        continuation_prefix: &str,
        unk_token: &str,
        max_input_chars_per_word: usize,
        added_tokens: Vec<(String, u32)>,
    ) -> anyhow::Result<Tokenizer> {
        let lookup = |token: &str| match vocab.get(token) {
            Some(&id) => Ok(id),
            None => bail!("the vocabulary has no {token} token"),
        };
        let unk_id = lookup(unk_token)?;
        let cls_id = lookup(CLS_TOKEN)?;
        let sep_id = lookup(SEP_TOKEN)?;
        if continuation_prefix.is_empty() {
            bail!("the continuing subword prefix is empty");
        }

        let added_tokens: Vec<(Box<str>, u32)> = added_tokens
            .into_iter()
            .filter(|(content, _)| !content.is_empty())
            .map(|(content, id)| (content.into_boxed_str(), id))
            .collect();
        let max_id = vocab.values().chain(added_tokens.iter().map(|(_, id)| id)).copied().max().unwrap_or(0);

        let mut word_starts = HashMap::with_capacity(vocab.len());
        let mut continuations = HashMap::new();
        for (piece, id) in vocab {
            match piece.strip_prefix(continuation_prefix) {
                Some(rest) if !rest.is_empty() => continuations.insert(rest.into(), id),
                _ => word_starts.insert(piece.into_boxed_str(), id),
            };
        }

        Ok(Tokenizer {
            normalizer,
            word_starts,
            continuations,
            added_tokens,
            max_input_chars_per_word,
            unk_id,
            cls_id,
            sep_id,
            max_id,
        })
    }

    /// Reads a `tokenizer.json` whose normalizer, pre-tokenizer and model
    /// are the BERT ones. Any other pipeline is rejected.
    pub fn from_tokenizer_json(path: &Path) -> anyhow::Result<Tokenizer> {
        let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
        let file: TokenizerFile =
            serde_json::from_str(&text).with_context(|| format!("invalid tokenizer file {}", path.display()))?;
        Tokenizer::from_file(file).with_context(|| format!("unsupported tokenizer in {}", path.display()))
    }

    fn from_file(file: TokenizerFile) -> anyhow::Result<Tokenizer> {
        let normalizer = match file.normalizer {
            Some(settings) if settings.get("type").and_then(|kind| kind.as_str()) == Some("BertNormalizer") => {
                let settings: BertNormalizerFile =
                    serde_json::from_value(settings).context("invalid BertNormalizer settings")?;
                // `tokenizers` strips accents when the setting is null and
                // the text is lowercased.
                BertNormalizer {
                    clean_text: settings.clean_text,
                    handle_chinese_chars: settings.handle_chinese_chars,
                    strip_accents: settings.strip_accents.unwrap_or(settings.lowercase),
                    lowercase: settings.lowercase,
                }
            }
            Some(settings) => bail!("the normalizer is {}, expected BertNormalizer", settings["type"]),
            None => bail!("the normalizer is missing, expected BertNormalizer"),
        };
        match file.pre_tokenizer {
            Some(PreTokenizerFile { kind }) if kind == "BertPreTokenizer" => {}
            Some(PreTokenizerFile { kind }) => bail!("the pre-tokenizer is {kind}, expected BertPreTokenizer"),
            None => bail!("the pre-tokenizer is missing, expected BertPreTokenizer"),
        }
        let model = file.model;
        if model.kind != "WordPiece" {
            bail!("the model is {}, expected WordPiece", model.kind);
        }

        let added_tokens = file.added_tokens.into_iter().map(|token| (token.content, token.id)).collect();
        Tokenizer::new(
            model.vocab,
            normalizer,
            &model.continuing_subword_prefix,
            &model.unk_token,
            model.max_input_chars_per_word,
            added_tokens,
        )
    }

    /// Reads a BERT `vocab.txt`, one piece a line with the line number as
    /// its id, and uses the settings of uncased BERT.
    pub fn from_vocab_txt(path: &Path) -> anyhow::Result<Tokenizer> {
        let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
        let mut vocab = HashMap::new();
        for (line, piece) in text.lines().enumerate() {
            let id = u32::try_from(line).with_context(|| format!("too many lines in {}", path.display()))?;
            vocab.entry(piece.to_owned()).or_insert(id);
        }
        let added_tokens = BERT_SPECIAL_TOKENS
            .iter()
            .filter_map(|&token| vocab.get(token).map(|&id| (token.to_owned(), id)))
            .collect();
        Tokenizer::new(vocab, BertNormalizer::UNCASED, "##", "[UNK]", 100, added_tokens)
            .with_context(|| format!("unsupported vocabulary in {}", path.display()))
    }

    /// Returns the largest token id this tokenizer can return.
    pub fn max_id(&self) -> u32 {
        self.max_id
    }

    /// Returns the token ids of `text` between `[CLS]` and `[SEP]`, without
    /// truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.cls_id];
        let mut rest = text;
        while let Some((start, len, id)) = self.find_added_token(rest) {
            self.push_text(&rest[..start], &mut ids);
            ids.push(id);
            rest = &rest[start + len..];
        }
        self.push_text(rest, &mut ids);
        ids.push(self.sep_id);
        ids
    }

    /// Returns the token ids of `text`, truncated to `max_tokens` ids with
    /// `[SEP]` kept at the end.
    pub fn encode_truncated(&self, text: &str, max_tokens: usize) -> Vec<u32> {
        let mut ids = self.encode(text);
        if ids.len() > max_tokens && max_tokens >= 2 {
            ids.truncate(max_tokens - 1);
            ids.push(self.sep_id);
        }
        ids
    }

    /// Finds the leftmost added token in `text`, the longest one where two
    /// start at the same byte, as its byte offset, length and id.
    fn find_added_token(&self, text: &str) -> Option<(usize, usize, u32)> {
        self.added_tokens
            .iter()
            .filter_map(|(content, id)| text.find(&**content).map(|start| (start, content.len(), *id)))
            .min_by_key(|&(start, len, _)| (start, std::cmp::Reverse(len)))
    }

    fn push_text(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let normalized = self.normalizer.normalize(text);
        pre_tokenize(&normalized, |word| self.push_word(word, ids));
    }

    /// Appends the WordPiece ids of one word: at each position the longest
    /// piece in the vocabulary, or a single unknown token for the whole
    /// word when some position has none.
    fn push_word(&self, word: &str, ids: &mut Vec<u32>) {
        if word.chars().count() > self.max_input_chars_per_word {
            ids.push(self.unk_id);
            return;
        }

        let first = ids.len();
        let mut start = 0;
        while start < word.len() {
            let pieces = if start == 0 { &self.word_starts } else { &self.continuations };
            let rest = &word[start..];
            let mut end = rest.len();
            let id = loop {
                if let Some(&id) = pieces.get(&rest[..end]) {
                    break Some(id);
                }
                match rest[..end].char_indices().next_back() {
                    Some((last, _)) if last > 0 => end = last,
                    _ => break None,
                }
            };
            let Some(id) = id else {
                ids.truncate(first);
                ids.push(self.unk_id);
                return;
            };
            ids.push(id);
            start += end;
        }
    }
}

/// The parts of `tokenizer.json` that this tokenizer reads. Its
/// `truncation` and `padding` settings are left out because
/// sentence-transformers replaces them: it truncates to `max_seq_length`
/// and pads only within a batch.
#[derive(Deserialize)]
struct TokenizerFile {
    #[serde(default)]
    added_tokens: Vec<AddedTokenFile>,
    normalizer: Option<serde_json::Value>,
    pre_tokenizer: Option<PreTokenizerFile>,
    model: ModelFile,
}

// NOTE: the `single_word`, `lstrip`, `rstrip` and `normalized` flags of
// added tokens are not applied. Each token is matched anywhere in the raw
// text, which is what the flags mean when all are false, as they are for
// BERT's special tokens.
#[derive(Deserialize)]
struct AddedTokenFile {
    id: u32,
    content: String,
}

#[derive(Deserialize)]
struct BertNormalizerFile {
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: Option<bool>,
    lowercase: bool,
}

#[derive(Deserialize)]
struct PreTokenizerFile {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct ModelFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    vocab: HashMap<String, u32>,
    #[serde(default = "default_unk_token")]
    unk_token: String,
    #[serde(default = "default_continuation_prefix")]
    continuing_subword_prefix: String,
    #[serde(default = "default_max_input_chars_per_word")]
    max_input_chars_per_word: usize,
}

fn default_unk_token() -> String {
    "[UNK]".to_owned()
}

fn default_continuation_prefix() -> String {
    "##".to_owned()
}

fn default_max_input_chars_per_word() -> usize {
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<&str> {
        let mut words = Vec::new();
        pre_tokenize(text, |word| words.push(word));
        words
    }

    fn tiny_tokenizer() -> Tokenizer {
        let pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "a", "##b", ",", "!"];
        let vocab = pieces.iter().enumerate().map(|(id, piece)| (piece.to_string(), id as u32)).collect();
        let added = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id as u32))
            .collect();
        Tokenizer::new(vocab, BertNormalizer::UNCASED, "##", "[UNK]", 100, added).unwrap()
    }

    #[test]
    fn normalizer_lowercases_and_strips_accents() {
        let normalizer = BertNormalizer::UNCASED;
        assert_eq!(normalizer.normalize("Café"), "cafe");
        assert_eq!(normalizer.normalize("NAÏVE Ångström"), "naive angstrom");
        assert_eq!(normalizer.normalize("İstanbul"), "istanbul");
    }

    #[test]
    fn normalizer_lowercases_each_character_alone() {
        // A final capital sigma becomes σ, not the final form ς.
        assert_eq!(BertNormalizer::UNCASED.normalize("ΟΔΟΣ"), "οδοσ");
    }

    #[test]
    fn normalizer_cleans_control_characters() {
        let normalizer = BertNormalizer::UNCASED;
        assert_eq!(normalizer.normalize("a\u{0}b\u{fffd}c\u{7}d"), "abcd");
        assert_eq!(normalizer.normalize("a\tb\nc\rd"), "a b c d");
        assert_eq!(normalizer.normalize("a\u{a0}b\u{2003}c"), "a b c");
        // A zero-width space is a format character (Cf), so it is removed.
        assert_eq!(normalizer.normalize("a\u{200b}b"), "ab");
    }

    #[test]
    fn normalizer_spaces_chinese_characters() {
        assert_eq!(BertNormalizer::UNCASED.normalize("野口 Rika"), " 野  口  rika");
        // Hiragana is not in the CJK ideograph blocks. Accent stripping
        // still drops the voicing mark of が, a nonspacing mark after NFD.
        assert_eq!(BertNormalizer::UNCASED.normalize("ひらがな"), "ひらかな");
    }

    #[test]
    fn normalizer_keeps_case_and_accents_when_asked() {
        let cased = BertNormalizer { strip_accents: false, lowercase: false, ..BertNormalizer::UNCASED };
        assert_eq!(cased.normalize("Café"), "Café");
    }

    #[test]
    fn pre_tokenizer_isolates_punctuation() {
        assert_eq!(words("hello, world!"), ["hello", ",", "world", "!"]);
        assert_eq!(words("  it's  $5+x "), ["it", "'", "s", "$", "5", "+", "x"]);
        assert_eq!(words("a—b«c»"), ["a", "—", "b", "«", "c", "»"]);
        assert!(words(" \t ").is_empty());
    }

    #[test]
    fn wordpiece_takes_longest_pieces() {
        let tokenizer = tiny_tokenizer();
        assert_eq!(tokenizer.encode("unaffable"), [2, 5, 6, 7, 3]);
        assert_eq!(tokenizer.encode("Ab, a!"), [2, 8, 9, 10, 8, 11, 3]);
    }

    #[test]
    fn wordpiece_unknown_part_gives_one_unk() {
        let tokenizer = tiny_tokenizer();
        assert_eq!(tokenizer.encode("unx a"), [2, 1, 8, 3]);
        assert_eq!(tokenizer.encode(&"a".repeat(101)), [2, 1, 3]);
    }

    #[test]
    fn added_tokens_match_raw_text() {
        let tokenizer = tiny_tokenizer();
        assert_eq!(tokenizer.encode("a[MASK]un"), [2, 8, 4, 5, 3]);
        // Lowercase "[mask]" is not the added token.
        assert_eq!(tokenizer.encode("[mask]"), [2, 1, 1, 1, 3]);
    }

    #[test]
    fn truncation_keeps_sep() {
        let tokenizer = tiny_tokenizer();
        assert_eq!(tokenizer.encode_truncated("a a a a", 4), [2, 8, 8, 3]);
        assert_eq!(tokenizer.encode_truncated("a", 4), [2, 8, 3]);
    }

    #[test]
    fn tokenizer_json_settings_are_read() {
        let json = r###"{
            "added_tokens": [{"id": 3, "content": "[SEP]"}],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": false},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 3,
                      "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 3, "Ab": 4, "##c": 5}}
        }"###;
        let tokenizer = Tokenizer::from_file(serde_json::from_str(json).unwrap()).unwrap();
        assert!(!tokenizer.normalizer.strip_accents);
        assert_eq!(tokenizer.encode("Abc Abcd"), [1, 4, 5, 0, 3]);
        assert_eq!(tokenizer.max_id(), 5);
    }

    #[test]
    fn tokenizer_json_other_pipeline_is_rejected() {
        let json = r#"{
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2}}
        }"#;
        let error = Tokenizer::from_file(serde_json::from_str(json).unwrap()).unwrap_err();
        assert_eq!(error.to_string(), r#"the normalizer is "NFC", expected BertNormalizer"#);
    }
}
