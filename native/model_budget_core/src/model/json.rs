//! JSON objects read entry by entry, each value left unparsed together with
//! its byte offset, so that errors in safetensors headers, index files and
//! config.json can say where they are.

use std::fmt;

use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::invalid;
use crate::error::Result;

/// An object's entries in file order, duplicates included.
#[derive(Debug)]
pub(crate) struct Entries<'a>(pub Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(
                self,
                mut map: M,
            ) -> std::result::Result<Self::Value, M::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// The byte offset of a serde_json error's line and column within `text`.
fn error_offset(text: &str, err: &serde_json::Error) -> u64 {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(err.line().saturating_sub(1))
        .map(str::len)
        .sum();
    (line_start + err.column().saturating_sub(1)).min(text.len()) as u64
}

/// Where `raw`, a slice of `text`, starts in it.
pub(crate) fn offset_in(text: &str, raw: &RawValue) -> u64 {
    (raw.get().as_ptr() as usize).saturating_sub(text.as_ptr() as usize) as u64
}

/// Parses `text` (which starts at byte `base` of its file) as an object.
pub(crate) fn entries<'a>(text: &'a str, base: u64, what: &str) -> Result<Entries<'a>> {
    serde_json::from_str(text).map_err(|e| {
        invalid(
            base + error_offset(text, &e),
            format!("{what} is not a JSON object: {}", strip_position(&e)),
        )
    })
}

/// Parses one entry's value, `text` being the whole document at `base`.
pub(crate) fn value<T: DeserializeOwned>(
    text: &str,
    base: u64,
    raw: &RawValue,
    what: &str,
) -> Result<T> {
    serde_json::from_str(raw.get()).map_err(|e| {
        let at = base + offset_in(text, raw) + error_offset(raw.get(), &e);
        invalid(at, format!("{what}: {}", strip_position(&e)))
    })
}

impl<'a> Entries<'a> {
    /// The first value under `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// serde_json's message without its "at line L column C" suffix: we give a
/// byte offset instead.
fn strip_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_order_duplicates_and_offsets() {
        let text = "{\"b\": 1,\n \"a\": [2, 3], \"b\": 4}";
        let e = entries(text, 8, "header").unwrap();
        let keys: Vec<&str> = e.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "b"]);
        assert_eq!(offset_in(text, e.0[1].1), 15);
        assert_eq!(value::<Vec<u64>>(text, 8, e.0[1].1, "a").unwrap(), [2, 3]);
    }

    #[test]
    fn errors_carry_byte_offsets() {
        let text = "{\"a\": 1,\n \"b\": \"x\"}";
        let e = entries(text, 100, "config").unwrap();
        let err = value::<u64>(text, 100, e.0[1].1, "b").unwrap_err();
        // The string starts at byte 15 of the text; serde_json reports the
        // position after reading it.
        let crate::error::Error::InvalidModel { offset, reason } = err else {
            panic!("{err:?}")
        };
        assert_eq!(reason, "b: invalid type: string \"x\", expected u64");
        assert!((115..=118).contains(&offset), "{offset}");
        let err = entries("{\"a\" 1}", 8, "header").unwrap_err();
        assert_eq!(
            err,
            invalid(13, "header is not a JSON object: expected `:`")
        );
    }
}
