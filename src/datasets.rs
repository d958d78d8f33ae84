//! A dataset's image files before they are decoded: read from a folder on disk or an
//! uploaded archive (zip, tar, tar.gz) into memory and checked, without decoding a pixel.
//! The service checks an upload with [`Source::check_archive`] before storing it; the worker
//! decodes the images into tensors (its `models::vision::dataset`). Nothing here needs
//! candle, so the service and clients (the CLI archives a folder with [`tar_folder`]) use
//! it without the worker.
//!
//! A dataset holds one folder per class, either at the top (`cat/1.png`) or split into
//! `train/` and `test/` (`train/cat/1.png`, `test/cat/9.png`). A single folder around
//! everything is looked through; hidden files, `__MACOSX` and files outside class
//! folders (a README) are skipped. Limits bound what one dataset may hold and what an
//! archive may unpack to, so a hostile upload costs a bounded amount of memory.

use std::{
    collections::BTreeSet,
    io::{Cursor, Read},
    path::Path,
};

use anyhow::{Context, bail};

/// The most images one dataset may hold.
pub const MAX_IMAGES: usize = 100_000;
/// The most classes one dataset may have.
pub const MAX_CLASSES: usize = 1_000;
/// The most pixels an image may have on a side.
pub const MAX_IMAGE_SIDE: u32 = 8_192;
/// The most bytes one image file may have.
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// The most bytes an archive (or a folder) may unpack to: a guard against decompression
/// bombs, together with [`MAX_RATIO`].
pub const MAX_UNPACKED_BYTES: u64 = 2 << 30;
/// An archive may unpack to at most this many times its own size (but always to at least
/// [`MIN_UNPACKED_LIMIT`]): images are already compressed, so a real dataset unpacks to
/// about its archive's size, while a zip bomb unpacks to a thousand times it. The limit
/// is `min(MAX_UNPACKED_BYTES, max(MIN_UNPACKED_LIMIT, MAX_RATIO × archive bytes))`, and
/// it is checked while unpacking, so a bomb is refused after unpacking at most that much.
pub const MAX_RATIO: u64 = 100;
/// The unpacked size every archive may reach whatever its compression ratio.
pub const MIN_UNPACKED_LIMIT: u64 = 1 << 20;
/// The most pixels (width × height, summed over every image) one dataset may declare:
/// 2³³, e.g. 100,000 images of 290×290 or 128 of 8,192×8,192. It bounds what a worker
/// has to decode.
pub const MAX_DATASET_PIXELS: u64 = 1 << 33;
/// How much of an image's start the upload check buffers to read its header; the rest of
/// the file streams through a fixed buffer, so checking holds O(this), not O(the archive).
pub const HEADER_BYTES: u64 = 512 << 10;

/// One image file: its path inside the dataset (for errors), its class and its bytes.
pub struct ImageFile {
    pub name: String,
    pub class: u32,
    pub bytes: Vec<u8>,
}

/// A dataset's files, not yet decoded.
pub struct Source {
    /// Class names, sorted; an image's `class` indexes this.
    pub classes: Vec<String>,
    pub train: Vec<ImageFile>,
    /// Held-out images (`test/`); empty when there are none.
    pub test: Vec<ImageFile>,
}

/// What the upload check learns about a dataset without keeping its images: its classes
/// and how many images each part holds.
#[derive(Debug)]
pub struct Summary {
    pub classes: Vec<String>,
    pub train_images: usize,
    pub test_images: usize,
}

/// Files sorted into classes and parts, each carrying a payload `T` (its bytes, or what
/// the check found).
struct Layout<T> {
    classes: Vec<String>,
    /// (name, class, payload)
    train: Vec<(String, u32, T)>,
    test: Vec<(String, u32, T)>,
}

