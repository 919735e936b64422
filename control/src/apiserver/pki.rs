//! The cluster's certificate authority and the API server's certificate.
//!
//! The CA is generated on first start and kept in the data directory
//! (`pki/ca.crt`, `pki/ca.key`); its parameters are fixed, so the same key
//! re-creates an issuer whose certificates chain to the stored CA. The API
//! server's leaf certificate is issued afresh at every start for the
//! addresses it serves (kube-rs/rustls reject a CA certificate used as the
//! server's own, so the two are separate).

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::ServerError;

/// The cluster CA and the API server's serving certificate.
pub struct Pki {
    /// The CA certificate, PEM: what kubeconfigs embed and clients trust.
    pub ca_pem: String,
    ca_key: KeyPair,
    /// The API server's certificate, PEM.
    pub server_cert_pem: String,
    server_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skiff-ca");
    dn.push(DnType::OrganizationName, "skiff");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Fixed validity, so the re-created issuer matches the stored CA.
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    params
}

fn tls_error(what: &str, err: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(format!("{what}: {err}"))
}

impl Pki {
    /// Loads the CA from `dir` (creating it on first start) and issues the
    /// server certificate for `hosts` (IP addresses or DNS names).
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Pki, ServerError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ServerError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (ca_pem, ca_key) = if cert_path.exists() && key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key =
                KeyPair::from_pem(&key_pem).map_err(|e| tls_error("reading the CA key", e))?;
            let pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            (pem, key)
        } else {
            let key = KeyPair::generate().map_err(|e| tls_error("generating the CA key", e))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(|e| tls_error("creating the CA certificate", e))?;
            write_private(&key_path, &key.serialize_pem())?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            (cert.pem(), key)
        };
        let mut pki = Pki {
            ca_pem,
            ca_key,
            server_cert_pem: String::new(),
            server_key_pem: String::new(),
        };
        let (cert, key) = pki.issue("skiff-apiserver", hosts, true)?;
        pki.server_cert_pem = cert;
        pki.server_key_pem = key;
        Ok(pki)
    }

    /// Issues a certificate signed by the cluster CA for `common_name`,
    /// valid for `hosts`, for serving (and client auth when `server` is
    /// false). Returns (certificate PEM, key PEM).
    pub fn issue(
        &self,
        common_name: &str,
        hosts: &[String],
        server: bool,
    ) -> Result<(String, String), ServerError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => h
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| tls_error("a certificate host name", e)),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let key = KeyPair::generate().map_err(|e| tls_error("generating a key", e))?;
        let issuer = Issuer::new(ca_params(), &self.ca_key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| tls_error("signing a certificate", e))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The CertificateSigningRequest signer issuing from this CA (see
    /// [`crate::controllers::csrsigning`]).
    pub fn signer(&self) -> Result<crate::controllers::csrsigning::Signer, ServerError> {
        crate::controllers::csrsigning::Signer::new(&self.ca_pem, &self.ca_key.serialize_pem())
            .map_err(|e| tls_error("the CSR signer", e))
    }

    /// The rustls configuration serving the API server's certificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .chain(CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error("reading the server certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .map_err(|e| tls_error("reading the server key", e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("the server certificate", e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Writes a secret file readable by its owner only.
pub(super) fn write_private(path: &Path, contents: &str) -> Result<(), ServerError> {
    use std::io::Write;
    let io = |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}
