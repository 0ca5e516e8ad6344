//! The tensors of a model, whatever file they came from: a name → tensor directory over
//! memory-mapped GGUF or safetensors files, so an architecture binds its weights one way.
//!
//! Names are GGUF's (`blk.3.attn_q.weight`); an HF checkpoint's names are translated on load by
//! the architecture's table. Shapes are outermost first (`[rows, cols]`, as safetensors and
//! PyTorch write them; GGUF's innermost-first dims are reversed). Every tensor's byte range was
//! checked against its file when the directory was built, and nothing is copied out of the
//! mappings except small vectors (norms, biases) widened to f32 — and GGUF k-quant matrices,
//! which the kernels do not read: those are converted when bound ([`super::kquant`]; packed for
//! the CPU, or, for [`WeightStore::file_weight`], converted into a copy the caller owns and
//! drops once it has uploaded it, so no second copy of the model stays in host memory).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::cpu::WeightRef;
use super::gguf::{GgufError, GgufFile};
use super::kquant::{self, KQuantType, QK_K, StoredType};
use super::packed;
use super::quant::{GgmlType, dequantize_row};

/// Why a model's files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("tensor {0} is missing")]
    MissingTensor(String),
    #[error("tensor {name} is stored as {dtype}, which is not supported (F32, F16, BF16)")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("{0}")]
    Shape(String),
}

/// One tensor in the directory.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    /// The type the engine reads it as: the file's, or a k-quant's conversion target.
    pub ty: GgmlType,
    /// Outermost dimension first.
    pub shape: Vec<usize>,
    file: usize,
    offset: usize,
    size: usize,
    /// For a k-quant: its type as stored.
    kquant: Option<KQuantType>,
}

impl StoredTensor {
    /// Saturating, like the totals built from it: the count is for display, never a size.
    pub fn element_count(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |n, d| n.saturating_mul(*d as u64))
    }

    /// The type as its file stores it, for messages.
    fn stored_name(&self) -> String {
        match self.kquant {
            Some(k) => k.name().to_string(),
            None => format!("{:?}", self.ty),
        }
    }
}

/// A matrix's rows as [`WeightStore::file_weight`] gives them: borrowed from the file, or a
/// k-quant's conversion owned here.
pub struct FileWeight<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: Cow<'a, [u8]>,
}

impl FileWeight<'_> {
    /// The rows as the kernels' view of an unpacked weight.
    pub fn as_weight(&self) -> WeightRef<'_> {
        WeightRef {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: &self.data,
            packed: false,
        }
    }
}

/// A 2-D weight bound by a model: `rows` rows of `cols` elements, rows contiguous in the
/// file; for the CPU kernels, block-quantised ones also packed (see `packed`).
#[derive(Debug, Clone)]
pub struct Matrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    file: usize,
    offset: usize,
    size: usize,
    /// The packed copy the CPU kernels read instead of the file's bytes.
    packed: Option<Arc<[u8]>>,
    /// For a k-quant (the file's bytes are in its format, `ty` is its conversion's): its type.
    kquant: Option<KQuantType>,
}

enum Backing {
    Gguf(Arc<GgufFile>),
    Safetensors(Vec<Mmap>),
}

