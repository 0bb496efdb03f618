//! Byte sizes written the way constraint expressions write byte literals
//! (`24GiB`, `1.5GB`, `512`), for command lines and configuration.

use super::lexer::{tokenize, unit_list, Tok};
use crate::error::{invalid, Result};

/// The byte count `text` names: digits, an optional decimal fraction and an
/// optional unit (`KB`, `MB`, `GB`, `TB` are powers of 1000; `KiB`, `MiB`,
/// `GiB`, `TiB` powers of 1024; any case). A fraction of a byte is dropped.
pub fn parse_size(text: &str) -> Result<u64> {
    let refuse = || {
        invalid(
            "size",
            format!(
                "expected a byte count such as 24GiB, 1.5GB or 512 (units: {}), got: {text:?}",
                unit_list()
            ),
        )
    };
    let tokens = tokenize(text.as_bytes()).map_err(|_| refuse())?;
    match tokens.as_slice() {
        [first, _end] if first.text.len() == text.len() => match first.tok {
            Tok::Number(value) => u64::try_from(value.floor()).map_err(|_| {
                invalid(
                    "size",
                    format!("expected at most 18446744073709551615 bytes, got: {text:?}"),
                )
            }),
            _ => Err(refuse()),
        },
        _ => Err(refuse()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_as_in_constraints() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("24GiB").unwrap(), 24 << 30);
        assert_eq!(parse_size("24gib").unwrap(), 24 << 30);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("0.5KiB").unwrap(), 512);
        assert_eq!(parse_size("1.0001KB").unwrap(), 1000);
        assert_eq!(parse_size("16TiB").unwrap(), 16 << 40);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "", " 24GiB", "24GiB ", "24 GiB", "-1", "GiB", "24XB", "1.", "2GiB+1", "1e9",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid size: expected"),
                "{bad}: {err}"
            );
        }
        assert!(parse_size("18446744073709551616")
            .unwrap_err()
            .to_string()
            .contains("at most 18446744073709551615 bytes"));
        assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
    }
}
