//! The media repository's bytes: an object store (a local folder by default, S3 or any other
//! store the object_store crate speaks) that holds each distinct upload once, under
//! `sha256/<hex>`. Uploads stream through: memory stays flat whatever the size, the size limit
//! is enforced while reading, and an aborted or oversized upload leaves no object behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetResult, ObjectStore, ObjectStoreExt, ObjectStoreScheme, WriteMultipart};
use sha2::{Digest, Sha256};

pub mod thumbnail;

/// Errors of the media store.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The upload is larger than allowed.
    #[error("the upload is larger than {0} bytes")]
    TooLarge(u64),
    /// The client's body could not be read (e.g. the connection broke).
    #[error("reading the upload failed: {0}")]
    Read(String),
    /// The client stopped sending the body (see `limits.body_timeout_ms`).
    #[error("reading the upload failed: {0}")]
    TimedOut(String),
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

/// An upload streamed into the store but not yet at its content address: [`MediaStore::settle`]
/// it once its metadata is recorded, or [`MediaStore::discard`] it.
#[derive(Debug)]
#[must_use = "a staged upload must be settled or discarded"]
pub struct Staged {
    path: Path,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl MediaStore {
    /// Opens the store `url` names (with `options` in the object_store crate's keys), or the
    /// local folder `default_dir` (created if missing).
    pub fn open(
        url: Option<&str>,
        options: &BTreeMap<String, String>,
        default_dir: &std::path::Path,
    ) -> Result<Self, MediaError> {
        let Some(url) = url else {
            return Ok(Self { store: Arc::new(local(default_dir)?) });
        };
        let parsed = url::Url::parse(url).map_err(|e| MediaError::Config(format!("{url:?}: {e}")))?;
        if parsed.scheme() == "file" {
            let dir = parsed.to_file_path().map_err(|()| MediaError::Config(format!("{url:?} is not a path")))?;
            return Ok(Self { store: Arc::new(local(&dir)?) });
        }
        let config = |e: &dyn std::fmt::Display| MediaError::Config(format!("{url:?}: {e}"));
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| config(&e))?;
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::AmazonS3 => {
                // The standard AWS_* variables first, then the configured options over them.
                let mut builder = AmazonS3Builder::from_env().with_url(url);
                for (key, value) in options {
                    let key = key.parse::<AmazonS3ConfigKey>().map_err(|e| MediaError::Config(e.to_string()))?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build()?)
            }
            _ => object_store::parse_url_opts(&parsed, options)?.0.into(),
        };
        let prefix = Path::parse(prefix).map_err(|e| config(&e))?;
        Ok(Self {
            store: match prefix.as_ref().is_empty() {
                true => store,
                false => Arc::new(PrefixStore::new(store, prefix)),
            },
        })
    }

    /// Streams an upload into a staging object, at most `limit` bytes.
    pub async fn put(
        &self,
        mut body: impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
        limit: u64,
    ) -> Result<Staged, MediaError> {
        let path = Path::from(format!("tmp/{}", uuid::Uuid::new_v4().simple()));
        let mut writer = WriteMultipart::new(self.store.put_multipart(&path).await?);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let failure = match chunk {
                Err(err) if err.kind() == std::io::ErrorKind::TimedOut => Some(MediaError::TimedOut(err.to_string())),
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
        Ok(Staged { path, sha256: format!("{:x}", hasher.finalize()), size })
    }

    /// Moves a staged upload to its content address; identical content is kept once.
    pub async fn settle(&self, staged: Staged) -> Result<(), MediaError> {
        let target = object_path(&staged.sha256);
        match self.store.rename_if_not_exists(&staged.path, &target).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(self.store.delete(&staged.path).await?),
            // Stores without an atomic conditional rename (plain S3): the same key always holds
            // the same bytes, so a racing overwrite is harmless.
            Err(object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. }) => {
                match self.store.head(&target).await {
                    Ok(_) => Ok(self.store.delete(&staged.path).await?),
                    Err(_) => Ok(self.store.rename(&staged.path, &target).await?),
                }
            }
            Err(err) => {
                self.discard(staged).await;
                Err(err.into())
            }
        }
    }

    /// Drops a staged upload.
    pub async fn discard(&self, staged: Staged) {
        if let Err(err) = self.store.delete(&staged.path).await {
            tracing::warn!(path = %staged.path, %err, "could not delete a staged upload");
        }
    }

    /// The bytes of an upload, or a byte range of them.
    pub async fn get(&self, sha256: &str, range: Option<std::ops::Range<u64>>) -> Result<GetResult, MediaError> {
        self.read(&object_path(sha256), range).await
    }

    /// Whether the bytes of an upload are there.
    pub async fn exists(&self, sha256: &str) -> Result<bool, MediaError> {
        match self.store.head(&object_path(sha256)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Removes an upload's bytes and every thumbnail made of them, the bytes last: a failure
    /// halfway leaves the upload whole (if without some thumbnails).
    pub async fn delete(&self, sha256: &str) -> Result<(), MediaError> {
        let thumbnails = self.store.list(Some(&thumbnail_dir(sha256))).map_ok(|meta| meta.location).boxed();
        let mut deleted = self.store.delete_stream(thumbnails);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        match self.store.delete(&object_path(sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        Ok(())
    }

    /// A cached thumbnail of the upload `sha256`, under `name`.
    pub async fn thumbnail(&self, sha256: &str, name: &str) -> Result<Option<Bytes>, MediaError> {
        match self.read(&thumbnail_dir(sha256).join(name), None).await {
            Ok(object) => Ok(Some(object.bytes().await?)),
            Err(MediaError::NotFound) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Caches a thumbnail of the upload `sha256` under `name`.
    pub async fn put_thumbnail(&self, sha256: &str, name: &str, bytes: Bytes) -> Result<(), MediaError> {
        self.store.put(&thumbnail_dir(sha256).join(name), bytes.into()).await?;
        Ok(())
    }

    async fn read(&self, path: &Path, range: Option<std::ops::Range<u64>>) -> Result<GetResult, MediaError> {
        let options = GetOptions { range: range.map(Into::into), ..Default::default() };
        self.store.get_opts(path, options).await.map_err(|err| match err {
            object_store::Error::NotFound { .. } => MediaError::NotFound,
            other => other.into(),
        })
    }
}

fn local(dir: &std::path::Path) -> Result<LocalFileSystem, MediaError> {
    std::fs::create_dir_all(dir).map_err(|e| MediaError::Config(format!("{}: {e}", dir.display())))?;
    Ok(LocalFileSystem::new_with_prefix(dir)?)
}

fn object_path(sha256: &str) -> Path {
    Path::from(format!("sha256/{sha256}"))
}

fn thumbnail_dir(sha256: &str) -> Path {
    Path::from(format!("thumbnails/{sha256}"))
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
        let store = MediaStore::open(None, &BTreeMap::new(), dir.path()).unwrap();
        let first = store.put(chunks(&[b"hello ", b"world"]), 100).await.unwrap();
        let sha = first.sha256.clone();
        assert_eq!(first.size, 11);
        assert_eq!(sha, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        let again = store.put(chunks(&[b"hello world"]), 100).await.unwrap();
        assert_eq!((&again.sha256, again.size), (&sha, 11));
        store.settle(first).await.unwrap();
        store.settle(again).await.unwrap();
        let bytes = store.get(&sha, None).await.unwrap().bytes().await.unwrap();
        assert_eq!(&bytes[..], b"hello world");
        let part = store.get(&sha, Some(6..11)).await.unwrap().bytes().await.unwrap();
        assert_eq!(&part[..], b"world");

        assert!(matches!(store.put(chunks(&[b"0123456789", b"x"]), 10).await, Err(MediaError::TooLarge(10))));
        let broken =
            futures_util::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err(std::io::Error::other("reset"))]);
        assert!(matches!(store.put(broken, 100).await, Err(MediaError::Read(_))));
        // One object for the two identical uploads, no staging leftovers.
        let files: Vec<_> =
            walk(dir.path()).iter().map(|f| f.strip_prefix(dir.path()).unwrap().display().to_string()).collect();
        assert_eq!(files, [format!("sha256/{sha}")]);

        // Deleting takes the thumbnails along; a discarded upload leaves nothing.
        store.put_thumbnail(&sha, "32x32-crop", Bytes::from_static(b"t")).await.unwrap();
        assert_eq!(store.thumbnail(&sha, "32x32-crop").await.unwrap().as_deref(), Some(&b"t"[..]));
        store.delete(&sha).await.unwrap();
        assert!(matches!(store.get(&sha, None).await, Err(MediaError::NotFound)));
        assert_eq!(store.thumbnail(&sha, "32x32-crop").await.unwrap(), None);
        let staged = store.put(chunks(&[b"gone"]), 100).await.unwrap();
        store.discard(staged).await;
        assert!(walk(dir.path()).is_empty(), "{:?}", walk(dir.path()));
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
