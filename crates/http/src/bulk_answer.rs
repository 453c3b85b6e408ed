//! The answer of a bulk get, the REST API's and the workerd binding's: checked whole before it
//! starts, then streamed, so that a node never holds more than the values themselves.
//!
//! Rendering a value can make it much larger (a text value of control characters becomes six
//! bytes of `\u00XX` for each), so the answer is never built in memory: values are written out
//! in slices of [`SLICE`] bytes as the client reads. Invalid UTF-8 in a text value reads as
//! replacement characters (as Workers KV does), also rendered slice by slice: each invalid byte
//! may become three, so the value is never decoded whole. What is checked first: the values come
//! to at most 25 MiB together, as the answer holds them (a text value as decoded, replacement
//! characters and all: Workers KV's cap, refused with 413 as Miniflare does, as soon as the
//! values read pass it: see [`Gathered`]), and with `type=json` each value is valid JSON —
//! checked without building it (a 25 MiB `[0,0,...]` would otherwise become a tree many times
//! its size) and then sent as stored.

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use driftkv_core::limits::MAX_VALUE_BYTES;
use driftkv_core::{KvError, LiveValue};
use serde::de::IgnoredAny;

/// How much of a value is rendered at a time.
const SLICE: usize = 64 * 1024;

/// How bulk-get values are returned (the REST API's and the workerd binding's alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueKind {
    Text,
    Json,
}

impl ValueKind {
    /// The kind a request's `type` names: `text` (the default) or `json`.
    pub(crate) fn parse(kind: Option<&str>) -> Result<Self, KvError> {
        match kind.unwrap_or("text") {
            "text" => Ok(ValueKind::Text),
            "json" => Ok(ValueKind::Json),
            other => Err(KvError::InvalidParameter(format!(
                "type must be 'text' or 'json', got {other:?}"
            ))),
        }
    }
}

/// The shape of the answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// Inside Cloudflare's envelope, under `result.values` (the REST API); else a bare object
    /// (the workerd binding).
    pub envelope: bool,
    /// Each found entry as `{"value", "metadata"}` rather than the value alone.
    pub with_metadata: bool,
    /// With metadata, add `"expiration"` where one is set (the REST API does; workerd's
    /// binding reads no such field).
    pub expiration: bool,
}

/// A piece of the answer, rendered when the client reads it.
enum Piece {
    /// Ready to send.
    Ready(Bytes),
    /// A slice of a text value, cut where decoding it apart decodes it as a whole would (see
    /// [`text_slices`]), to decode (invalid UTF-8 as replacement characters) and escape as the
    /// inside of a JSON string.
    Text(Bytes),
}

impl Piece {
    /// The length of what [`Piece::render`] makes, known before it is made, so that the
    /// answer carries a `Content-Length`.
    fn len(&self) -> usize {
        match self {
            Piece::Ready(bytes) => bytes.len(),
            Piece::Text(slice) => slice
                .utf8_chunks()
                .map(|chunk| {
                    let valid: usize = chunk.valid().chars().map(escaped_len).sum();
                    valid + replacement_len(chunk.invalid())
                })
                .sum(),
        }
    }

    fn render(self) -> Bytes {
        match self {
            Piece::Ready(bytes) => bytes,
            Piece::Text(slice) => {
                let mut out = Vec::with_capacity(slice.len() + 2);
                for chunk in slice.utf8_chunks() {
                    if !chunk.valid().is_empty() {
                        // The chunk's escaped characters, without the quotes around them.
                        let opening = out.len();
                        serde_json::to_writer(&mut out, chunk.valid())
                            .expect("writing to a Vec cannot fail");
                        out.pop();
                        out.remove(opening);
                    }
                    if !chunk.invalid().is_empty() {
                        out.extend_from_slice(REPLACEMENT.as_bytes());
                    }
                }
                Bytes::from(out)
            }
        }
    }
}

/// What each invalid UTF-8 sequence reads as (one for each, as `String::from_utf8_lossy`).
const REPLACEMENT: &str = "\u{FFFD}";

/// The length of what an invalid sequence of a text value reads as: nothing if it is empty.
fn replacement_len(invalid: &[u8]) -> usize {
    if invalid.is_empty() {
        0
    } else {
        REPLACEMENT.len()
    }
}

