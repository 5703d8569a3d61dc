//! The Confluent wire format's 5-byte header: magic byte 0, then the writer schema's id as a
//! 4-byte big-endian integer, then the Avro binary datum. Parsing checks the length before
//! reading, and says precisely what is wrong with a value that is not in this format.

use crate::domain::request::{reject, RejectClass};
use crate::domain::Rejection;

/// The first byte of every value in the wire format.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte + schema id.
pub const HEADER_LEN: usize = 5;

/// Starts `out` with the header for `schema_id`; the datum is written after it.
pub fn write_header(out: &mut Vec<u8>, schema_id: u32) {
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

/// The schema id and the datum of a value in the wire format.
pub fn parse(payload: &[u8]) -> Result<(u32, &[u8]), Rejection> {
    match payload {
        [] => Err(reject(
            RejectClass::TruncatedPayload,
            "the record has no value",
        )),
        [first, ..] if *first != MAGIC_BYTE => Err(reject(
            RejectClass::WrongMagicByte,
            format!("the value starts with byte {first:#04x}, not the wire format's magic byte 0"),
        )),
        [_, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        short => Err(reject(
            RejectClass::TruncatedPayload,
            format!(
                "the value is {} bytes long; the wire format's header alone is {HEADER_LEN}",
                short.len()
            ),
        )),
    }
}

/// How an input value is encoded, judged from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// Starts with the magic byte 0.
    Avro,
    /// Anything a JSON text may start with (or not even that: the JSON parser says what).
    Json,
    /// A control byte that starts neither JSON nor the wire format (e.g. Confluent's magic
    /// byte 1, or a binary format of another serializer).
    Unknown(u8),
}

/// Which decoder reads `payload`. JSON text never starts with a control byte other than
/// whitespace, so the two formats share a topic without ambiguity.
pub fn input_format(payload: &[u8]) -> InputFormat {
    match payload.first() {
        Some(&MAGIC_BYTE) => InputFormat::Avro,
        Some(&b) if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') => InputFormat::Unknown(b),
        _ => InputFormat::Json,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_header_is_the_same_as_the_registry_crates() {
        let mut ours = Vec::new();
        write_header(&mut ours, 0x0102_0304);
        ours.extend_from_slice(b"datum");
        let theirs = schema_registry_converter::schema_registry_common::get_payload(
            0x0102_0304,
            b"datum".to_vec(),
        );
        assert_eq!(ours, theirs);
        assert_eq!(parse(&ours).unwrap(), (0x0102_0304, &b"datum"[..]));
    }

    #[test]
    fn a_header_alone_is_an_empty_datum() {
        assert_eq!(parse(&[0, 0, 0, 0, 7]).unwrap(), (7, &[][..]));
    }

    #[test]
    fn short_values_are_truncated_and_other_first_bytes_are_the_wrong_magic_byte() {
        for short in [&[][..], &[0], &[0, 0, 0, 1]] {
            assert_eq!(
                parse(short).unwrap_err().class,
                RejectClass::TruncatedPayload
            );
        }
        let r = parse(&[1, 0, 0, 0, 1, 2]).unwrap_err();
        assert_eq!(r.class, RejectClass::WrongMagicByte);
        assert!(r.message.contains("0x01"), "{}", r.message);
    }

    #[test]
    fn input_formats_are_told_apart_by_the_first_byte() {
        assert_eq!(input_format(&[0, 0, 0, 0, 1]), InputFormat::Avro);
        assert_eq!(input_format(b"{\"a\":1}"), InputFormat::Json);
        assert_eq!(input_format(b"\n {}"), InputFormat::Json);
        assert_eq!(input_format(b"nope"), InputFormat::Json);
        assert_eq!(input_format(b""), InputFormat::Json);
        assert_eq!(input_format(&[1, 2]), InputFormat::Unknown(1));
    }
}
