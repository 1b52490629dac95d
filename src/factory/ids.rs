//! Wrapper ids of the Model Factory's objects. Ids are ours (random, OpenAI-style prefixes) and
//! an id read from a client is checked against its exact form before it touches a query or a
//! path, so a file id can never name a server path.

use rand::Rng;

/// Hex digits after the prefix.
const HEX_LEN: usize = 24;

fn fresh(prefix: &str) -> String {
    let n: u128 = rand::rng().random();
    format!("{prefix}{:0w$x}", n >> (128 - 4 * HEX_LEN), w = HEX_LEN)
}

fn well_formed(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|h| {
        h.len() == HEX_LEN
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn fresh() -> Self {
                $name(fresh($prefix))
            }

            /// `None` unless `s` has exactly the form this type writes.
            pub fn parse(s: &str) -> Option<Self> {
                well_formed(s, $prefix).then(|| $name(s.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The hex part (short names, folders).
            pub fn hex(&self) -> &str {
                &self.0[$prefix.len()..]
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(FileId, "file-");
id_type!(JobId, "ftjob-");
id_type!(EventId, "ftevent-");
id_type!(CheckpointId, "ftckpt-");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_strangers_are_refused() {
        let f = FileId::fresh();
        assert_eq!(FileId::parse(f.as_str()), Some(f.clone()));
        assert_ne!(FileId::fresh(), f);
        for bad in [
            "",
            "file-",
            "file-../../etc/passwd",
            "file-ABCDEF0123456789abcdef01",
            &format!("{}0", f.as_str()),
            &f.as_str().replace("file-", "ftjob-"),
        ] {
            assert_eq!(FileId::parse(bad), None, "{bad}");
        }
        assert!(JobId::parse(JobId::fresh().as_str()).is_some());
    }
}
