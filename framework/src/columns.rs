//! Compact batch bodies for plain record types, written column by column.
//!
//! A batch that crosses to another node is encoded by its channel's codec
//! ([`crate::BatchCodec`]). For most record types that is rmp-serde, one value at a time. For
//! the plain types most streams carry — integers, `f64`, `String`, and pairs of them such as
//! `(String, u64)` or `(u64, i64)` — the codec writes the batch in columns instead: the record
//! count, then each field's values for the whole batch. Integers are written as the
//! difference to the previous value of their column, zigzag-folded and in LEB128 (a counter
//! or a timestamp costs one or two bytes per record; an arbitrary value at most ten), `f64` as
//! its eight bytes, strings as a length column and their bytes. Encoding and decoding are a
//! tight loop per column, with no per-record dispatch.
//!
//! Both ends of a channel know its record type, so the choice needs no negotiation; the body
//! starts with a format byte all the same, so that a body of the wrong form is a typed error.
//! Malformed bodies (truncated, overlong numbers, values out of their type's range, invalid
//! UTF-8, a count larger than the bytes could hold) are [`CodecError::Columns`] errors,
//! never panics.

use crate::error::CodecError;
use crate::event::Payload;
use std::any::{Any, TypeId};

/// The first byte of a column-encoded batch body.
const FORMAT: u8 = 0xC7;

/// Reads a column-encoded body.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or(CodecError::Columns("body ends early"))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(CodecError::Columns("body ends early"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, CodecError> {
        // Most numbers of a column of differences are one byte.
        if let Some(&b) = self.bytes.get(self.at) {
            if b < 0x80 {
                self.at += 1;
                return Ok(u64::from(b));
            }
        }
        self.long_varint()
    }

    #[cold]
    fn long_varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(CodecError::Columns("number longer than 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(CodecError::Columns("number longer than 64 bits"));
            }
        }
    }

    /// A count of values that each take at least one byte: never more than the bytes left.
    fn count(&mut self) -> Result<usize, CodecError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.left())
            .ok_or(CodecError::Columns("count larger than the body"))
    }
}

#[inline(always)]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    let mut buf = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    out.extend_from_slice(&buf[..=n]);
}

#[inline]
fn zigzag(d: u64) -> u64 {
    (d << 1) ^ (((d as i64) >> 63) as u64)
}

#[inline]
fn unzigzag(z: u64) -> u64 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

/// A field type written as one column.
trait Column: Sized + 'static {
    fn put<'a>(values: impl Iterator<Item = &'a Self> + Clone, n: usize, out: &mut Vec<u8>);
    fn get(r: &mut Reader<'_>, n: usize) -> Result<Vec<Self>, CodecError>;
}

macro_rules! int_column {
    ($($t:ty => $wide:ty),*) => {$(
        impl Column for $t {
            #[inline]
            fn put<'a>(values: impl Iterator<Item = &'a Self> + Clone, _n: usize, out: &mut Vec<u8>) {
                let mut prev = 0u64;
                for v in values {
                    // Widened to 64 bits (sign-extended for signed types), then the difference.
                    let v = *v as $wide as u64;
                    put_varint(out, zigzag(v.wrapping_sub(prev)));
                    prev = v;
                }
            }
            fn get(r: &mut Reader<'_>, n: usize) -> Result<Vec<Self>, CodecError> {
                let mut values = Vec::with_capacity(n);
                let mut prev = 0u64;
                for _ in 0..n {
                    let v = prev.wrapping_add(unzigzag(r.varint()?));
                    prev = v;
                    values.push(
                        <$t>::try_from(v as $wide)
                            .map_err(|_| CodecError::Columns("value out of its type's range"))?,
                    );
                }
                Ok(values)
            }
        }
    )*};
}
int_column!(u8 => u64, u16 => u64, u32 => u64, u64 => u64, usize => u64,
            i8 => i64, i16 => i64, i32 => i64, i64 => i64, isize => i64);

impl Column for f64 {
    fn put<'a>(values: impl Iterator<Item = &'a Self> + Clone, n: usize, out: &mut Vec<u8>) {
        out.reserve(n * 8);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn get(r: &mut Reader<'_>, n: usize) -> Result<Vec<Self>, CodecError> {
        let bytes = r.take(
            n.checked_mul(8)
                .ok_or(CodecError::Columns("count too large"))?,
        )?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b)
            })
            .collect())
    }
}

