//! XDR (RFC 4506) as NFSv4.1 uses it: big-endian 4-byte units, variable-length opaques with a
//! length word and zero padding. A COMPOUND is encoded once into bytes (a resend must carry the
//! very same bytes, so that the server's reply cache recognises it) and its reply decoded from
//! bytes; the RPC layer carries both as they are ([`Raw`]).

use std::io::{Read, Write};

use nfs3_client::nfs3_types::xdr_codec::{Error as CodecError, Pack, Unpack};
use thiserror::Error;

/// A reply that does not parse as what was asked for.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum XdrError {
    #[error("the reply ends {wanted} bytes early, in {what}")]
    Short { what: &'static str, wanted: usize },
    #[error("the reply has {what} of {len} bytes, more than {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the reply has {what} {value}, which the protocol does not define here")]
    Unexpected { what: &'static str, value: u32 },
    #[error("the reply has {0} bytes left over after its last result")]
    Trailing(usize),
}

pub type XdrResult<T> = Result<T, XdrError>;

/// Appends XDR to a buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Encoder::default()
    }

    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn i64(&mut self, value: i64) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.u32(u32::from(value))
    }

    /// Fixed-length opaque: the bytes and their padding, no length.
    pub fn fixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.buf.extend_from_slice(&[0; 3][..padding(bytes.len())]);
        self
    }

    /// Variable-length opaque (or string): the length, the bytes, their padding.
    ///
    /// # Panics
    /// If `bytes` is 4 GiB or longer, which nothing we send comes near.
    pub fn opaque(&mut self, bytes: &[u8]) -> &mut Self {
        self.u32(u32::try_from(bytes.len()).expect("an opaque under 4 GiB"));
        self.fixed(bytes)
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads XDR from a reply.
#[derive(Debug)]
pub struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Decoder { rest: bytes }
    }

    fn take(&mut self, len: usize, what: &'static str) -> XdrResult<&'a [u8]> {
        if self.rest.len() < len {
            return Err(XdrError::Short {
                what,
                wanted: len - self.rest.len(),
            });
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    pub fn u32(&mut self, what: &'static str) -> XdrResult<u32> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_be_bytes(bytes.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self, what: &'static str) -> XdrResult<u64> {
        let bytes = self.take(8, what)?;
        Ok(u64::from_be_bytes(bytes.try_into().expect("8 bytes")))
    }

    pub fn i64(&mut self, what: &'static str) -> XdrResult<i64> {
        let bytes = self.take(8, what)?;
        Ok(i64::from_be_bytes(bytes.try_into().expect("8 bytes")))
    }

    pub fn bool(&mut self, what: &'static str) -> XdrResult<bool> {
        match self.u32(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(XdrError::Unexpected { what, value }),
        }
    }

    /// Fixed-length opaque of `len` bytes (and its padding).
    pub fn fixed(&mut self, len: usize, what: &'static str) -> XdrResult<&'a [u8]> {
        let bytes = self.take(len, what)?;
        self.take(padding(len), what)?;
        Ok(bytes)
    }

    /// Variable-length opaque of at most `max` bytes.
    pub fn opaque(&mut self, max: usize, what: &'static str) -> XdrResult<&'a [u8]> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(XdrError::TooLong { what, len, max });
        }
        self.fixed(len, what)
    }

    /// The length of an array of at most `max` elements.
    pub fn count(&mut self, max: usize, what: &'static str) -> XdrResult<usize> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(XdrError::TooLong { what, len, max });
        }
        Ok(len)
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Fails unless everything was read.
    pub fn finish(&self) -> XdrResult<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(XdrError::Trailing(self.rest.len()))
        }
    }
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Bytes handed to or taken from the RPC layer as they are: an encoded COMPOUND, or a whole reply
/// body to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub Vec<u8>);

impl Pack for Raw {
    fn packed_size(&self) -> usize {
        self.0.len()
    }

    fn pack(&self, out: &mut impl Write) -> Result<usize, CodecError> {
        out.write_all(&self.0).map_err(CodecError::from)?;
        Ok(self.0.len())
    }
}

impl Unpack for Raw {
    fn unpack(input: &mut impl Read) -> Result<(Self, usize), CodecError> {
        let mut bytes = Vec::new();
        let len = input.read_to_end(&mut bytes).map_err(CodecError::from)?;
        Ok((Raw(bytes), len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn opaques_are_padded_to_four_bytes_and_read_back() {
        let mut e = Encoder::new();
        e.opaque(b"abcde").u32(7).fixed(b"xy").bool(true);
        let bytes = e.into_bytes();
        assert_eq!(
            bytes,
            [
                0, 0, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0, 0, 0, 0, 7, b'x', b'y', 0, 0, 0, 0, 0, 1
            ]
        );
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.opaque(8, "name").unwrap(), b"abcde");
        assert_eq!(d.u32("n").unwrap(), 7);
        assert_eq!(d.fixed(2, "f").unwrap(), b"xy");
        assert!(d.bool("b").unwrap());
        d.finish().unwrap();
    }

    #[test]
    fn a_short_or_oversized_reply_is_an_error_naming_what_was_read() {
        let bytes = [0, 0, 0, 9, 1, 2];
        assert_eq!(
            Decoder::new(&bytes).opaque(4, "a file handle"),
            Err(XdrError::TooLong {
                what: "a file handle",
                len: 9,
                max: 4
            })
        );
        assert_eq!(
            Decoder::new(&bytes).opaque(16, "a file handle"),
            Err(XdrError::Short {
                what: "a file handle",
                wanted: 7
            })
        );
        assert!(matches!(
            Decoder::new(&[0, 0, 0, 2]).bool("a flag"),
            Err(XdrError::Unexpected { value: 2, .. })
        ));
        assert_eq!(
            Decoder::new(&[0, 0, 0, 0, 1]).finish(),
            Err(XdrError::Trailing(5))
        );
    }

    proptest! {
        #[test]
        fn whatever_is_encoded_decodes_back(
            a in any::<u32>(), b in any::<u64>(), c in any::<i64>(),
            name in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut e = Encoder::new();
            e.u32(a).opaque(&name).u64(b).i64(c);
            let bytes = e.into_bytes();
            prop_assert_eq!(bytes.len() % 4, 0);
            let mut d = Decoder::new(&bytes);
            prop_assert_eq!(d.u32("a").unwrap(), a);
            prop_assert_eq!(d.opaque(40, "name").unwrap(), &name[..]);
            prop_assert_eq!(d.u64("b").unwrap(), b);
            prop_assert_eq!(d.i64("c").unwrap(), c);
            prop_assert!(d.finish().is_ok());
        }
    }
}