impl Source {
    /// Reads a folder (any of the layouts above). Symbolic links inside it are refused
    /// (a dataset is its own files, not whatever they point at), and its files may hold
    /// at most [`MAX_UNPACKED_BYTES`] together.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Source> {
        let mut files = Vec::new();
        let mut total = 0;
        read_dir_into(dir, dir, &mut files, &mut total)?;
        Source::from_files(files).with_context(|| format!("dataset {}", dir.display()))
    }

    /// Reads an archive: zip, tar or gzip-compressed tar, told apart by their first bytes.
    /// It may unpack to at most [`unpacked_limit`] bytes. This holds every file in memory:
    /// the worker's way in; the service checks an upload with [`Source::check_archive`].
    pub fn from_archive(bytes: &[u8]) -> anyhow::Result<Source> {
        let mut files = Vec::new();
        walk_archive(bytes, |name, entry| {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            files.push((name.to_string(), data));
            Ok(())
        })?;
        Source::from_files(files)
    }

    /// Checks an archive as reading it with [`Source::from_archive`] and checking each
    /// image's header would, but streaming: each file passes through a bounded reader that counts its bytes against
    /// [`MAX_FILE_BYTES`] and the archive's [`unpacked_limit`] as they are unpacked, and
    /// only the first [`HEADER_BYTES`] of each are buffered, so memory stays O(that)
    /// however large the archive unpacks. Every image's header is checked (format, size,
    /// and for a PNG its chunk structure, see `check_png`), and the pixels all images
    /// declare are capped by [`MAX_DATASET_PIXELS`]. Only names and classes are kept.
    pub fn check_archive(bytes: &[u8]) -> anyhow::Result<Summary> {
        // Per file: what the image check found (pixels, or why it is not an image). A
        // file beside the class folders (a README) is not an image and that is fine, so
        // verdicts are reported only once the layout says which files are images.
        let mut files: Vec<(String, Result<u64, String>)> = Vec::new();
        walk_archive(bytes, |name, entry| {
            let verdict = inspect(name, entry)?;
            files.push((name.to_string(), verdict));
            Ok(())
        })?;
        let layout = place(files)?;
        let mut pixels = 0u64;
        for (name, _, verdict) in layout.train.iter().chain(&layout.test) {
            match verdict {
                Ok(p) => pixels += p,
                Err(why) => bail!("{name}: {why}"),
            }
        }
        if pixels > MAX_DATASET_PIXELS {
            bail!("the images declare {pixels} pixels together; at most {MAX_DATASET_PIXELS} per dataset");
        }
        Ok(Summary { classes: layout.classes, train_images: layout.train.len(), test_images: layout.test.len() })
    }

    /// Sorts `(path, bytes)` pairs into classes and parts.
    fn from_files(files: Vec<(String, Vec<u8>)>) -> anyhow::Result<Source> {
        let layout = place(files)?;
        let file = |(name, class, bytes)| ImageFile { name, class, bytes };
        Ok(Source {
            classes: layout.classes,
            train: layout.train.into_iter().map(file).collect(),
            test: layout.test.into_iter().map(file).collect(),
        })
    }
}

