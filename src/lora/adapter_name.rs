//! The one alphabet adapter names are written in: ASCII letters, digits and `.` `_` `-` `/`
//! (a hub id `org/name` is a name), 1 to 256 bytes, starting with a letter or a digit. What always
//! holds: a registered name contains no `,` (the separator of the `*_lora_requests_info`-style
//! label lists routers split), no `:` (the separator of `base:adapter` in a request's `model`),
//! no quote, backslash, whitespace or control character, so it reads back unchanged from every
//! metric label, log line and comma-separated list. Checked at the edge (`/v1/load_lora_adapter`,
//! before any file is touched) and again by the registry, which every name passes through.

use crate::error::{Error, Result};

/// Longest adapter name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The alphabet, as the error message states it.
pub const NAME_ALPHABET: &str =
    "1 to 256 characters from A-Z a-z 0-9 . _ - /, starting with a letter or a digit";

/// True for a character an adapter name may hold.
fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Refuses a name outside the alphabet (a 400 naming `lora_name`).
pub fn check_adapter_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(allowed);
    if !ok {
        return Err(Error::invalid(
            "lora_name",
            format!("an adapter name must be {NAME_ALPHABET}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_and_nothing_else() {
        for good in [
            "a",
            "pirate",
            "org/name",
            "A.b_c-9",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert!(check_adapter_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a,b",
            "a:b",
            "a\"b",
            "a\\b",
            "a b",
            "a\nb",
            "é",
            ".hidden",
            "-x",
            "/abs",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(check_adapter_name(bad).is_err(), "{bad:?}");
        }
    }
}
