//! The safetensors header of an adapter file, read at registration in one pass: serde_json
//! deserializes the header straight into `TensorEntry`s (no buffered `Content` tree, no hash map
//! of tensors), then the same checks `safetensors::SafeTensors::deserialize` makes are applied:
//! header length, UTF-8 JSON, `__metadata__` a map of strings, every tensor's byte length = its
//! element count x dtype size, and the tensors, in offset order, tiling the data section exactly.
//! What always holds: a header accepted here is one `LoraAdapter::from_bytes` accepts (this parse
//! is at least as strict: a repeated tensor name is refused here).

use safetensors::Dtype;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// A key borrowed from the input when it can be (serde's `Cow<str>` always copies).
struct BorrowedName<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BorrowedName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tensor name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedName(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// safetensors' bound on the header length.
const MAX_HEADER_BYTES: usize = 100_000_000;

/// One tensor of the header (its name borrowed from the file unless it holds JSON escapes).
#[derive(Debug, Deserialize)]
pub struct TensorEntry<'a> {
    #[serde(skip)]
    pub name: Cow<'a, str>,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    data_offsets: (usize, usize),
}

struct Entries<'a>(Vec<TensorEntry<'a>>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a safetensors header (a JSON object of tensors)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries<'de>, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(256));
                while let Some(key) = m.next_key::<BorrowedName<'de>>()? {
                    let key = key.0;
                    if key == "__metadata__" {
                        m.next_value::<HashMap<String, String>>()?;
                        continue;
                    }
                    let mut t: TensorEntry<'de> = m.next_value()?;
                    t.name = key;
                    out.push(t);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The tensors of a safetensors file (`bytes` = the whole file, or a map of it), in offset order.
pub fn read_header(bytes: &[u8]) -> Result<Vec<TensorEntry<'_>>, String> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or("file too short for a safetensors header")?;
    let n = usize::try_from(n).map_err(|_| "header too large")?;
    if n > MAX_HEADER_BYTES {
        return Err("header too large".into());
    }
    let header = bytes.get(8..8 + n).ok_or("invalid header length")?;
    let text = std::str::from_utf8(header).map_err(|e| format!("header is not UTF-8: {e}"))?;
    let Entries(mut tensors) =
        serde_json::from_str(text).map_err(|e| format!("invalid header: {e}"))?;
    tensors.sort_by_key(|t| t.data_offsets);
    let mut end = 0usize;
    for t in &tensors {
        let (s, e) = t.data_offsets;
        if s != end || e < s {
            return Err(format!("invalid data offsets of `{}`", t.name));
        }
        let bits = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|x| x.checked_mul(t.dtype.bitsize()))
            .ok_or_else(|| format!("`{}`: size overflows", t.name))?;
        if bits % 8 != 0 || e - s != bits / 8 {
            return Err(format!(
                "`{}`: data length does not match its shape",
                t.name
            ));
        }
        end = e;
    }
    if 8 + n + end != bytes.len() {
        return Err("the tensors do not fill the file exactly".into());
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn file(tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, s)| vec![0u8; s.iter().product::<usize>() * 4])
            .collect();
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .zip(&data)
            .map(|((n, s), d)| {
                (
                    n.to_string(),
                    TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
                )
            })
            .collect();
        let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        safetensors::serialize(views, meta).unwrap()
    }

    /// The reference: safetensors' own parser, as `LoraAdapter::from_bytes` uses it.
    fn reference(bytes: &[u8]) -> Result<Vec<(String, Dtype, Vec<usize>)>, String> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let mut v: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dtype(), t.shape().to_vec()))
            .collect();
        v.sort();
        Ok(v)
    }

    #[test]
    fn agrees_with_safetensors_on_good_and_broken_files() {
        let good = file(&[("b", vec![3, 2]), ("a", vec![4]), ("c", vec![1, 1, 5])]);
        let mut ours: Vec<_> = read_header(&good)
            .unwrap()
            .into_iter()
            .map(|t| (t.name.into_owned(), t.dtype, t.shape))
            .collect();
        ours.sort();
        assert_eq!(Ok(ours), reference(&good));
        let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let mut broken = vec![good[..good.len() - 1].to_vec(), good[..4].to_vec()];
        let mut long = good.clone();
        long.push(0);
        broken.push(long);
        let text = String::from_utf8(good[8..8 + n].to_vec()).unwrap();
        for (from, to) in [("[3,2]", "[3,3]"), ("\"F32\"", "\"Q9\""), ("\"pt\"", "7")] {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text, "{from}");
            let mut b = (bad.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(bad.as_bytes());
            b.extend_from_slice(&good[8 + n..]);
            broken.push(b);
        }
        for b in &broken {
            assert!(reference(b).is_err(), "the reference refuses it");
            assert!(read_header(b).is_err(), "so must we");
        }
    }
}
