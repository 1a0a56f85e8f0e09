//! Safetensors files read without trusting their header: the header's length, and every
//! tensor's byte range, dtype and shape are checked against the file's real size (with checked
//! arithmetic) before anything is allocated or sliced.
//!
//! The `safetensors` crate bounds the header at 100 MB and checks that each tensor's shape
//! matches its byte range, but adds the end of the last tensor to the header length without
//! checking for overflow; [`Header::read`] refuses byte ranges past the end of the file first,
//! so that sum cannot wrap.

use crate::{Error, Result};
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// The largest header the `safetensors` crate accepts.
pub const MAX_HEADER: u64 = 100_000_000;

/// A checked safetensors header: every tensor's bytes lie inside the file.
pub struct Header {
    meta: Metadata,
    /// Where the data section starts in the file (after the length and the JSON header).
    data_start: usize,
}

/// One tensor of a [`Header`]: its dtype, shape and byte range in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file; within it and exactly `numel × dtype size` long.
    pub bytes: Range<usize>,
}

impl Tensor {
    /// Bytes per element (0 for sub-byte dtypes, which weft never reads).
    pub fn elem_bytes(&self) -> usize {
        self.dtype.bitsize() / 8
    }
}

/// What the pre-check reads of a header, streamed so that nothing of a hostile header is
/// buffered: at the top, each entry's `data_offsets` when they are a pair of integers;
/// everything else is skipped (the crate reports malformed headers itself).
#[derive(Clone, Copy)]
enum Scan {
    Top,
    Entry,
    Pair,
    Int,
}

enum Found {
    Nothing,
    Int(u64),
    Pair(u64, u64),
    Ranges(Vec<(String, u64, u64)>),
}

