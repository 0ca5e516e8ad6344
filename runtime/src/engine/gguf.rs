//! GGUF container reader: header, metadata and tensor directory of a memory-mapped file.
//!
//! Every offset and length read from the file is checked before use, so a truncated or
//! malformed file is a [`GgufError`], never a panic or an out-of-bounds read. Tensor data stays
//! in the mapping; [`GgufFile::tensor_bytes`] hands out borrowed slices.
//!
//! Format reference: ggml's `docs/gguf.md` (version 2 and 3, little-endian). Tensor types are
//! the kernels' own ([`super::quant::GgmlType`]) or k-quants, which the weight store converts
//! at load ([`super::kquant`]); any other type is refused, by name.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::kquant::{SUPPORTED_TYPES, StoredType, TypeNumber};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Caps that keep a hostile header from making us allocate absurd amounts up front.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KV: u64 = 1 << 20;
const MAX_DIMS: u32 = 4;
/// Elements in all metadata arrays of one header together. A parsed element takes up to 32
/// bytes against 1 in the file (a `u8`), so without a total a large file could ask for 32 times
/// its size in memory; real files hold about 1.5M (vocabulary, merges, token types, scores).
const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;
/// The fewest bytes one tensor's directory entry takes: name length, dimension count, one
/// dimension, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open model file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error("GGUF file is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error(
        "tensor {name} has type {ty}, which is not supported (supported: {sup})",
        sup = SUPPORTED_TYPES
    )]
    UnsupportedType { name: String, ty: TypeNumber },
    #[error("metadata key {0} is missing")]
    MissingKey(String),
    #[error("metadata key {key} has the wrong type (expected {expected})")]
    WrongType { key: String, expected: &'static str },
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
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
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, when it is any non-negative integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is any numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as ggml stores them.
    pub dims: Vec<u64>,
    /// The type as the file stores it (a k-quant is converted when a model binds it).
    pub ty: StoredType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub size: usize,
}

impl TensorInfo {
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    mmap: Mmap,
    pub version: u32,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: HashMap<String, TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Two tensors sharing bytes are a damaged directory: one of them would be read as the other's
/// data (garbage weights, NaN logits at the first request) instead of refused at load.
fn refuse_overlaps(tensors: &HashMap<String, TensorInfo>) -> Result<(), GgufError> {
    let mut spans: Vec<&TensorInfo> = tensors.values().filter(|t| t.size > 0).collect();
    spans.sort_by_key(|t| (t.offset, t.offset + t.size));
    for pair in spans.windows(2) {
        if pair[1].offset < pair[0].offset + pair[0].size {
            return Err(GgufError::Corrupt(format!(
                "tensors {} and {} share bytes of the file",
                pair[0].name, pair[1].name
            )));
        }
    }
    Ok(())
}

/// Open a model file to map it: a regular file only ([`crate::paths::open_regular_file`]),
/// so that the load fails rather than hangs on a FIFO or maps what is not a file.
pub(crate) fn open_regular_file(path: &Path) -> std::io::Result<File> {
    crate::paths::open_regular_file(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => std::io::Error::new(
            e.kind(),
            "not a regular file (a model is a .gguf file or a folder of safetensors)",
        ),
        _ => e,
    })
}

