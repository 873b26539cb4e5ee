//! Kiln's PKI: the master's CA, worker enrollment (CSR signing) and the
//! rustls configurations for the worker endpoint (mutual TLS, ALPN `h2`) and
//! the enrollment endpoint (server auth only, ALPN `kiln-enroll/1`, CA pinned
//! by fingerprint on the worker side).

use std::collections::HashSet;
use std::fs;

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName as TlsDn,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// ALPN protocol of the worker (gRPC) endpoint.
pub const ALPN_WORKER: &[u8] = b"h2";
/// ALPN protocol of the enrollment endpoint (same port as the worker endpoint).
pub const ALPN_ENROLL: &[u8] = b"kiln-enroll/1";
/// Validity of the master's server certificate issued by [`Ca::issue_server_cert`].
pub const SERVER_CERT_VALIDITY_DAYS: u32 = 825;
/// Validity of the CA certificate created by [`Ca::load_or_create`].
pub const CA_VALIDITY_DAYS: u32 = 20 * 365;

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const DAY: Duration = Duration::from_secs(86_400);
const BACKDATE: Duration = Duration::from_secs(3_600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    #[error("bad certificate: {0}")]
    BadCert(String),
    #[error("bad private key: {0}")]
    BadKey(String),
    #[error("bad CA fingerprint {0:?}: expected 64 hex digits (sha256)")]
    BadFingerprint(String),
    #[error("bad name: {0}")]
    BadName(String),
    #[error("bad validity: {0}")]
    BadValidity(String),
}

use crate::error::io_at as io_err;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Lowercase hex sha256 of `der`.
fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The master's certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Load the CA from `dir/ca.crt` + `dir/ca.key`, or create it (and `dir`,
    /// mode 0700) when `ca.crt` does not exist yet. The key is written mode 0600.
    pub fn load_or_create(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.try_exists().map_err(io_err(&cert_path))? {
            let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
            let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
            return Ca::from_pem(cert_pem, &key_pem);
        }

        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("Kiln CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = checked_time(now - BACKDATE)?.into();
        params.not_after = checked_time(now + DAY * CA_VALIDITY_DAYS)?.into();
        let cert = params.self_signed(&key)?;

        // Key first, certificate last: ca.crt existing means the CA is complete.
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
        })
    }

    fn from_pem(cert_pem: String, key_pem: &str) -> Result<Ca, PkiError> {
        let cert_der = first_cert(&cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey(e.to_string()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| PkiError::BadCert(e.to_string()))?;
        if x509
            .tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .as_ref()
            != key.public_key_raw()
        {
            return Err(PkiError::BadKey(
                "CA key does not match the CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Ca {
            issuer,
            cert_pem,
            cert_der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Lowercase hex sha256 of the CA certificate DER.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// Sign a worker CSR (PEM) after verifying its self-signature. Only the
    /// CSR's public key is used: CN = `name`, serial = `serial`, validity
    /// now-1h .. now+`validity_days`, EKU clientAuth, not a CA.
    pub fn sign_worker_csr(
        &self,
        csr_pem: &str,
        name: &str,
        serial: u64,
        validity_days: u32,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let now = SystemTime::now();
        let not_after = now
            .checked_add(DAY * validity_days)
            .ok_or_else(|| PkiError::BadValidity(format!("{validity_days} days")))?;
        let params = client_params(name, serial, now - BACKDATE, not_after)?;
        let csr = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// Issue the master's server certificate (fresh key) for DNS names and/or
    /// IP addresses, EKU serverAuth. Returns (cert_pem, key_pem).
    pub fn issue_server_cert(&self, names: &[String]) -> Result<(String, String), PkiError> {
        if names.is_empty() {
            return Err(PkiError::BadName(
                "server certificate needs at least one name".into(),
            ));
        }
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = dn("Kiln master");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = checked_time(now - BACKDATE)?.into();
        params.not_after = checked_time(now + DAY * SERVER_CERT_VALIDITY_DAYS)?.into();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issue a client certificate (fresh key) with an explicit validity window;
    /// mainly for tests (e.g. an expired certificate). Returns (cert_pem, key_pem).
    pub fn issue_client_cert_with_validity(
        &self,
        name: &str,
        serial: u64,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(String, String), PkiError> {
        let params = client_params(name, serial, not_before, not_after)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Parameters of a worker (client) certificate.
fn client_params(
    name: &str,
    serial: u64,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, PkiError> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(PkiError::BadName(format!("{name:?}")));
    }
    if not_after < not_before {
        return Err(PkiError::BadValidity(
            "not_after is before not_before".into(),
        ));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.serial_number = Some(SerialNumber::from(serial));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = checked_time(not_before)?.into();
    params.not_after = checked_time(not_after)?.into();
    Ok(params)
}

/// Reject times that X.509 (and the `time` conversion) cannot represent.
fn checked_time(t: SystemTime) -> Result<SystemTime, PkiError> {
    // 9999-12-31T23:59:59Z
    const MAX: u64 = 253_402_300_799;
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d.as_secs() <= MAX => Ok(t),
        _ => Err(PkiError::BadValidity(format!(
            "{t:?} is outside 1970..=9999"
        ))),
    }
}

/// Write `contents` to `path` via a temporary file and rename, with `mode`.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    Ok(crate::fsutil::write_atomic(path, contents, mode).map_err(io_err(path))?)
}

/// Worker side: a fresh ECDSA P-256 key and a CSR with CN = `name`.
/// Returns (key_pem, csr_pem).
pub fn make_key_and_csr(name: &str) -> Result<(String, String), PkiError> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(PkiError::BadName(format!("{name:?}")));
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// What the master learns from a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject CN.
    pub name: String,
    pub serial: u64,
}

/// Extract the subject CN and serial of a (verified) certificate.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::BadCert(e.to_string()))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| PkiError::BadCert("no subject CN".into()))?
        .as_str()
        .map_err(|e| PkiError::BadCert(format!("subject CN: {e}")))?
        .to_owned();
    let serial = serial_u64(cert.raw_serial())
        .ok_or_else(|| PkiError::BadCert("serial does not fit in u64".into()))?;
    Ok(PeerIdentity { name, serial })
}

/// Big-endian DER integer content (non-negative) to u64.
fn serial_u64(raw: &[u8]) -> Option<u64> {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    let digits = &raw[start..];
    if digits.len() > 8 {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
    )
}

/// Serials the master has revoked, shared with the client verifier.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    inner: Arc<RwLock<HashSet<u64>>>,
}

impl RevocationList {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn revoke(&self, serial: u64) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(serial);
    }

    pub fn is_revoked(&self, serial: u64) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&serial)
    }
}

/// WebPKI client verification against the CA, then the revocation list.
#[derive(Debug)]
struct RevokingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: RevocationList,
}

