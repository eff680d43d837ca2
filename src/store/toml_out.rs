//! The store file's text, written directly: the flat `[[webhooks]]` layout that the file backend
//! reads back table by table.
//!
//! toml's serializer builds a whole document model first: about 2 s of CPU and several times the
//! file's size in memory for 100,000 endpoints, on every write and every delivery-record flush.
//! This writes the same TOML in one pass. It first counts the exact length, so the text is built
//! in one allocation and no grown-and-freed buffer is left holding a copy of a secret.
//!
//! The delivery-record flush renders straight from the snapshot's endpoints
//! ([`render_endpoints`]): uuids and times are formatted on the stack, so a flush allocates the
//! text and nothing per endpoint (a million small allocations freed at once left glibc's heap
//! slower for every request after a flush of 100,000 endpoints).

use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::{format_time, idempotency, DeliveryOutcome, Endpoint, EndpointRecord};

/// The TOML text of `records` after `header` (comment lines): one `[[webhooks]]` table each,
/// fields in the record's order, optional fields left out when unset, as the toml crate would.
pub fn render(header: &str, records: &[EndpointRecord]) -> Zeroizing<String> {
    render_with(header, |out| {
        if records.is_empty() {
            out.put(EMPTY);
        }
        for (index, record) in records.iter().enumerate() {
            write_fields(out, index, &Fields::of_record(record));
        }
    })
}

/// The same text as [`render`] of every endpoint's [`Endpoint::record_now`], without building
/// the records. Delivery records are read once, before the text is counted.
/// After the endpoints come the live idempotency keys, one `[[idempotency]]` table each.
pub fn render_endpoints(
    header: &str,
    endpoints: &[Arc<Endpoint>],
    keys: &[&Arc<idempotency::Recorded>],
) -> Zeroizing<String> {
    let recorded: Vec<Recorded> = endpoints.iter().map(|e| Recorded::of(e)).collect();
    render_with(header, |out| {
        if endpoints.is_empty() {
            out.put(EMPTY);
        }
        for (index, (endpoint, recorded)) in endpoints.iter().zip(&recorded).enumerate() {
            let mut uuid = [0u8; 36];
            let mut company = [0u8; 36];
            let mut times = [[0u8; TIME_TEXT_MAX]; 4];
            let [expires_at, created_at, updated_at, last_at] = &mut times;
            let fields = Fields {
                uuid: endpoint.uuid.hyphenated().encode_lower(&mut uuid),
                company: endpoint.company.hyphenated().encode_lower(&mut company),
                url: &endpoint.url,
                events: &endpoint.events,
                description: &endpoint.description,
                status: endpoint.status.as_str(),
                scheme: endpoint.scheme.as_str(),
                secret: endpoint.secret.expose(),
                previous_secret: endpoint.previous_secret.as_ref().map(|s| s.expose()),
                previous_secret_expires_at: endpoint
                    .previous_secret_expires_at
                    .map(|at| time_text(at, expires_at)),
                created_at: endpoint.created_at.map(|at| time_text(at, created_at)),
                updated_at: endpoint.updated_at.map(|at| time_text(at, updated_at)),
                deliveries_count: recorded.deliveries,
                last_delivery_at: recorded.last_at.map(|at| time_text(at, last_at)),
                last_delivery_status: recorded.last_outcome.map(|o| Cow::Borrowed(o.as_str())),
                consecutive_failures: recorded.consecutive_failures,
            };
            write_fields(out, index, &fields);
        }
        for (index, key) in keys.iter().enumerate() {
            if index > 0 || !endpoints.is_empty() {
                out.put("\n");
            }
            let stored = key.stored();
            out.put("[[idempotency]]\n");
            string(out, "company", &stored.company);
            string(out, "key", &stored.key);
            string(out, "fingerprint", &stored.fingerprint);
            count(out, "status", u64::from(stored.status));
            string(out, "body", &stored.body);
            string(out, "created_at", &stored.created_at);
        }
    })
}

/// What a store with no endpoint says, so that an empty or truncated file is not taken for it.
pub const EMPTY: &str = "webhooks = []\n";

/// Counts the text, then writes it into a buffer of exactly that size.
fn render_with(header: &str, write: impl Fn(&mut dyn Sink)) -> Zeroizing<String> {
    let mut length = Length(header.len());
    write(&mut length);
    let mut text = Zeroizing::new(String::with_capacity(length.0));
    text.push_str(header);
    write(&mut *text);
    debug_assert_eq!(text.len(), length.0, "the counted length is exact");
    text
}

/// An endpoint's delivery records at one instant.
struct Recorded {
    deliveries: u64,
    last_at: Option<OffsetDateTime>,
    last_outcome: Option<DeliveryOutcome>,
    consecutive_failures: u64,
}

impl Recorded {
    fn of(endpoint: &Endpoint) -> Self {
        let stats = &endpoint.stats;
        Self {
            deliveries: stats.deliveries(),
            last_at: stats.last_delivery_at(),
            last_outcome: stats.last_outcome(),
            consecutive_failures: stats.consecutive_failures(),
        }
    }
}

/// Room for an RFC 3339 time to the second (`2026-02-18T10:00:00Z` is 20 bytes).
const TIME_TEXT_MAX: usize = 40;

/// [`format_time`]'s text, formatted into `buf` (allocated only for a year it cannot write).
fn time_text(at: OffsetDateTime, buf: &mut [u8; TIME_TEXT_MAX]) -> Cow<'_, str> {
    let at = at.to_offset(time::UtcOffset::UTC);
    let at = at.replace_nanosecond(0).unwrap_or(at);
    let mut cursor = io::Cursor::new(&mut buf[..]);
    let written = at
        .format_into(&mut cursor, &time::format_description::well_known::Rfc3339)
        .ok();
    match written.and_then(|len| std::str::from_utf8(&buf[..len]).ok()) {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(format_time(at)),
    }
}

