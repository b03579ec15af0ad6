//! TLS with rustls (pure Rust: the abi3 wheel needs no system OpenSSL), by libpq's `sslmode`:
//! `prefer`/`require` encrypt without verifying the server's certificate (as libpq: against
//! eavesdropping, not impersonation); `verify-ca` checks that a trusted root signed it;
//! `verify-full` also that it names the host connected to. The roots come from `sslrootcert`
//! (a PEM file; `~/.postgresql/root.crt` by default, as libpq; `system` for the system's).
//! A client certificate (for servers that authenticate clients by certificate, `cert` in
//! pg_hba.conf) comes from `sslcert` and `sslkey`, by default `~/.postgresql/postgresql.crt`
//! and `.key` when the certificate file exists (as libpq); a key encrypted with a passphrase
//! (PKCS#8) is decrypted with `sslpassword`.

use std::sync::Arc;

use std::path::{Path, PathBuf};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::Error;

/// What of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Nothing (`prefer`, `require`): encrypted, the server unauthenticated.
    Nothing,
    /// Signed by a trusted root (`verify-ca`), whatever host it names.
    Ca,
    /// Signed by a trusted root and naming the host connected to (`verify-full`).
    Full,
}

/// Where the trusted roots come from (`sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// libpq's default, `~/.postgresql/root.crt`.
    Default,
    File(PathBuf),
    /// The system's store (`sslrootcert=system`).
    System,
}

/// The client's certificate and key files (`sslcert`, `sslkey`; `None`: libpq's default), and
/// the passphrase of an encrypted key (`sslpassword`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub password: Option<String>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub verify: Verify,
    pub roots: Roots,
    pub client: ClientCert,
}

/// Accepts any certificate, but still checks the handshake's signatures (so the session key
/// belongs to whoever holds the certificate's key).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked as `verify-full` checks it, but a certificate that
/// names another host is accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The trusted roots `roots` names; a missing or empty file is an `InvalidArgument`.
fn load_roots(roots: &Roots) -> crate::error::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    let path = match roots {
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Error::InvalidArgument(
                    "sslrootcert=system: no root certificate found in the system's store".into(),
                ));
            }
            return Ok(store);
        }
        Roots::File(path) => path.clone(),
        Roots::Default => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".postgresql/root.crt"),
    };
    let bad = |why: String| {
        Error::InvalidArgument(format!(
            "sslmode=verify-ca/verify-full needs trusted root certificates: {why} \
             (give sslrootcert=PATH to a PEM file, or sslrootcert=system)"
        ))
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{} is not PEM: {e}", path.display())))?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad(format!("no certificate in {}", path.display())));
    }
    Ok(store)
}

/// libpq's directory of defaults, `~/.postgresql`.
fn libpq_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".postgresql")
}

type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The certificate chain and key to present, or `None` when there is none to present (no
/// `sslcert` and no default file). A named file that cannot be used is an `InvalidArgument`.
fn load_client_cert(client: &ClientCert) -> crate::error::Result<Option<ClientIdentity>> {
    let cert_path = match &client.cert {
        Some(path) => path.clone(),
        None => {
            let default = libpq_dir().join("postgresql.crt");
            if !default.exists() {
                return Ok(None);
            }
            default
        }
    };
    let key_path = client
        .key
        .clone()
        .unwrap_or_else(|| libpq_dir().join("postgresql.key"));
    let bad =
        |why: String| Error::InvalidArgument(format!("client certificate (sslcert/sslkey): {why}"));
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| bad(format!("cannot read {}: {e}", cert_path.display())))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{} is not PEM: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(bad(format!("no certificate in {}", cert_path.display())));
    }
    let key = load_key(&key_path, client.password.as_deref()).map_err(bad)?;
    Ok(Some((chain, key)))
}

/// The private key in the PEM file `path`, decrypted with `password` if it is encrypted.
fn load_key(path: &Path, password: Option<&str>) -> Result<PrivateKeyDer<'static>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "{shown} is encrypted in OpenSSL's legacy format, which is not supported: \
             convert it with `openssl pkcs8 -topk8 -in OLD -out NEW` (it keeps a passphrase)"
        ));
    }
    if !text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| format!("no usable private key in {shown}: {e}"));
    }
    let Some(password) = password else {
        return Err(format!(
            "the private key in {shown} is encrypted: give its passphrase as sslpassword"
        ));
    };
    let (_, document) = pkcs8::Document::from_pem(&text)
        .map_err(|e| format!("the encrypted private key in {shown} is not PEM: {e}"))?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes())
        .map_err(|e| format!("the encrypted private key in {shown} is damaged: {e}"))?;
    let key = info
        .decrypt(password)
        .map_err(|_| format!("cannot decrypt the private key in {shown}: wrong sslpassword?"))?;
    Ok(PrivateKeyDer::Pkcs8(key.as_bytes().to_vec().into()))
}

/// The connector every TLS connection of a store uses.
pub fn connector(settings: &TlsSettings) -> crate::error::Result<MakeRustlsConnect> {
    let provider = Arc::new(ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match settings.verify {
        Verify::Nothing => Arc::new(EncryptOnly(provider.clone())),
        Verify::Ca | Verify::Full => {
            let roots = Arc::new(load_roots(&settings.roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| Error::Storage(format!("TLS setup failed: {e}")))?;
            if settings.verify == Verify::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Storage(format!("TLS setup failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match load_client_cert(&settings.client)? {
        Some((chain, key)) => config.with_client_auth_cert(chain, key).map_err(|e| {
            Error::InvalidArgument(format!(
                "client certificate (sslcert/sslkey): the key does not fit: {e}"
            ))
        })?,
        None => config.with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}