impl Column for String {
    fn put<'a>(values: impl Iterator<Item = &'a Self> + Clone, n: usize, out: &mut Vec<u8>) {
        // Lengths first, then the bytes of every string in one run.
        out.reserve(n);
        let mut total = 0;
        for s in values.clone() {
            put_varint(out, s.len() as u64);
            total += s.len();
        }
        out.reserve(total);
        for s in values {
            out.extend_from_slice(s.as_bytes());
        }
    }
    fn get(r: &mut Reader<'_>, n: usize) -> Result<Vec<Self>, CodecError> {
        let mut lens = Vec::with_capacity(n);
        for _ in 0..n {
            let len = usize::try_from(r.varint()?)
                .map_err(|_| CodecError::Columns("string longer than memory"))?;
            lens.push(len);
        }
        let mut values = Vec::with_capacity(n);
        for len in lens {
            let bytes = r.take(len)?;
            let s = std::str::from_utf8(bytes)
                .map_err(|_| CodecError::Columns("string is not UTF-8"))?;
            values.push(s.to_owned());
        }
        Ok(values)
    }
}

/// A record type written in columns: one field, or a pair of fields.
trait Columns: Sized + Send + 'static {
    fn put_all(records: &[Self], out: &mut Vec<u8>);
    fn get_all(r: &mut Reader<'_>, n: usize) -> Result<Vec<Self>, CodecError>;
}

impl<C: Column + Send> Columns for C {
    fn put_all(records: &[Self], out: &mut Vec<u8>) {
        C::put(records.iter(), records.len(), out);
    }
    fn get_all(r: &mut Reader<'_>, n: usize) -> Result<Vec<Self>, CodecError> {
        C::get(r, n)
    }
}

/// Pairs, as two columns. (Not a blanket impl over `Column` pairs, which would overlap the
/// one above for the compiler.)
macro_rules! pair_columns {
    ($(($a:ty, $b:ty)),*) => {$(
        impl Columns for ($a, $b) {
            fn put_all(records: &[Self], out: &mut Vec<u8>) {
                <$a>::put(records.iter().map(|r| &r.0), records.len(), out);
                <$b>::put(records.iter().map(|r| &r.1), records.len(), out);
            }
            fn get_all(r: &mut Reader<'_>, n: usize) -> Result<Vec<Self>, CodecError> {
                let firsts = <$a>::get(r, n)?;
                let seconds = <$b>::get(r, n)?;
                Ok(firsts.into_iter().zip(seconds).collect())
            }
        }
    )*};
}

/// Every pair of a first field of `$a` and a second of the listed types.
macro_rules! pairs_with {
    ($($a:ty),*) => {$(
        pair_columns!(($a, u64), ($a, i64), ($a, u32), ($a, i32), ($a, f64));
    )*};
}
pairs_with!(u64, i64, u32, i32, String);

fn encode_as<C: Columns>(records: &dyn Any) -> Option<Vec<u8>> {
    let records = records.downcast_ref::<Vec<C>>()?;
    let mut out = Vec::with_capacity(16 + records.len() * 3);
    out.push(FORMAT);
    put_varint(&mut out, records.len() as u64);
    C::put_all(records, &mut out);
    Some(out)
}

fn decode_as<C: Columns>(bytes: &[u8]) -> Result<(Payload, usize), CodecError> {
    let mut r = Reader { bytes, at: 0 };
    if r.byte()? != FORMAT {
        return Err(CodecError::Columns("not a column-encoded batch"));
    }
    let n = r.count()?;
    let records = C::get_all(&mut r, n)?;
    if r.left() != 0 {
        return Err(CodecError::Columns("bytes after the last column"));
    }
    Ok((Box::new(records), n))
}

/// Runs `$then::<X>` for the listed type `X` that is `$t`, or gives `None`.
macro_rules! dispatch {
    ($t:ty, $then:ident($arg:expr); $($x:ty),*) => {{
        let id = TypeId::of::<$t>();
        $(
            if id == TypeId::of::<$x>() {
                return Some($then::<$x>($arg));
            }
        )*
        None
    }};
}

