//! Decoding one event batch from its msgpack frame, in either wire shape.
//!
//! Both shapes are accepted on every message, so an engine upgraded mid-flight (or a fleet of
//! mixed versions) keeps feeding the index: an event is an array whose first element names its
//! type, or a map whose `type` key does. Fields this decoder does not use, and fields added by
//! later releases, are skipped; events of unknown types are counted and skipped. Anything else
//! wrong is an error naming the field (`events[3].token_ids[17]`) and the byte offset, and the
//! whole batch is refused: applying half a batch would leave the index matching no engine state.

use crate::event::{engine_hash_of_bytes, BlockStored, EngineHash, EventBatch, KvEvent};
use crate::msgpack::{Item, ReadError, Reader};

/// Largest `block_size` accepted (vLLM uses 16 to 128 on GPUs).
pub const MAX_BLOCK_SIZE: usize = 4096;

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The field, as a path from the batch (`events[2].block_hashes`).
    pub field: String,
    pub message: String,
    /// Byte offset in the frame.
    pub at: usize,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (byte {}): {}", self.field, self.at, self.message)
    }
}

impl std::error::Error for DecodeError {}

struct De<'a> {
    r: Reader<'a>,
}

type Result<T> = std::result::Result<T, DecodeError>;

impl<'a> De<'a> {
    fn err(&self, field: &dyn Fn() -> String, message: String) -> DecodeError {
        DecodeError {
            field: field(),
            message,
            at: self.r.pos(),
        }
    }

    fn item(&mut self, field: &dyn Fn() -> String) -> Result<Item<'a>> {
        let at = self.r.pos();
        self.r.next_item().map_err(|e: ReadError| DecodeError {
            field: field(),
            message: e.to_string(),
            at,
        })
    }

    fn skip(&mut self, item: Item<'a>, field: &dyn Fn() -> String) -> Result<()> {
        let at = self.r.pos();
        self.r.skip_rest(item).map_err(|e| DecodeError {
            field: field(),
            message: e.to_string(),
            at,
        })
    }

    fn wrong(&self, field: &dyn Fn() -> String, want: &str, got: Item<'_>) -> DecodeError {
        self.err(field, format!("expected {want}, found {}", got.kind()))
    }

    fn str(&mut self, field: &dyn Fn() -> String) -> Result<&'a str> {
        match self.item(field)? {
            Item::Str(s) => {
                std::str::from_utf8(s).map_err(|_| self.err(field, "invalid UTF-8".into()))
            }
            other => Err(self.wrong(field, "a string", other)),
        }
    }

    fn opt_str(&mut self, field: &dyn Fn() -> String) -> Result<Option<String>> {
        match self.item(field)? {
            Item::Nil => Ok(None),
            Item::Str(s) => std::str::from_utf8(s)
                .map(|s| Some(s.to_owned()))
                .map_err(|_| self.err(field, "invalid UTF-8".into())),
            other => Err(self.wrong(field, "a string or nil", other)),
        }
    }

    fn opt_int(&mut self, field: &dyn Fn() -> String) -> Result<Option<i64>> {
        match self.item(field)? {
            Item::Nil => Ok(None),
            Item::Uint(v) => Ok(Some(i64::try_from(v).unwrap_or(i64::MAX))),
            Item::Int(v) => Ok(Some(v)),
            other => Err(self.wrong(field, "an integer or nil", other)),
        }
    }

    fn hash_of(&self, item: Item<'_>, field: &dyn Fn() -> String) -> Result<EngineHash> {
        match item {
            // Python ints: vLLM's older hashes, signed or not; the bits are the name.
            Item::Uint(v) => Ok(v),
            Item::Int(v) => Ok(v as u64),
            Item::Bin(b) | Item::Str(b) => Ok(engine_hash_of_bytes(b)),
            other => Err(self.wrong(field, "a block hash (integer or bytes)", other)),
        }
    }

    fn opt_hash(&mut self, field: &dyn Fn() -> String) -> Result<Option<EngineHash>> {
        match self.item(field)? {
            Item::Nil => Ok(None),
            other => self.hash_of(other, field).map(Some),
        }
    }

    fn array_len(&mut self, field: &dyn Fn() -> String) -> Result<usize> {
        match self.item(field)? {
            Item::Array(n) => Ok(n),
            other => Err(self.wrong(field, "an array", other)),
        }
    }

    fn hashes(&mut self, field: &dyn Fn() -> String) -> Result<Vec<EngineHash>> {
        let n = self.array_len(field)?;
        // n is bounded by the frame's remaining bytes (Reader::next_item).
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let f = || format!("{}[{i}]", field());
            let item = self.item(&f)?;
            out.push(self.hash_of(item, &f)?);
        }
        Ok(out)
    }

    fn tokens(&mut self, field: &dyn Fn() -> String) -> Result<Vec<u32>> {
        let n = self.array_len(field)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let f = || format!("{}[{i}]", field());
            match self.item(&f)? {
                Item::Uint(v) if v <= u64::from(u32::MAX) => out.push(v as u32),
                other => return Err(self.wrong(&f, "a token id (0..2^32)", other)),
            }
        }
        Ok(out)
    }

    fn block_size(&mut self, field: &dyn Fn() -> String) -> Result<usize> {
        match self.item(field)? {
            Item::Uint(v) if (1..=MAX_BLOCK_SIZE as u64).contains(&v) => Ok(v as usize),
            other => Err(self.err(
                field,
                format!("expected a block size in 1..={MAX_BLOCK_SIZE}, found {other:?}"),
            )),
        }
    }
}

