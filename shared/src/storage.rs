//! S3 object storage: large outputs and model files live here, MongoDB keeps pointers to them.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use secrecy::ExposeSecret;
use tokio::io::AsyncReadExt;

use crate::config::S3Config;
use crate::outage::Outage;

/// Objects at least this large go up in parts of this size (S3's minimum part is 5 MiB).
pub const MULTIPART_PART_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("s3 {op} {key}: {message}")]
    S3 {
        op: &'static str,
        key: String,
        message: String,
        /// S3 did not answer, timed out, or answered 5xx/429: the same call can succeed later.
        transient: bool,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::S3 {
                transient: true,
                ..
            }
        )
    }
}

/// An error of a call that reached S3's SDK: transient unless S3 answered with a client error.
fn s3_err<E>(op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StorageError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let transient = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            status >= 500 || status == 429
        }
        _ => false, // the request could not even be built
    };
    other_err(op, key, err, transient)
}

fn other_err<E>(op: &'static str, key: &str, err: E, transient: bool) -> StorageError
where
    E: std::error::Error + Send + Sync + 'static,
{
    // `DisplayErrorContext` walks the source chain; the top-level message alone is often
    // just "service error".
    StorageError::S3 {
        op,
        key: key.to_owned(),
        message: aws_sdk_s3::error::DisplayErrorContext(err).to_string(),
        transient,
    }
}

/// An S3 client bound to the configured bucket. Every call is retried with backoff while S3
/// does not answer, for up to the configured budget, and an outage is logged once.
#[derive(Debug, Clone)]
pub struct Storage {
    client: Client,
    bucket: String,
    retry_for: Duration,
    outage: Arc<Outage>,
}

impl Storage {
    pub fn new(config: &S3Config) -> Self {
        // ring, not aws-lc: one crypto provider for the whole workspace and no C build.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        // Retries live in one place, `Storage::retrying`, which knows the outage budget; a
        // stalled server is cut off by the timeouts instead of hanging a task.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .build();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
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
            retry_for: Duration::from_secs(config.retry_for_s),
            outage: Arc::new(Outage::new("S3")),
        }
    }

    /// Runs `call` until it succeeds, fails for good, or transient failures have gone on for
    /// the retry budget (then the last error is returned).
    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .with_total_delay(Some(self.retry_for))
            .without_max_times();
        let result = call
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(StorageError::is_transient)
            .notify(|e, _| {
                self.outage.failed(e);
            })
            .await;
        if !result.as_ref().is_err_and(StorageError::is_transient) {
            self.outage.answered();
        }
        result
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the bucket if it does not exist yet (idempotent; safe for concurrent callers).
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        if self.bucket_exists().await {
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
                // Processes starting together race to create it. S3 answers the loser
                // BucketAlreadyOwnedByYou; some servers (s3s-fs: check, then mkdir) answer 500.
                // Either way the bucket is there, which is all that was asked.
                if owned || self.bucket_exists().await {
                    Ok(())
                } else {
                    Err(s3_err("create_bucket", &self.bucket, err))
                }
            }
        }
    }

    async fn bucket_exists(&self) -> bool {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
    }

    pub async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        self.retrying(|| async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .body(ByteStream::from(body.clone()))
                .send()
                .await
                .map_err(|e| s3_err("put_object", key, e))
        })
        .await?;
        Ok(())
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        self.retrying(|| async {
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
                // The connection broke mid-body: reading it again can succeed.
                .map_err(|e| other_err("get_object body", key, e, true))?;
            Ok(data.into_bytes())
        })
        .await
    }

    /// Deletes an object; deleting one that does not exist succeeds (S3 semantics).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.retrying(|| async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| s3_err("delete_object", key, e))
        })
        .await?;
        Ok(())
    }

    /// Keys under `prefix`, in key order (every page).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retrying(|| async {
                    self.client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(prefix)
                        .set_continuation_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| s3_err("list_objects_v2", prefix, e))
                })
                .await?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// Size of the object, or `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        self.retrying(|| async {
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
        })
        .await
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
            .retrying(|| async {
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .content_type(content_type)
                    .send()
                    .await
                    .map_err(|e| s3_err("create_multipart_upload", key, e))
            })
            .await?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let done = match self.upload_parts(key, &upload_id, &mut file).await {
            Ok(parts) => self.complete_upload(key, &upload_id, parts).await,
            Err(err) => Err(err),
        };
        if done.is_err() {
            // Abort so the server frees the parts; the original error is what matters.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        done.map(|()| len)
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<(), StorageError> {
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        self.retrying(|| async {
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(parts.clone())
                .send()
                .await
                .map_err(|e| s3_err("complete_multipart_upload", key, e))
        })
        .await?;
        Ok(())
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
            let part = Bytes::from(buf);
            let out = self
                .retrying(|| async {
                    self.client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(ByteStream::from(part.clone()))
                        .send()
                        .await
                        .map_err(|e| s3_err("upload_part", key, e))
                })
                .await?;
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
        let presigning = PresigningConfig::expires_in(expires)
            .map_err(|e| other_err("presign", key, e, false))?;
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
