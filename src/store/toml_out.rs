//! The store file's text, written directly: the flat `[[webhooks]]` layout that the file backend
//! reads back table by table.
//!
//! toml's serializer builds a whole document model first: about 2 s of CPU and several times the
//! file's size in memory for 100,000 endpoints, on every write and every delivery-record flush.
//! This writes the same TOML in one pass. It first counts the exact length, so the text is built
//! in one allocation and no grown-and-freed buffer is left holding a copy of a secret.
//!
//! The fields written are [`EndpointRecord`]'s, through its `Serialize` (the same derive the etcd
//! JSON uses), by a serializer that knows only flat tables of strings, counts and lists of
//! strings: the schema is written once, on the record. An endpoint is written as its
//! [`Endpoint::record_with`] the delivery records read once before the text is counted.

use std::fmt;
use std::sync::Arc;

use serde::ser::{self, Impossible, Serialize};
use zeroize::Zeroizing;

use super::crypt::Sealer;
use super::{idempotency, Endpoint, EndpointRecord};
use crate::keyring::SealError;

/// The TOML text of `records` after `header` (comment lines): one `[[webhooks]]` table each,
/// fields in the record's order, optional fields left out when unset, as the toml crate would.
pub fn render(header: &str, records: &[EndpointRecord]) -> Zeroizing<String> {
    render_with(header, |out| {
        if records.is_empty() {
            out.put(EMPTY);
        }
        for (index, record) in records.iter().enumerate() {
            table(out, index, "[[webhooks]]\n", record);
        }
    })
}

/// The text of [`render`] of every endpoint's record (delivery records as they are now, read
/// once, before the text is counted), then the live idempotency keys, one `[[idempotency]]`
/// table each. Secrets are written as `sealer` keeps them at rest: call
/// [`Sealer::prepare`] on `endpoints` first.
pub fn render_endpoints(
    header: &str,
    endpoints: &[Arc<Endpoint>],
    keys: &[&Arc<idempotency::Recorded>],
    sealer: &Sealer,
) -> Result<Zeroizing<String>, SealError> {
    let stats: Vec<_> = endpoints.iter().map(|e| e.stats.now()).collect();
    let keys = keys
        .iter()
        .map(|key| sealer.seal_idempotency(key.stored()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(render_with(header, |out| {
        if endpoints.is_empty() {
            out.put(EMPTY);
        }
        for (index, (endpoint, stats)) in endpoints.iter().zip(&stats).enumerate() {
            table(
                out,
                index,
                "[[webhooks]]\n",
                &sealer.stored_record(endpoint, stats),
            );
        }
        for (index, key) in keys.iter().enumerate() {
            table(out, index + endpoints.len(), "[[idempotency]]\n", key);
        }
    }))
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

/// The `index`-th table (tables are separated by a blank line): `header`, then `value`'s
/// fields. Our records serialize as flat tables, so this cannot fail; a value of another shape
/// is a bug, caught in debug builds.
fn table(out: &mut dyn Sink, index: usize, header: &str, value: &impl Serialize) {
    if index > 0 {
        out.put("\n");
    }
    out.put(header);
    let written = value.serialize(Table { out });
    debug_assert!(written.is_ok(), "a store table is flat: {written:?}");
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

/// Only a store record's shapes are supported: this is not a general TOML serializer.
#[derive(Debug)]
struct Unsupported(String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a flat store table: {}", self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// Writes a struct as `key = value` lines.
struct Table<'o> {
    out: &'o mut dyn Sink,
}

/// Writes one field's value after its key; `None` writes nothing at all.
struct Field<'o> {
    out: &'o mut dyn Sink,
    key: &'static str,
}

/// Writes one element of a list of strings.
struct Item<'o> {
    out: &'o mut dyn Sink,
}

/// A list of strings: `key = ["a", "b"]`.
struct List<'o> {
    out: &'o mut dyn Sink,
    first: bool,
}

macro_rules! unsupported {
    ($($method:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ret, Unsupported> {
            Err(Unsupported(stringify!($method).to_owned()))
        })*
    };
}

/// The serializer methods a store table never calls.
macro_rules! unsupported_serializer {
    () => {
        unsupported! {
            serialize_bool(bool) -> Self::Ok;
            serialize_i8(i8) -> Self::Ok;
            serialize_i16(i16) -> Self::Ok;
            serialize_i32(i32) -> Self::Ok;
            serialize_i64(i64) -> Self::Ok;
            serialize_u8(u8) -> Self::Ok;
            serialize_u32(u32) -> Self::Ok;
            serialize_f32(f32) -> Self::Ok;
            serialize_f64(f64) -> Self::Ok;
            serialize_char(char) -> Self::Ok;
            serialize_bytes(&[u8]) -> Self::Ok;
            serialize_unit() -> Self::Ok;
            serialize_unit_struct(&'static str) -> Self::Ok;
            serialize_unit_variant(&'static str, u32, &'static str) -> Self::Ok;
            serialize_tuple(usize) -> Self::SerializeTuple;
            serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
            serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
            serialize_map(Option<usize>) -> Self::SerializeMap;
            serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
        }

        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<Self::Ok, Unsupported> {
            value.serialize(self)
        }

        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: &T,
        ) -> Result<Self::Ok, Unsupported> {
            Err(Unsupported(variant.to_owned()))
        }
    };
}

impl<'o> ser::Serializer for Table<'o> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Impossible<(), Unsupported>;
    type SerializeTuple = Impossible<(), Unsupported>;
    type SerializeTupleStruct = Impossible<(), Unsupported>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Impossible<(), Unsupported>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    unsupported_serializer!();
    unsupported! {
        serialize_u16(u16) -> ();
        serialize_u64(u64) -> ();
        serialize_str(&str) -> ();
        serialize_none() -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Unsupported> {
        Ok(self)
    }
}

impl ser::SerializeStruct for Table<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(Field {
            out: &mut *self.out,
            key,
        })
    }

    fn end(self) -> Result<(), Unsupported> {
        Ok(())
    }
}