/// Decodes one msgpack batch frame.
pub fn decode_batch(frame: &[u8]) -> Result<EventBatch> {
    let mut de = De {
        r: Reader::new(frame),
    };
    let root = || "batch".to_string();
    let mut batch = EventBatch::default();
    match de.item(&root)? {
        Item::Array(n) => {
            if n < 2 {
                return Err(de.err(&root, format!("expected [ts, events, dp_rank], {n} items")));
            }
            batch.ts = ts(&mut de)?;
            events(&mut de, &mut batch)?;
            if n >= 3 {
                batch.dp_rank = de.opt_int(&|| "data_parallel_rank".into())?;
            }
            for _ in 3..n {
                de.r.skip_value().map_err(|e| DecodeError {
                    field: "batch".into(),
                    message: e.to_string(),
                    at: de.r.pos(),
                })?;
            }
        }
        Item::Map(n) => {
            let mut saw_events = false;
            for _ in 0..n {
                let key = de.str(&root)?;
                match key {
                    "ts" => batch.ts = ts(&mut de)?,
                    "events" => {
                        events(&mut de, &mut batch)?;
                        saw_events = true;
                    }
                    "data_parallel_rank" | "dp_rank" => {
                        batch.dp_rank = de.opt_int(&|| key.to_string())?;
                    }
                    _ => {
                        let f = || key.to_string();
                        let item = de.item(&f)?;
                        de.skip(item, &f)?;
                    }
                }
            }
            if !saw_events {
                return Err(de.err(&root, "missing field events".into()));
            }
        }
        other => return Err(de.wrong(&root, "an array or a map", other)),
    }
    if de.r.remaining() != 0 {
        return Err(de.err(&root, "trailing bytes after the batch".into()));
    }
    Ok(batch)
}

fn ts(de: &mut De<'_>) -> Result<f64> {
    let f = || "ts".to_string();
    match de.item(&f)? {
        Item::Float(v) => Ok(v),
        Item::Uint(v) => Ok(v as f64),
        Item::Int(v) => Ok(v as f64),
        other => Err(de.wrong(&f, "a number", other)),
    }
}

fn events(de: &mut De<'_>, batch: &mut EventBatch) -> Result<()> {
    let n = de.array_len(&|| "events".into())?;
    batch.events.reserve(n);
    for i in 0..n {
        let field = || format!("events[{i}]");
        if let Some(e) = event(de, &field)? {
            batch.events.push(e);
        } else {
            batch.unknown += 1;
        }
    }
    Ok(())
}

/// One event, either shape; `None` for a type this decoder does not know (skipped).
fn event(de: &mut De<'_>, field: &dyn Fn() -> String) -> Result<Option<KvEvent>> {
    match de.item(field)? {
        Item::Array(n) => {
            if n == 0 {
                return Err(de.err(field, "empty event array (no type tag)".into()));
            }
            let tag = de.str(&|| format!("{}[0]", field()))?;
            positional(de, field, tag, n - 1)
        }
        Item::Map(n) => tagged_map(de, field, n),
        other => Err(de.wrong(field, "an event (array or map)", other)),
    }
}

