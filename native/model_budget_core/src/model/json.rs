//! JSON objects read entry by entry, each value left unparsed together with
//! its byte offset, so that errors in safetensors headers, index files and
//! config.json can say where they are.

use std::fmt;

use serde::de::{DeserializeOwned, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::invalid;
use crate::error::Result;

/// Calls `f` on each entry of the object `text` (at byte `base` of its
/// file) as the parser reaches it, so that nothing is kept per entry unless
/// `f` keeps it, and the first error `f` returns stops the parse.
pub(crate) fn for_each_entry<'a>(
    text: &'a str,
    base: u64,
    what: &str,
    mut f: impl FnMut(String, &'a RawValue) -> Result<()>,
) -> Result<()> {
    struct Object<'f, F>(&'f mut F, &'f mut Option<crate::error::Error>);
    impl<'de, F: FnMut(String, &'de RawValue) -> Result<()>> Visitor<'de> for Object<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> std::result::Result<(), M::Error> {
            while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                if let Err(e) = (self.0)(key, value) {
                    *self.1 = Some(e);
                    return Err(serde::de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let mut stopped = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = de
        .deserialize_map(Object(&mut f, &mut stopped))
        .and_then(|()| de.end());
    if let Some(e) = stopped {
        return Err(e);
    }
    parsed.map_err(|e| {
        invalid(
            base + error_offset(text, &e),
            format!("{what} is not a JSON object: {}", strip_position(&e)),
        )
    })
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

    fn entries(text: &str) -> Result<Vec<(String, &RawValue)>> {
        let mut all = Vec::new();
        for_each_entry(text, 8, "header", |k, v| {
            all.push((k, v));
            Ok(())
        })?;
        Ok(all)
    }

    #[test]
    fn entries_keep_order_duplicates_and_offsets() {
        let text = "{\"b\": 1,\n \"a\": [2, 3], \"b\": 4}";
        let e = entries(text).unwrap();
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "b"]);
        assert_eq!(offset_in(text, e[1].1), 15);
        assert_eq!(value::<Vec<u64>>(text, 8, e[1].1, "a").unwrap(), [2, 3]);
    }

    #[test]
    fn errors_carry_byte_offsets() {
        let text = "{\"a\": 1,\n \"b\": \"x\"}";
        let e = entries(text).unwrap();
        let err = value::<u64>(text, 100, e[1].1, "b").unwrap_err();
        // The string starts at byte 15 of the text; serde_json reports the
        // position after reading it.
        let crate::error::Error::InvalidModel { offset, reason } = err else {
            panic!("{err:?}")
        };
        assert_eq!(reason, "b: invalid type: string \"x\", expected u64");
        assert!((115..=118).contains(&offset), "{offset}");
        assert_eq!(
            entries("{\"a\" 1}").unwrap_err(),
            invalid(13, "header is not a JSON object: expected `:`")
        );
        assert_eq!(
            entries("{} x").unwrap_err(),
            invalid(11, "header is not a JSON object: trailing characters")
        );
    }

    #[test]
    fn the_callback_stops_the_parse_with_its_error() {
        let mut seen = 0;
        let err = for_each_entry("{\"a\": 1, \"b\": 2, \"c\": [}", 0, "x", |_, _| {
            seen += 1;
            Err(invalid(1, "stop"))
        });
        assert_eq!((err.unwrap_err(), seen), (invalid(1, "stop"), 1));
    }
}