impl<'de> DeserializeSeed<'de> for Scan {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Found, D::Error> {
        match self {
            Scan::Top => d.deserialize_map(self),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Scan {
    type Value = Found;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a safetensors header")
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Found, E> {
        Ok(match self {
            Scan::Int => Found::Int(v),
            _ => Found::Nothing,
        })
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Found, E> {
        Ok(Found::Nothing)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Found, E> {
        Ok(Found::Nothing)
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Found, E> {
        Ok(Found::Nothing)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Found, E> {
        Ok(Found::Nothing)
    }
    fn visit_unit<E>(self) -> std::result::Result<Found, E> {
        Ok(Found::Nothing)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Found, A::Error> {
        let (mut ints, mut count) = ([None; 2], 0usize);
        loop {
            let x = match (self, count) {
                (Scan::Pair, 0 | 1) => seq.next_element_seed(Scan::Int)?,
                _ => seq.next_element::<IgnoredAny>()?.map(|_| Found::Nothing),
            };
            match x {
                None => break,
                Some(Found::Int(v)) if count < 2 => ints[count] = Some(v),
                Some(_) => {}
            }
            count += 1;
        }
        Ok(match (self, ints, count) {
            (Scan::Pair, [Some(s), Some(e)], 2) => Found::Pair(s, e),
            _ => Found::Nothing,
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Found, A::Error> {
        let (mut ranges, mut pair) = (vec![], None);
        while let Some(key) = map.next_key::<String>()? {
            match (self, key.as_str()) {
                (Scan::Top, _) => {
                    if let Found::Pair(s, e) = map.next_value_seed(Scan::Entry)? {
                        ranges.push((key, s, e));
                    }
                }
                (Scan::Entry, "data_offsets") => {
                    pair = match map.next_value_seed(Scan::Pair)? {
                        Found::Pair(s, e) => Some((s, e)),
                        _ => None,
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(match (self, pair) {
            (Scan::Top, _) => Found::Ranges(ranges),
            (Scan::Entry, Some((s, e))) => Found::Pair(s, e),
            _ => Found::Nothing,
        })
    }
}

impl Header {
    /// Parse and check the header of `bytes`, the contents of `path`.
    pub fn read(path: &Path, bytes: &[u8]) -> Result<Header> {
        let bad = |why: String| Error::data(path, why);
        let Some(len) = bytes.get(..8) else {
            return Err(bad(format!(
                "not a safetensors file: {} bytes, less than the 8-byte header length",
                bytes.len()
            )));
        };
        let n = u64::from_le_bytes(std::array::from_fn(|k| len[k]));
        let after = (bytes.len() - 8) as u64;
        if n > after {
            return Err(bad(format!(
                "not a safetensors file: the header length field says {n} bytes, only {after} follow it"
            )));
        }
        if n > MAX_HEADER {
            return Err(bad(format!(
                "not a safetensors file: the header length field says {n} bytes, more than the {MAX_HEADER}-byte limit"
            )));
        }
        let data_start = 8 + n as usize;
        let data_len = (bytes.len() - data_start) as u64;
        let inside = |name: &str, s: u64, e: u64| {
            if s <= e && e <= data_len {
                Ok(())
            } else {
                Err(bad(format!(
                    "tensor `{name}`: data_offsets [{s}, {e}] lie outside the {data_len} bytes of tensor data"
                )))
            }
        };
        // Before the crate sums the offsets; only when the JSON parses here (otherwise the
        // crate names what is wrong).
        let mut json = serde_json::Deserializer::from_slice(&bytes[8..data_start]);
        if let Ok(Found::Ranges(ranges)) = Scan::Top.deserialize(&mut json) {
            for (name, s, e) in ranges {
                inside(&name, s, e)?;
            }
        }
        let (_, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        // And after, whatever the crate accepted: no range of a header reaches past the file.
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            inside(&name, s as u64, e as u64)?;
        }
        Ok(Header { meta, data_start })
    }

    /// The `__metadata__` strings.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.meta.metadata().as_ref()
    }

    /// Tensor `name`, if the file has it.
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        let info = self.meta.info(name)?;
        let (s, e) = info.data_offsets;
        Some(Tensor {
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: self.data_start + s..self.data_start + e,
        })
    }

    /// The names of every tensor.
    pub fn names(&self) -> Vec<String> {
        self.meta.offset_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data, 0);
        v
    }

    #[test]
    fn byte_ranges_past_the_file_are_refused_before_the_crate_sums_them() {
        let p = Path::new("w.safetensors");
        // Eight tensors whose ranges chain up to 2^64 - 8: the crate's sum of the last end, the
        // header length and 8 would wrap.
        let step = (1u64 << 61) - 1;
        let entries: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    "\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{step}],\"data_offsets\":[{},{}]}}",
                    i * step,
                    (i + 1) * step
                )
            })
            .collect();
        let bytes = file(&format!("{{{}}}", entries.join(",")), 16);
        let e = Header::read(p, &bytes).err().expect("refused").to_string();
        assert!(
            e.contains("w.safetensors") && e.contains("outside the 16 bytes of tensor data"),
            "{e}"
        );
        let huge = [&u64::MAX.to_le_bytes()[..], b"{}"].concat();
        let e = Header::read(p, &huge).err().expect("refused").to_string();
        assert!(
            e.contains("header length field says 18446744073709551615 bytes, only 2 follow"),
            "{e}"
        );
        let e = Header::read(p, &[1, 2]).err().expect("refused").to_string();
        assert!(e.contains("2 bytes, less than the 8-byte header length"), "{e}");
    }

    #[test]
    fn a_valid_file_gives_each_tensor_its_range() {
        let bytes = file(
            r#"{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}}"#,
            16,
        );
        let h = Header::read(Path::new("x"), &bytes).unwrap();
        let start = bytes.len() - 16;
        assert_eq!(h.tensor("b").unwrap().bytes, start + 8..start + 16);
        assert_eq!(h.tensor("a").unwrap().elem_bytes(), 4);
        assert_eq!(h.metadata().unwrap()["k"], "v");
        assert_eq!(h.names(), ["a", "b"]);
        assert!(h.tensor("c").is_none());
    }
}
