//! The media repository's bytes: an object store (a local folder by default, S3 or any other
//! store the object_store crate speaks) that holds each distinct upload once, under
//! `sha256/<hex>`. Uploads stream through: memory stays flat whatever the size, the size limit
//! is enforced while reading, and an aborted or oversized upload leaves no object behind.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetResult, ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};

/// Errors of the media store.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The upload is larger than allowed.
    #[error("the upload is larger than {0} bytes")]
    TooLarge(u64),
    /// The client's body could not be read (e.g. the connection broke).
    #[error("reading the upload failed: {0}")]
    Read(String),
    /// No such object.
    #[error("no such media")]
    NotFound,
    /// The store failed.
    #[error("media store: {0}")]
    Store(#[from] object_store::Error),
    /// The store URL is not usable.
    #[error("media.store {0}")]
    Config(String),
}

/// Parts uploaded to the store at once, at most: bounds memory per upload.
const PARTS_IN_FLIGHT: usize = 4;

/// Where media bytes live.
#[derive(Clone, Debug)]
pub struct MediaStore {
    store: Arc<dyn ObjectStore>,
}

/// A finished upload: its content hash (hex) and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl MediaStore {
    /// Opens the store `url` names, or the local folder `default_dir` (created if missing).
    pub fn open(url: Option<&str>, default_dir: &std::path::Path) -> Result<Self, MediaError> {
        let store: Arc<dyn ObjectStore> = match url {
            None => {
                std::fs::create_dir_all(default_dir).map_err(|e| MediaError::Config(e.to_string()))?;
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(default_dir)?)
            }
            Some(url) => {
                let parsed = url::Url::parse(url).map_err(|e| MediaError::Config(format!("{url:?}: {e}")))?;
                match parsed.scheme() {
                    "file" => {
                        let dir =
                            parsed.to_file_path().map_err(|()| MediaError::Config(format!("{url:?} is not a path")))?;
                        std::fs::create_dir_all(&dir).map_err(|e| MediaError::Config(e.to_string()))?;
                        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?)
                    }
                    "s3" | "s3a" => Arc::new(
                        // Credentials, region and endpoint come from the standard AWS_* variables.
                        object_store::aws::AmazonS3Builder::from_env().with_url(url).build()?,
                    ),
                    _ => {
                        let (store, prefix) = object_store::parse_url(&parsed)?;
                        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
                    }
                }
            }
        };
        Ok(Self { store })
    }

    /// Streams an upload into the store, at most `limit` bytes.
    pub async fn put<E: std::fmt::Display>(
        &self,
        mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
        limit: u64,
    ) -> Result<Stored, MediaError> {
        let staging = Path::from(format!("tmp/{}", uuid::Uuid::new_v4().simple()));
        let mut writer = WriteMultipart::new(self.store.put_multipart(&staging).await?);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let failure = match chunk {
                Err(err) => Some(MediaError::Read(err.to_string())),
                Ok(chunk) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        Some(MediaError::TooLarge(limit))
                    } else {
                        hasher.update(&chunk);
                        match writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                            Ok(()) => {
                                writer.put(chunk);
                                None
                            }
                            Err(err) => Some(err.into()),
                        }
                    }
                }
            };
            if let Some(failure) = failure {
                // Nothing of a refused upload stays behind.
                let _ = writer.abort().await;
                return Err(failure);
            }
        }
        writer.finish().await?;
        let sha256 = format!("{:x}", hasher.finalize());
        self.settle(&staging, &object_path(&sha256)).await?;
        Ok(Stored { sha256, size })
    }

    /// Moves a staged upload to its content address; identical content is kept once.
    async fn settle(&self, staging: &Path, target: &Path) -> Result<(), MediaError> {
        match self.store.rename_if_not_exists(staging, target).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(self.store.delete(staging).await?),
            // Stores without an atomic conditional rename (plain S3): the same key always holds
            // the same bytes, so a racing overwrite is harmless.
            Err(object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. }) => {
                match self.store.head(target).await {
                    Ok(_) => Ok(self.store.delete(staging).await?),
                    Err(_) => Ok(self.store.rename(staging, target).await?),
                }
            }
            Err(err) => {
                let _ = self.store.delete(staging).await;
                Err(err.into())
            }
        }
    }

    /// The bytes of an upload, or a byte range of them.
    pub async fn get(&self, sha256: &str, range: Option<std::ops::Range<u64>>) -> Result<GetResult, MediaError> {
        let options = GetOptions { range: range.map(Into::into), ..Default::default() };
        self.store.get_opts(&object_path(sha256), options).await.map_err(|err| match err {
            object_store::Error::NotFound { .. } => MediaError::NotFound,
            other => other.into(),
        })
    }
}

fn object_path(sha256: &str) -> Path {
    Path::from(format!("sha256/{sha256}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures_util::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn uploads_are_content_addressed_limited_and_leave_nothing_when_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = MediaStore::open(None, dir.path()).unwrap();
        let first = store.put(chunks(&[b"hello ", b"world"]), 100).await.unwrap();
        assert_eq!(first.size, 11);
        assert_eq!(first.sha256, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        let again = store.put(chunks(&[b"hello world"]), 100).await.unwrap();
        assert_eq!(again, first);
        let bytes = store.get(&first.sha256, None).await.unwrap().bytes().await.unwrap();
        assert_eq!(&bytes[..], b"hello world");
        let part = store.get(&first.sha256, Some(6..11)).await.unwrap().bytes().await.unwrap();
        assert_eq!(&part[..], b"world");

        assert!(matches!(store.put(chunks(&[b"0123456789", b"x"]), 10).await, Err(MediaError::TooLarge(10))));
        let broken =
            futures_util::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err(std::io::Error::other("reset"))]);
        assert!(matches!(store.put(broken, 100).await, Err(MediaError::Read(_))));
        // One object for the two identical uploads, no staging leftovers.
        let mut files = Vec::new();
        for entry in walk(dir.path()) {
            files.push(entry.strip_prefix(dir.path()).unwrap().display().to_string());
        }
        assert_eq!(files, [format!("sha256/{}", first.sha256)]);
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
        }
        out
    }
}