impl ClientCertVerifier for RevokingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[TlsDn] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = peer_identity(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.revoked.is_revoked(id.serial) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadCert(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::BadCert("no certificate in PEM".into()));
    }
    Ok(certs)
}

fn first_cert(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = certs_from_pem(pem)?;
    Ok(certs.swap_remove(0))
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadKey(e.to_string()))
}

/// Server chain: the certificates of `cert_pem`, then the CA unless already there.
fn server_chain(cert_pem: &str, ca: &Ca) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let mut chain = certs_from_pem(cert_pem)?;
    if !chain.contains(&ca.cert_der) {
        chain.push(ca.cert_der.clone());
    }
    Ok(chain)
}

fn ca_roots(ca_der: CertificateDer<'static>) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der)?;
    Ok(Arc::new(roots))
}

/// Master worker endpoint: chain [server, CA], mandatory client certificate
/// signed by the CA and not revoked (checked at every handshake: session
/// resumption is disabled), ALPN `h2`.
pub fn worker_endpoint_config(
    ca: &Ca,
    server_cert_pem: &str,
    server_key_pem: &str,
    revoked: RevocationList,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(
        ca_roots(ca.cert_der.clone())?,
        provider.clone(),
    )
    .build()?;
    let verifier = Arc::new(RevokingClientVerifier { inner, revoked });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            server_chain(server_cert_pem, ca)?,
            key_from_pem(server_key_pem)?,
        )?;
    // No session resumption: a resumed session skips the client verifier, so
    // revocation (and expiry) must be checked by a full handshake every time.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![ALPN_WORKER.to_vec()];
    Ok(config)
}

/// Enrollment endpoint (same port): chain [server, CA], no client auth,
/// ALPN `kiln-enroll/1`.
pub fn enroll_endpoint_config(
    server_cert_pem: &str,
    server_key_pem: &str,
    ca: &Ca,
) -> Result<ServerConfig, PkiError> {
    no_client_auth_config(server_cert_pem, server_key_pem, ca, ALPN_ENROLL)
}

/// A server config with our server certificate, no client certificate and
/// one ALPN protocol.
fn no_client_auth_config(
    server_cert_pem: &str,
    server_key_pem: &str,
    ca: &Ca,
    alpn: &[u8],
) -> Result<ServerConfig, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            server_chain(server_cert_pem, ca)?,
            key_from_pem(server_key_pem)?,
        )?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Server config for the HTTP API when it listens with TLS: the master's
