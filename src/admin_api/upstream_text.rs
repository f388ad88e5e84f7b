//! The one place where text that came from the Admin API (or whatever answers in its place) is made
//! safe to store and log: the admin key removed, control characters and line breaks replaced, and the
//! length bounded.

use crate::secret::AdminKey;

/// Upstream text (error messages, decode details, cursors, content types) is cut to this many
/// characters before it is stored.
const MAX_DETAIL_CHARS: usize = 300;
/// Request ids look like `req_011CSHoEeqs5C35K2UUqR7Fy`.
const MAX_REQUEST_ID_CHARS: usize = 64;

/// `text` without the admin key, without control characters (a log line stays one line, a terminal is
/// not driven by escape sequences), at most [`MAX_DETAIL_CHARS`] characters.
pub fn clean_upstream_text(text: &str, key: &AdminKey) -> String {
    let redacted = key.redact(text);
    let mut cleaned: String = redacted
        .chars()
        .take(MAX_DETAIL_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if redacted.chars().nth(MAX_DETAIL_CHARS).is_some() {
        cleaned.push('…');
    }
    cleaned
}

/// A request id as the API documents it, `[A-Za-z0-9_-]{1,64}`; anything else is dropped rather than
/// logged, since a proxy or a hostile upstream chooses it.
pub fn clean_request_id(text: &str) -> Option<String> {
    let id = text.trim();
    let valid = (1..=MAX_REQUEST_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_text_loses_the_key_control_characters_and_excess_length() {
        let key = AdminKey::parse("sk-ant-admin01-secret", "TEST").unwrap();
        let text = format!(
            "bad key sk-ant-admin01-secret\n\u{1b}[31mFAKE LOG LINE{}",
            "x".repeat(500)
        );
        let cleaned = clean_upstream_text(&text, &key);
        assert!(!cleaned.contains("secret"), "{cleaned}");
        assert!(
            !cleaned.contains('\n') && !cleaned.contains('\u{1b}'),
            "{cleaned}"
        );
        assert_eq!(cleaned.chars().count(), MAX_DETAIL_CHARS + 1);
    }

    #[test]
    fn only_documented_request_ids_are_kept() {
        assert_eq!(
            clean_request_id("req_011CSHoEeqs5C35K2UUqR7Fy").as_deref(),
            Some("req_011CSHoEeqs5C35K2UUqR7Fy")
        );
        for hostile in [
            "",
            "req 1",
            "req\n2",
            "req_\u{1b}[2J",
            &"a".repeat(65),
            "req=\"x\"",
        ] {
            assert_eq!(clean_request_id(hostile), None, "{hostile:?}");
        }
    }
}