/// The length of a text value as the answer holds it, before escaping: invalid UTF-8 counted as
/// the replacement characters it reads as.
fn decoded_len(value: &[u8]) -> usize {
    value
        .utf8_chunks()
        .map(|chunk| chunk.valid().len() + replacement_len(chunk.invalid()))
        .sum()
}

/// How many bytes JSON needs for `c` inside a string, as serde_json writes it: two for the
/// short escapes, six (`\u00XX`) for the other control characters, else the character itself.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0C}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn json_string(text: &str) -> Bytes {
    Bytes::from(serde_json::to_string(text).expect("a string always serializes"))
}

/// Cuts a text value (UTF-8 or not) into slices of about [`SLICE`] bytes, each cut where
/// decoding the slices apart reads as decoding the value whole would (see [`cut_before`]).
fn text_slices(text: &Bytes, pieces: &mut Vec<Piece>) {
    let mut start = 0;
    while start < text.len() {
        let end = cut_before(text, (start + SLICE).min(text.len()), start);
        pieces.push(Piece::Text(text.slice(start..end)));
        start = end;
    }
}

/// Where to cut `text` at or just before `at` (after `start`): at a byte that is not a
/// continuation byte (it begins whatever follows, however what precedes it decodes), found
/// within three bytes back; else at `at` itself, which then cannot belong to a sequence begun
/// before it (a sequence is at most a lead byte and three continuation bytes), so it reads as a
/// stray byte, one replacement character, on either side of the cut.
fn cut_before(text: &[u8], at: usize, start: usize) -> usize {
    if at == text.len() {
        return at;
    }
    (at.saturating_sub(3).max(start + 1)..=at)
        .rev()
        .find(|&cut| !is_continuation(text[cut]))
        .unwrap_or(at)
}

/// Whether `byte` continues a UTF-8 sequence (`10xxxxxx`).
fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

/// The entries of a bulk get (each key asked for, with its value if it has one), gathered as
/// they are read and refused as soon as their values pass 25 MiB together as the answer holds
/// them (a text value decoded, each invalid byte perhaps three), so that a request whose answer
/// would be refused makes the node read no more than the cap (and one value).
pub(crate) struct Gathered {
    entries: Vec<(String, Option<LiveValue>)>,
    kind: ValueKind,
    total: usize,
}

impl Gathered {
    /// Room for `keys` entries, to be answered as `kind`.
    pub(crate) fn with_capacity(keys: usize, kind: ValueKind) -> Self {
        Gathered {
            entries: Vec::with_capacity(keys),
            kind,
            total: 0,
        }
    }

    /// Adds the next entry; refuses (413) once the values pass the cap.
    pub(crate) fn push(&mut self, key: String, found: Option<LiveValue>) -> Result<(), KvError> {
        self.total += found.as_ref().map_or(0, |v| match self.kind {
            // Sent as stored.
            ValueKind::Json => v.value.len(),
            ValueKind::Text => decoded_len(&v.value),
        });
        if self.total > MAX_VALUE_BYTES {
            return Err(KvError::PayloadTooLarge(format!(
                "the values come to more than {MAX_VALUE_BYTES} bytes; a bulk get answers at most that (ask for fewer keys)"
            )));
        }
        self.entries.push((key, found));
        Ok(())
    }
}