/// One `[[webhooks]]` table's values, borrowed (or formatted on the stack).
struct Fields<'a> {
    uuid: &'a str,
    company: &'a str,
    url: &'a str,
    events: &'a [String],
    description: &'a str,
    status: &'a str,
    scheme: &'a str,
    secret: &'a str,
    previous_secret: Option<&'a str>,
    previous_secret_expires_at: Option<Cow<'a, str>>,
    created_at: Option<Cow<'a, str>>,
    updated_at: Option<Cow<'a, str>>,
    deliveries_count: u64,
    last_delivery_at: Option<Cow<'a, str>>,
    last_delivery_status: Option<Cow<'a, str>>,
    consecutive_failures: u64,
}

impl<'a> Fields<'a> {
    fn of_record(record: &'a EndpointRecord) -> Self {
        let borrowed = |text: &'a Option<String>| text.as_deref().map(Cow::Borrowed);
        Self {
            uuid: &record.uuid,
            company: &record.company,
            url: &record.url,
            events: &record.events,
            description: &record.description,
            status: &record.status,
            scheme: &record.scheme,
            secret: record.secret.expose(),
            previous_secret: record.previous_secret.as_ref().map(|s| s.expose()),
            previous_secret_expires_at: borrowed(&record.previous_secret_expires_at),
            created_at: borrowed(&record.created_at),
            updated_at: borrowed(&record.updated_at),
            deliveries_count: record.deliveries_count,
            last_delivery_at: borrowed(&record.last_delivery_at),
            last_delivery_status: borrowed(&record.last_delivery_status),
            consecutive_failures: record.consecutive_failures,
        }
    }
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

/// The `index`-th table (tables are separated by a blank line).
fn write_fields(out: &mut dyn Sink, index: usize, record: &Fields<'_>) {
    if index > 0 {
        out.put("\n");
    }
    out.put("[[webhooks]]\n");
    string(out, "uuid", record.uuid);
    string(out, "company", record.company);
    string(out, "url", record.url);
    out.put("events = [");
    for (index, event) in record.events.iter().enumerate() {
        if index > 0 {
            out.put(", ");
        }
        quoted(out, event);
    }
    out.put("]\n");
    if !record.description.is_empty() {
        string(out, "description", record.description);
    }
    string(out, "status", record.status);
    string(out, "scheme", record.scheme);
    string(out, "secret", record.secret);
    if let Some(previous) = record.previous_secret {
        string(out, "previous_secret", previous);
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

fn string(out: &mut dyn Sink, key: &str, value: &str) {
    out.put(key);
    out.put(" = ");
    quoted(out, value);
    out.put("\n");
}

fn optional(out: &mut dyn Sink, key: &str, value: &Option<Cow<'_, str>>) {
    if let Some(value) = value {
        string(out, key, value);
    }
}

/// A non-zero integer (zero is the default and left out). TOML integers are 64-bit signed, so
/// a count past `i64::MAX` is written as `i64::MAX` (the file must always read back).
fn count(out: &mut dyn Sink, key: &str, value: u64) {
    let value = value.min(i64::MAX as u64);
    if value != 0 {
        out.put(key);
        out.put(" = ");
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut rest = value;
        loop {
            start -= 1;
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        out.put(std::str::from_utf8(&digits[start..]).unwrap_or_default());
        out.put("\n");
    }
}

/// A TOML basic string: `"` and `\` escaped, control characters as short or `\uXXXX` escapes,
/// everything else as it is.
fn quoted(out: &mut dyn Sink, value: &str) {
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
    fn endpoints_render_as_their_records_do() {
        let mut records: Vec<EndpointRecord> = (0..20)
            .map(|i| {
                let mut r = record(&format!("endpoint \"{i}\""), vec!["*".into()]);
                r.uuid = uuid::Uuid::new_v4().to_string();
                r
            })
            .collect();
        records[3].previous_secret = None;
        records[3].previous_secret_expires_at = None;
        records[4].created_at = None;
        records[5].last_delivery_at = None;
        records[5].last_delivery_status = None;
        records[5].deliveries_count = 0;
        records[6].consecutive_failures = u64::MAX;
        records[7].created_at = Some("2026-02-18T12:00:00+02:00".into());
        let snapshot =
            super::super::Snapshot::build(records, None, |i, f| format!("{i}.{f}")).unwrap();
        snapshot.endpoints[0].stats.record(DeliveryOutcome::Success);
        let direct = render_endpoints("# h\n", &snapshot.endpoints, &[]);
        let via_records = render("# h\n", &snapshot.records());
        assert_eq!(*direct, *via_records);
        assert!(direct.contains("created_at = \"2026-02-18T10:00:00Z\""));
        assert!(direct.contains(&format!("consecutive_failures = {}\n", i64::MAX)));
        assert_eq!(read_back(&direct).len(), 20);
    }

    #[test]
    fn stack_times_match_the_stored_form() {
        use time::macros::datetime;
        for at in [
            datetime!(2026-02-18 10:00:00 UTC),
            datetime!(2026-02-18 10:00:00.999 +05:30),
            datetime!(1970-01-01 00:00:00 UTC),
            datetime!(9999-12-31 23:59:59 UTC),
        ] {
            let mut buf = [0u8; TIME_TEXT_MAX];
            assert_eq!(time_text(at, &mut buf), format_time(at));
        }
    }

    #[test]
    fn no_records_says_so_explicitly() {
        assert_eq!(&*render("# only\n", &[]), "# only\nwebhooks = []\n");
    }
}