impl GgufFile {
    /// Map and parse `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = open_regular_file(path)?;
        // SAFETY: the mapping is read-only; a model file changing under a running server is
        // outside what we can defend against, as for every mmap-based loader.
        let mmap = unsafe { Mmap::map(&file)? };
        Self::parse(mmap)
    }

    fn parse(mmap: Mmap) -> Result<Self, GgufError> {
        let mut r = Reader {
            buf: &mmap,
            pos: 0,
            array_elements_left: MAX_ARRAY_ELEMENTS,
        };
        if r.bytes(4)? != MAGIC {
            return Err(GgufError::BadMagic);
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;
        if tensor_count > MAX_TENSORS || kv_count > MAX_KV {
            return Err(GgufError::Corrupt(format!(
                "implausible counts: {tensor_count} tensors, {kv_count} metadata keys"
            )));
        }
        let mut metadata = HashMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            // llama.cpp refuses a repeated key too; keeping either would be a guess.
            if metadata.contains_key(&key) {
                return Err(GgufError::Corrupt(format!(
                    "metadata key {key} appears twice"
                )));
            }
            metadata.insert(key, value);
        }
        // The directory must fit in what is left of the file; checked before reserving for it.
        let left = (r.buf.len() - r.pos) as u64;
        if tensor_count.saturating_mul(MIN_TENSOR_INFO_BYTES) > left {
            return Err(GgufError::Corrupt(format!(
                "{tensor_count} tensors cannot fit in the {left} bytes left"
            )));
        }
        let mut infos = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name} has {n_dims} dimensions"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let raw_ty = r.u32()?;
            let ty = StoredType::from_u32(raw_ty).ok_or_else(|| GgufError::UnsupportedType {
                name: name.clone(),
                ty: TypeNumber(raw_ty),
            })?;
            let rel_offset = r.u64()?;
            infos.push((name, dims, ty, rel_offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| {
                    GgufError::Corrupt("general.alignment is not a power of two".into())
                })?,
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = HashMap::with_capacity(infos.len());
        for (name, dims, ty, rel_offset) in infos {
            if tensors.contains_key(&name) {
                return Err(GgufError::Corrupt(format!("tensor {name} appears twice")));
            }
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, d| acc.checked_mul(*d))
                .ok_or_else(|| GgufError::Corrupt(format!("tensor {name}: size overflows")))?;
            let block = ty.block_elements() as u64;
            if dims[0] % block != 0 {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name}: row length {} is not whole {ty} blocks of {block}",
                    dims[0]
                )));
            }
            let size = (elements / block)
                .checked_mul(ty.block_bytes() as u64)
                .ok_or_else(|| GgufError::Corrupt(format!("tensor {name}: size overflows")))?;
            // Writers place every tensor on the alignment (llama.cpp refuses a file that does
            // not); one off it is a damaged offset that would read the neighbouring bytes.
            if rel_offset % alignment != 0 {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name} starts at {rel_offset}, off the file's {alignment}-byte alignment"
                )));
            }
            let offset = data_start
                .checked_add(rel_offset)
                .filter(|start| {
                    start
                        .checked_add(size)
                        .is_some_and(|end| end <= mmap.len() as u64)
                })
                .ok_or_else(|| {
                    GgufError::Corrupt(format!("tensor {name} lies outside the file (truncated?)"))
                })?;
            tensors.insert(
                name.clone(),
                TensorInfo {
                    name,
                    dims,
                    ty,
                    offset: offset as usize,
                    size: size as usize,
                },
            );
        }
        refuse_overlaps(&tensors)?;
        Ok(Self {
            mmap,
            version,
            metadata,
            tensors,
        })
    }

    /// The whole mapped file (tensor offsets index into it).
    pub fn data(&self) -> &[u8] {
        &self.mmap
    }

    /// Drop the resident pages of `len` bytes at `offset` (a tensor the engine has copied, e.g.
    /// packed): they leave the process's resident set and would be read from the file again if
    /// touched. Pages shared with neighbouring data go too and simply fault back in. Advice
    /// only: failure changes nothing.
    pub fn release(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        // SAFETY: the mapping is read-only and shared, so dropping its pages loses nothing:
        // every byte reads the same afterwards (from the file), and no reference is left
        // dangling.
        let _ = unsafe {
            self.mmap
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
        };
        #[cfg(not(unix))]
        let _ = (offset, len);
    }

    /// Raw bytes of a tensor; bounds were checked at parse time.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.size]
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.into()))?;
        v.as_u64().ok_or(GgufError::WrongType {
            key: key.into(),
            expected: "integer",
        })
    }

    pub fn f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.into()))?;
        v.as_f64().ok_or(GgufError::WrongType {
            key: key.into(),
            expected: "number",
        })
    }

    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key) {
            Some(MetaValue::Str(s)) => Ok(s),
            Some(_) => Err(GgufError::WrongType {
                key: key.into(),
                expected: "string",
            }),
            None => Err(GgufError::MissingKey(key.into())),
        }
    }

    pub fn array(&self, key: &str) -> Result<&[MetaValue], GgufError> {
        match self.get(key) {
            Some(MetaValue::Array(a)) => Ok(a),
            Some(_) => Err(GgufError::WrongType {
                key: key.into(),
                expected: "array",
            }),
            None => Err(GgufError::MissingKey(key.into())),
        }
    }
}

