//! S3 object storage: large outputs and model files live here, MongoDB keeps pointers to them.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use bytes::Bytes;
use secrecy::ExposeSecret;
use tokio::io::AsyncReadExt;

use crate::config::S3Config;

/// Objects at least this large go up in parts of this size (S3's minimum part is 5 MiB).
pub const MULTIPART_PART_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("s3 {op} {key}: {message}")]
    S3 {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn s3_err<E>(op: &'static str, key: &str, err: E) -> StorageError
where
    E: std::error::Error + Send + Sync + 'static,
{
    // `DisplayErrorContext` walks the source chain; the top-level message alone is often
    // just "service error".
    StorageError::S3 {
        op,
        key: key.to_owned(),
        message: aws_sdk_s3::error::DisplayErrorContext(err).to_string(),
    }
}

/// An S3 client bound to the configured bucket.
#[derive(Debug, Clone)]
pub struct Storage {
    client: Client,
    bucket: String,
}

impl Storage {
    pub fn new(config: &S3Config) -> Self {
        // ring, not aws-lc: one crypto provider for the whole workspace and no C build.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .http_client(http)
            .region(Region::new(config.region.clone()))
            .force_path_style(config.force_path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder.credentials_provider(Credentials::new(
                id,
                secret.expose_secret(),
                None,
                None,
                "harmonia-config",
            ));
        }
        Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the bucket if it does not exist yet (idempotent; safe for concurrent callers).
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => {
                let owned = err.as_service_error().is_some_and(|e| {
                    e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
                });
                if owned {
                    Ok(())
                } else {
                    Err(s3_err("create_bucket", &self.bucket, err))
                }
            }
        }
    }

    pub async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_err("put_object", key, e))?;
        Ok(())
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_err("get_object", key, e))?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| s3_err("get_object body", key, e))?;
        Ok(data.into_bytes())
    }

    /// Size of the object, or `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
            )),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(s3_err("head_object", key, err)),
        }
    }

    /// Uploads a file; large files go up in parts so memory stays bounded by one part.
    /// Returns the number of bytes uploaded.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<u64, StorageError> {
        let io = |source| StorageError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        if len < MULTIPART_PART_BYTES as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).await.map_err(io)?;
            self.put_bytes(key, Bytes::from(buf), content_type).await?;
            return Ok(len);
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| s3_err("create_multipart_upload", key, e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        match self.upload_parts(key, &upload_id, &mut file).await {
            Ok(parts) => {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| s3_err("complete_multipart_upload", key, e))?;
                Ok(len)
            }
            Err(err) => {
                // Abort so the server frees the parts; the original error is what matters.
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(err)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        file: &mut tokio::fs::File,
    ) -> Result<Vec<CompletedPart>, StorageError> {
        let mut parts = Vec::new();
        for number in 1.. {
            let mut buf = Vec::with_capacity(MULTIPART_PART_BYTES);
            let mut reader = (&mut *file).take(MULTIPART_PART_BYTES as u64);
            reader
                .read_to_end(&mut buf)
                .await
                .map_err(|source| StorageError::Io {
                    path: key.to_owned(),
                    source,
                })?;
            if buf.is_empty() {
                break;
            }
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| s3_err("upload_part", key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        Ok(parts)
    }

    /// A URL anyone can GET for `expires`, without credentials.
    pub async fn presign_get(&self, key: &str, expires: Duration) -> Result<String, StorageError> {
        let presigning =
            PresigningConfig::expires_in(expires).map_err(|e| s3_err("presign", key, e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(presigning)
            .await
            .map_err(|e| s3_err("presign", key, e))?;
        Ok(request.uri().to_owned())
    }
}
