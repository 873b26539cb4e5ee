//! `kiln worker enroll`: make a key and CSR here, have the master sign the
//! CSR against a one-time token, keep the key. The master's CA is pinned by
//! the fingerprint carried in the token.

use std::path::Path;
use std::sync::Arc;

use kiln_core::pki;
use kiln_proto as pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{files, io_err, parse_master_url, WorkerError};

fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), WorkerError> {
    Ok(
        kiln_core::fsutil::write_atomic(path, content.as_bytes(), mode)
            .map_err(io_err(format!("writing {}", path.display())))?,
    )
}

/// Enroll with the master; returns the worker name the token was made for.
pub async fn enroll(master: &str, token: &str, dir: &Path) -> Result<String, WorkerError> {
    let (host, port) = parse_master_url(master)?;
    let token = token.trim();
    let fp = match token.split('.').collect::<Vec<_>>().as_slice() {
        ["kiln1", _, fp] => fp.to_string(),
        _ => return Err(WorkerError::Enroll("malformed enrollment token".into())),
    };
    // Only the worker may read what is kept here (its key above all).
    crate::backend::make_private_dir(dir)
        .and_then(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(io_err(format!("creating {}", dir.display())))?;
    let cfg = Arc::new(pki::enroll_client_config(&fp)?);
    // The master signs for the name the token was made for; the CSR's own
    // subject does not matter.
    let (key_pem, csr_pem) = pki::make_key_and_csr("kiln-worker")?;
    let mut s = crate::conn::tls_connect(&host, port, cfg)
        .await
        .map_err(|e| WorkerError::Connect(format!("{master}: {e}")))?;
    let req = pb::EnrollRequest {
        token: token.to_string(),
        csr_pem,
    }
    .encode_to_vec();
    let exchange = async {
        s.write_u32(req.len() as u32).await?;
        s.write_all(&req).await?;
        s.flush().await?;
        let len = s.read_u32().await? as usize;
        if len > 1 << 20 {
            return Err(std::io::Error::other("enrollment answer too large"));
        }
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    };
    let buf = exchange
        .await
        .map_err(|e| WorkerError::Connect(format!("{master}: {e}")))?;
    let resp = pb::EnrollResponse::decode(&buf[..])
        .map_err(|e| WorkerError::Enroll(format!("malformed answer: {e}")))?;
    if !resp.error.is_empty() {
        return Err(WorkerError::Enroll(resp.error));
    }
    write_file(&dir.join(files::KEY), &key_pem, 0o600)?;
    write_file(&dir.join(files::CERT), &resp.cert_pem, 0o600)?;
    write_file(&dir.join(files::CA), &resp.ca_pem, 0o600)?;
    write_file(&dir.join(files::MASTER), &format!("{master}\n"), 0o600)?;
    write_file(&dir.join(files::NAME), &format!("{}\n", resp.name), 0o600)?;
    Ok(resp.name)
}