/// Every tensor of one model.
pub struct WeightStore {
    backing: Backing,
    tensors: HashMap<String, StoredTensor>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl WeightStore {
    /// The tensors of a parsed GGUF file (offsets were checked by the parser).
    pub fn from_gguf(file: Arc<GgufFile>) -> Self {
        let tensors = file
            .tensors
            .iter()
            .map(|(name, t)| {
                let kquant = match t.ty {
                    StoredType::KQuant(k) => Some(k),
                    StoredType::Native(_) => None,
                };
                let tensor = StoredTensor {
                    ty: t.ty.loaded_as(),
                    shape: t.dims.iter().rev().map(|d| *d as usize).collect(),
                    file: 0,
                    offset: t.offset,
                    size: t.size,
                    kquant,
                };
                (name.clone(), tensor)
            })
            .collect();
        Self {
            backing: Backing::Gguf(file),
            tensors,
        }
    }

    /// Map safetensors files and index their tensors under the names `rename` gives them;
    /// tensors it maps to `None` (rotary caches, attention masks) are left out.
    pub fn from_safetensors(
        paths: &[PathBuf],
        rename: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ModelFileError> {
        let mut maps = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (file_index, path) in paths.iter().enumerate() {
            let io_err = |source| ModelFileError::Io {
                path: path.clone(),
                source,
            };
            let file = super::gguf::open_regular_file(path).map_err(io_err)?;
            // SAFETY: read-only mapping; a checkpoint rewritten under a running server is
            // outside what any mmap-based loader can defend against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
            // `deserialize` checks the header, every offset against the buffer, and that each
            // tensor's byte length matches its dtype and shape.
            let parsed =
                SafeTensors::deserialize(&mmap).map_err(|e| ModelFileError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for (name, view) in parsed.iter() {
                let Some(canonical) = rename(name) else {
                    continue;
                };
                let ty = match view.dtype() {
                    Dtype::F32 => GgmlType::F32,
                    Dtype::F16 => GgmlType::F16,
                    Dtype::BF16 => GgmlType::BF16,
                    other => {
                        return Err(ModelFileError::UnsupportedDtype {
                            name: name.to_string(),
                            dtype: format!("{other:?}"),
                        });
                    }
                };
                let data = view.data();
                let offset = data.as_ptr() as usize - mmap.as_ptr() as usize;
                tensors.insert(
                    canonical,
                    StoredTensor {
                        ty,
                        shape: view.shape().to_vec(),
                        file: file_index,
                        offset,
                        size: data.len(),
                        kquant: None,
                    },
                );
            }
            maps.push(mmap);
        }
        Ok(Self {
            backing: Backing::Safetensors(maps),
            tensors,
        })
    }

    fn file_bytes(&self, file: usize) -> &[u8] {
        match &self.backing {
            Backing::Gguf(g) => g.data(),
            Backing::Safetensors(maps) => &maps[file],
        }
    }

    fn bytes(&self, file: usize, offset: usize, size: usize) -> &[u8] {
        &self.file_bytes(file)[offset..offset + size]
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Elements over all tensors; saturating, so shapes no file could hold (the count is
    /// reported, not allocated) cannot overflow it.
    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .values()
            .fold(0u64, |n, t| n.saturating_add(t.element_count()))
    }

    /// Bytes of tensor data over all tensors (saturating, as [`Self::parameter_count`]).
    pub fn weight_bytes(&self) -> u64 {
        self.tensors
            .values()
            .fold(0u64, |n, t| n.saturating_add(t.size as u64))
    }

    /// The `rows × cols` matrix `name`, its shape checked.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, ModelFileError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelFileError::MissingTensor(name.to_string()))?;
        if t.shape != [rows, cols] {
            return Err(ModelFileError::Shape(format!(
                "tensor {name} has shape {:?}, expected [{rows}, {cols}]",
                t.shape
            )));
        }
        let block = match t.kquant {
            Some(_) => QK_K,
            None => t.ty.block_elements(),
        };
        if !cols.is_multiple_of(block) {
            return Err(ModelFileError::Shape(format!(
                "tensor {name}: rows of {cols} do not fill whole {} blocks of {block}",
                t.stored_name()
            )));
        }
        Ok(Matrix {
            ty: t.ty,
            rows,
            cols,
            file: t.file,
            offset: t.offset,
            size: t.size,
            packed: None,
            kquant: t.kquant,
        })
    }

    /// The matrix `name` as the CPU kernels read it: a block-quantised one packed into an
    /// owned copy (rows in groups of sixteen, see `packed`), a float one in place. A k-quant
    /// is converted first (to Q4_1 or Q8_0, see `kquant`), and only the packed copy kept.
    pub fn packed_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, ModelFileError> {
        let mut m = self.matrix(name, rows, cols)?;
        if packed::packs(m.ty) {
            let data = self.bytes(m.file, m.offset, m.size);
            let packed = match m.kquant {
                // Converted for packing only: the converted rows go once packed.
                Some(k) => {
                    packed::pack(m.ty, rows, cols, &kquant::convert_rows(k, rows, cols, data))
                }
                None => packed::pack(m.ty, rows, cols, data),
            };
            m.packed = Some(packed.into());
            // The file's copy is not read again by the CPU kernels: keep it out of memory.
            if let Backing::Gguf(file) = &self.backing {
                file.release(m.offset, m.size);
            }
        }
        Ok(m)
    }

    /// [`Self::packed_matrix`] when the file has it.
    pub fn optional_packed_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Matrix>, ModelFileError> {
        self.contains(name)
            .then(|| self.packed_matrix(name, rows, cols))
            .transpose()
    }

    /// The matrix `name` when the file has it.
    pub fn optional_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Matrix>, ModelFileError> {
        self.contains(name)
            .then(|| self.matrix(name, rows, cols))
            .transpose()
    }

    /// The `n`-element float vector `name` (a norm or a bias), widened to f32. Converters write
    /// these 1-D or as `[1, n]`/`[n, 1]`; any of those is accepted.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelFileError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelFileError::MissingTensor(name.to_string()))?;
        if t.element_count() != n as u64
            || t.kquant.is_some()
            || !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
        {
            return Err(ModelFileError::Shape(format!(
                "tensor {name} should be {n} float values, found {:?} of {}",
                t.shape,
                t.stored_name()
            )));
        }
        let mut out = vec![0f32; n];
        dequantize_row(t.ty, self.bytes(t.file, t.offset, t.size), &mut out);
        Ok(out)
    }

    /// The vector `name` when the file has it.
    pub fn optional_vector(
        &self,
        name: &str,
        n: usize,
    ) -> Result<Option<Vec<f32>>, ModelFileError> {
        if self.contains(name) {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A bound matrix's bytes, for the kernels: its packed copy where it has one.
    pub fn weight<'a>(&'a self, m: &'a Matrix) -> WeightRef<'a> {
        match &m.packed {
            Some(packed) => WeightRef {
                ty: m.ty,
                rows: m.rows,
                cols: m.cols,
                data: packed,
                packed: true,
            },
            None => {
                // A k-quant's bytes are not `m.ty`'s until converted, which packing does.
                assert!(
                    m.kquant.is_none(),
                    "a k-quant matrix is read through packed_matrix or file_weight"
                );
                WeightRef {
                    ty: m.ty,
                    rows: m.rows,
                    cols: m.cols,
                    data: self.bytes(m.file, m.offset, m.size),
                    packed: false,
                }
            }
        }
    }

    /// A bound matrix's rows one after another, whether or not it has a packed copy: for
    /// loaders that convert the weights themselves (the GPU's). The file's bytes in place, or a
    /// k-quant's rows converted to `m.ty` (Q4_1 or Q8_0) into a copy the caller drops once it
    /// is done with them.
    pub fn file_weight(&self, m: &Matrix) -> FileWeight<'_> {
        let data = self.bytes(m.file, m.offset, m.size);
        FileWeight {
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            data: match m.kquant {
                Some(k) => Cow::Owned(kquant::convert_rows(k, m.rows, m.cols, data)),
                None => Cow::Borrowed(data),
            },
        }
    }

    /// Row `r` of a bound matrix widened to f32 (embedding lookups).
    pub fn read_row(&self, m: &Matrix, r: usize, out: &mut [f32]) {
        if let Some(data) = &m.packed {
            dequantize_row(m.ty, &packed::unpack_row(m.ty, m.cols, data, r), out);
            return;
        }
        let data = self.bytes(m.file, m.offset, m.size);
        if let Some(k) = m.kquant {
            // Straight from the file's blocks: exact, and nothing to convert.
            let row_bytes = k.row_bytes(m.cols);
            kquant::dequantize_row(k, &data[r * row_bytes..(r + 1) * row_bytes], out);
            return;
        }
        let row_bytes = m.ty.row_bytes(m.cols);
        dequantize_row(m.ty, &data[r * row_bytes..(r + 1) * row_bytes], out);
    }
}

/// The safetensors files of an HF folder: `model.safetensors`, or every shard named by
/// `model.safetensors.index.json`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelFileError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index_path).map_err(|source| ModelFileError::Io {
        path: index_path.clone(),
        source,
    })?;
    let config_err = |message: String| ModelFileError::Config {
        path: index_path.clone(),
        message,
    };
    let index: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| config_err(e.to_string()))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| config_err("no weight_map object".into()))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for shard in map.values() {
        let name = shard
            .as_str()
            .ok_or_else(|| config_err("weight_map holds a non-string".into()))?;
        // A shard name is a file in this folder, nothing else.
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(config_err(format!("shard name {name:?} leaves the folder")));
        }
        let path = dir.join(name);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(config_err("weight_map is empty".into()));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: Vec<usize>) -> StoredTensor {
        StoredTensor {
            ty: GgmlType::F32,
            shape,
            file: 0,
            offset: 0,
            size: 0,
            kquant: None,
        }
    }

    /// Four tensors of 2^62 elements: the plain sum wrapped to 0 in a release build (and
    /// panicked with overflow checks).
    #[test]
    fn the_parameter_count_saturates_instead_of_wrapping() {
        let tensors = (0..4)
            .map(|i| (format!("t{i}"), tensor(vec![1 << 62])))
            .chain([("zero".to_string(), tensor(vec![1 << 62, 4, 0]))])
            .collect();
        let store = WeightStore {
            backing: Backing::Safetensors(Vec::new()),
            tensors,
        };
        assert_eq!(store.parameter_count(), u64::MAX);
        assert_eq!(tensor(vec![1 << 62, 4, 0]).element_count(), 0);
        assert_eq!(tensor(vec![3, 5]).element_count(), 15);
    }
}