/// Bounds-checked little-endian cursor over the header.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// What is left of [`MAX_ARRAY_ELEMENTS`] for the arrays still to be read.
    array_elements_left: u64,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| GgufError::Corrupt(format!("header ends early at byte {}", self.pos)))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .map_err(|_| GgufError::Corrupt(format!("string length {len} is too large")))?;
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| GgufError::Corrupt("metadata string is not UTF-8".into()))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(self.array::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(GgufError::Corrupt(format!("invalid bool byte {b}"))),
            },
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Corrupt("arrays nested too deeply".into()));
                }
                let elem_ty = self.u32()?;
                let len = self.u64()?;
                // Each element takes at least its type's smallest encoding, so a length the
                // remaining bytes cannot hold is corrupt; checked before anything is allocated.
                let smallest: u64 = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => 1,
                };
                if len.saturating_mul(smallest) > (self.buf.len() - self.pos) as u64 {
                    return Err(GgufError::Corrupt(format!(
                        "array of {len} elements overruns"
                    )));
                }
                self.array_elements_left =
                    self.array_elements_left.checked_sub(len).ok_or_else(|| {
                        GgufError::Corrupt(format!(
                            "metadata arrays hold more than {MAX_ARRAY_ELEMENTS} elements"
                        ))
                    })?;
                // A parsed value is larger than its encoding (up to 32 bytes for a 1-byte
                // bool): reserve a bounded amount and let a real array grow as it parses.
                let mut items = Vec::with_capacity((len as usize).min(1 << 16));
                for _ in 0..len {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(GgufError::Corrupt(format!("unknown metadata type {other}"))),
        })
    }
}

/// GGUF files written by hand for tests elsewhere in the engine.
#[cfg(test)]
pub(crate) mod test_files {
    use super::GgufFile;