/// Sorts `(path, payload)` pairs into classes and parts.
fn place<T>(mut files: Vec<(String, T)>) -> anyhow::Result<Layout<T>> {
    files.retain(|(path, _)| {
        !path.split('/').any(|part| (part.starts_with('.') && part != ".") || part == "__MACOSX")
            && !path.ends_with('/')
    });
    let mut parts: Vec<Vec<String>> = files
        .iter()
        .map(|(p, _)| p.split('/').filter(|s| !s.is_empty() && *s != ".").map(String::from).collect())
        .collect();
    // One folder around everything (`catvnoncat/train/cat/1.png`) is looked through.
    while parts.iter().all(|p| p.len() >= 2 && p[0] == parts[0][0]) && parts.iter().any(|p| p.len() > 2) {
        parts.iter_mut().for_each(|p| {
            p.remove(0);
        });
    }
    let split = parts.iter().any(|p| p.len() == 3 && (p[0] == "train" || p[0] == "test"));
    // (part, class, file index): part 0 is train, 1 test.
    let mut placed = Vec::new();
    for (index, p) in parts.iter().enumerate() {
        let (part, rest) = match (split, p.first().map(String::as_str)) {
            (true, Some("train")) => (0, &p[1..]),
            (true, Some("test")) => (1, &p[1..]),
            (true, _) => continue,
            (false, _) => (0, &p[..]),
        };
        match rest.len() {
            0 | 1 => continue, // a file beside the class folders, e.g. a README
            2 => placed.push((part, rest[0].to_string(), index)),
            _ => bail!("{}: images must be directly inside a class folder", files[index].0),
        }
    }
    let classes: Vec<String> = placed
        .iter()
        .filter(|(part, ..)| *part == 0)
        .map(|(_, c, _)| c.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if classes.len() < 2 {
        bail!("needs at least two class folders{}, found {}", if split { " under train/" } else { "" }, classes.len());
    }
    if classes.len() > MAX_CLASSES {
        bail!("{} classes; at most {MAX_CLASSES}", classes.len());
    }
    if placed.len() > MAX_IMAGES {
        bail!("{} images; at most {MAX_IMAGES}", placed.len());
    }
    let mut slots: Vec<Option<T>> = files.into_iter().map(|(_, b)| Some(b)).collect();
    let names: Vec<String> = parts.iter().map(|p| p.join("/")).collect();
    let mut layout = Layout { classes, train: Vec::new(), test: Vec::new() };
    for (part, class, index) in placed {
        let Ok(class) = layout.classes.binary_search(&class) else {
            bail!("{}: class {class:?} has no training images", names[index]);
        };
        let Some(payload) = slots[index].take() else { continue };
        let file = (names[index].clone(), class as u32, payload);
        if part == 0 { layout.train.push(file) } else { layout.test.push(file) }
    }
    let mut trained = vec![false; layout.classes.len()];
    layout.train.iter().for_each(|(_, class, _)| trained[*class as usize] = true);
    if let Some(index) = trained.iter().position(|t| !t) {
        bail!("class {:?} has no training images", layout.classes[index]);
    }
    layout.train.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    layout.test.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    Ok(layout)
}

/// Reads an image's format and size from its header, naming `name` in errors.
pub fn dimensions(bytes: &[u8], name: &str) -> anyhow::Result<(u32, u32)> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("{name}: cannot read"))?;
    let (width, height) = reader.into_dimensions().with_context(|| format!("{name}: not a PNG or JPEG image"))?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        bail!("{name}: {width}×{height} pixels; at most {MAX_IMAGE_SIDE} on a side");
    }
    Ok((width, height))
}

fn read_dir_into(root: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>)>, total: &mut u64) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        if name.split('/').any(|p| p.starts_with('.')) {
            continue;
        }
        // Not followed: a link could lead out of the dataset (or around in a loop).
        let meta = path.symlink_metadata().with_context(|| format!("cannot read {}", path.display()))?;
        if meta.file_type().is_symlink() {
            bail!("{name}: is a symbolic link; a dataset folder must hold its files itself");
        }
        if meta.is_dir() {
            read_dir_into(root, &path, files, total)?;
        } else if meta.is_file() {
            let size = meta.len();
            if size > MAX_FILE_BYTES {
                bail!("{name}: {size} bytes; at most {MAX_FILE_BYTES} per image");
            }
            *total += size;
            if *total > MAX_UNPACKED_BYTES {
                bail!("the folder holds more than {MAX_UNPACKED_BYTES} bytes; at most that per dataset");
            }
            if files.len() > MAX_IMAGES + 16 {
                bail!("more than {MAX_IMAGES} files");
            }
            let mut bytes = Vec::new();
            std::fs::File::open(&path)
                .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
                .with_context(|| format!("cannot read {}", path.display()))?;
            if bytes.len() as u64 > MAX_FILE_BYTES {
                bail!("{name}: more than {MAX_FILE_BYTES} bytes; at most that per image");
            }
            files.push((name, bytes));
        }
    }
    Ok(())
}

