//! The store file's text, written directly: the flat `[[webhooks]]` layout that the file backend
//! reads back table by table.
//!
//! toml's serializer builds a whole document model first: about 2 s of CPU and several times the
//! file's size in memory for 100,000 endpoints, on every write and every delivery-record flush.
//! This writes the same TOML in one pass. It first counts the exact length, so the text is built
//! in one allocation and no grown-and-freed buffer is left holding a copy of a secret.

use zeroize::Zeroizing;

use super::EndpointRecord;

/// The TOML text of `records` after `header` (comment lines): one `[[webhooks]]` table each,
/// fields in the record's order, optional fields left out when unset, as the toml crate would.
pub fn render(header: &str, records: &[EndpointRecord]) -> Zeroizing<String> {
    let mut length = Length(header.len());
    write_records(&mut length, records);
    let mut text = Zeroizing::new(String::with_capacity(length.0));
    text.push_str(header);
    write_records(&mut *text, records);
    debug_assert_eq!(text.len(), length.0, "the counted length is exact");
    text
}

/// Where text goes: counted first, then written.
trait Sink {
    fn put(&mut self, text: &str);
}

struct Length(usize);

impl Sink for Length {
    fn put(&mut self, text: &str) {
        self.0 += text.len();
    }
}

impl Sink for String {
    fn put(&mut self, text: &str) {
        self.push_str(text);
    }
}

fn write_records(out: &mut impl Sink, records: &[EndpointRecord]) {
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            out.put("\n");
        }
        out.put("[[webhooks]]\n");
        string(out, "uuid", &record.uuid);
        string(out, "company", &record.company);
        string(out, "url", &record.url);
        out.put("events = [");
        for (index, event) in record.events.iter().enumerate() {
            if index > 0 {
                out.put(", ");
            }
            quoted(out, event);
        }
        out.put("]\n");
        if !record.description.is_empty() {
            string(out, "description", &record.description);
        }
        string(out, "status", &record.status);
        string(out, "scheme", &record.scheme);
        string(out, "secret", record.secret.expose());
        if let Some(previous) = &record.previous_secret {
            string(out, "previous_secret", previous.expose());
        }
        optional(
            out,
            "previous_secret_expires_at",
            &record.previous_secret_expires_at,
        );
        optional(out, "created_at", &record.created_at);
        optional(out, "updated_at", &record.updated_at);
        count(out, "deliveries_count", record.deliveries_count);
        optional(out, "last_delivery_at", &record.last_delivery_at);
        optional(out, "last_delivery_status", &record.last_delivery_status);
        count(out, "consecutive_failures", record.consecutive_failures);
    }
}

fn string(out: &mut impl Sink, key: &str, value: &str) {
    out.put(key);
    out.put(" = ");
    quoted(out, value);
    out.put("\n");
}

fn optional(out: &mut impl Sink, key: &str, value: &Option<String>) {
    if let Some(value) = value {
        string(out, key, value);
    }
}

/// A non-zero integer (zero is the default and left out).
fn count(out: &mut impl Sink, key: &str, value: u64) {
    if value != 0 {
        out.put(key);
        out.put(" = ");
        out.put(&value.to_string());
        out.put("\n");
    }
}

/// A TOML basic string: `"` and `\` escaped, control characters as short or `\uXXXX` escapes,
/// everything else as it is.
fn quoted(out: &mut impl Sink, value: &str) {
    out.put("\"");
    if !value
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control())
    {
        out.put(value);
        out.put("\"");
        return;
    }
    let mut plain_from = 0;
    for (at, c) in value.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\t' => "\\t",
            '\r' => "\\r",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if c.is_ascii_control() => "",
            _ => continue,
        };
        out.put(&value[plain_from..at]);
        if escape.is_empty() {
            out.put(&format!("\\u{:04X}", u32::from(c)));
        } else {
            out.put(escape);
        }
        plain_from = at + c.len_utf8();
    }
    out.put(&value[plain_from..]);
    out.put("\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn record(description: &str, events: Vec<String>) -> EndpointRecord {
        EndpointRecord {
            uuid: "a1b2c3d4-e5f6-7890-abcd-ef1234567890".into(),
            company: "550e8400-e29b-41d4-a716-446655440000".into(),
            url: "https://example.com/hooks?x=1&y=\"2\"".into(),
            events,
            description: description.into(),
            status: "active".into(),
            scheme: "stripe".into(),
            secret: Secret::new(format!("whsec_{}", "ab".repeat(32))),
            previous_secret: Some(Secret::new(format!("whsec_{}", "cd".repeat(32)))),
            previous_secret_expires_at: Some("2026-02-19T10:00:00Z".into()),
            created_at: Some("2026-02-18T10:00:00Z".into()),
            updated_at: None,
            deliveries_count: 12,
            last_delivery_at: Some("2026-02-18T11:00:00Z".into()),
            last_delivery_status: Some("failed".into()),
            consecutive_failures: 0,
        }
    }

    #[derive(serde::Deserialize)]
    struct File {
        webhooks: Vec<EndpointRecord>,
    }

    /// The file's records as the toml crate reads them, in a form that compares.
    fn read_back(text: &str) -> Vec<String> {
        let file: File = toml::from_str(text).expect("the rendered text is valid TOML");
        file.webhooks
            .iter()
            .map(|record| format!("{record:?}|{}", record.secret.expose()))
            .collect()
    }

    #[test]
    fn awkward_strings_read_back_exactly() {
        let every_control: String = (0u8..0x20).chain([0x7f]).map(char::from).collect();
        let records = vec![
            record("", vec!["*".into()]),
            record(
                &format!("quotes \" and \\ backslashes, {every_control}, é, 😀, \u{2028}"),
                vec!["invoice.created".into(), "a \"b\" \\c\n".into()],
            ),
            record("'''\"\"\"#[[webhooks]]\n[[webhooks]]", vec!["x".into()]),
        ];
        let text = render("# a header\n\n", &records);
        let expected: Vec<String> = records
            .iter()
            .map(|record| format!("{record:?}|{}", record.secret.expose()))
            .collect();
        assert_eq!(read_back(&text), expected);
        // And the toml crate's own rendering reads back the same.
        #[derive(serde::Serialize)]
        struct Out<'a> {
            webhooks: &'a [EndpointRecord],
        }
        let theirs = toml::to_string(&Out { webhooks: &records }).unwrap();
        assert_eq!(read_back(&theirs), expected);
    }

    #[test]
    fn the_text_is_built_in_one_exact_allocation() {
        let records: Vec<EndpointRecord> = (0..50)
            .map(|i| {
                record(
                    &format!("endpoint {i}\t\"{}\"", "x".repeat(i)),
                    vec!["*".into()],
                )
            })
            .collect();
        let text = render("# header\n", &records);
        assert_eq!(text.len(), text.capacity());
        assert!(text.starts_with("# header\n[[webhooks]]\n"));
        assert_eq!(read_back(&text).len(), 50);
    }

    #[test]
    fn no_records_is_just_the_header() {
        assert_eq!(&*render("# only\n", &[]), "# only\n");
    }
}