/// server certificate, no client certificate (the API takes bearer
/// tokens), ALPN `http/1.1`.
pub fn api_endpoint_config(
    server_cert_pem: &str,
    server_key_pem: &str,
    ca: &Ca,
) -> Result<ServerConfig, PkiError> {
    no_client_auth_config(server_cert_pem, server_key_pem, ca, b"http/1.1")
}

/// Worker's client config for the worker endpoint: roots = the CA, client
/// certificate = the worker's, ALPN `h2`.
pub fn worker_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
    config.alpn_protocols = vec![ALPN_WORKER.to_vec()];
    Ok(config)
}

/// Trusts a server only through the CA certificate with the pinned sha256
/// fingerprint, taken from the chain the server presents.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| sha256_hex(c) == self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        let roots = ca_roots(pinned.clone().into_owned()).map_err(|e| match e {
            PkiError::Tls(e) => e,
            e => rustls::Error::General(e.to_string()),
        })?;
        let others: Vec<_> = intermediates
            .iter()
            .filter(|c| *c != pinned)
            .cloned()
            .collect();
        WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// Enrollment client config: the server is trusted only through the CA whose
/// certificate DER has sha256 `ca_fingerprint` (hex, case-insensitive). No
/// client certificate, ALPN `kiln-enroll/1`.
pub fn enroll_client_config(ca_fingerprint: &str) -> Result<ClientConfig, PkiError> {
    let fingerprint = ca_fingerprint.trim().to_ascii_lowercase();
    if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PkiError::BadFingerprint(ca_fingerprint.to_owned()));
    }
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const TIMEOUT: Duration = Duration::from_secs(10);

    struct Fixture {
        _dir: tempfile::TempDir,
        ca: Ca,
        server_cert: String,
        server_key: String,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(&dir.path().join("pki")).unwrap();
        let (server_cert, server_key) = ca
            .issue_server_cert(&["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
        Fixture {
            _dir: dir,
            ca,
            server_cert,
            server_key,
        }
    }

    fn worker_server(f: &Fixture, revoked: RevocationList) -> ServerConfig {
        worker_endpoint_config(&f.ca, &f.server_cert, &f.server_key, revoked).unwrap()
    }

    /// One connection: the server accepts, reports the client's identity (if
    /// any) and writes "ok"; the client connects and reads "ok".
    /// Returns (server result, client result).
    async fn handshake(
        server: ServerConfig,
        client: ClientConfig,
    ) -> (Result<Option<PeerIdentity>, String>, Result<(), String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|c| peer_identity(c).unwrap());
            tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            // Let the client read before closing.
            let mut buf = [0u8; 1];
            let _ = tls.read(&mut buf).await;
            Ok(id)
        });
        let client_res = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            if &buf != b"ok" {
                return Err(format!("unexpected {buf:?}"));
            }
            tls.shutdown().await.map_err(|e| e.to_string())
        };
        let client_res = tokio::time::timeout(TIMEOUT, client_res)
            .await
            .unwrap_or_else(|_| Err("client timeout".into()));
        let server_res = tokio::time::timeout(TIMEOUT, server_task)
            .await
            .expect("server timeout")
            .unwrap();
        (server_res, client_res)
    }

    fn enrolled_worker(f: &Fixture, name: &str, serial: u64) -> ClientConfig {
        let (key, csr) = make_key_and_csr("whatever-the-worker-says").unwrap();
        let cert = f.ca.sign_worker_csr(&csr, name, serial, 30).unwrap();
        worker_client_config(f.ca.cert_pem(), &cert, &key).unwrap()
    }

    #[tokio::test]
    async fn good_worker_accepted_with_identity() {
        let f = fixture();
        let client = enrolled_worker(&f, "builder-01", 42);
        let (server, client) = handshake(worker_server(&f, RevocationList::new()), client).await;
        client.unwrap();
        assert_eq!(
            server.unwrap(),
            Some(PeerIdentity {
                name: "builder-01".into(),
                serial: 42
            })
        );
    }

    #[tokio::test]
    async fn other_ca_refused() {
        let f = fixture();
        let other = fixture();
        let (key, csr) = make_key_and_csr("rogue").unwrap();
        let cert = other.ca.sign_worker_csr(&csr, "rogue", 1, 30).unwrap();
        // The rogue trusts our CA for the server but presents a foreign cert.
        let client = worker_client_config(f.ca.cert_pem(), &cert, &key).unwrap();
        let (server, client) = handshake(worker_server(&f, RevocationList::new()), client).await;
        assert!(server.is_err(), "{server:?}");
        assert!(client.is_err());
    }

    #[tokio::test]
    async fn no_client_cert_refused() {
        let f = fixture();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(f.ca.cert_der().to_vec()))
            .unwrap();
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![ALPN_WORKER.to_vec()];
        let (server, client) = handshake(worker_server(&f, RevocationList::new()), client).await;
        assert!(server.is_err(), "{server:?}");
        assert!(client.is_err());
    }

    #[tokio::test]
    async fn expired_cert_refused() {
        let f = fixture();
        let now = SystemTime::now();
        let (cert, key) =
            f.ca.issue_client_cert_with_validity("old", 7, now - DAY * 10, now - DAY)
                .unwrap();
        let client = worker_client_config(f.ca.cert_pem(), &cert, &key).unwrap();
        let (server, client) = handshake(worker_server(&f, RevocationList::new()), client).await;
        let err = server.unwrap_err();
        assert!(err.to_lowercase().contains("expired"), "{err}");
        assert!(client.is_err());
    }

    #[tokio::test]
    async fn revoked_refused_without_rebuilding_config() {
        let f = fixture();
        let revoked = RevocationList::new();
        let server = Arc::new(worker_server(&f, revoked.clone()));
        let client = enrolled_worker(&f, "builder-02", 99);

        let (s, c) = handshake((*server).clone(), client.clone()).await;
        assert_eq!(s.unwrap().map(|id| id.serial), Some(99));
        c.unwrap();

        revoked.revoke(99);
        assert!(revoked.is_revoked(99) && !revoked.is_revoked(98));
        let (s, c) = handshake((*server).clone(), client).await;
        let err = s.unwrap_err();
        assert!(err.to_lowercase().contains("revoked"), "{err}");
        assert!(c.is_err());
    }

    #[tokio::test]
    async fn enrollment_pins_ca_fingerprint() {
        let f = fixture();
        let server = enroll_endpoint_config(&f.server_cert, &f.server_key, &f.ca).unwrap();

        let good = enroll_client_config(&f.ca.fingerprint().to_uppercase()).unwrap();
        let (s, c) = handshake(server.clone(), good).await;
        assert_eq!(s.unwrap(), None);
        c.unwrap();

        let other = fixture();
        let bad = enroll_client_config(&other.ca.fingerprint()).unwrap();
        let (s, c) = handshake(server, bad).await;
        assert!(s.is_err());
        assert!(c.is_err());

        assert!(matches!(
            enroll_client_config("abc"),
            Err(PkiError::BadFingerprint(_))
        ));
    }

    #[test]
    fn csr_signed_with_forced_name() {
        let f = fixture();
        let (_key, csr) = make_key_and_csr("evil-admin").unwrap();
        let pem = f.ca.sign_worker_csr(&csr, "builder-03", 1234, 365).unwrap();
        let der = first_cert(&pem).unwrap();
        assert_eq!(
            peer_identity(&der).unwrap(),
            PeerIdentity {
                name: "builder-03".into(),
                serial: 1234
            }
        );
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!x509.is_ca());
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);

        assert!(matches!(
            f.ca.sign_worker_csr("garbage", "x", 1, 1),
            Err(PkiError::BadCsr(_))
        ));
        // A CSR whose content no longer matches its self-signature.
        let mut der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec();
        let at = der.windows(4).position(|w| w == b"evil").unwrap();
        der[at] = b'E';
        assert!(matches!(
            CertificateSigningRequestParams::from_der(&der.into()),
            Err(rcgen::Error::InvalidCertificationRequestSignature)
        ));
    }

    #[test]
    fn ca_persists_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let first = Ca::load_or_create(&pki).unwrap();
        let second = Ca::load_or_create(&pki).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(first.fingerprint(), sha256_hex(second.cert_der()));
        assert_eq!(first.fingerprint().len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&pki), 0o700);

        // The loaded CA can still sign certificates that verify against it.
        let (_key, csr) = make_key_and_csr("w").unwrap();
        let pem = second.sign_worker_csr(&csr, "w", 5, 1).unwrap();
        assert_eq!(peer_identity(&first_cert(&pem).unwrap()).unwrap().serial, 5);
    }

    #[test]
    fn serial_parsing() {
        assert_eq!(serial_u64(&[0, 0x80]), Some(0x80));
        assert_eq!(serial_u64(&[0; 9]), Some(0));
        assert_eq!(
            serial_u64(&[0, 1, 2, 3, 4, 5, 6, 7, 8]),
            Some(0x0102030405060708)
        );
        assert_eq!(serial_u64(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), None);
    }
}