/// The most bytes an archive of `archive_bytes` may unpack to: see [`MAX_RATIO`].
pub fn unpacked_limit(archive_bytes: usize) -> u64 {
    (archive_bytes as u64).saturating_mul(MAX_RATIO).clamp(MIN_UNPACKED_LIMIT, MAX_UNPACKED_BYTES)
}

/// The bytes unpacked so far, against the archive's limit.
struct Budget {
    archive: usize,
    limit: u64,
    total: u64,
    /// Why unpacking stopped, if a limit did it: reported as the error itself.
    exceeded: Option<String>,
}

/// A reader over one archive entry that counts what it yields against [`MAX_FILE_BYTES`]
/// and the archive's [`Budget`], failing as soon as either is passed: a bomb is stopped
/// mid-entry, having unpacked no more than the limit.
struct Metered<'a, R> {
    inner: R,
    file: u64,
    budget: &'a mut Budget,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.file += n as u64;
        self.budget.total += n as u64;
        let why = if self.file > MAX_FILE_BYTES {
            format!("more than {MAX_FILE_BYTES} bytes; at most that per image")
        } else if self.budget.total > self.budget.limit {
            format!(
                "the archive unpacks to more than {} bytes; at most {MAX_RATIO} times its size ({} bytes) \
                 and at most {MAX_UNPACKED_BYTES} bytes",
                self.budget.limit, self.budget.archive
            )
        } else {
            return Ok(n);
        };
        self.budget.exceeded = Some(why.clone());
        Err(std::io::Error::other(why))
    }
}

/// Unpacks an archive entry by entry, handing each regular file to `visit` as a metered
/// reader (see [`Metered`]). A limit passed is the error, whatever `visit` made of it.
fn walk_archive(bytes: &[u8], mut visit: impl FnMut(&str, &mut dyn Read) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut budget = Budget { archive: bytes.len(), limit: unpacked_limit(bytes.len()), total: 0, exceeded: None };
    let mut entry = |name: &str, reader: &mut dyn Read, budget: &mut Budget| -> anyhow::Result<()> {
        let mut metered = Metered { inner: reader, file: 0, budget };
        let result = visit(name, &mut metered).with_context(|| format!("{name}: cannot unpack"));
        match metered.budget.exceeded.take() {
            Some(why) if why.starts_with("the archive") => bail!("{why}"),
            Some(why) => bail!("{name}: {why}"),
            None => result,
        }
    };
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).context("not a readable zip archive")?;
        if archive.len() > MAX_IMAGES + 1024 {
            bail!("{} entries; at most {MAX_IMAGES} images", archive.len());
        }
        for i in 0..archive.len() {
            let mut file = archive.by_index(i).with_context(|| format!("zip entry {i}: unreadable"))?;
            if !file.is_file() {
                continue;
            }
            let name = file.name().map_or_else(|_| format!("zip entry {i}"), |n| n.into_owned());
            entry(&name, &mut file, &mut budget)?;
        }
        Ok(())
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        walk_tar(flate2::read::GzDecoder::new(bytes), &mut budget, &mut entry)
    } else if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
        walk_tar(bytes, &mut budget, &mut entry)
    } else {
        bail!("the archive is not a zip, tar or tar.gz file");
    }
}

type Entry<'a> = dyn FnMut(&str, &mut dyn Read, &mut Budget) -> anyhow::Result<()> + 'a;

fn walk_tar(reader: impl Read, budget: &mut Budget, entry: &mut Entry) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut count = 0usize;
    for (i, file) in archive.entries().context("not a readable tar archive")?.enumerate() {
        let mut file = file.with_context(|| format!("tar entry {i}: unreadable (a truncated or corrupt archive?)"))?;
        if !file.header().entry_type().is_file() {
            continue;
        }
        let name = file.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("entry {i}"));
        count += 1;
        if count > MAX_IMAGES + 1024 {
            bail!("more than {MAX_IMAGES} images");
        }
        // Visitors read each entry to its end, so every unpacked byte passes the meter.
        entry(&name, &mut file, budget)?;
    }
    Ok(())
}

