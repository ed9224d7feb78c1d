//! TLS to PostgreSQL, as libpq's `sslmode` says, through rustls with the ring provider.
//!
//! | `sslmode`     | encrypted            | certificate checked                  |
//! |---------------|----------------------|--------------------------------------|
//! | `disable`     | no                   | —                                    |
//! | `prefer` (default) | if the server offers it; else plain | no                |
//! | `require`     | yes, or no connection| no (as libpq; with `sslrootcert` it is `verify-ca`, as libpq) |
//! | `verify-ca`   | yes                  | signed by a trusted authority        |
//! | `verify-full` | yes                  | … and issued for the host connected to |
//!
//! Trusted authorities are Mozilla's roots (compiled in through `webpki-roots`) plus the PEM
//! certificates of `sslrootcert=FILE`; `sslrootcert=system` means the roots alone. `PGSSLMODE`
//! and `PGSSLROOTCERT` apply when the URL says nothing, as in libpq.
//!
//! Danger: `prefer` and `require` encrypt but do not authenticate the server, so an active
//! attacker in the path can read the session (password included, for password methods other
//! than SCRAM with channel binding). Production URLs should say `verify-full`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, less `allow` (plain first, TLS only if refused), which nobody should want.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (it tries an unencrypted connection first)"
                        .into(),
                );
            }
            other => return Err(format!("unknown sslmode {other:?}")),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain is checked.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Extra trust anchors (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// Mozilla's roots only.
    System,
    /// Mozilla's roots and the certificates in this PEM file.
    File(PathBuf),
}

/// The TLS half of a PostgreSQL connection's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
}

impl TlsSettings {
    /// Settle the URL's (or environment's) `sslmode` and `sslrootcert` as libpq does:
    /// no mode → `prefer`; `require` with a root certificate file → `verify-ca`;
    /// `sslrootcert=system` → at least `verify-full` is required.
    pub fn resolve(mode: Option<&str>, root_cert: Option<&str>) -> Result<TlsSettings, String> {
        let root_cert = match root_cert {
            None | Some("") => None,
            Some("system") => Some(RootCert::System),
            Some(p) => Some(RootCert::File(PathBuf::from(p))),
        };
        let mode = match mode {
            None | Some("") => SslMode::Prefer,
            Some(m) => SslMode::parse(m)?,
        };
        let mode = match (&root_cert, mode) {
            (Some(RootCert::File(_)), SslMode::Require) => SslMode::VerifyCa,
            (Some(RootCert::System), m) if m != SslMode::VerifyFull => {
                return Err(format!(
                    "sslrootcert=system needs sslmode=verify-full (got {})",
                    m.as_str()
                ));
            }
            (_, m) => m,
        };
        Ok(TlsSettings { mode, root_cert })
    }

    /// The rustls connector for these settings (`None` for `disable`). Reads `sslrootcert`.
    pub fn connector(&self) -> Result<Option<MakeRustlsConnect>, TlsSetupError> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .dangerous();
        let config = if self.mode.verifies() {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(RootCert::File(path)) = &self.root_cert {
                add_pem_roots(&mut roots, path)?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
            let verifier: Arc<dyn ServerCertVerifier> = if self.mode == SslMode::VerifyCa {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            };
            builder.with_custom_certificate_verifier(verifier)
        } else {
            builder.with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        };
        Ok(Some(MakeRustlsConnect::new(config.with_no_client_auth())))
    }
}

/// Why a connector could not be built.
#[derive(Debug)]
pub enum TlsSetupError {
    /// `sslrootcert` unreadable or holding no certificate.
    RootCert {
        path: PathBuf,
        message: String,
    },
    Rustls(String),
}

