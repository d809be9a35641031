//! KV-cache events as vLLM and SGLang publish them over ZeroMQ: each message
//! is `[topic, sequence (8 bytes, big-endian), payload]`, the payload a
//! msgpack `KVEventBatch`. Their structs are encoded as arrays (SGLang, and
//! vLLM's `array_like` structs) or as maps keyed by field name (vLLM's
//! newer ones); both are read. A replay socket (ROUTER) answers a start
//! sequence with `[sequence, payload]` messages, then `[-1, ""]`.
//!
//! Engine block hashes are opaque here: integers (SGLang, older vLLM) or
//! bytes (vLLM's SHA-256 digests), both folded into an [`EngineHash`]. The
//! gateway never needs the engine's hash function: it rehashes each stored
//! block from its token ids.

use rmpv::Value;
use xxhash_rust::xxh3::xxh3_64;

/// An engine's name for a block, only ever compared for equality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineHash(pub u64);

/// The sequence number a replay stream ends with.
pub const REPLAY_END: i64 = -1;

/// The storage tier events are about when they name none; events of any
/// other tier (a CPU offload) say nothing of what the GPU holds.
pub const MEDIUM_GPU: &str = "GPU";

#[derive(Debug, Clone, PartialEq)]
pub struct EngineBatch {
    pub ts: f64,
    pub events: Vec<EngineEvent>,
    pub data_parallel_rank: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    Stored(Stored),
    Removed {
        block_hashes: Vec<EngineHash>,
        medium: Option<String>,
        group_idx: Option<i64>,
    },
    AllCleared,
}

/// Blocks newly cached, each the child of the one before; the first the
/// child of `parent` (or the root of a prompt).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub block_hashes: Vec<EngineHash>,
    pub parent: Option<EngineHash>,
    /// `block_size` tokens per block, all blocks in a row.
    pub token_ids: Vec<u32>,
    pub block_size: usize,
    pub lora_id: Option<i64>,
    pub lora_name: Option<String>,
    pub medium: Option<String>,
    /// Per block, what else its hash covered (multimodal inputs, a LoRA,
    /// a `cache_salt`), rendered as text: such blocks only match requests
    /// with the same extras, never the base model's.
    pub extra_keys: Vec<Option<String>>,
    pub group_idx: Option<i64>,
}

impl Stored {
    /// Whether the event is about the GPU cache of the first (or only) KV
    /// group, the one every layer of a plain transformer shares.
    pub fn is_primary(&self) -> bool {
        is_primary(self.medium.as_deref(), self.group_idx)
    }
}

pub fn is_primary(medium: Option<&str>, group_idx: Option<i64>) -> bool {
    medium.is_none_or(|m| m == MEDIUM_GPU) && group_idx.unwrap_or(0) == 0
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("malformed KV event batch: {0}")]
pub struct DecodeError(String);

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

/// Reads a `KVEventBatch` payload.
pub fn decode(payload: &[u8]) -> Result<EngineBatch, DecodeError> {
    let value = rmpv::decode::read_value(&mut &payload[..]).map_err(|e| bad(e.to_string()))?;
    let fields = Fields::of(&value, &["ts", "events", "data_parallel_rank"])?;
    let events = fields
        .get(1)
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no events"))?;
    Ok(EngineBatch {
        ts: fields.get(0).and_then(Value::as_f64).unwrap_or(0.0),
        events: events.iter().map(decode_event).collect::<Result<_, _>>()?,
        data_parallel_rank: fields.get(2).and_then(Value::as_i64),
    })
}

const STORED_FIELDS: &[&str] = &[
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
];
const REMOVED_FIELDS: &[&str] = &["block_hashes", "medium", "group_idx"];

fn decode_event(value: &Value) -> Result<EngineEvent, DecodeError> {
    let tag = match value {
        Value::Array(items) => items.first().and_then(Value::as_str),
        Value::Map(_) => field(value, "type").and_then(Value::as_str),
        _ => None,
    }
    .ok_or_else(|| bad("an event without its type tag"))?;
    match tag {
        "BlockStored" => {
            let f = Fields::of_tagged(value, STORED_FIELDS)?;
            let block_hashes = hashes(f.get(0))?;
            let token_ids = f
                .get(2)
                .and_then(Value::as_array)
                .ok_or_else(|| bad("BlockStored without token_ids"))?
                .iter()
                .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| bad("a token id that is not a 32-bit unsigned integer"))?;
            let block_size = f
                .get(3)
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("BlockStored without block_size"))?;
            let extra_keys = match f.get(7).and_then(Value::as_array) {
                Some(keys) => keys.iter().map(extra_key).collect(),
                None => Vec::new(),
            };
            Ok(EngineEvent::Stored(Stored {
                block_hashes,
                parent: f.get(1).filter(|v| !v.is_nil()).map(hash).transpose()?,
                token_ids,
                block_size: block_size as usize,
                lora_id: f.get(4).and_then(Value::as_i64),
                medium: f.get(5).and_then(Value::as_str).map(str::to_string),
                lora_name: f.get(6).and_then(Value::as_str).map(str::to_string),
                extra_keys,
                group_idx: f.get(8).and_then(Value::as_i64),
            }))
        }
        "BlockRemoved" => {
            let f = Fields::of_tagged(value, REMOVED_FIELDS)?;
            Ok(EngineEvent::Removed {
                block_hashes: hashes(f.get(0))?,
                medium: f.get(1).and_then(Value::as_str).map(str::to_string),
                group_idx: f.get(2).and_then(Value::as_i64),
            })
        }
        "AllBlocksCleared" => Ok(EngineEvent::AllCleared),
        other => Err(bad(format!("unknown event type {other:?}"))),
    }
}

