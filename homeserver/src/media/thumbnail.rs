//! Thumbnails of PNG, JPEG, GIF and WebP uploads, made with the `image` crate.
//!
//! Requests map onto the spec's five sizes (32×32 and 96×96 cropped, 320×240, 640×480 and
//! 800×600 scaled), so at most five thumbnails are ever made of one upload whatever sizes
//! clients ask for. Decoding is bounded: the format is sniffed from the bytes (never trusted
//! from the uploader's `Content-Type`), dimensions are read from the header and refused before
//! any pixel is decoded when the image would need more than [`MAX_DECODED_BYTES`].
//! <https://spec.matrix.org/v1.19/client-server-api/#thumbnails>

use std::io::Cursor;

use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// Memory a decoded source image may take. 128 MiB is 32 megapixels at 8-bit RGBA, the same
/// bound Synapse puts on sources (`max_image_pixels`).
pub const MAX_DECODED_BYTES: u64 = 128 * 1024 * 1024;
/// The largest width or height decoded, whatever the byte count.
const MAX_SIDE: u32 = 16_384;
/// JPEG quality of JPEG thumbnails: small files, no visible blocking at thumbnail sizes.
const JPEG_QUALITY: u8 = 80;

/// How a thumbnail fits its box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The box's aspect ratio: the centre of the image, cut to fit.
    Crop,
    /// The image's aspect ratio, shrunk to fit inside the box.
    Scale,
}

/// A thumbnail size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Width of the box in pixels.
    pub width: u32,
    /// Height of the box in pixels.
    pub height: u32,
    /// How the image fits the box.
    pub method: Method,
}

/// The sizes the spec asks servers to produce, smallest first.
const SIZES: [Size; 5] = [
    Size { width: 32, height: 32, method: Method::Crop },
    Size { width: 96, height: 96, method: Method::Crop },
    Size { width: 320, height: 240, method: Method::Scale },
    Size { width: 640, height: 480, method: Method::Scale },
    Size { width: 800, height: 600, method: Method::Scale },
];

impl Size {
    /// The size to make of an image of `image` (width, height, upright) for a request of at
    /// least `want` by `method`: the smallest of the spec's sizes whose result is at least as
    /// large as asked (or as the image, where that is smaller). `None` when none is: the
    /// original is then the answer, as it is when the image is no larger than asked.
    pub fn choose(image: (u32, u32), want: (u32, u32), method: Method) -> Option<Self> {
        let (width, height) = want;
        if image.0 <= width && image.1 <= height {
            return None;
        }
        let of = |method| SIZES.iter().filter(move |s: &&Size| s.method == method);
        let crop = || of(Method::Crop).find(|s| s.width >= width && s.height >= height);
        let scale = || {
            of(Method::Scale).find(|s| {
                let (w, h) = fit(image, (s.width, s.height));
                w >= width.min(image.0) && h >= height.min(image.1)
            })
        };
        match method {
            // No crop size that large: a scaled one is the closest honest answer.
            Method::Crop => crop().or_else(scale),
            Method::Scale => scale(),
        }
        .copied()
    }

    /// The name of this size's cached thumbnail.
    pub fn name(&self) -> String {
        let method = match self.method {
            Method::Crop => "crop",
            Method::Scale => "scale",
        };
        format!("{}x{}-{method}", self.width, self.height)
    }
}

/// The size of `image` shrunk to fit in `bounds`, as `DynamicImage::resize` computes it; an
/// image that fits already keeps its size.
fn fit(image: (u32, u32), bounds: (u32, u32)) -> (u32, u32) {
    if image.0 <= bounds.0 && image.1 <= bounds.1 {
        return image;
    }
    let ratio = (f64::from(bounds.0) / f64::from(image.0)).min(f64::from(bounds.1) / f64::from(image.1));
    let side = |n: u32| ((f64::from(n) * ratio).round() as u32).max(1);
    (side(image.0), side(image.1))
}

/// Why no thumbnail can be made.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// Not an image of a format we thumbnail, or a damaged one.
    #[error("cannot thumbnail this content: {0}")]
    Unsupported(String),
    /// Decoding it would take too much memory.
    #[error("the image is too large to thumbnail")]
    TooLarge,
}

/// Cached failures start with this, so a hostile image is decoded once, not on every request.
const FAILED: &str = "failed:";

impl ThumbnailError {
    /// Content of a format not thumbnailed (or no image at all).
    pub fn not_an_image() -> Self {
        Self::Unsupported("not a PNG, JPEG, GIF or WebP image".to_owned())
    }

    /// The failure as a cache entry.
    pub fn to_marker(&self) -> bytes::Bytes {
        match self {
            Self::TooLarge => format!("{FAILED}too-large").into(),
            Self::Unsupported(reason) => format!("{FAILED}unsupported:{reason}").into(),
        }
    }

    /// The failure a cache entry records, if it records one.
    pub fn from_marker(entry: &[u8]) -> Option<Self> {
        let marker = std::str::from_utf8(entry).ok()?.strip_prefix(FAILED)?;
        Some(match marker.strip_prefix("unsupported:") {
            Some(reason) => Self::Unsupported(reason.to_owned()),
            None => Self::TooLarge,
        })
    }
}