/// `[tag, fields...]`: fields in vLLM's declaration order; extra trailing fields skipped.
fn positional(
    de: &mut De<'_>,
    field: &dyn Fn() -> String,
    tag: &str,
    n: usize,
) -> Result<Option<KvEvent>> {
    let names: &[&str] = match tag {
        "BlockStored" => &[
            "block_hashes",
            "parent_block_hash",
            "token_ids",
            "block_size",
            "lora_id",
            "medium",
            "lora_name",
        ],
        "BlockRemoved" => &["block_hashes", "medium"],
        "AllBlocksCleared" => &[],
        _ => &[],
    };
    let known = !names.is_empty() || tag == "AllBlocksCleared";
    let mut acc = Acc::default();
    for k in 0..n {
        let f = || format!("{}.{}", field(), names.get(k).copied().unwrap_or("?"));
        match names.get(k) {
            Some(name) if known => acc.field(de, name, &f)?,
            _ => {
                let item = de.item(&f)?;
                de.skip(item, &f)?;
            }
        }
    }
    acc.finish(de, field, known.then_some(tag))
}

/// `{type: tag, field: value, ...}` in any order.
fn tagged_map(de: &mut De<'_>, field: &dyn Fn() -> String, n: usize) -> Result<Option<KvEvent>> {
    let mut acc = Acc::default();
    let mut tag: Option<&str> = None;
    for _ in 0..n {
        let key = de.str(field)?;
        let f = || format!("{}.{key}", field());
        if key == "type" {
            tag = Some(de.str(&f)?);
        } else {
            acc.field(de, key, &f)?;
        }
    }
    let Some(tag) = tag else {
        return Err(de.err(field, "event map without a type".into()));
    };
    let known = matches!(tag, "BlockStored" | "BlockRemoved" | "AllBlocksCleared");
    acc.finish(de, field, known.then_some(tag))
}

/// Fields gathered for one event, by name.
#[derive(Default)]
struct Acc {
    stored: BlockStored,
    has_hashes: bool,
    has_block_size: bool,
}

impl Acc {
    fn field(&mut self, de: &mut De<'_>, name: &str, f: &dyn Fn() -> String) -> Result<()> {
        let s = &mut self.stored;
        match name {
            "block_hashes" => {
                s.block_hashes = de.hashes(f)?;
                self.has_hashes = true;
            }
            "parent_block_hash" => s.parent_block_hash = de.opt_hash(f)?,
            "token_ids" => s.token_ids = de.tokens(f)?,
            "block_size" => {
                s.block_size = de.block_size(f)?;
                self.has_block_size = true;
            }
            "lora_id" => s.lora_id = de.opt_int(f)?,
            "lora_name" => s.lora_name = de.opt_str(f)?,
            "medium" => s.medium = de.opt_str(f)?,
            _ => {
                let item = de.item(f)?;
                de.skip(item, f)?;
            }
        }
        Ok(())
    }

    fn finish(
        self,
        de: &De<'_>,
        field: &dyn Fn() -> String,
        tag: Option<&str>,
    ) -> Result<Option<KvEvent>> {
        let s = self.stored;
        Ok(Some(match tag {
            None => return Ok(None),
            Some("AllBlocksCleared") => KvEvent::AllBlocksCleared,
            Some("BlockRemoved") => {
                if !self.has_hashes {
                    return Err(de.err(field, "BlockRemoved without block_hashes".into()));
                }
                KvEvent::BlockRemoved {
                    block_hashes: s.block_hashes,
                    medium: s.medium,
                }
            }
            Some(_) => {
                if !self.has_hashes || !self.has_block_size {
                    return Err(de.err(
                        field,
                        "BlockStored without block_hashes or block_size".into(),
                    ));
                }
                let want = s.block_hashes.len().saturating_mul(s.block_size);
                if s.token_ids.len() != want {
                    return Err(de.err(
                        field,
                        format!(
                            "BlockStored has {} token ids for {} blocks of {}",
                            s.token_ids.len(),
                            s.block_hashes.len(),
                            s.block_size
                        ),
                    ));
                }
                KvEvent::BlockStored(s)
            }
        }))
    }
}
