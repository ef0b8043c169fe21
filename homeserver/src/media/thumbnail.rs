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
    /// The smallest of the spec's sizes that is at least `width`×`height`, with `method` if one
    /// is, else with the other method. `None` when the request is larger than them all: the
    /// original is then the best answer (it is never smaller than a thumbnail would be).
    pub fn for_request(width: u32, height: u32, method: Method) -> Option<Self> {
        let covers = |s: &&Size| s.width >= width && s.height >= height;
        SIZES.iter().filter(covers).find(|s| s.method == method).or_else(|| SIZES.iter().find(covers)).copied()
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
    match image::guess_format(head).ok()? {
        ImageFormat::Png => Some("image/png"),
        ImageFormat::Jpeg => Some("image/jpeg"),
        ImageFormat::Gif => Some("image/gif"),
        ImageFormat::WebP => Some("image/webp"),
        _ => None,
    }
}

/// Makes the thumbnail of `source` at `size`. CPU-bound: call it on a blocking thread.
pub fn render(source: &[u8], size: Size) -> Result<Rendered, ThumbnailError> {
    let unsupported = |e: image::ImageError| ThumbnailError::Unsupported(e.to_string());
    let mut reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|e| ThumbnailError::Unsupported(e.to_string()))?;
    let format = reader.format();
    if !matches!(format, Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)) {
        return Err(ThumbnailError::Unsupported("not a PNG, JPEG, GIF or WebP image".to_owned()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => ThumbnailError::TooLarge,
        other => unsupported(other),
    })?;
    // The header's claim, checked before a single pixel buffer is allocated.
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        return Err(ThumbnailError::TooLarge);
    }
    let orientation = decoder.orientation().map_err(unsupported)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => ThumbnailError::TooLarge,
        other => unsupported(other),
    })?;
    // Phone cameras store pictures sideways and say so in EXIF; thumbnails show them upright.
    image.apply_orientation(orientation);

    let (width, height) = (image.width(), image.height());
    if width <= size.width && height <= size.height {
        return Ok(Rendered::Original);
    }
    let thumbnail = match size.method {
        Method::Scale => image.resize(size.width, size.height, FilterType::Triangle),
        // Never upscale: an image narrower (or lower) than the box keeps that side and is
        // only cut along the other.
        Method::Crop if width < size.width || height < size.height => {
            let (w, h) = (width.min(size.width), height.min(size.height));
            image.crop_imm((width - w) / 2, (height - h) / 2, w, h)
        }
        Method::Crop => image.resize_to_fill(size.width, size.height, FilterType::Triangle),
    };
    let mut bytes = Vec::new();
    let content_type = if format == Some(ImageFormat::Jpeg) {
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY);
        DynamicImage::ImageRgb8(thumbnail.to_rgb8()).write_with_encoder(encoder).map_err(unsupported)?;
        "image/jpeg"
    } else {
        // PNG keeps transparency; 8 bits per channel is plenty for a thumbnail.
        let thumbnail = if thumbnail.color().has_alpha() {
            DynamicImage::ImageRgba8(thumbnail.to_rgba8())
        } else {
            DynamicImage::ImageRgb8(thumbnail.to_rgb8())
        };
        thumbnail.write_with_encoder(image::codecs::png::PngEncoder::new(&mut bytes)).map_err(unsupported)?;
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

    fn dimensions(bytes: &[u8]) -> (u32, u32) {
        let image = image::load_from_memory(bytes).unwrap();
        (image.width(), image.height())
    }

    #[test]
    fn requests_map_onto_the_spec_sizes() {
        let size = |w, h, m| Size::for_request(w, h, m).map(|s| s.name());
        assert_eq!(size(1, 1, Method::Crop).as_deref(), Some("32x32-crop"));
        assert_eq!(size(64, 64, Method::Crop).as_deref(), Some("96x96-crop"));
        assert_eq!(size(64, 64, Method::Scale).as_deref(), Some("320x240-scale"));
        // No crop size is that large: the smallest scale size that is.
        assert_eq!(size(300, 200, Method::Crop).as_deref(), Some("320x240-scale"));
        assert_eq!(size(641, 100, Method::Scale).as_deref(), Some("800x600-scale"));
        assert_eq!(size(801, 100, Method::Scale), None);
    }

    #[test]
    fn scales_crops_and_never_upscales() {
        let source = png(1000, 500);
        let scale = Size { width: 320, height: 240, method: Method::Scale };
        let Rendered::Image { bytes, content_type } = render(&source, scale).unwrap() else { panic!() };
        assert_eq!((content_type, dimensions(&bytes)), ("image/png", (320, 160)));
        let crop = Size { width: 96, height: 96, method: Method::Crop };
        let Rendered::Image { bytes, .. } = render(&source, crop).unwrap() else { panic!() };
        assert_eq!(dimensions(&bytes), (96, 96));
        // Small already: the original is the answer.
        assert_eq!(
            render(&png(20, 30), Size { width: 32, height: 32, method: Method::Crop }).unwrap(),
            Rendered::Original
        );
        // Lower than the box: cut to the box's width, not stretched to its height.
        let Rendered::Image { bytes, .. } = render(&png(200, 50), crop).unwrap() else { panic!() };
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
        assert!(matches!(render(&bomb, crop), Err(ThumbnailError::TooLarge)), "{:?}", render(&bomb, crop));

        let truncated = png(100, 100);
        let truncated = &truncated[..truncated.len() / 2];
        assert!(matches!(render(truncated, crop), Err(ThumbnailError::Unsupported(_))));
        assert!(matches!(render(b"<svg onload=alert(1)>", crop), Err(ThumbnailError::Unsupported(_))));
        assert!(matches!(render(b"", crop), Err(ThumbnailError::Unsupported(_))));
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