/// What an image's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Width once turned upright.
    pub width: u32,
    /// Height once turned upright.
    pub height: u32,
    /// Memory the decoded image takes.
    pub decoded_bytes: u64,
    /// Its media type.
    pub content_type: &'static str,
}

impl Header {
    /// The header as a cache entry.
    pub fn to_entry(&self) -> bytes::Bytes {
        format!("{} {} {} {}", self.width, self.height, self.decoded_bytes, self.content_type).into()
    }

    /// A header cache entry read back.
    pub fn from_entry(entry: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(entry).ok()?;
        let mut parts = text.split(' ');
        let (width, height, decoded_bytes) =
            (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        let stored = parts.next()?;
        let content_type = FORMATS.into_iter().filter_map(mime).find(|t| *t == stored)?;
        Some(Self { width, height, decoded_bytes, content_type })
    }
}

/// What to answer a thumbnail request with.
#[derive(Debug, PartialEq, Eq)]
pub enum Rendered {
    /// The original fits in the box already: the spec asks for it rather than a copy.
    Original,
    /// An encoded thumbnail.
    Image {
        /// The encoded image.
        bytes: bytes::Bytes,
        /// Its media type.
        content_type: &'static str,
    },
}

/// The media type of image bytes of a format we thumbnail, from their first bytes.
pub fn image_type(head: &[u8]) -> Option<&'static str> {
    mime(image::guess_format(head).ok()?)
}

/// The formats thumbnailed.
const FORMATS: [ImageFormat; 4] = [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Gif, ImageFormat::WebP];

/// The media type of a format thumbnailed; `None` for the others.
fn mime(format: ImageFormat) -> Option<&'static str> {
    match format {
        ImageFormat::Png => Some("image/png"),
        ImageFormat::Jpeg => Some("image/jpeg"),
        ImageFormat::Gif => Some("image/gif"),
        ImageFormat::WebP => Some("image/webp"),
        _ => None,
    }
}

/// A decoder for `source` with memory limits, after the header's claims passed them.
/// Also returns the format and its media type.
fn open(source: &[u8]) -> Result<(ImageFormat, &'static str, impl ImageDecoder + '_), ThumbnailError> {
    let mut reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|e| ThumbnailError::Unsupported(e.to_string()))?;
    let Some((format, content_type)) = reader.format().and_then(|f| Some((f, mime(f)?))) else {
        return Err(ThumbnailError::not_an_image());
    };
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(failure)?;
    // The header's claim, checked before a single pixel buffer is allocated.
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        return Err(ThumbnailError::TooLarge);
    }
    Ok((format, content_type, decoder))
}

fn failure(err: image::ImageError) -> ThumbnailError {
    match err {
        image::ImageError::Limits(_) => ThumbnailError::TooLarge,
        other => ThumbnailError::Unsupported(other.to_string()),
    }
}