/// The bulk-get answer for the `gathered` entries, its body streamed and its length given:
/// after checking, for `type=json`, that the values are JSON.
pub(crate) fn answer(gathered: Gathered, shape: Shape) -> Result<Response, KvError> {
    let Gathered { entries, kind, .. } = gathered;
    let mut pieces = vec![Piece::Ready(Bytes::from_static(if shape.envelope {
        br#"{"success":true,"errors":[],"messages":[],"result":{"values":{"#
    } else {
        b"{"
    }))];
    for (index, (key, found)) in entries.into_iter().enumerate() {
        let mut head = Vec::with_capacity(key.len() + 8);
        if index > 0 {
            head.push(b',');
        }
        head.extend_from_slice(&json_string(&key));
        head.push(b':');
        pieces.push(Piece::Ready(head.into()));
        let Some(value) = found else {
            pieces.push(Piece::Ready(Bytes::from_static(b"null")));
            continue;
        };
        if shape.with_metadata {
            pieces.push(Piece::Ready(Bytes::from_static(br#"{"value":"#)));
        }
        match kind {
            ValueKind::Json => {
                serde_json::from_slice::<IgnoredAny>(&value.value).map_err(|e| {
                    KvError::InvalidParameter(format!(
                        "the value of key {key:?} is not valid JSON ({e}); request type 'text'"
                    ))
                })?;
                pieces.push(Piece::Ready(value.value.clone()));
            }
            ValueKind::Text => {
                pieces.push(Piece::Ready(Bytes::from_static(b"\"")));
                text_slices(&value.value, &mut pieces);
                pieces.push(Piece::Ready(Bytes::from_static(b"\"")));
            }
        }
        if shape.with_metadata {
            let mut tail = b",\"metadata\":".to_vec();
            tail.extend_from_slice(value.metadata.as_deref().unwrap_or("null").as_bytes());
            if let (true, Some(expiration)) = (shape.expiration, value.expiration) {
                tail.extend_from_slice(format!(",\"expiration\":{expiration}").as_bytes());
            }
            tail.push(b'}');
            pieces.push(Piece::Ready(tail.into()));
        }
    }
    pieces.push(Piece::Ready(Bytes::from_static(if shape.envelope {
        b"}}}"
    } else {
        b"}"
    })));
    let length: usize = pieces.iter().map(Piece::len).sum();
    let stream = futures::stream::iter(
        pieces
            .into_iter()
            .map(|piece| Ok::<_, std::convert::Infallible>(piece.render())),
    );
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn live(value: &[u8], metadata: Option<&str>, expiration: Option<u64>) -> Option<LiveValue> {
        Some(LiveValue {
            value: Bytes::copy_from_slice(value),
            metadata: metadata.map(str::to_owned),
            expiration,
        })
    }

    /// The answer's text, checked against its Content-Length.
    async fn text_of(response: Response) -> String {
        let length: usize = response.headers()[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(bytes.len(), length, "the Content-Length is the body's");
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn escaped_lengths_are_serde_jsons() {
        let samples = (0u32..0x300)
            .chain([0x2028, 0x2029, 0xfffd, 0x1f600])
            .filter_map(char::from_u32);
        for c in samples {
            let quoted = serde_json::to_string(&c.to_string()).unwrap();
            assert_eq!(escaped_len(c), quoted.len() - 2, "{c:?}");
        }
    }

    fn shape(envelope: bool, with_metadata: bool) -> Shape {
        Shape {
            envelope,
            with_metadata,
            expiration: envelope,
        }
    }

    #[tokio::test]
    async fn answers_in_both_shapes_are_the_json_they_should_be() {
        let entries = vec![
            (
                "t".to_owned(),
                live(b"caf\xc3\xa9 \"q\" \n\x01", Some(r#"{"a":1}"#), Some(99)),
            ),
            ("gone".to_owned(), None),
            ("bad utf8".to_owned(), live(b"\xff\xfeok", None, None)),
        ];
        let rest = text_of(
            answer(
                gathered(entries.clone(), ValueKind::Text),
                shape(true, true),
            )
            .unwrap(),
        )
        .await;
        let rest: Value = serde_json::from_str(&rest).unwrap();
        assert_eq!(
            rest,
            json!({"success": true, "errors": [], "messages": [], "result": {"values": {
                "t": {"value": "café \"q\" \n\u{1}", "metadata": {"a": 1}, "expiration": 99},
                "gone": null,
                "bad utf8": {"value": "\u{fffd}\u{fffd}ok", "metadata": null},
            }}})
        );
        let bare =
            text_of(answer(gathered(entries, ValueKind::Text), shape(false, false)).unwrap()).await;
        assert_eq!(
            serde_json::from_str::<Value>(&bare).unwrap(),
            json!({"t": "café \"q\" \n\u{1}", "gone": null, "bad utf8": "\u{fffd}\u{fffd}ok"})
        );
    }

    #[tokio::test]
    async fn long_values_are_sliced_at_character_boundaries_and_escaped_whole() {
        // Multi-byte characters and escapes straddling every slice boundary.
        let text: String = "é\u{1}\"€x".repeat(SLICE / 3);
        let entries = vec![("k".to_owned(), live(text.as_bytes(), None, None))];
        let body =
            text_of(answer(gathered(entries, ValueKind::Text), shape(false, false)).unwrap()).await;
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["k"], Value::String(text.clone()));
        assert_eq!(body, serde_json::to_string(&json!({"k": text})).unwrap());
    }

    #[tokio::test]
    async fn json_values_are_checked_without_being_built_and_sent_as_stored() {
        let entries = vec![("j".to_owned(), live(br#"{ "b": [1, 2.50] }"#, None, None))];
        let body =
            text_of(answer(gathered(entries, ValueKind::Json), shape(false, false)).unwrap()).await;
        assert_eq!(body, r#"{"j":{ "b": [1, 2.50] }}"#);
        let entries = vec![("j".to_owned(), live(b"not json", None, None))];
        assert!(matches!(
            answer(gathered(entries, ValueKind::Json), shape(true, false)),
            Err(KvError::InvalidParameter(_))
        ));
    }

    #[test]
    fn values_over_the_cap_together_are_refused_as_soon_as_they_pass_it() {
        let half = vec![b'x'; MAX_VALUE_BYTES / 2];
        let mut gathered = Gathered::with_capacity(3, ValueKind::Text);
        gathered.push("a".into(), live(&half, None, None)).unwrap();
        gathered.push("b".into(), live(&half, None, None)).unwrap();
        gathered.push("c".into(), None).unwrap();
        assert!(matches!(
            gathered.push("d".into(), live(b"x", None, None)),
            Err(KvError::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn text_values_count_against_the_cap_as_decoded() {
        // A third of the cap in invalid bytes reads as the whole cap in replacement characters.
        let invalid = vec![0xFF; MAX_VALUE_BYTES / 3];
        let mut text = Gathered::with_capacity(2, ValueKind::Text);
        text.push("a".into(), live(&invalid, None, None)).unwrap();
        assert!(matches!(
            text.push("b".into(), live(&[0xFF; 4], None, None)),
            Err(KvError::PayloadTooLarge(_))
        ));
        let over = vec![0xFF; MAX_VALUE_BYTES / 3 + 1];
        let mut text = Gathered::with_capacity(1, ValueKind::Text);
        assert!(matches!(
            text.push("a".into(), live(&over, None, None)),
            Err(KvError::PayloadTooLarge(_))
        ));
        // JSON values are sent as stored, so they count as stored.
        let mut json = Gathered::with_capacity(1, ValueKind::Json);
        json.push("a".into(), live(&over, None, None)).unwrap();
    }

    #[tokio::test]
    async fn invalid_utf8_reads_as_lossy_decoding_whole_would_across_slices() {
        // Invalid bytes, stray continuation bytes and sequences cut short, straddling every slice
        // boundary at every offset; and runs of continuation bytes longer than a slice.
        let mut value = b"\xff".repeat(SLICE + 1);
        for unit in [
            &b"\xe2\x82"[..],
            b"\xe2\x82\xacx\x80",
            b"\xf0\x9f\x98",
            b"\xf0\x9f\x98\x80\x80\x80\x80\x01",
            b"\xc3",
        ] {
            value.extend(unit.repeat(SLICE / unit.len() + 7));
        }
        value.extend(b"\x80".repeat(2 * SLICE + 5));
        value.extend(b"\xe2\x82");
        let expected = String::from_utf8_lossy(&value).into_owned();
        assert_eq!(decoded_len(&value), expected.len());
        let entries = vec![("k".to_owned(), live(&value, None, None))];
        let body =
            text_of(answer(gathered(entries, ValueKind::Text), shape(false, false)).unwrap()).await;
        assert_eq!(
            body,
            serde_json::to_string(&json!({"k": expected})).unwrap()
        );
    }

    #[test]
    fn a_text_slice_renders_no_more_than_its_own_escapes() {
        // What a client that reads slowly makes the node hold: one slice rendered, never the
        // value decoded whole (each 0xFF byte becomes three).
        let value = Bytes::from(vec![0xFF; 4 * SLICE]);
        let mut pieces = Vec::new();
        text_slices(&value, &mut pieces);
        assert_eq!(pieces.len(), 4);
        for piece in pieces {
            let rendered = piece.render();
            assert_eq!(rendered.len(), 3 * SLICE);
        }
    }

    /// `entries` gathered as `kind`, all within the cap.
    fn gathered(entries: Vec<(String, Option<LiveValue>)>, kind: ValueKind) -> Gathered {
        let mut gathered = Gathered::with_capacity(entries.len(), kind);
        for (key, found) in entries {
            gathered.push(key, found).unwrap();
        }
        gathered
    }
}