/// Every record type written in columns.
macro_rules! with_column_types {
    ($mac:ident!($t:ty, $then:ident($arg:expr))) => {
        $mac!($t, $then($arg);
            u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, f64, String,
            (u64, u64), (u64, i64), (u64, u32), (u64, i32), (u64, f64),
            (i64, u64), (i64, i64), (i64, u32), (i64, i32), (i64, f64),
            (u32, u64), (u32, i64), (u32, u32), (u32, i32), (u32, f64),
            (i32, u64), (i32, i64), (i32, u32), (i32, i32), (i32, f64),
            (String, u64), (String, i64), (String, u32), (String, i32), (String, f64))
    };
}

/// A batch of `T` (`records`, a `Vec<T>`) in columns, or `None` if `T` is not a column type.
pub(crate) fn encode<T: 'static>(records: &dyn Any) -> Option<Vec<u8>> {
    let r: Option<Option<Vec<u8>>> = (|| with_column_types!(dispatch!(T, encode_as(records))))();
    r.flatten()
}

/// Decodes a column-encoded batch of `T` (a `Vec<T>` payload and its length), or `None` if
/// `T` is not a column type.
pub(crate) fn decode<T: 'static>(bytes: &[u8]) -> Option<Result<(Payload, usize), CodecError>> {
    with_column_types!(dispatch!(T, decode_as(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round<T: 'static + Clone + PartialEq + std::fmt::Debug>(v: Vec<T>) {
        let bytes = encode::<T>(&v).expect("a column type");
        let (payload, n) = decode::<T>(&bytes)
            .expect("a column type")
            .expect("decodes");
        assert_eq!(n, v.len());
        assert_eq!(*payload.downcast::<Vec<T>>().expect("type"), v);
    }

    #[test]
    fn column_types_round_trip() {
        round(vec![0u64, 1, 2, u64::MAX, 7, 0]);
        round(vec![i64::MIN, -1, 0, 1, i64::MAX]);
        round(vec![u8::MAX, 0, 3]);
        round(vec![i32::MIN, i32::MAX, -5]);
        round(vec![1.5f64, -0.0, f64::INFINITY]);
        round(vec!["".to_string(), "wörter".to_string(), "a".repeat(300)]);
        round(vec![("the".to_string(), 3u64), ("fox".to_string(), 1)]);
        round(vec![(5u64, -3i64), (u64::MAX, i64::MIN)]);
        round::<u64>(Vec::new());
        assert!(encode::<(u8, u8, u8)>(&vec![(1u8, 2u8, 3u8)]).is_none());
        assert!(decode::<(u8, u8, u8)>(&[]).is_none());
    }

    #[test]
    fn counters_take_a_byte_each() {
        let v: Vec<u64> = (1_000_000..1_004_096).collect();
        let bytes = encode::<u64>(&v).expect("column type");
        assert!(bytes.len() < 4096 + 16, "{} bytes", bytes.len());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let good = encode::<(String, u64)>(&vec![("ab".to_string(), 300u64)]).expect("column type");
        for cut in 0..good.len() {
            assert!(decode::<(String, u64)>(&good[..cut])
                .expect("type")
                .is_err());
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(decode::<(String, u64)>(&extra).expect("type").is_err());
        // A huge count, an overlong number, a value out of range, bad UTF-8, a wrong format.
        assert!(decode::<u64>(&[FORMAT, 0xff, 0xff, 0xff, 0x7f])
            .expect("type")
            .is_err());
        let overlong = [
            FORMAT, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(decode::<u64>(&overlong).expect("type").is_err());
        assert!(decode::<u8>(&[FORMAT, 1, 0x80, 0x04])
            .expect("type")
            .is_err());
        assert!(decode::<String>(&[FORMAT, 1, 1, 0xff])
            .expect("type")
            .is_err());
        assert!(decode::<u64>(&[0x91, 1]).expect("type").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_batches_round_trip(v in proptest::collection::vec((any::<String>(), any::<i64>()), 0..200)) {
            round(v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<(String, u64)>(&bytes);
            let _ = decode::<i32>(&bytes);
        }
    }
}
