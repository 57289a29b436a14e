//! Logging: one subscriber per process, JSON lines by default.
//!
//! `RUST_LOG` filters as usual (default `info`). Fields recorded on spans (such as the request id)
//! appear on every line logged inside them.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, from `main`; a second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(JsonSpanFields)
            .try_init(),
        LogFormat::Pretty => builder.with_target(false).try_init(),
    };
}

/// Formats span fields as a JSON object, as the JSON event format expects them, by writing each
/// field straight out.
///
/// tracing-subscriber's own `JsonFields` first builds a map of `serde_json::Value`s and then
/// serializes it, at every span creation whether or not anything is ever logged inside the span.
/// The ingest creates a span per request, and that map cost about 6% of its CPU per request.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        // Built in a buffer of about the right size, then written once: the span's field string
        // starts empty and would otherwise be reallocated as it grows.
        let mut visitor = JsonObject { out: String::with_capacity(96) };
        visitor.out.push('{');
        fields.record(&mut visitor);
        visitor.out.push('}');
        writer.write_str(&visitor.out)
    }

    /// Fields recorded after creation are appended to the object; a field recorded twice appears
    /// twice, and JSON readers (the event formatter included) keep the last.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        self.format_fields(Writer::new(&mut added), fields)?;
        if added.len() <= 2 {
            return Ok(());
        }
        if current.fields.len() <= 2 {
            current.fields = added;
        } else {
            current.fields.pop(); // the closing brace
            current.fields.push(',');
            current.fields.push_str(&added[1..]);
        }
        Ok(())
    }
}

/// Writes visited fields as `"name":value` pairs of a JSON object (writing to a `String` cannot
/// fail, so `write!` results are dropped).
struct JsonObject {
    out: String,
}

impl JsonObject {
    /// Writes `"name":` and then the value with `value`.
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut String)) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        write_json_str(&mut self.out, field.name());
        self.out.push(':');
        value(&mut self.out);
    }
}

/// Writes `s` as a JSON string: quotes, backslashes and control characters escaped (RFC 8259).
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escaped);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

fn push_display(out: &mut String, value: impl fmt::Display) {
    let _ = write!(out, "{value}");
}

impl Visit for JsonObject {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| write_json_str(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| push_display(out, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| push_display(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| push_display(out, value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.entry(field, |out| push_display(out, value));
        } else {
            self.entry(field, |out| write_json_str(out, &value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| write_json_str(out, &format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn span_fields_reach_every_line_logged_inside_as_json() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(JsonSpanFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = "id \"quoted\"\n\\ \u{1}é",
                n = -3_i64,
                ok = true,
                ratio = 0.5,
                path = %"/events",
                later = tracing::field::Empty
            );
            let _entered = span.enter();
            tracing::warn!(detail = 7, "first");
            span.record("later", 42_u64);
            tracing::warn!("second");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let expected = json!({"name": "request", "request_id": "id \"quoted\"\n\\ \u{1}é", "n": -3, "ok": true,
            "ratio": 0.5, "path": "/events"});
        assert_eq!(lines[0]["span"], expected, "{text}");
        assert_eq!(lines[0]["detail"], 7);
        let mut with_later = expected.clone();
        with_later["later"] = json!(42);
        assert_eq!(lines[1]["span"], with_later, "{text}");
    }
}
