//! GGUF, llama.cpp's model file: a little-endian header, typed metadata, tensor
//! infos, then aligned tensor data, read here from a memory map.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::quant::TensorType;
use super::ModelError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer that fits, since writers differ in the width they pick.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Where a tensor's data lies in the file.
#[derive(Debug, Clone)]
struct TensorInfo {
    /// `dims[0]` varies fastest: a PyTorch `[out, in]` weight is `[in, out]` here.
    dims: Vec<usize>,
    kind: TensorType,
    /// From the start of the data section.
    offset: usize,
}

/// A tensor's raw bytes, still in its file encoding.
pub struct RawTensor<'a> {
    pub dims: &'a [usize],
    pub kind: TensorType,
    pub bytes: &'a [u8],
}

/// An open GGUF file.
pub struct Gguf {
    map: Mmap,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
    data_start: usize,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf, ModelError> {
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process; the model
        // cache is written once, whole, by a rename, so the file does not change under it.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Gguf::parse(map).map_err(|message| ModelError::Format {
            path: path.to_path_buf(),
            message,
        })
    }

    fn parse(map: Mmap) -> Result<Gguf, String> {
        let mut r = Reader {
            bytes: &map,
            pos: 0,
        };
        if r.take(4)? != MAGIC {
            return Err("not a GGUF file (bad magic)".into());
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!(
                "GGUF version {version} is not supported (2 or 3 are)"
            ));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind)?;
            metadata.insert(key, value);
        }
        let mut tensors = HashMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            let dims = (0..n_dims)
                .map(|_| r.u64().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let kind = TensorType::from_ggml(r.u32()?)
                .map_err(|t| format!("tensor {name}: unsupported type {t}"))?;
            let offset = r.u64()? as usize;
            tensors.insert(name, TensorInfo { dims, kind, offset });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT) as usize;
        if alignment == 0 {
            return Err("general.alignment is 0".into());
        }
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let gguf = Gguf {
            map,
            metadata,
            tensors,
            data_start,
        };
        // Check every tensor's extent now, so `tensor` cannot fail on a short file later.
        for (name, info) in &gguf.tensors {
            let size = info
                .kind
                .byte_size(&info.dims)
                .map_err(|e| format!("tensor {name}: {e}"))?;
            let end = gguf.data_start + info.offset + size;
            if end > gguf.map.len() {
                return Err(format!("tensor {name} runs past the end of the file"));
            }
        }
        Ok(gguf)
    }

    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A tensor by name, or `None` if the file has none so named.
    pub fn tensor(&self, name: &str) -> Option<RawTensor<'_>> {
        let info = self.tensors.get(name)?;
        let start = self.data_start + info.offset;
        let size = info.kind.byte_size(&info.dims).expect("checked at open");
        Some(RawTensor {
            dims: &info.dims,
            kind: info.kind,
            bytes: &self.map[start..start + size],
        })
    }
}

/// A cursor over the header; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or("the header runs past the end of the file")?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn value(&mut self, kind: u32) -> Result<Value, String> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                let item = self.u32()?;
                let n = self.u64()?;
                // Each item takes at least a byte, which bounds a corrupt count.
                if n > (self.bytes.len() - self.pos) as u64 {
                    return Err("an array is longer than the file".into());
                }
                let items = (0..n)
                    .map(|_| self.value(item))
                    .collect::<Result<Vec<_>, _>>()?;
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}
