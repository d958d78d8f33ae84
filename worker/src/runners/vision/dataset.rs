//! Labelled image sets, one folder per class, decoded into tensors.
//!
//! Images may be PNG or JPEG of any size: each is resized to the model's square input and
//! scaled to 0..1. A set whose images are all grayscale stays one channel; otherwise every
//! image is read as RGB. A file that is not a readable image is an error naming it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use image::{DynamicImage, imageops::FilterType};

/// Limits on what one dataset may hold.
pub const MAX_IMAGES: usize = 100_000;
pub const MAX_CLASSES: usize = 1_000;
pub const MAX_IMAGE_SIDE: u32 = 8_192;

/// How images become model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputShape {
    pub channels: usize,
    /// Images are resized to `size × size`.
    pub size: usize,
}

impl InputShape {
    pub fn features(&self) -> usize {
        self.channels * self.size * self.size
    }
}

/// A decoded dataset: `images` is `(n, channels, size, size)` in 0..1, `labels` `(n,)`
/// indices into `classes`.
pub struct Dataset {
    pub classes: Vec<String>,
    pub shape: InputShape,
    pub images: Tensor,
    pub labels: Tensor,
    pub files: Vec<PathBuf>,
}

/// An image file and its class index.
pub type LabelledFile = (PathBuf, u32);

/// The image files of a folder-per-class dataset: the class names (sorted) and the files.
pub fn list(dir: &Path) -> anyhow::Result<(Vec<String>, Vec<LabelledFile>)> {
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read dataset {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|name| !name.starts_with('.'))
        .collect();
    classes.sort();
    if classes.len() < 2 {
        bail!("dataset {}: needs at least two class folders, found {}", dir.display(), classes.len());
    }
    if classes.len() > MAX_CLASSES {
        bail!("dataset {}: {} classes; at most {MAX_CLASSES}", dir.display(), classes.len());
    }
    let mut files = Vec::new();
    for (index, class) in classes.iter().enumerate() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join(class))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        found.sort();
        if found.is_empty() {
            bail!("dataset {}: class {class:?} has no images", dir.display());
        }
        files.extend(found.into_iter().map(|f| (f, index as u32)));
    }
    if files.len() > MAX_IMAGES {
        bail!("dataset {}: {} images; at most {MAX_IMAGES}", dir.display(), files.len());
    }
    Ok((classes, files))
}

/// Decodes one image file's bytes, naming `name` in errors.
pub fn decode(bytes: &[u8], name: &str) -> anyhow::Result<DynamicImage> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("{name}: cannot read"))?;
    let (width, height) = reader.into_dimensions().with_context(|| format!("{name}: not a PNG or JPEG image"))?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        bail!("{name}: {width}×{height} pixels; at most {MAX_IMAGE_SIDE} on a side");
    }
    image::load_from_memory(bytes).with_context(|| format!("{name}: not a readable PNG or JPEG image"))
}

/// An image as model input: resized, `(channels, size, size)` values in 0..1.
pub fn pixels(image: &DynamicImage, shape: InputShape) -> Vec<f32> {
    let size = shape.size as u32;
    let resized = if image.width() == size && image.height() == size {
        image.clone()
    } else {
        image.resize_exact(size, size, FilterType::Triangle)
    };
    let (plane, channels) = (shape.size * shape.size, shape.channels);
    let mut out = vec![0f32; channels * plane];
    if channels == 1 {
        for (i, p) in resized.to_luma8().pixels().enumerate() {
            out[i] = p.0[0] as f32 / 255.0;
        }
    } else {
        for (i, p) in resized.to_rgb8().pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = p.0[c] as f32 / 255.0;
            }
        }
    }
    out
}

/// Whether an image carries colour.
fn is_color(image: &DynamicImage) -> bool {
    image.color().has_color()
}

/// Loads a folder-per-class dataset, resizing to `size` (0: the first image's size).
pub fn load(dir: &Path, size: usize, device: &Device) -> anyhow::Result<Dataset> {
    let (classes, files) = list(dir)?;
    let mut decoded = Vec::with_capacity(files.len());
    for (file, _) in &files {
        let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        decoded.push(decode(&bytes, &file.display().to_string())?);
    }
    let channels = if decoded.iter().any(is_color) { 3 } else { 1 };
    let size = if size == 0 { decoded[0].width().max(decoded[0].height()) as usize } else { size };
    let shape = InputShape { channels, size };
    let mut data = Vec::with_capacity(decoded.len() * shape.features());
    for image in &decoded {
        data.extend(pixels(image, shape));
    }
    let images = Tensor::from_vec(data, (decoded.len(), channels, size, size), device)?;
    let labels = Tensor::from_vec(files.iter().map(|(_, l)| *l).collect::<Vec<u32>>(), files.len(), device)?;
    Ok(Dataset { classes, shape, images, labels, files: files.into_iter().map(|(f, _)| f).collect() })
}