/// A struct's fields by position, whichever way it was encoded: an array
/// (after the tag, for events) or a map by name. Trailing fields an engine
/// left out (defaults, or fields newer than it) read as absent.
struct Fields<'a>(Vec<Option<&'a Value>>);

impl<'a> Fields<'a> {
    fn of(value: &'a Value, names: &[&str]) -> Result<Fields<'a>, DecodeError> {
        Fields::read(value, names, 0)
    }

    fn of_tagged(value: &'a Value, names: &[&str]) -> Result<Fields<'a>, DecodeError> {
        Fields::read(value, names, 1)
    }

    fn read(value: &'a Value, names: &[&str], skip: usize) -> Result<Fields<'a>, DecodeError> {
        match value {
            Value::Array(items) => Ok(Fields(
                (0..names.len()).map(|i| items.get(i + skip)).collect(),
            )),
            Value::Map(_) => Ok(Fields(names.iter().map(|n| field(value, n)).collect())),
            _ => Err(bad("a struct that is neither an array nor a map")),
        }
    }

    fn get(&self, i: usize) -> Option<&'a Value> {
        self.0[i]
    }
}

fn field<'a>(map: &'a Value, name: &str) -> Option<&'a Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
}

fn hashes(value: Option<&Value>) -> Result<Vec<EngineHash>, DecodeError> {
    value
        .and_then(Value::as_array)
        .ok_or_else(|| bad("an event without block_hashes"))?
        .iter()
        .map(hash)
        .collect()
}

fn hash(value: &Value) -> Result<EngineHash, DecodeError> {
    match value {
        Value::Integer(i) => Ok(EngineHash(
            i.as_u64()
                .or_else(|| i.as_i64().map(|i| i as u64))
                .unwrap_or(0),
        )),
        Value::Binary(bytes) => Ok(EngineHash(xxh3_64(bytes))),
        _ => Err(bad("a block hash that is neither an integer nor bytes")),
    }
}

/// The salt of a block whose extra keys render as `key`.
pub fn extra_key_salt(key: &str) -> u64 {
    xxh3_64(key.as_bytes())
}

/// The extra keys vLLM gives the first block of a request with `cache_salt`
/// and nothing else (no LoRA, no multimodal input), as [`Stored::extra_keys`]
/// renders them: what the gateway salts such a prompt's hashes with, so
/// they match the engine's blocks.
pub fn cache_salt_key(cache_salt: &str) -> String {
    format!("(\"{cache_salt}\",)")
}

/// One block's extra keys as text (`None` when it has none), the same text
/// for the same keys whichever encoding carried them.
fn extra_key(value: &Value) -> Option<String> {
    fn render(value: &Value, out: &mut String) {
        match value {
            Value::Array(items) => {
                out.push('(');
                for item in items {
                    render(item, out);
                    out.push(',');
                }
                out.push(')');
            }
            Value::String(s) => {
                out.push('"');
                out.push_str(s.as_str().unwrap_or_default());
                out.push('"');
            }
            Value::Binary(b) => out.push_str(&format!("{:016x}", xxh3_64(b))),
            other => out.push_str(&other.to_string()),
        }
    }
    match value {
        Value::Nil => None,
        Value::Array(items) if items.is_empty() => None,
        other => {
            let mut out = String::new();
            render(other, &mut out);
            Some(out)
        }
    }
}

