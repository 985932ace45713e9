//! Record and key types, and the specified key hash.
//!
//! # The key hash
//!
//! Every key is reduced to a `u64` by **XXH3-64 with seed 0 over the key's canonical byte
//! encoding**. The encoding is fixed by this crate, not by `std::hash::Hash`, so the same key
//! lands on the same subtask in every process, on every platform and with every compiler:
//!
//! | key type | canonical bytes |
//! |---|---|
//! | `u8`, `u16`, `u32`, `u64`, `usize` | the value widened to `u64`, 8 bytes little-endian |
//! | `i8`, `i16`, `i32`, `i64`, `isize` | the value widened to `i64`, 8 bytes little-endian |
//! | `u128` / `i128` | 16 bytes little-endian |
//! | `bool` | one byte, 0 or 1 |
//! | `char` | its scalar value as `u64`, 8 bytes little-endian |
//! | `String`, `&str` | the UTF-8 bytes, no length prefix |
//! | `Vec<u8>` | the bytes, no length prefix |
//! | `(A, B, ..)` | each field as `len: u32 LE` followed by its canonical bytes |
//! | `Option<A>` | `0u8` for `None`, `1u8` followed by `A`'s bytes for `Some` |
//!
//! Integers of different widths with the same value therefore hash alike (`5u32` and `5u64`
//! route to the same subtask). The golden routing test in `tests/routing_golden.rs` pins a list
//! of keys to their subtasks; changing any part of this table breaks it on purpose.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::hash::Hash;
use xxhash_rust::xxh3::xxh3_64;

/// A record type that can travel on any edge of a dataflow.
///
/// Local edges move values; only remote edges (cluster) serialize them, which is why the serde
/// bounds are part of the contract. `Clone` is needed by broadcast edges and by a stream that
/// feeds several operators; `Sync` lets the subtasks of a collection source share one copy.
pub trait Data: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}

impl<T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Data for T {}

/// A type that records can be keyed by (`key_by`).
///
/// Implementors give a canonical byte encoding (see the module docs); the routing hash is
/// XXH3-64 of those bytes. Implemented for integers, `bool`, `char`, strings, byte vectors,
/// `Option` and tuples up to four fields.
pub trait Key: Data + Eq + Hash {
    /// Appends the canonical encoding of `self` to `buf`.
    fn encode_key(&self, buf: &mut Vec<u8>);

    /// The routing hash: XXH3-64, seed 0, over [`Key::encode_key`]'s bytes.
    ///
    /// Implementations may compute it without the buffer but must return the same value.
    fn key_hash(&self) -> u64 {
        let mut buf = Vec::with_capacity(32);
        self.encode_key(&mut buf);
        xxh3_64(&buf)
    }
}

macro_rules! unsigned_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn encode_key(&self, buf: &mut Vec<u8>) {
                buf.extend_from_slice(&(*self as u64).to_le_bytes());
            }
            #[inline]
            fn key_hash(&self) -> u64 {
                xxh3_64(&(*self as u64).to_le_bytes())
            }
        }
    )*};
}
macro_rules! signed_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn encode_key(&self, buf: &mut Vec<u8>) {
                buf.extend_from_slice(&(*self as i64).to_le_bytes());
            }
            #[inline]
            fn key_hash(&self) -> u64 {
                xxh3_64(&(*self as i64).to_le_bytes())
            }
        }
    )*};
}
unsigned_key!(u8, u16, u32, u64, usize);
signed_key!(i8, i16, i32, i64, isize);

impl Key for u128 {
    fn encode_key(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.to_le_bytes());
    }
}
impl Key for i128 {
    fn encode_key(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.to_le_bytes());
    }
}
impl Key for bool {
    fn encode_key(&self, buf: &mut Vec<u8>) {
        buf.push(u8::from(*self));
    }
}
impl Key for char {
    fn encode_key(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&u64::from(*self).to_le_bytes());
    }
}
impl Key for String {
    fn encode_key(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self.as_bytes());
    }
    #[inline]
    fn key_hash(&self) -> u64 {
        xxh3_64(self.as_bytes())
    }
}
impl Key for Vec<u8> {
    fn encode_key(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self);
    }
    #[inline]
    fn key_hash(&self) -> u64 {
        xxh3_64(self)
    }
}
impl<A: Key> Key for Option<A> {
    fn encode_key(&self, buf: &mut Vec<u8>) {
        match self {
            None => buf.push(0),
            Some(a) => {
                buf.push(1);
                a.encode_key(buf);
            }
        }
    }
}

fn encode_field<K: Key>(k: &K, buf: &mut Vec<u8>) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    k.encode_key(buf);
    let len = u32::try_from(buf.len() - at - 4).unwrap_or(u32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

macro_rules! tuple_key {
    ($($name:ident : $idx:tt),+) => {
        impl<$($name: Key),+> Key for ($($name,)+) {
            fn encode_key(&self, buf: &mut Vec<u8>) {
                $(encode_field(&self.$idx, buf);)+
            }
        }
    };
}
tuple_key!(A: 0);
tuple_key!(A: 0, B: 1);
tuple_key!(A: 0, B: 1, C: 2);
tuple_key!(A: 0, B: 1, C: 2, D: 3);

/// The canonical bytes of a key (see the module docs), for tools and tests.
pub fn canonical_key_bytes<K: Key>(key: &K) -> Vec<u8> {
    let mut buf = Vec::new();
    key.encode_key(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_paths_agree_with_encoding() {
        for k in [0u64, 1, 42, u64::MAX] {
            assert_eq!(k.key_hash(), xxh3_64(&canonical_key_bytes(&k)));
        }
        for k in [-1i32, 0, 7] {
            assert_eq!(k.key_hash(), xxh3_64(&canonical_key_bytes(&k)));
        }
        let s = String::from("data-7");
        assert_eq!(s.key_hash(), xxh3_64(&canonical_key_bytes(&s)));
    }

    #[test]
    fn widths_hash_alike() {
        assert_eq!(5u32.key_hash(), 5u64.key_hash());
        assert_eq!(5u8.key_hash(), 5usize.key_hash());
        assert_eq!((-3i16).key_hash(), (-3i64).key_hash());
    }

    #[test]
    fn tuples_are_length_prefixed() {
        let a = (String::from("ab"), String::from("c"));
        let b = (String::from("a"), String::from("bc"));
        assert_ne!(a.key_hash(), b.key_hash());
    }
}