/// Reads `reader` to its end through a fixed buffer, returning how many bytes it held.
fn drain(reader: &mut dyn Read) -> std::io::Result<u64> {
    std::io::copy(reader, &mut std::io::sink())
}

/// Checks one file streaming: its header from the first [`HEADER_BYTES`], then (for a
/// PNG) its chunk structure, then that its size is plausible for the pixels it declares.
/// `Ok(Err(why))` is a file that is not an acceptable image (fatal only if it is one of
/// the dataset's images); `Err` is an unpacking failure.
fn inspect(name: &str, reader: &mut dyn Read) -> anyhow::Result<Result<u64, String>> {
    let mut header = Vec::new();
    reader.take(HEADER_BYTES).read_to_end(&mut header)?;
    let (width, height) = match dimensions(&header, name) {
        Ok(d) => d,
        Err(e) => {
            drain(reader)?;
            // Without the name: the caller names the file by its place in the dataset.
            let why = e.chain().skip(1).map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
            let why = if why.is_empty() { e.to_string() } else { format!("not a PNG or JPEG image: {why}") };
            return Ok(Err(why));
        }
    };
    let pixels = u64::from(width) * u64::from(height);
    let (bytes, raw) = if header.starts_with(PNG_SIGNATURE) {
        let mut stream = Cursor::new(&header[..]).chain(reader);
        let checked = check_png(&mut stream)?;
        let rest = drain(&mut stream)?;
        match checked {
            Ok(png) => (png.bytes + rest, png.raw_bytes),
            Err(why) => return Ok(Err(why)),
        }
    } else {
        (header.len() as u64 + drain(reader)?, pixels * 3)
    };
    // Far more bytes than the pixels could need (a tiny image padded with megabytes).
    if bytes > 4 * raw + (1 << 20) {
        return Ok(Err(format!("{bytes} bytes for {width}×{height} pixels; not a plausible image")));
    }
    Ok(Ok(pixels))
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
/// The most bytes a PNG may hold after its IEND chunk (some tools append a little).
const PNG_TRAILER_BYTES: u64 = 64 << 10;

/// What [`check_png`] found in a well-formed PNG.
struct PngFacts {
    /// Bytes read up to and including IEND.
    bytes: u64,
    /// The size of its pixels once inflated (rows, with their filter bytes).
    raw_bytes: u64,
}

/// Walks a PNG's chunks without inflating them: the first must be IHDR, every chunk's
/// type must be four ASCII letters and its CRC must match, there must be image data
/// (IDAT) starting with a zlib header, and the file must end with IEND followed by at
/// most [`PNG_TRAILER_BYTES`]. A valid header followed by megabytes of zeros (or other
/// padding) fails here, where a header-only check passes it. Also, deflate expands at
/// most about 1,032 times, so the pixels the header declares must fit in what the IDAT
/// chunks could inflate to. `Err` is a read failure; `Ok(Err(why))` a malformed PNG.
fn check_png(reader: &mut dyn Read) -> std::io::Result<Result<PngFacts, String>> {
    let mut buf = vec![0u8; 64 << 10];
    let mut bytes = 8u64;
    reader.read_exact(&mut buf[..8])?;
    let (mut ihdr, mut idat, mut zlib_head) = (None::<[u8; 13]>, 0u64, Vec::<u8>::new());
    for index in 0u64.. {
        let mut head = [0u8; 8];
        if let Err(e) = reader.read_exact(&mut head) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Ok(Err("the PNG ends before its IEND chunk".into()));
            }
            return Err(e);
        }
        let length = u32::from_be_bytes(head[..4].try_into().unwrap());
        let kind = &head[4..];
        if !kind.iter().all(u8::is_ascii_alphabetic) || length > i32::MAX as u32 {
            return Ok(Err(format!("PNG chunk {index} at byte {bytes} is not a chunk (padding or corruption)")));
        }
        if (index == 0) != (kind == b"IHDR") || (kind == b"IHDR" && length != 13) {
            return Ok(Err("the PNG's first chunk is not a valid IHDR".into()));
        }
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        let mut left = length as usize;
        while left > 0 {
            let n = left.min(buf.len());
            if let Err(e) = reader.read_exact(&mut buf[..n]) {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    return Ok(Err("the PNG ends inside a chunk".into()));
                }
                return Err(e);
            }
            crc.update(&buf[..n]);
            if kind == b"IHDR" {
                ihdr = Some(buf[..13].try_into().unwrap());
            }
            if kind == b"IDAT" && zlib_head.len() < 2 {
                zlib_head.extend(buf[..n].iter().take(2 - zlib_head.len()));
            }
            left -= n;
        }
        let mut stored = [0u8; 4];
        if let Err(e) = reader.read_exact(&mut stored) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Ok(Err("the PNG ends inside a chunk".into()));
            }
            return Err(e);
        }
        if crc.sum() != u32::from_be_bytes(stored) {
            return Ok(Err(format!("PNG chunk {index} ({}) fails its CRC", String::from_utf8_lossy(kind))));
        }
        bytes += 12 + u64::from(length);
        if kind == b"IDAT" {
            idat += u64::from(length);
        }
        if kind == b"IEND" {
            break;
        }
    }
    let Some(ihdr) = ihdr else { return Ok(Err("the PNG has no IHDR".into())) };
    if idat == 0 {
        return Ok(Err("the PNG has no image data".into()));
    }
    if zlib_head.len() < 2
        || zlib_head[0] & 0x0f != 8
        || (u16::from(zlib_head[0]) << 8 | u16::from(zlib_head[1])) % 31 != 0
    {
        return Ok(Err("the PNG's image data is not a zlib stream".into()));
    }
    let width = u64::from(u32::from_be_bytes(ihdr[..4].try_into().unwrap()));
    let height = u64::from(u32::from_be_bytes(ihdr[4..8].try_into().unwrap()));
    let channels = match ihdr[9] {
        2 => 3,
        4 => 2,
        6 => 4,
        _ => 1,
    };
    let raw_bytes = height * (1 + (width * channels * u64::from(ihdr[8])).div_ceil(8));
    if raw_bytes > 1100 * idat + (64 << 10) {
        return Ok(Err(format!("the PNG declares {width}×{height} pixels but holds only {idat} bytes of image data")));
    }
    let trailer = std::io::copy(&mut reader.take(PNG_TRAILER_BYTES + 1), &mut std::io::sink())?;
    if trailer > PNG_TRAILER_BYTES {
        return Ok(Err(format!("the PNG has more than {PNG_TRAILER_BYTES} bytes after its end")));
    }
    Ok(Ok(PngFacts { bytes: bytes + trailer, raw_bytes }))
}

