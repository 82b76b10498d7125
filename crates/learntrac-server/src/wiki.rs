//! A subset of Trac's wiki formatting: `= headings =`, paragraphs,
//! `* lists`, `'''bold'''`, `''italic''`, `` `code` ``, links
//! (`[wiki:Page label]`, `[https://… label]`, `[/path label]`) and macros
//! such as `[[LearningPath]]`. All text is escaped.

use crate::pages::escape;

/// The default start page, created on first start.
pub const START_PAGE: &str = "= Welcome to LearnTrac =

LearnTrac turns the textbooks in its [/library library] into learning paths. Write what you want to learn below; LearnTrac finds the passages that teach it, makes each concept a ticket with a question, and orders the tickets by prerequisite.

[[LearningPath]]

Your paths and their progress are on the [/roadmap roadmap].
";

/// Renders wiki text to HTML; `expand_macro` returns the HTML of a macro
/// by name, or `None` for an unknown macro, which is shown as an error.
pub fn render(text: &str, expand_macro: &dyn Fn(&str) -> Option<String>) -> String {
    let mut html = String::new();
    let mut paragraph: Vec<String> = Vec::new();
    let mut in_list = false;

    let flush = |html: &mut String, paragraph: &mut Vec<String>| {
        if !paragraph.is_empty() {
            html.push_str("<p>");
            html.push_str(&paragraph.join(" "));
            html.push_str("</p>\n");
            paragraph.clear();
        }
    };

    for raw in text.lines() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        let is_item = trimmed.starts_with("* ") && line.starts_with(' ') || line.starts_with("* ");
        if in_list && !is_item {
            html.push_str("</ul>\n");
            in_list = false;
        }
        if trimmed.is_empty() {
            flush(&mut html, &mut paragraph);
            continue;
        }
        if let Some((level, title)) = heading(trimmed) {
            flush(&mut html, &mut paragraph);
            html.push_str(&format!("<h{level}>{}</h{level}>\n", inline(title)));
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("[[").and_then(|t| t.strip_suffix("]]")) {
            flush(&mut html, &mut paragraph);
            match expand_macro(name.trim()) {
                Some(expanded) => html.push_str(&expanded),
                None => html.push_str(&format!("<p class=\"error\">Unknown macro {}.</p>", escape(name))),
            }
            continue;
        }
        if is_item {
            flush(&mut html, &mut paragraph);
            if !in_list {
                html.push_str("<ul>\n");
                in_list = true;
            }
            html.push_str(&format!("<li>{}</li>\n", inline(&trimmed[2..])));
            continue;
        }
        paragraph.push(inline(trimmed));
    }
    if in_list {
        html.push_str("</ul>\n");
    }
    flush(&mut html, &mut paragraph);
    html
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|c| *c == '=').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let inner = line[level..].trim_end().trim_end_matches('=').trim();
    (!inner.is_empty() && line[level..].starts_with(' ')).then_some((level, inner))
}

/// Formats bold, italic, code and links within one line.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("'''") {
            if let Some(end) = after.find("'''") {
                out.push_str(&format!("<strong>{}</strong>", escape(&after[..end])));
                rest = &after[end + 3..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix("''") {
            if let Some(end) = after.find("''") {
                out.push_str(&format!("<em>{}</em>", escape(&after[..end])));
                rest = &after[end + 2..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix('`') {
            if let Some(end) = after.find('`') {
                out.push_str(&format!("<code>{}</code>", escape(&after[..end])));
                rest = &after[end + 1..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix('[') {
            if let Some(end) = after.find(']') {
                if let Some(link) = link(&after[..end]) {
                    out.push_str(&link);
                    rest = &after[end + 1..];
                    continue;
                }
            }
        }
        let Some(ch) = rest.chars().next() else {
            break;
        };
        out.push_str(&escape(&ch.to_string()));
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// `[wiki:Page label]`, `[https://host/x label]` or `[/path label]`.
fn link(inner: &str) -> Option<String> {
    let (target, label) = match inner.split_once(' ') {
        Some((target, label)) => (target, label.trim()),
        None => (inner, inner),
    };
    let href = if let Some(page) = target.strip_prefix("wiki:") {
        if page.is_empty() || !page.chars().all(|c| c.is_alphanumeric() || c == '/' || c == '_' || c == '-') {
            return None;
        }
        format!("/wiki/{page}")
    } else if target.starts_with("https://")
        || target.starts_with("http://")
        || (target.starts_with('/') && !target.starts_with("//"))
    {
        target.to_string()
    } else {
        return None;
    };
    Some(format!("<a href=\"{}\">{}</a>", escape(&href), escape(label)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_headings_lists_links_and_macros() {
        let html = render(
            "= Title =\nSome '''bold''' and ''it'' text\nsame paragraph.\n\n* one [wiki:Other page]\n* two\n\n[[LearningPath]]\n[[Nope]]",
            &|name| (name == "LearningPath").then(|| "<form></form>".to_string()),
        );
        assert!(html.contains("<h1>Title</h1>"));
        assert!(html.contains("<p>Some <strong>bold</strong> and <em>it</em> text same paragraph.</p>"));
        assert!(html.contains("<ul>\n<li>one <a href=\"/wiki/Other\">page</a></li>\n<li>two</li>\n</ul>"));
        assert!(html.contains("<form></form>"));
        assert!(html.contains("Unknown macro Nope"));
    }

    #[test]
    fn escapes_markup_and_rejects_script_links() {
        let html = render("<script>alert(1)</script> [javascript:alert(1) x]", &|_| None);
        assert!(!html.contains("<script>"));
        assert!(!html.contains("href=\"javascript"));
    }
}
