//! TLS to `https://` tool servers: which roots are trusted (the system's, a configured
//! CA bundle, or both), an optional client certificate (mutual TLS), the name sent in
//! SNI and verified, and ALPN offering HTTP/2 and HTTP/1.1. A certificate the gateway
//! cannot verify ends the call with a typed answer; an https upstream is never reached
//! over plain HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::validate::{Checked, FieldError};

/// `upstreams[].tls:` — how the gateway verifies (and authenticates to) the tool server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of CA certificates to trust (a private CA), relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Trust the operating system's roots as well (default true; false with `ca_file`
    /// pins the upstream to that CA).
    #[serde(default = "yes")]
    pub system_roots: bool,
    /// A client certificate for mutual TLS: `{cert_file, key_file}` (PEM).
    #[serde(default)]
    pub client_cert: Option<ClientCertConfig>,
    /// The name sent in SNI and checked in the certificate, when it is not the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        UpstreamTlsConfig {
            ca_file: None,
            system_roots: true,
            client_cert: None,
            server_name: None,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl UpstreamTlsConfig {
    pub fn validate(&self) -> Checked {
        if !self.system_roots && self.ca_file.is_none() {
            return Err(FieldError::new(
                "system_roots",
                "is false and no ca_file is given: no certificate could ever be trusted",
            ));
        }
        if let Some(name) = &self.server_name {
            rustls_pki_types::ServerName::try_from(name.as_str())
                .map_err(|_| FieldError::new("server_name", "is not a DNS name or IP address"))?;
        }
        Ok(())
    }

    /// The rustls client configuration: roots and client certificate (the connector
    /// adds ALPN: h2, http/1.1).
    /// Files are read now, so `check` and start-up report a bad file by its key.
    pub fn client_config(&self, base: &Path) -> Checked<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        if self.system_roots {
            // Unreadable individual system certificates are skipped, as every TLS
            // client does; an empty result with no CA file is an error below.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
        if let Some(file) = &self.ca_file {
            let certs = read_certs(&base.join(file)).map_err(|e| FieldError::new("ca_file", e))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(FieldError::new("ca_file", "holds no usable CA certificate"));
            }
        }
        if roots.is_empty() {
            return Err(FieldError::new(
                "system_roots",
                "the system has no trusted roots; give ca_file",
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FieldError::new("", e.to_string()))?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let certs = read_certs(&base.join(&c.cert_file))
                    .map_err(|e| FieldError::new("client_cert.cert_file", e))?;
                let path = base.join(&c.key_file);
                let key = PrivateKeyDer::from_pem_file(&path).map_err(|e| {
                    FieldError::new("client_cert.key_file", format!("{}: {e}", path.display()))
                })?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| FieldError::new("client_cert", e.to_string()))?
            }
        };
        Ok(config)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// The TLS failure inside a connection error, if that is what it was. The rustls error
/// travels inside `io::Error`s (possibly nested, or inside an HTTP/2 error), and their
/// `source` skips the wrapped error, so wrapped errors are followed by hand.
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        // h2's error skips its io::Error in `source` too.
        let io = err
            .downcast_ref::<std::io::Error>()
            .or_else(|| err.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        cur = match io {
            Some(io) => {
                // A TLS alert read after the handshake reaches us as text only.
                if let Some(alert) = io.get_ref().map(|i| i.to_string())
                    && io.kind() == std::io::ErrorKind::InvalidData
                    && alert.starts_with("received fatal alert")
                {
                    return Some(format!("the tool server refused the TLS session ({alert})"));
                }
                io.get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static))
            }
            None => err.source(),
        };
    }
    None
}

fn describe(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    match e {
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the tool server's certificate has expired".into()
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the tool server's certificate is not signed by a trusted CA".into()
        }
        Error::InvalidCertificate(CertificateError::NotValidForName)
        | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the tool server's certificate does not name its host".into()
        }
        Error::InvalidCertificate(other) => {
            format!("the tool server's certificate is not acceptable: {other:?}")
        }
        Error::AlertReceived(alert) => {
            format!("the tool server refused the TLS handshake ({alert:?})")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}