impl<'o> Field<'o> {
    fn key(&mut self) {
        self.out.put(self.key);
        self.out.put(" = ");
    }
}

impl<'o> ser::Serializer for Field<'o> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = List<'o>;
    type SerializeTuple = Impossible<(), Unsupported>;
    type SerializeTupleStruct = Impossible<(), Unsupported>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Impossible<(), Unsupported>;
    type SerializeStruct = Impossible<(), Unsupported>;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    unsupported_serializer!();
    unsupported! {
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
    }

    fn serialize_str(mut self, value: &str) -> Result<(), Unsupported> {
        self.key();
        quoted(self.out, value);
        self.out.put("\n");
        Ok(())
    }

    /// TOML integers are 64-bit signed: a count past `i64::MAX` is written as `i64::MAX` (the
    /// file must always read back).
    fn serialize_u64(mut self, value: u64) -> Result<(), Unsupported> {
        self.key();
        let value = value.min(i64::MAX as u64);
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
        self.out
            .put(std::str::from_utf8(&digits[start..]).unwrap_or_default());
        self.out.put("\n");
        Ok(())
    }

    fn serialize_u16(self, value: u16) -> Result<(), Unsupported> {
        self.serialize_u64(u64::from(value))
    }

    fn serialize_none(self) -> Result<(), Unsupported> {
        Ok(())
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }

    fn serialize_seq(mut self, _: Option<usize>) -> Result<List<'o>, Unsupported> {
        self.key();
        self.out.put("[");
        Ok(List {
            out: self.out,
            first: true,
        })
    }
}

impl ser::SerializeSeq for List<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Unsupported> {
        if !self.first {
            self.out.put(", ");
        }
        self.first = false;
        value.serialize(Item {
            out: &mut *self.out,
        })
    }

    fn end(self) -> Result<(), Unsupported> {
        self.out.put("]\n");
        Ok(())
    }
}

impl ser::Serializer for Item<'_> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Impossible<(), Unsupported>;
    type SerializeTuple = Impossible<(), Unsupported>;
    type SerializeTupleStruct = Impossible<(), Unsupported>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Impossible<(), Unsupported>;
    type SerializeStruct = Impossible<(), Unsupported>;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    unsupported_serializer!();
    unsupported! {
        serialize_u16(u16) -> ();
        serialize_u64(u64) -> ();
        serialize_none() -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
    }

    fn serialize_str(self, value: &str) -> Result<(), Unsupported> {
        quoted(self.out, value);
        Ok(())
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
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
    use crate::store::DeliveryOutcome;

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
            previous_secrets: vec![
                Secret::new(format!("whsec_{}", "cd".repeat(32))),
                Secret::new(format!("whsec_{}", "ef".repeat(32))),
            ],
            previous_secrets_expire_at: vec![
                "2026-02-19T10:00:00Z".into(),
                "2026-02-18T10:00:00Z".into(),
            ],
            previous_secret: None,
            previous_secret_expires_at: None,
            created_at: Some("2026-02-18T10:00:00Z".into()),
            updated_at: None,
            deliveries_count: 12,
            last_delivery_at: Some("2026-02-18T11:00:00Z".into()),
            last_delivery_status: Some("failed".into()),
            consecutive_failures: 0,
            client_certificate: None,
            client_private_key: None,
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
        records[3].previous_secrets.clear();
        records[3].previous_secrets_expire_at.clear();
        records[4].created_at = None;
        records[5].last_delivery_at = None;
        records[5].last_delivery_status = None;
        records[5].deliveries_count = 0;
        records[6].consecutive_failures = u64::MAX;
        records[7].created_at = Some("2026-02-18T12:00:00+02:00".into());
        let snapshot =
            super::super::Snapshot::build(records, None, |i, f| format!("{i}.{f}")).unwrap();
        snapshot.endpoints[0].stats.record(DeliveryOutcome::Success);
        let direct =
            render_endpoints("# h\n", &snapshot.endpoints, &[], &Sealer::plaintext()).unwrap();
        let via_records = render("# h\n", &snapshot.records());
        assert_eq!(*direct, *via_records);
        assert!(direct.contains("created_at = \"2026-02-18T10:00:00Z\""));
        assert!(direct.contains(&format!("consecutive_failures = {}\n", i64::MAX)));
        assert_eq!(read_back(&direct).len(), 20);
    }

    #[test]
    fn no_records_says_so_explicitly() {
        assert_eq!(&*render("# only\n", &[]), "# only\nwebhooks = []\n");
    }
}
