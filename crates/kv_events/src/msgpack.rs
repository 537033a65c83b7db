//! A bounded msgpack reader over one frame, and the few writers the publisher needs.
//!
//! The bytes come from a model server's socket, so nothing in them is trusted: a container
//! header may claim four billion elements in a ten-byte frame. `rmpv` would build a value tree
//! (and pre-size it from those claims); this reader walks the frame in place with `rmp`'s
//! marker table instead, checks every claimed length against the bytes that are left (each
//! element takes at least one byte), and bounds nesting, so decoding a frame costs at most its
//! own size in time and allocates nothing itself.

use rmp::Marker;

/// Deepest nesting walked when skipping a value nobody asked for.
pub const MAX_DEPTH: usize = 32;

/// One msgpack item. Containers give their element count; the elements follow in the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(usize),
    Map(usize),
    Ext,
}

impl Item<'_> {
    /// What the item is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Item::Nil => "nil",
            Item::Bool(_) => "a boolean",
            Item::Uint(_) | Item::Int(_) => "an integer",
            Item::Float(_) => "a float",
            Item::Str(_) => "a string",
            Item::Bin(_) => "bytes",
            Item::Array(_) => "an array",
            Item::Map(_) => "a map",
            Item::Ext => "an extension",
        }
    }
}

/// Why a frame is not valid msgpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The frame ends inside an item that starts at `at`.
    Truncated { at: usize },
    /// Byte 0xc1, which msgpack never uses.
    Reserved { at: usize },
    /// A container at `at` claims more elements than bytes are left.
    TooLong { at: usize, claimed: usize },
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep { at: usize },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { at } => write!(f, "truncated msgpack item at byte {at}"),
            Self::Reserved { at } => write!(f, "reserved msgpack byte 0xc1 at byte {at}"),
            Self::TooLong { at, claimed } => write!(
                f,
                "msgpack container at byte {at} claims {claimed} elements, more than the frame holds"
            ),
            Self::TooDeep { at } => {
                write!(f, "msgpack nested deeper than {MAX_DEPTH} at byte {at}")
            }
        }
    }
}

/// A cursor over one msgpack frame.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Byte offset of the next item.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, at: usize) -> Result<&'a [u8], ReadError> {
        if self.remaining() < n {
            return Err(ReadError::Truncated { at });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn be(&mut self, n: usize, at: usize) -> Result<u64, ReadError> {
        Ok(self
            .take(n, at)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// Reads the next item's header (and a scalar's value).
    pub fn next_item(&mut self) -> Result<Item<'a>, ReadError> {
        let at = self.pos;
        let byte = self.take(1, at)?[0];
        let sized = |r: &mut Self, n: usize| -> Result<usize, ReadError> {
            usize::try_from(r.be(n, at)?).map_err(|_| ReadError::Truncated { at })
        };
        let item = match Marker::from_u8(byte) {
            Marker::FixPos(v) => Item::Uint(u64::from(v)),
            Marker::FixNeg(v) => Item::Int(i64::from(v)),
            Marker::Null => Item::Nil,
            Marker::True => Item::Bool(true),
            Marker::False => Item::Bool(false),
            Marker::U8 => Item::Uint(self.be(1, at)?),
            Marker::U16 => Item::Uint(self.be(2, at)?),
            Marker::U32 => Item::Uint(self.be(4, at)?),
            Marker::U64 => Item::Uint(self.be(8, at)?),
            Marker::I8 => Item::Int(i64::from(self.be(1, at)? as u8 as i8)),
            Marker::I16 => Item::Int(i64::from(self.be(2, at)? as u16 as i16)),
            Marker::I32 => Item::Int(i64::from(self.be(4, at)? as u32 as i32)),
            Marker::I64 => Item::Int(self.be(8, at)? as i64),
            Marker::F32 => Item::Float(f64::from(f32::from_bits(self.be(4, at)? as u32))),
            Marker::F64 => Item::Float(f64::from_bits(self.be(8, at)?)),
            Marker::FixStr(n) => Item::Str(self.take(usize::from(n), at)?),
            Marker::Str8 => {
                let n = sized(self, 1)?;
                Item::Str(self.take(n, at)?)
            }
            Marker::Str16 => {
                let n = sized(self, 2)?;
                Item::Str(self.take(n, at)?)
            }
            Marker::Str32 => {
                let n = sized(self, 4)?;
                Item::Str(self.take(n, at)?)
            }
            Marker::Bin8 => {
                let n = sized(self, 1)?;
                Item::Bin(self.take(n, at)?)
            }
            Marker::Bin16 => {
                let n = sized(self, 2)?;
                Item::Bin(self.take(n, at)?)
            }
            Marker::Bin32 => {
                let n = sized(self, 4)?;
                Item::Bin(self.take(n, at)?)
            }
            Marker::FixArray(n) => Item::Array(usize::from(n)),
            Marker::Array16 => Item::Array(sized(self, 2)?),
            Marker::Array32 => Item::Array(sized(self, 4)?),
            Marker::FixMap(n) => Item::Map(usize::from(n)),
            Marker::Map16 => Item::Map(sized(self, 2)?),
            Marker::Map32 => Item::Map(sized(self, 4)?),
            Marker::FixExt1 => self.ext(1, at)?,
            Marker::FixExt2 => self.ext(2, at)?,
            Marker::FixExt4 => self.ext(4, at)?,
            Marker::FixExt8 => self.ext(8, at)?,
            Marker::FixExt16 => self.ext(16, at)?,
            Marker::Ext8 => {
                let n = sized(self, 1)?;
                self.ext(n, at)?
            }
            Marker::Ext16 => {
                let n = sized(self, 2)?;
                self.ext(n, at)?
            }
            Marker::Ext32 => {
                let n = sized(self, 4)?;
                self.ext(n, at)?
            }
            Marker::Reserved => return Err(ReadError::Reserved { at }),
        };
        let claimed = match item {
            Item::Array(n) => n,
            Item::Map(n) => n.saturating_mul(2),
            _ => 0,
        };
        if claimed > self.remaining() {
            return Err(ReadError::TooLong { at, claimed });
        }
        Ok(item)
    }

    fn ext(&mut self, n: usize, at: usize) -> Result<Item<'a>, ReadError> {
        self.take(1 + n, at)?;
        Ok(Item::Ext)
    }

    /// Skips the rest of `item` (its elements, for a container), however deep up to
    /// [`MAX_DEPTH`].
    pub fn skip_rest(&mut self, item: Item<'a>) -> Result<(), ReadError> {
        // Elements still to skip per open container; bounded by MAX_DEPTH.
        let mut stack: Vec<usize> = Vec::new();
        let push = |stack: &mut Vec<usize>, item: Item<'a>, at: usize| {
            let n = match item {
                Item::Array(n) => n,
                Item::Map(n) => n * 2,
                _ => 0,
            };
            if n > 0 {
                stack.push(n);
                if stack.len() > MAX_DEPTH {
                    return Err(ReadError::TooDeep { at });
                }
            }
            Ok(())
        };
        push(&mut stack, item, self.pos)?;
        while let Some(left) = stack.last_mut() {
            if *left == 0 {
                stack.pop();
                continue;
            }
            *left -= 1;
            let at = self.pos;
            let next = self.next_item()?;
            push(&mut stack, next, at)?;
        }
        Ok(())
    }

    /// Reads and skips one whole value.
    pub fn skip_value(&mut self) -> Result<(), ReadError> {
        let item = self.next_item()?;
        self.skip_rest(item)
    }
}