    /// One GGUF metadata value for [`gguf_file`].
    #[derive(Clone)]
    pub(crate) enum Meta<'a> {
        Str(&'a str),
        Strs(&'a [&'a str]),
        U64(u64),
        Bool(bool),
        F32(f32),
        F32s(&'a [f32]),
        U32s(&'a [u32]),
    }

    /// Writes a tensor-less GGUF file with `meta` and opens it.
    pub(crate) fn gguf_file(name: &str, meta: &[(&str, Meta<'_>)]) -> GgufFile {
        fn string(b: &mut Vec<u8>, s: &str) {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // tensors
        b.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        for (key, value) in meta {
            string(&mut b, key);
            match value {
                Meta::Str(s) => {
                    b.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut b, s);
                }
                Meta::Strs(list) => {
                    b.extend_from_slice(&9u32.to_le_bytes());
                    b.extend_from_slice(&8u32.to_le_bytes());
                    b.extend_from_slice(&(list.len() as u64).to_le_bytes());
                    for s in *list {
                        string(&mut b, s);
                    }
                }
                Meta::U64(v) => {
                    b.extend_from_slice(&10u32.to_le_bytes());
                    b.extend_from_slice(&v.to_le_bytes());
                }
                Meta::Bool(v) => {
                    b.extend_from_slice(&7u32.to_le_bytes());
                    b.push(u8::from(*v));
                }
                Meta::F32(v) => {
                    b.extend_from_slice(&6u32.to_le_bytes());
                    b.extend_from_slice(&v.to_le_bytes());
                }
                Meta::F32s(list) => {
                    b.extend_from_slice(&9u32.to_le_bytes());
                    b.extend_from_slice(&6u32.to_le_bytes());
                    b.extend_from_slice(&(list.len() as u64).to_le_bytes());
                    list.iter()
                        .for_each(|v| b.extend_from_slice(&v.to_le_bytes()));
                }
                Meta::U32s(list) => {
                    b.extend_from_slice(&9u32.to_le_bytes());
                    b.extend_from_slice(&4u32.to_le_bytes());
                    b.extend_from_slice(&(list.len() as u64).to_le_bytes());
                    list.iter()
                        .for_each(|v| b.extend_from_slice(&v.to_le_bytes()));
                }
            }
        }
        let path =
            std::env::temp_dir().join(format!("agentrt-tok-{name}-{}.gguf", std::process::id()));
        std::fs::write(&path, &b).expect("write");
        let file = GgufFile::open(&path);
        let _ = std::fs::remove_file(&path);
        file.expect("parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal GGUF image: one string key and one F32 tensor of 32 elements.
    fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&1u64.to_le_bytes()); // kv
        let key = b"general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"llama");
        let name = b"w";
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&32u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..32 {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        b
    }

    fn parse_bytes(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        let mut mm = memmap2::MmapMut::map_anon(bytes.len().max(1))?;
        mm[..bytes.len()].copy_from_slice(bytes);
        let mm = mm.make_read_only()?;
        // An anonymous map rounds up to a page; parse exactly `bytes.len()` by checking
        // truncation separately in the tests that need it.
        GgufFile::parse(mm)
    }

    #[test]
    fn parses_a_minimal_file() {
        let f = parse_bytes(&tiny_gguf()).expect("parse");
        assert_eq!(f.str("general.architecture").expect("arch"), "llama");
        let t = &f.tensors["w"];
        let data = f.tensor_bytes(t);
        assert_eq!(data.len(), 128);
        assert_eq!(
            f32::from_le_bytes(data[4..8].try_into().expect("4 bytes")),
            1.0
        );
    }

    #[test]
    fn every_truncation_of_the_header_is_an_error_not_a_panic() {
        let full = tiny_gguf();
        let header_len = full.len() - 128;
        for cut in 0..header_len {
            let mut v = full[..cut].to_vec();
            // Pad with a byte pattern that cannot be mistaken for valid continuation data.
            v.resize(cut, 0);
            let path =
                std::env::temp_dir().join(format!("agentrt-gguf-trunc-{}", std::process::id()));
            std::fs::write(&path, &v).expect("write");
            let res = GgufFile::open(&path);
            let _ = std::fs::remove_file(&path);
            assert!(res.is_err(), "truncation at {cut} was accepted");
        }
    }

    #[test]
    fn tensor_past_the_end_is_rejected() {
        let mut bytes = tiny_gguf();
        bytes.truncate(bytes.len() - 4);
        let path = std::env::temp_dir().join(format!("agentrt-gguf-short-{}", std::process::id()));
        std::fs::write(&path, &bytes).expect("write");
        let res = GgufFile::open(&path);
        let _ = std::fs::remove_file(&path);
        assert!(matches!(res, Err(GgufError::Corrupt(_))), "{res:?}");
    }

    /// An array whose declared length its element type cannot fit in the bytes left is
    /// corrupt, refused before anything is allocated for it (a length that only counted one
    /// byte per element let a large file ask for 32 bytes of parsed values per file byte).
    #[test]
    fn an_array_longer_than_the_file_can_hold_is_refused() {
        let array = |elem_ty: u32, len: u64, payload: usize| {
            let mut b = Vec::new();
            b.extend_from_slice(MAGIC);
            b.extend_from_slice(&3u32.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes()); // tensors
            b.extend_from_slice(&1u64.to_le_bytes()); // kv
            b.extend_from_slice(&1u64.to_le_bytes());
            b.push(b'a');
            b.extend_from_slice(&9u32.to_le_bytes()); // array
            b.extend_from_slice(&elem_ty.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.resize(b.len() + payload, 0);
            b
        };
        // 10000 u32 values in about 30000 bytes (the test map rounds up to a page): enough
        // bytes for 10000 one-byte elements, not for these.
        let res = parse_bytes(&array(4, 10_000, 30_000));
        assert!(
            matches!(&res, Err(GgufError::Corrupt(m)) if m.contains("overruns")),
            "{res:?}"
        );
        let res = parse_bytes(&array(4, u64::MAX / 2, 64));
        assert!(matches!(res, Err(GgufError::Corrupt(_))), "{res:?}");
        // The same array with its bytes present parses.
        let f = parse_bytes(&array(4, 10_000, 40_000)).expect("parse");
        assert!(matches!(&f.metadata["a"], MetaValue::Array(v) if v.len() == 10_000));
    }

    /// A header whose metadata is `arrays`: (key, length of a `u8` array) pairs, payloads
    /// included.
    fn u8_arrays(arrays: &[(&str, u64)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // tensors
        b.extend_from_slice(&(arrays.len() as u64).to_le_bytes());
        for (key, len) in arrays {
            b.extend_from_slice(&(key.len() as u64).to_le_bytes());
            b.extend_from_slice(key.as_bytes());
            b.extend_from_slice(&9u32.to_le_bytes()); // array
            b.extend_from_slice(&0u32.to_le_bytes()); // of u8
            b.extend_from_slice(&len.to_le_bytes());
            b.resize(b.len() + *len as usize, 0);
        }
        b
    }

    /// Arrays whose bytes are all present but whose elements together pass the header's
    /// budget are refused: parsed, each one-byte element would take 32.
    #[test]
    fn metadata_arrays_past_the_element_budget_are_refused() {
        let half = MAX_ARRAY_ELEMENTS / 2 + 1;
        let res = parse_bytes(&u8_arrays(&[("a", half), ("b", half)]));
        assert!(
            matches!(&res, Err(GgufError::Corrupt(m)) if m.contains("more than")),
            "{res:?}"
        );
        let f = parse_bytes(&u8_arrays(&[("a", 1000), ("b", 1000)])).expect("parse");
        assert!(matches!(&f.metadata["b"], MetaValue::Array(v) if v.len() == 1000));
    }

    #[test]
    fn a_repeated_metadata_key_is_refused() {
        let res = parse_bytes(&u8_arrays(&[("a", 1), ("a", 2)]));
        assert!(
            matches!(&res, Err(GgufError::Corrupt(m)) if m.contains("twice")),
            "{res:?}"
        );
    }

    #[test]
    fn a_repeated_tensor_name_is_refused() {
        // tiny_gguf with a second directory entry for "w", at the same data.
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes()); // tensors
        b.extend_from_slice(&0u64.to_le_bytes()); // kv
        for _ in 0..2 {
            b.extend_from_slice(&1u64.to_le_bytes());
            b.push(b'w');
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&32u64.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes()); // F32
            b.extend_from_slice(&0u64.to_le_bytes());
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.resize(b.len() + 128, 0);
        let res = parse_bytes(&b);
        assert!(
            matches!(&res, Err(GgufError::Corrupt(m)) if m.contains("twice")),
            "{res:?}"
        );
    }

    /// Two 32-element F32 tensors `a` and `b` at the given offsets in a file with room for
    /// both.
    fn two_tensors_at(offset_a: u64, offset_b: u64) -> Result<GgufFile, GgufError> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes()); // tensors
        b.extend_from_slice(&0u64.to_le_bytes()); // kv
        for (name, offset) in [(b'a', offset_a), (b'b', offset_b)] {
            b.extend_from_slice(&1u64.to_le_bytes());
            b.push(name);
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&32u64.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes()); // F32
            b.extend_from_slice(&offset.to_le_bytes());
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.resize(b.len() + 512, 0);
        parse_bytes(&b)
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let path = std::env::temp_dir().join(format!("agentrt-fifo-{}.gguf", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            eprintln!("skipped: mkfifo is not available");
            return;
        }
        let res = GgufFile::open(&path);
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(&res, Err(e) if e.to_string().contains("not a regular file")),
            "{res:?}"
        );
    }

    #[test]
    fn tensors_off_the_alignment_or_sharing_bytes_are_refused() {
        assert!(two_tensors_at(0, 128).is_ok());
        let corrupt = |res: Result<GgufFile, GgufError>, says: &str| {
            assert!(
                matches!(&res, Err(GgufError::Corrupt(m)) if m.contains(says)),
                "{res:?}"
            );
        };
        corrupt(two_tensors_at(0, 130), "alignment");
        corrupt(two_tensors_at(0, 96), "share bytes");
        corrupt(two_tensors_at(128, 128), "share bytes");
    }

    /// A tensor count the rest of the file cannot hold is refused before anything is reserved
    /// for it (the directory used to be reserved from the count alone).
    #[test]
    fn a_tensor_count_the_file_cannot_hold_is_refused_up_front() {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&MAX_TENSORS.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // kv
        b.resize(b.len() + 64, 0);
        let res = parse_bytes(&b);
        assert!(
            matches!(&res, Err(GgufError::Corrupt(m)) if m.contains("cannot fit")),
            "{res:?}"
        );
    }

    /// A GGUF image holding one tensor `w` of type number `ty`, dimensions `dims` (innermost
    /// first) and bytes `data`.
    fn one_tensor(ty: u32, dims: &[u64], data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&0u64.to_le_bytes()); // kv
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'w');
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // offset
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend_from_slice(data);
        b
    }

    /// `bytes` written to a temporary file and opened: a file's exact length (an anonymous
    /// map is rounded up to a page), and a file's pages, which the weight store may drop and
    /// read again (an anonymous map's would come back zeroed).
    fn open_bytes(bytes: &[u8], tag: &str) -> Result<GgufFile, GgufError> {
        let path = std::env::temp_dir().join(format!("agentrt-gguf-{tag}-{}", std::process::id()));
        std::fs::write(&path, bytes).expect("write");
        let res = GgufFile::open(&path);
        let _ = std::fs::remove_file(&path);
        res
    }

    /// A Q6_K tensor (llama-quantize writes `output.weight` so even in Q4_0 files) loads: its
    /// size is Q6_K's, the weight store reads its rows back as ggml dequantises them, hands
    /// the kernels (and the GPU loader) its Q8_0 conversion, and packs that.
    #[test]
    fn a_q6_k_tensor_loads() {
        use crate::engine::kquant::{self, KQuantType, QK_K};
        use crate::engine::quant::{GgmlType, dequantize_row};
        use crate::engine::weights::WeightStore;
        let reference = kquant::tests::reference()
            .into_iter()
            .find(|r| r.ty == KQuantType::Q6K)
            .expect("Q6_K blocks");
        // One block a row: gguf-py's values are the rows' values.
        let rows = reference.blocks.len();
        let data: Vec<u8> = reference
            .blocks
            .iter()
            .flat_map(|(b, _)| b.iter().copied())
            .collect();
        let bytes = one_tensor(14, &[QK_K as u64, rows as u64], &data);
        let file = open_bytes(&bytes, "q6k").expect("a Q6_K tensor loads");
        let info = &file.tensors["w"];
        assert_eq!(info.ty, StoredType::KQuant(KQuantType::Q6K));
        assert_eq!(info.size, rows * 210);
        assert_eq!(file.tensor_bytes(info), &data[..]);

        let store = WeightStore::from_gguf(std::sync::Arc::new(file));
        let m = store.matrix("w", rows, QK_K).expect("matrix");
        assert_eq!(m.ty, GgmlType::Q8_0);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let mut row = vec![0f32; QK_K];
        for (r, (_, want)) in reference.blocks.iter().enumerate() {
            store.read_row(&m, r, &mut row);
            assert_eq!(bits(&row), bits(want), "row {r}");
        }
        let converted = kquant::convert_rows(KQuantType::Q6K, rows, QK_K, &data);
        let w = store.file_weight(&m);
        assert_eq!((w.ty, w.rows, w.cols), (GgmlType::Q8_0, rows, QK_K));
        // Converted for the caller, who owns (and drops) the copy.
        assert!(matches!(w.data, std::borrow::Cow::Owned(_)));
        assert_eq!(&w.data[..], &converted[..]);

        let p = store.packed_matrix("w", rows, QK_K).expect("packed");
        assert!(store.weight(&p).packed);
        let row_bytes = GgmlType::Q8_0.row_bytes(QK_K);
        for r in 0..rows {
            store.read_row(&p, r, &mut row);
            let mut want = vec![0f32; QK_K];
            dequantize_row(
                GgmlType::Q8_0,
                &converted[r * row_bytes..(r + 1) * row_bytes],
                &mut want,
            );
            assert_eq!(bits(&row), bits(&want), "packed row {r}");
        }
    }

    /// Every k-quant's tensor takes its type's bytes (a size off by one block would shift
    /// every later tensor's data), and one a byte short of them is refused.
    #[test]
    fn k_quant_tensors_take_their_blocks_bytes() {
        for (ty, block) in [(10u32, 84usize), (11, 110), (12, 144), (13, 176), (14, 210)] {
            // Three rows of two blocks.
            let size = 6 * block;
            let f = parse_bytes(&one_tensor(ty, &[512, 3], &vec![0; size])).expect("parse");
            assert_eq!(f.tensors["w"].size, size, "type {ty}");
            let mut short = one_tensor(ty, &[512, 3], &vec![0; size]);
            short.pop();
            let res = open_bytes(&short, &format!("short-{ty}"));
            assert!(
                matches!(res, Err(GgufError::Corrupt(_))),
                "type {ty}: {res:?}"
            );
        }
    }

    #[test]
    fn a_k_quant_row_that_is_not_whole_blocks_is_refused() {
        // 128 weights a row: half a Q4_K block.
        let res = parse_bytes(&one_tensor(12, &[128, 2], &[0; 288]));
        assert!(
            matches!(&res, Err(GgufError::Corrupt(m)) if m.contains("Q4_K") && m.contains("256")),
            "{res:?}"
        );
    }

    /// A type the engine cannot load is named, with the ones it can.
    #[test]
    fn an_unsupported_type_is_named_with_the_supported_ones() {
        let err = parse_bytes(&one_tensor(17, &[256, 1], &[0; 66])).expect_err("IQ2_XS");
        assert!(
            matches!(&err, GgufError::UnsupportedType { ty, .. } if ty.0 == 17),
            "{err:?}"
        );
        let message = err.to_string();
        for part in ["tensor w", "IQ2_XS (17)", "Q4_1", "Q4_K", "Q6_K", "BF16"] {
            assert!(message.contains(part), "{part}: {message}");
        }
        let err = parse_bytes(&one_tensor(1234, &[32], &[0; 64])).expect_err("unknown");
        assert!(err.to_string().contains("unknown type 1234"), "{err}");
    }

    #[test]
    fn bad_magic_and_version_are_named() {
        let mut bytes = tiny_gguf();
        bytes[0] = b'X';
        assert!(matches!(parse_bytes(&bytes), Err(GgufError::BadMagic)));
        let mut bytes = tiny_gguf();
        bytes[4] = 9;
        assert!(matches!(
            parse_bytes(&bytes),
            Err(GgufError::UnsupportedVersion(9))
        ));
    }
}
