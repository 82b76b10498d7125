//! Explicit cross-references between sections: "see Section 2.5",
//! "Chapter 3", "Appendix A", "§ 2.5.1", "§§ 11.1 and 8.16".

use super::{is_outline_number, strip_number};

/// Words that introduce a section number, compared in lower case, with
/// whether they may name an appendix letter alone ("Appendix A").
const KEYWORDS: &[(&str, bool)] = &[
    ("section", false),
    ("sections", false),
    ("sec.", false),
    ("subsection", false),
    ("subsections", false),
    ("chapter", false),
    ("chapters", false),
    ("ch.", false),
    ("appendix", true),
    ("appendices", true),
    ("§", false),
    ("§§", false),
];

/// Returns the number printed at the start of a heading, without a final
/// period: "2.5" for "2.5 Missing values", "5.1" for "5.1. More on Lists",
/// "A" for "A A sample session", "II" for "II Matrices and vectors". A
/// capital letter or roman numeral counts only before a capitalised word,
/// as appendices and parts are headed, so that "A sample session" has no
/// number.
pub fn printed_number(heading: &str) -> Option<&str> {
    let trimmed = heading.trim();
    let (first, rest) = trimmed.split_once(char::is_whitespace)?;
    if is_letter(first) || is_roman(first) {
        return rest.trim_start().starts_with(char::is_uppercase).then_some(first);
    }
    if strip_number(trimmed) == trimmed {
        return None;
    }
    Some(first.trim_end_matches('.'))
}

/// Returns whether `token` is a roman numeral in capitals up to 39 ("XXXIX"),
/// as parts of a book are numbered.
fn is_roman(token: &str) -> bool {
    !token.is_empty() && token.len() <= 6 && token.chars().all(|c| matches!(c, 'I' | 'V' | 'X'))
}

/// Returns whether `token` is one capital letter, as appendices are numbered.
pub fn is_letter(token: &str) -> bool {
    token.len() == 1 && token.chars().all(|c| c.is_ascii_uppercase())
}

/// Returns the section numbers that `text` names after a keyword such as
/// "Section", "Chapter", "Appendix" or "§", in order of appearance. A list
/// after one keyword ("Chapters 2 and 3", "§§ 11.1, 8.16") yields every
/// number in it. Bare numbers are not references, because equations and
/// tables are numbered the same way.
pub fn find_references(text: &str) -> Vec<String> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut found = Vec::new();
    let mut index = 0;
    while index < tokens.len() {
        let token = tokens[index];
        index += 1;
        // "§2.5" is written without a space as often as with one.
        let (keyword, rest) = match token.strip_prefix("§§").or_else(|| token.strip_prefix('§')) {
            Some(rest) if !rest.is_empty() => ("§", rest),
            _ => (token, ""),
        };
        let Some(&(_, letters)) = KEYWORDS.iter().find(|(word, _)| keyword.eq_ignore_ascii_case(word)) else {
            continue;
        };
        if !rest.is_empty() {
            match reference_number(rest, letters) {
                Some(number) => found.push(number),
                None => continue,
            }
        }
        // Numbers follow, joined by "and", "or", "through", "to" or commas.
        let mut expect_number = rest.is_empty();
        while index < tokens.len() {
            let next = tokens[index];
            if expect_number {
                let Some(number) = reference_number(next, letters) else {
                    break;
                };
                found.push(number);
                index += 1;
                expect_number = false;
                if !next.ends_with(',') {
                    continue;
                }
                expect_number = true;
                continue;
            }
            if matches!(next, "and" | "or" | "through" | "to" | "&") {
                expect_number = true;
                index += 1;
                continue;
            }
            break;
        }
    }
    found
}

/// Returns `token` as a section number when it is one, without the
/// punctuation that may follow it in prose ("2.5,", "3)", "A.").
fn reference_number(token: &str, letters: bool) -> Option<String> {
    let token = token.trim_start_matches(['(', '[']);
    let token = token.trim_end_matches([',', ';', ':', ')', ']', '.', '?', '!', '\'', '"', '\u{2019}', '\u{201d}']);
    if is_letter(token) {
        return letters.then(|| token.to_string());
    }
    is_outline_number(token).then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_after_keywords() {
        let text = "See Section 2.5, as in Chapter 3. Also §2.5.1 and § 4; Appendix A lists more. \
                    Sections 1.2 and 1.3, §§ 11.1 and 8.16, Chapters 2 through 9. Equation (2.10) is not one.";
        assert_eq!(find_references(text), ["2.5", "3", "2.5.1", "4", "A", "1.2", "1.3", "11.1", "8.16", "2", "9"]);
    }

    #[test]
    fn letters_need_the_appendix_keyword() {
        assert!(find_references("Section A of the form").is_empty());
        assert!(find_references("the chapter is long").is_empty());
        assert_eq!(find_references("(see Appendix B.)"), ["B"]);
    }

    #[test]
    fn printed_numbers_lose_their_period() {
        assert_eq!(printed_number("2.5 Missing values"), Some("2.5"));
        assert_eq!(printed_number("5.1. More on Lists"), Some("5.1"));
        assert_eq!(printed_number("A A sample session"), Some("A"));
        assert_eq!(printed_number("II Matrices and vectors"), Some("II"));
        assert_eq!(printed_number("Preface"), None);
    }
}
