//! A dataset's image files before they are decoded: read from a folder on disk or an
//! uploaded archive (zip, tar, tar.gz) into memory and checked, without decoding a pixel.
//! The service checks an upload with [`Source::check`] before storing it; the worker
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
/// The most bytes an archive may unpack to (a guard against decompression bombs).
pub const MAX_UNPACKED_BYTES: u64 = 2 << 30;

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

impl Source {
    /// Reads a folder (any of the layouts above).
    pub fn from_dir(dir: &Path) -> anyhow::Result<Source> {
        let mut files = Vec::new();
        read_dir_into(dir, dir, &mut files)?;
        Source::from_files(files).with_context(|| format!("dataset {}", dir.display()))
    }

    /// Reads an archive: zip, tar or gzip-compressed tar, told apart by their first bytes.
    pub fn from_archive(bytes: &[u8]) -> anyhow::Result<Source> {
        let files = if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            read_zip(bytes)?
        } else if bytes.starts_with(&[0x1f, 0x8b]) {
            read_tar(flate2::read::GzDecoder::new(bytes))?
        } else if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
            read_tar(bytes)?
        } else {
            bail!("the archive is not a zip, tar or tar.gz file");
        };
        Source::from_files(files)
    }

    /// Sorts `(path, bytes)` pairs into classes and parts.
    fn from_files(mut files: Vec<(String, Vec<u8>)>) -> anyhow::Result<Source> {
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
            bail!(
                "needs at least two class folders{}, found {}",
                if split { " under train/" } else { "" },
                classes.len()
            );
        }
        if classes.len() > MAX_CLASSES {
            bail!("{} classes; at most {MAX_CLASSES}", classes.len());
        }
        if placed.len() > MAX_IMAGES {
            bail!("{} images; at most {MAX_IMAGES}", placed.len());
        }
        let mut slots: Vec<Option<Vec<u8>>> = files.into_iter().map(|(_, b)| Some(b)).collect();
        let names: Vec<String> = parts.iter().map(|p| p.join("/")).collect();
        let mut source = Source { classes, train: Vec::new(), test: Vec::new() };
        for (part, class, index) in placed {
            let Ok(class) = source.classes.binary_search(&class) else {
                bail!("{}: class {class:?} has no training images", names[index]);
            };
            let file = ImageFile {
                name: names[index].clone(),
                class: class as u32,
                bytes: slots[index].take().unwrap_or_default(),
            };
            if part == 0 { source.train.push(file) } else { source.test.push(file) }
        }
        for (index, class) in source.classes.iter().enumerate() {
            if !source.train.iter().any(|f| f.class == index as u32) {
                bail!("class {class:?} has no training images");
            }
        }
        source.train.sort_by(|a, b| (a.class, &a.name).cmp(&(b.class, &b.name)));
        source.test.sort_by(|a, b| (a.class, &a.name).cmp(&(b.class, &b.name)));
        Ok(source)
    }

    /// Checks every image's header (format, dimensions) without decoding its pixels:
    /// what the service does before accepting an upload.
    pub fn check(&self) -> anyhow::Result<()> {
        for file in self.train.iter().chain(&self.test) {
            dimensions(&file.bytes, &file.name)?;
        }
        Ok(())
    }
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

fn read_dir_into(root: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
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
        if path.is_dir() {
            read_dir_into(root, &path, files)?;
        } else if path.is_file() {
            let size = path.metadata()?.len();
            if size > MAX_FILE_BYTES {
                bail!("{name}: {size} bytes; at most {MAX_FILE_BYTES} per image");
            }
            if files.len() > MAX_IMAGES + 16 {
                bail!("more than {MAX_IMAGES} files");
            }
            files.push((name, std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?));
        }
    }
    Ok(())
}

/// Reads one archive entry, at most [`MAX_FILE_BYTES`] of it, naming it when it is larger
/// and keeping the running `total` under [`MAX_UNPACKED_BYTES`].
fn read_entry(mut entry: impl Read, name: &str, total: &mut u64) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    (&mut entry).take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).with_context(|| format!("{name}: cannot unpack"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        bail!("{name}: more than {MAX_FILE_BYTES} bytes; at most that per image");
    }
    *total += bytes.len() as u64;
    if *total > MAX_UNPACKED_BYTES {
        bail!("the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes");
    }
    Ok(bytes)
}

fn read_zip(bytes: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).context("not a readable zip archive")?;
    if archive.len() > MAX_IMAGES + 1024 {
        bail!("{} entries; at most {MAX_IMAGES} images", archive.len());
    }
    let (mut files, mut total) = (Vec::new(), 0u64);
    for i in 0..archive.len() {
        let entry = archive.by_index(i).with_context(|| format!("zip entry {i}: unreadable"))?;
        if !entry.is_file() {
            continue;
        }
        let name = entry.name().map_or_else(|_| format!("zip entry {i}"), |n| n.into_owned());
        let data = read_entry(entry, &name, &mut total)?;
        files.push((name, data));
    }
    Ok(files)
}

fn read_tar(reader: impl Read) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut archive = tar::Archive::new(reader);
    let (mut files, mut total) = (Vec::new(), 0u64);
    for (i, entry) in archive.entries().context("not a readable tar archive")?.enumerate() {
        let entry = entry.with_context(|| format!("tar entry {i}: unreadable (a truncated or corrupt archive?)"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("entry {i}"));
        if files.len() > MAX_IMAGES + 1024 {
            bail!("more than {MAX_IMAGES} images");
        }
        let data = read_entry(entry, &name, &mut total)?;
        files.push((name, data));
    }
    Ok(files)
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
        let error = source.check().unwrap_err().to_string();
        assert!(error.starts_with("b/2.png"), "{error}");

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
        source.check().unwrap();
        assert_eq!(source.train.len(), 2);

        assert!(Source::from_archive(b"hello").err().unwrap().to_string().contains("not a zip"));
        let truncated = Source::from_archive(&zip[..zip.len() / 2]);
        assert!(truncated.is_err());
    }
}
