//! docs/operations.md, compiled in and served as HTML, so that a banner's
//! "what to do" link works on a machine without the repository or the
//! internet. Headings get GitHub's anchors (`## Degraded modes` is
//! `#degraded-modes`), so the same links work on the repository's pages.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd, html};

const OPERATIONS: &str = include_str!("../../../../docs/operations.md");

/// GitHub's heading anchor: lower case, punctuation other than `-` and `_`
/// dropped, spaces as `-`.
pub fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Markdown to HTML, every heading with its anchor.
pub fn render(markdown: &str) -> String {
    let events: Vec<Event> = Parser::new_ext(markdown, Options::ENABLE_TABLES).collect();
    let mut out: Vec<Event> = Vec::with_capacity(events.len());
    let mut i = 0;
    while i < events.len() {
        if let Event::Start(Tag::Heading { level, .. }) = &events[i] {
            let level: HeadingLevel = *level;
            let end = events[i..].iter().position(|e| matches!(e, Event::End(TagEnd::Heading(_)))).map_or(i, |p| i + p);
            let text: String = events[i + 1..end]
                .iter()
                .filter_map(|e| match e {
                    Event::Text(t) | Event::Code(t) => Some(t.to_string()),
                    _ => None,
                })
                .collect();
            out.push(Event::Start(Tag::Heading {
                level,
                id: Some(slug(&text).into()),
                classes: Vec::new(),
                attrs: Vec::new(),
            }));
            out.extend(events[i + 1..=end].iter().cloned());
            i = end + 1;
            continue;
        }
        out.push(events[i].clone());
        i += 1;
    }
    let mut body = String::new();
    html::push_html(&mut body, out.into_iter());
    body
}

pub async fn operations() -> Response {
    static PAGE: OnceLock<String> = OnceLock::new();
    let page = PAGE.get_or_init(|| {
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>healthcode operations</title>\
             <link rel=\"stylesheet\" href=\"/console/console.css\"></head><body><main class=\"docs\">\
             <p><a href=\"/console\">Back to the console</a></p>{}</main></body></html>",
            render(OPERATIONS)
        )
    });
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page.as_str()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_get_the_anchors_the_banners_link_to() {
        assert_eq!(slug("Lookups, admission and the edge spool"), "lookups-admission-and-the-edge-spool");
        let page = render(OPERATIONS);
        for anchor in ["degraded-modes", "lookups-admission-and-the-edge-spool", "exposure-sites"] {
            assert!(page.contains(&format!("id=\"{anchor}\"")), "docs/operations.md lost the section {anchor}");
        }
    }
}