/// Writers for the publisher (`rmp::encode` into a `Vec`, which cannot fail).
pub mod write {
    use rmp::encode;

    pub fn array(out: &mut Vec<u8>, n: usize) {
        let _ = encode::write_array_len(out, n as u32);
    }
    pub fn map(out: &mut Vec<u8>, n: usize) {
        let _ = encode::write_map_len(out, n as u32);
    }
    pub fn str(out: &mut Vec<u8>, s: &str) {
        let _ = encode::write_str(out, s);
    }
    pub fn uint(out: &mut Vec<u8>, v: u64) {
        let _ = encode::write_uint(out, v);
    }
    pub fn float(out: &mut Vec<u8>, v: f64) {
        let _ = encode::write_f64(out, v);
    }
    pub fn nil(out: &mut Vec<u8>) {
        let _ = encode::write_nil(out);
    }
    pub fn bin(out: &mut Vec<u8>, b: &[u8]) {
        let _ = encode::write_bin(out, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scalars_and_containers() {
        let mut out = Vec::new();
        write::array(&mut out, 4);
        write::uint(&mut out, 300);
        write::str(&mut out, "hi");
        write::float(&mut out, 1.5);
        write::map(&mut out, 1);
        write::nil(&mut out);
        write::bin(&mut out, &[1, 2]);
        let mut r = Reader::new(&out);
        assert_eq!(r.next_item(), Ok(Item::Array(4)));
        assert_eq!(r.next_item(), Ok(Item::Uint(300)));
        assert_eq!(r.next_item(), Ok(Item::Str(b"hi")));
        assert_eq!(r.next_item(), Ok(Item::Float(1.5)));
        let m = r.next_item().unwrap();
        r.skip_rest(m).unwrap();
        assert_eq!(r.remaining(), 0);
        assert_eq!(Reader::new(&[0xd0, 0xff]).next_item(), Ok(Item::Int(-1)));
    }

    #[test]
    fn lying_lengths_and_depth_are_refused() {
        // array32 claiming 2^32-1 elements in a 5-byte frame
        let frame = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            Reader::new(&frame).next_item(),
            Err(ReadError::TooLong { at: 0, .. })
        ));
        assert_eq!(
            Reader::new(&[0xc1]).next_item(),
            Err(ReadError::Reserved { at: 0 })
        );
        assert_eq!(
            Reader::new(&[0xd9, 10, b'a']).next_item(),
            Err(ReadError::Truncated { at: 0 })
        );
        let deep = vec![0x91; 100];
        assert!(matches!(
            Reader::new(&deep).skip_value(),
            Err(ReadError::TooDeep { .. })
        ));
    }

    proptest! {
        /// Any bytes: the reader answers an item or an error, never panics, never reads past
        /// the frame.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = Reader::new(&bytes);
            for _ in 0..bytes.len() + 1 {
                if r.skip_value().is_err() || r.remaining() == 0 {
                    break;
                }
            }
            prop_assert!(r.pos() <= bytes.len());
        }
    }
}