/// Whether an orientation turns the image on its side.
fn turns(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

/// Reads an image's header (no pixels). Refuses what [`render`] would refuse for its size.
pub fn inspect(source: &[u8]) -> Result<Header, ThumbnailError> {
    let (_, content_type, mut decoder) = open(source)?;
    let (width, height) = decoder.dimensions();
    let (width, height) =
        if turns(decoder.orientation().map_err(failure)?) { (height, width) } else { (width, height) };
    Ok(Header { width, height, decoded_bytes: decoder.total_bytes(), content_type })
}

/// Makes the thumbnail of `source` at `size`. CPU-bound: call it on a blocking thread.
pub fn render(source: bytes::Bytes, size: Size) -> Result<Rendered, ThumbnailError> {
    let (format, _, mut decoder) = open(&source)?;
    let orientation = decoder.orientation().map_err(failure)?;
    let image = DynamicImage::from_decoder(decoder).map_err(failure)?;
    drop(source);
    // Phone cameras store pictures sideways and say so in EXIF. The box is turned to match the
    // stored image and the small result is turned upright, never the full-size image.
    let (box_width, box_height) =
        if turns(orientation) { (size.height, size.width) } else { (size.width, size.height) };
    let (width, height) = (image.width(), image.height());
    if width <= box_width && height <= box_height {
        return Ok(Rendered::Original);
    }
    let mut thumbnail = match size.method {
        Method::Scale => image.resize(box_width, box_height, FilterType::Triangle),
        // Never upscale: an image narrower (or lower) than the box keeps that side and is
        // only cut along the other.
        Method::Crop if width < box_width || height < box_height => {
            let (w, h) = (width.min(box_width), height.min(box_height));
            image.crop_imm((width - w) / 2, (height - h) / 2, w, h)
        }
        Method::Crop => image.resize_to_fill(box_width, box_height, FilterType::Triangle),
    };
    drop(image);
    thumbnail.apply_orientation(orientation);
    let mut bytes = Vec::new();
    let content_type = if format == ImageFormat::Jpeg {
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY);
        DynamicImage::ImageRgb8(thumbnail.to_rgb8()).write_with_encoder(encoder).map_err(failure)?;
        "image/jpeg"
    } else {
        // PNG keeps transparency; 8 bits per channel is plenty for a thumbnail.
        let thumbnail = if thumbnail.color().has_alpha() {
            DynamicImage::ImageRgba8(thumbnail.to_rgba8())
        } else {
            DynamicImage::ImageRgb8(thumbnail.to_rgb8())
        };
        thumbnail.write_with_encoder(image::codecs::png::PngEncoder::new(&mut bytes)).map_err(failure)?;
        "image/png"
    };
    Ok(Rendered::Image { bytes: bytes.into(), content_type })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbaImage::from_fn(width, height, |x, y| image::Rgba([x as u8, y as u8, 128, 255]));
        let mut out = Vec::new();
        DynamicImage::ImageRgba8(image).write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn headers_round_trip_through_the_cache() {
        let header = inspect(&png(30, 20)).unwrap();
        assert_eq!((header.width, header.height, header.content_type), (30, 20, "image/png"));
        assert_eq!(Header::from_entry(&header.to_entry()), Some(header));
        assert_eq!(Header::from_entry(b"1 2 3 text/html"), None);
    }

    fn dimensions(bytes: &[u8]) -> (u32, u32) {
        let image = image::load_from_memory(bytes).unwrap();
        (image.width(), image.height())
    }

    #[test]
    fn requests_map_onto_the_spec_sizes_never_smaller_than_asked() {
        let size = |image, want, method| Size::choose(image, want, method).map(|s| s.name());
        let wide = (1000, 500);
        assert_eq!(size(wide, (1, 1), Method::Crop).as_deref(), Some("32x32-crop"));
        assert_eq!(size(wide, (64, 64), Method::Crop).as_deref(), Some("96x96-crop"));
        assert_eq!(size(wide, (64, 64), Method::Scale).as_deref(), Some("320x240-scale"));
        // No crop size is that large: the smallest scale size that is.
        assert_eq!(size(wide, (300, 100), Method::Crop).as_deref(), Some("320x240-scale"));
        // 320×240 would give a square image 240 wide: too narrow for 300.
        assert_eq!(size((1000, 1000), (300, 230), Method::Scale).as_deref(), Some("640x480-scale"));
        // Larger than any size made, or than the image: the original.
        assert_eq!(size((4000, 3000), (900, 100), Method::Scale), None);
        assert_eq!(size((20, 30), (32, 32), Method::Crop), None);
    }

    #[test]
    fn scales_crops_and_never_upscales() {
        let source = png(1000, 500);
        let scale = Size { width: 320, height: 240, method: Method::Scale };
        let Rendered::Image { bytes, content_type } = render(source.clone().into(), scale).unwrap() else { panic!() };
        assert_eq!((content_type, dimensions(&bytes)), ("image/png", (320, 160)));
        let crop = Size { width: 96, height: 96, method: Method::Crop };
        let Rendered::Image { bytes, .. } = render(source.into(), crop).unwrap() else { panic!() };
        assert_eq!(dimensions(&bytes), (96, 96));
        // Small already: the original is the answer.
        assert_eq!(
            render(png(20, 30).into(), Size { width: 32, height: 32, method: Method::Crop }).unwrap(),
            Rendered::Original
        );
        // Lower than the box: cut to the box's width, not stretched to its height.
        let Rendered::Image { bytes, .. } = render(png(200, 50).into(), crop).unwrap() else { panic!() };
        assert_eq!(dimensions(&bytes), (96, 50));
    }

    #[test]
    fn hostile_and_broken_images_are_refused_without_decoding() {
        let crop = Size { width: 32, height: 32, method: Method::Crop };
        // A valid PNG header claiming 16384×16384 RGBA (1 GiB decoded) over a few bytes of data.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&16_384u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&16_384u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(inspect(&bomb), Err(ThumbnailError::TooLarge)), "{:?}", inspect(&bomb));
        assert!(matches!(render(bomb.into(), crop), Err(ThumbnailError::TooLarge)));

        let truncated = png(100, 100);
        let truncated = &truncated[..truncated.len() / 2];
        assert_eq!(inspect(truncated).unwrap().content_type, "image/png", "the header is intact");
        let failed = render(bytes::Bytes::copy_from_slice(truncated), crop).unwrap_err();
        assert!(matches!(failed, ThumbnailError::Unsupported(_)));
        // Failures are cached as markers and read back as the same failure.
        assert!(matches!(ThumbnailError::from_marker(&failed.to_marker()), Some(ThumbnailError::Unsupported(_))));
        assert!(matches!(
            ThumbnailError::from_marker(&ThumbnailError::TooLarge.to_marker()),
            Some(ThumbnailError::TooLarge)
        ));
        assert!(matches!(inspect(b"<svg onload=alert(1)>"), Err(ThumbnailError::Unsupported(_))));
        assert!(matches!(inspect(b""), Err(ThumbnailError::Unsupported(_))));
    }

    /// PNG chunk CRC (ISO 3309), to forge a header that passes the decoder's checks.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
}