/// A tar archive of a folder, as the CLI uploads one (paths relative to `dir`).
pub fn tar_folder(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(true);
    builder.append_dir_all(".", dir).with_context(|| format!("cannot archive {}", dir.display()))?;
    builder.into_inner().context("cannot finish the archive")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(gray: u8) -> Vec<u8> {
        let mut out = Vec::new();
        image::GrayImage::from_pixel(4, 4, image::Luma([gray]))
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn files(paths: &[&str]) -> Vec<(String, Vec<u8>)> {
        paths.iter().map(|p| (p.to_string(), png(7))).collect()
    }

    #[test]
    fn flat_and_split_layouts_and_a_wrapping_folder() {
        let flat = Source::from_files(files(&["./a/1.png", "./b/2.png", "./README.md"])).unwrap();
        assert_eq!(flat.classes, ["a", "b"]);
        assert_eq!((flat.train.len(), flat.test.len()), (2, 0));

        let split = Source::from_files(files(&[
            "set/train/a/1.png",
            "set/train/b/2.png",
            "set/test/b/3.png",
            "set/photo.jpeg",
            "set/.DS_Store",
            "__MACOSX/set/train/a/._1.png",
        ]))
        .unwrap();
        assert_eq!(split.classes, ["a", "b"]);
        assert_eq!(split.test.len(), 1);
        assert_eq!(split.test[0].name, "test/b/3.png");
        assert_eq!(split.test[0].class, 1);
    }

    #[test]
    fn bad_layouts_say_why() {
        let one = Source::from_files(files(&["a/1.png"])).err().unwrap();
        assert!(one.to_string().contains("at least two class folders"), "{one}");
        let deep = Source::from_files(files(&["a/x/1.png", "b/2.png"])).err().unwrap();
        assert!(deep.to_string().starts_with("a/x/1.png"), "{deep}");
        let test_only = Source::from_files(files(&["train/a/1.png", "train/b/1.png", "test/c/1.png"])).err().unwrap();
        assert!(test_only.to_string().contains("\"c\""), "{test_only}");
    }

    #[test]
    fn archives_round_trip_and_corruption_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for (class, gray) in [("a", 10u8), ("b", 200)] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            std::fs::write(dir.path().join(class).join("1.png"), png(gray)).unwrap();
        }
        std::fs::write(dir.path().join("b").join("2.png"), b"not an image").unwrap();
        let tar = tar_folder(dir.path()).unwrap();
        let source = Source::from_archive(&tar).unwrap();
        assert_eq!((source.classes.len(), source.train.len()), (2, 3));
        let error = Source::check_archive(&tar).unwrap_err().to_string();
        assert!(error.starts_with("b/2.png: not a PNG or JPEG image"), "{error}");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        assert_eq!(Source::from_archive(&gz.finish().unwrap()).unwrap().train.len(), 3);

        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in [("a/1.png", png(1)), ("b/1.png", png(2))] {
            zip.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            std::io::Write::write_all(&mut zip, &bytes).unwrap();
        }
        let zip = zip.finish().unwrap().into_inner();
        let source = Source::from_archive(&zip).unwrap();
        assert_eq!(source.train.len(), 2);
        let summary = Source::check_archive(&zip).unwrap();
        assert_eq!((summary.classes.len(), summary.train_images, summary.test_images), (2, 2, 0));

        assert!(Source::from_archive(b"hello").err().unwrap().to_string().contains("not a zip"));
        let truncated = Source::from_archive(&zip[..zip.len() / 2]);
        assert!(truncated.is_err());
    }

    fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in files {
            zip.start_file(name.as_str(), zip::write::SimpleFileOptions::default()).unwrap();
            std::io::Write::write_all(&mut zip, bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, bytes.as_slice()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_zip_bomb_is_refused_early_at_the_ratio_cap() {
        // 200 MiB of zeros in 20 files, deflated to a few hundred KB: under the absolute
        // cap, but a thousand times the archive's size.
        let files: Vec<_> =
            (0..20).map(|i| (format!("{}/{i}.png", if i % 2 == 0 { "a" } else { "b" }), vec![0u8; 10 << 20])).collect();
        let zip = zip_of(&files);
        assert!(zip.len() < 1 << 20, "{}", zip.len());
        let limit = unpacked_limit(zip.len());
        assert!(limit < 200 << 20);
        let started = std::time::Instant::now();
        let error = format!("{:#}", Source::check_archive(&zip).unwrap_err());
        assert!(error.starts_with("the archive unpacks to more than"), "{error}");
        assert!(error.contains("100 times its size"), "{error}");
        // The worker's full read stops at the same cap.
        let error = format!("{:#}", Source::from_archive(&zip).err().unwrap());
        assert!(error.starts_with("the archive unpacks to more than"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());

        // The same through gzip.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar_of(&files)).unwrap();
        let error = format!("{:#}", Source::check_archive(&gz.finish().unwrap()).unwrap_err());
        assert!(error.starts_with("the archive unpacks to more than"), "{error}");
    }

    #[test]
    fn the_check_buffers_only_headers() {
        // One 32 MiB file streamed through the meter: what the check holds is its header.
        let mut budget = Budget { archive: 1, limit: u64::MAX, total: 0, exceeded: None };
        let zeros = std::io::repeat(0).take(MAX_FILE_BYTES);
        let mut metered = Metered { inner: zeros, file: 0, budget: &mut budget };
        let verdict = inspect("x.png", &mut metered).unwrap();
        assert!(verdict.is_err());
        assert_eq!(budget.total, MAX_FILE_BYTES);
    }

    /// A PNG signature and a valid IHDR declaring `side`×`side` RGBA, then `padding` zeros.
    fn padded_png(side: u32, padding: usize) -> Vec<u8> {
        let mut out = PNG_SIGNATURE.to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(side.to_be_bytes());
        ihdr.extend(side.to_be_bytes());
        ihdr.extend([8, 6, 0, 0, 0]);
        let mut crc = flate2::Crc::new();
        crc.update(&ihdr);
        out.extend(13u32.to_be_bytes());
        out.extend(&ihdr);
        out.extend(crc.sum().to_be_bytes());
        out.resize(out.len() + padding, 0);
        out
    }

    #[test]
    fn a_png_padded_with_zeros_is_refused() {
        // 32 MiB "PNG"s: a valid image followed by zeros. A plain tar, so the ratio cap
        // does not apply: the PNG check must catch them.
        let mut padded = png(1);
        padded.resize(MAX_FILE_BYTES as usize - 64, 0);
        let files: Vec<_> = ["a/1.png", "b/1.png"].iter().map(|n| (n.to_string(), padded.clone())).collect();
        let tar = tar_of(&files);
        // A header-only check passes them...
        for file in Source::from_archive(&tar).unwrap().train {
            dimensions(&file.bytes, &file.name).unwrap();
        }
        // ...the streamed check does not.
        let error = format!("{:#}", Source::check_archive(&tar).unwrap_err());
        assert!(error.starts_with("a/1.png: the PNG has more than 65536 bytes after its end"), "{error}");

        // A valid header followed by zeros where the chunks should be.
        let files = vec![("a/1.png".to_string(), png(1)), ("b/1.png".to_string(), padded_png(8192, 1 << 20))];
        let error = format!("{:#}", Source::check_archive(&tar_of(&files)).unwrap_err());
        assert!(error.starts_with("b/1.png: not a PNG or JPEG image"), "{error}");

        // Zeros inside a well-formed chunk: more bytes than a 4×4 image could need.
        let mut fat = png(1);
        let iend = fat.len() - 12;
        let mut chunk = (2u32 << 20).to_be_bytes().to_vec();
        let mut data = b"zTXt".to_vec();
        data.resize(4 + (2 << 20), 0);
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        chunk.extend(&data);
        chunk.extend(crc.sum().to_be_bytes());
        fat.splice(iend..iend, chunk);
        let files = vec![("a/1.png".to_string(), png(1)), ("b/1.png".to_string(), fat)];
        let error = format!("{:#}", Source::check_archive(&tar_of(&files)).unwrap_err());
        assert!(error.contains("for 4×4 pixels; not a plausible image"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn folders_do_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.png"), png(3)).unwrap();
        for class in ["a", "b"] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            std::fs::write(dir.path().join(class).join("1.png"), png(9)).unwrap();
        }
        assert_eq!(Source::from_dir(dir.path()).unwrap().train.len(), 2);
        std::os::unix::fs::symlink(outside.path().join("secret.png"), dir.path().join("a/2.png")).unwrap();
        let error = format!("{:#}", Source::from_dir(dir.path()).err().unwrap());
        assert!(error.contains("a/2.png: is a symbolic link"), "{error}");
    }
}
