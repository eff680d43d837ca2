//! One home for how a TOML problem is told: by position and reason, never by value.
//!
//! toml's rendered error quotes the source line, and serde's messages quote the offending value
//! (`invalid type: string "whsec_…", expected …`, ``unknown variant `whsec_…` ``). A secret
//! pasted into the wrong field must not reach the terminal or the log, so both config and store
//! errors go through [`describe`] or [`reason`].

/// `line L, column C: reason` for an error from parsing `text`, or the reason alone when the
/// error has no position.
pub fn describe(err: &toml::de::Error, text: &str) -> String {
    match err.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}: {}", reason(err.message()))
        }
        None => reason(err.message()),
    }
}

/// serde's message with any quoted value taken out.
pub fn reason(message: &str) -> String {
    let message = message.trim_end();
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            // `string "x", expected …`: keep the kind and what was expected.
            let kind = rest.split([' ', ',']).next().unwrap_or("value");
            let expected = rest.find(", expected").map_or("", |at| &rest[at..]);
            return format!("{prefix}{kind}{expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let expected = rest.find("`, expected").map_or("", |at| &rest[at + 1..]);
        return format!("unknown variant{expected}");
    }
    message.to_owned()
}

/// 1-based line and column of a byte offset in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_taken_out_of_serde_messages() {
        assert_eq!(
            reason("invalid type: string \"whsec_abc\", expected u32"),
            "invalid type: string, expected u32"
        );
        assert_eq!(
            reason("invalid value: integer `-1`, expected u16"),
            "invalid value: integer, expected u16"
        );
        assert_eq!(
            reason("unknown variant `whsec_abc`, expected `enabled` or `disabled`"),
            "unknown variant, expected `enabled` or `disabled`"
        );
        assert_eq!(reason("missing field `url`"), "missing field `url`");
    }

    #[test]
    fn a_rendered_position_quotes_no_source() {
        let text = "a = 1\nb = \"whsec_secret\nc = 2\n";
        let err = toml::from_str::<toml::Table>(text).unwrap_err();
        let told = describe(&err, text);
        assert!(told.starts_with("line 2"), "{told}");
        assert!(!told.contains("whsec_secret"), "{told}");
    }
}