/// Writes a batch the way SGLang and vLLM's `array_like` structs do: each
/// struct an array, events led by their type name, trailing defaults left
/// out. What the benchmarks' simulated engines publish; it writes the
/// fields of SGLang's schema and vLLM's before extra keys (those and KV
/// groups are left out).
pub fn encode(batch: &EngineBatch) -> Vec<u8> {
    let int = |h: &EngineHash| Value::from(h.0);
    let ints = |hs: &[EngineHash]| Value::Array(hs.iter().map(int).collect());
    let opt_str = |s: &Option<String>| s.as_deref().map_or(Value::Nil, Value::from);
    let events = batch
        .events
        .iter()
        .map(|event| match event {
            EngineEvent::Stored(s) => {
                let items = vec![
                    Value::from("BlockStored"),
                    ints(&s.block_hashes),
                    s.parent.as_ref().map_or(Value::Nil, int),
                    Value::Array(s.token_ids.iter().map(|&t| Value::from(t)).collect()),
                    Value::from(s.block_size as u64),
                    s.lora_id.map_or(Value::Nil, Value::from),
                    opt_str(&s.medium),
                    opt_str(&s.lora_name),
                ];
                Value::Array(items)
            }
            EngineEvent::Removed {
                block_hashes,
                medium,
                group_idx,
            } => {
                let mut items = vec![
                    Value::from("BlockRemoved"),
                    ints(block_hashes),
                    opt_str(medium),
                ];
                if let Some(g) = group_idx {
                    items.push(Value::from(*g));
                }
                Value::Array(items)
            }
            EngineEvent::AllCleared => Value::Array(vec![Value::from("AllBlocksCleared")]),
        })
        .collect();
    let mut items = vec![Value::from(batch.ts), Value::Array(events)];
    if let Some(rank) = batch.data_parallel_rank {
        items.push(Value::from(rank));
    }
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Value::Array(items)).expect("writing to a Vec");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Stored {
        Stored {
            block_hashes: vec![EngineHash(7), EngineHash(8)],
            parent: Some(EngineHash(6)),
            token_ids: vec![1, 2, 3, 4],
            block_size: 2,
            lora_id: None,
            lora_name: None,
            medium: Some(MEDIUM_GPU.into()),
            extra_keys: Vec::new(),
            group_idx: None,
        }
    }

    #[test]
    fn array_encoding_round_trips() {
        let batch = EngineBatch {
            ts: 1.5,
            events: vec![
                EngineEvent::AllCleared,
                EngineEvent::Stored(stored()),
                EngineEvent::Removed {
                    block_hashes: vec![EngineHash(7)],
                    medium: None,
                    group_idx: None,
                },
            ],
            data_parallel_rank: Some(0),
        };
        assert_eq!(decode(&encode(&batch)).unwrap(), batch);
    }

    #[test]
    fn map_encoding_with_byte_hashes_is_read() {
        // vLLM's newer structs: maps with a `type` tag, SHA-256 digests as hashes.
        let digest = |b: u8| Value::Binary(vec![b; 32]);
        let event = Value::Map(vec![
            ("type".into(), "BlockStored".into()),
            ("block_hashes".into(), Value::Array(vec![digest(1)])),
            ("parent_block_hash".into(), Value::Nil),
            ("token_ids".into(), Value::Array(vec![5.into(), 6.into()])),
            ("block_size".into(), 2.into()),
            ("lora_id".into(), Value::Nil),
            ("medium".into(), "GPU".into()),
            ("lora_name".into(), "adapter".into()),
            (
                "extra_keys".into(),
                Value::Array(vec![Value::Array(vec!["salt".into()])]),
            ),
        ]);
        let batch = Value::Map(vec![
            ("ts".into(), 2.0.into()),
            ("events".into(), Value::Array(vec![event])),
        ]);
        let mut payload = Vec::new();
        rmpv::encode::write_value(&mut payload, &batch).unwrap();
        let decoded = decode(&payload).unwrap();
        let EngineEvent::Stored(s) = &decoded.events[0] else {
            panic!("{decoded:?}")
        };
        assert_eq!(s.block_hashes, [EngineHash(xxh3_64(&[1; 32]))]);
        assert_eq!(s.parent, None);
        assert_eq!(s.token_ids, [5, 6]);
        assert_eq!(s.lora_name.as_deref(), Some("adapter"));
        assert_eq!(s.extra_keys, [Some(cache_salt_key("salt"))]);
        assert!(s.is_primary());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"\xc1").is_err());
        let mut payload = Vec::new();
        let unknown = Value::Array(vec![
            1.0.into(),
            Value::Array(vec![Value::Array(vec!["BlockMoved".into()])]),
        ]);
        rmpv::encode::write_value(&mut payload, &unknown).unwrap();
        assert!(decode(&payload).unwrap_err().0.contains("BlockMoved"));
    }

    #[test]
    fn other_tiers_and_groups_are_not_primary() {
        assert!(is_primary(None, None));
        assert!(!is_primary(Some("CPU"), None));
        assert!(!is_primary(Some("GPU"), Some(1)));
    }
}
