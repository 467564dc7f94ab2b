//! An S3-compatible server over a plain directory (s3s-fs), with SigV4 credential checks.
//! It runs in-process in the test harness and as `harmonia-dev s3` for the scripts and demo.

use std::path::Path;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

/// Serves S3 on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    root: &Path,
    access_key: &str,
    secret_key: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(root)?;
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|e| anyhow::anyhow!("s3s-fs over {}: {e:?}", root.display()))?;
    let service = {
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        builder.build()
    };
    let http = ConnBuilder::new(TokioExecutor::new());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!("s3 accept: {e}");
                    continue;
                }
            },
            () = shutdown.as_mut() => return Ok(()),
        };
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("s3 connection: {e}");
            }
        });
    }
}