fn add_pem_roots(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsSetupError> {
    let err = |message: String| TlsSetupError::RootCert {
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| err(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| err(format!("not a usable certificate: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(err("no `BEGIN CERTIFICATE` section in it".into()));
    }
    Ok(())
}

/// `prefer` / `require`: encryption without authentication, as libpq. The handshake's own
/// signatures are still checked, so the session key belongs to whoever holds the certificate's
/// key — it is only the certificate that nobody vouches for.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate may differ
/// from the host connected to. (webpki checks the name last, after the chain.)
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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

/// The rustls error inside a failed connection, if TLS is what failed. (tokio-rustls wraps it
/// in an `io::Error`, whose `source()` skips it, hence `get_ref`.)
pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(r) = x.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = x.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(r);
        }
        cur = x.source();
    }
    None
}

/// (what went wrong, how to fix it) for a certificate the settings refused.
pub fn explain(e: &rustls::Error, tls: &TlsSettings, host: &str) -> (String, String) {
    let trusted = match &tls.root_cert {
        Some(RootCert::File(p)) => format!("Mozilla's roots and {}", p.display()),
        _ => "Mozilla's roots (no sslrootcert given)".into(),
    };
    let mode = tls.mode.as_str();
    let escape = "or, to encrypt without checking the certificate, sslmode=require (not safe against an attacker in the path)";
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => (
            format!(
                "sslmode={mode}: the server's TLS certificate is not signed by a trusted certificate authority (trusted: {trusted}); a self-signed certificate is refused"
            ),
            format!(
                "put the certificate of the authority that signed the server's certificate (for a self-signed one, the certificate itself) in a PEM file and add sslrootcert=/path/to/root.crt to the URL (or set PGSSLROOTCERT); {escape}"
            ),
        ),
        rustls::Error::InvalidCertificate(
            c @ (CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }),
        ) => {
            let names = match c {
                CertificateError::NotValidForNameContext { presented, .. } => {
                    format!(" (it names {})", presented.join(", "))
                }
                _ => String::new(),
            };
            (
                format!(
                    "sslmode={mode}: the server's TLS certificate is not issued for {host:?}{names}"
                ),
                "connect by a name the certificate lists, or use sslmode=verify-ca to check the authority but not the name".into(),
            )
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => (
            format!("sslmode={mode}: the server's TLS certificate has expired"),
            "renew the server's certificate (ssl_cert_file in postgresql.conf) and reload the server".into(),
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => (
            format!("sslmode={mode}: the server's TLS certificate is not valid yet"),
            "check this machine's clock and the certificate's dates".into(),
        ),
        rustls::Error::InvalidCertificate(c) => (
            format!("sslmode={mode}: the server's TLS certificate is refused: {c:?}"),
            format!("check the server's certificate and sslrootcert; {escape}"),
        ),
        other => (
            format!("sslmode={mode}: TLS handshake failed: {other}"),
            "check the server's TLS setup (ssl, ssl_cert_file, ssl_min_protocol_version)".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_resolves_as_libpq() {
        let r = |m: Option<&str>, c: Option<&str>| TlsSettings::resolve(m, c);
        assert_eq!(r(None, None).unwrap().mode, SslMode::Prefer);
        assert_eq!(r(Some("disable"), None).unwrap().mode, SslMode::Disable);
        assert_eq!(r(Some("require"), None).unwrap().mode, SslMode::Require);
        // libpq: require with a root certificate file verifies the chain.
        assert_eq!(
            r(Some("require"), Some("/ca.pem")).unwrap().mode,
            SslMode::VerifyCa
        );
        assert_eq!(
            r(Some("verify-full"), Some("system")).unwrap(),
            TlsSettings {
                mode: SslMode::VerifyFull,
                root_cert: Some(RootCert::System)
            }
        );
        assert!(r(Some("require"), Some("system")).is_err());
        assert!(r(Some("allow"), None).unwrap_err().contains("allow"));
        assert!(r(Some("verify_full"), None).is_err());
    }

    #[test]
    fn a_root_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.crt");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let t = TlsSettings::resolve(Some("verify-full"), p.to_str()).unwrap();
        match t.connector() {
            Err(TlsSetupError::RootCert { path, message }) => {
                assert_eq!(path, p);
                assert!(message.contains("BEGIN CERTIFICATE"), "{message}");
            }
            other => panic!("{:?}", other.map(|c| c.is_some())),
        }
        let missing = TlsSettings::resolve(Some("verify-ca"), Some("/no/such/root.crt")).unwrap();
        assert!(matches!(
            missing.connector(),
            Err(TlsSetupError::RootCert { .. })
        ));
        assert!(
            TlsSettings::resolve(Some("disable"), None)
                .unwrap()
                .connector()
                .unwrap()
                .is_none()
        );
    }
}
