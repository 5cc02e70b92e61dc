//! Certificates made at test time with rcgen (no private key is ever committed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A CA that can issue server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// PEM files written for one certificate.
#[derive(Clone, Debug)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.pem()).unwrap();
        p
    }

    /// Issues a certificate for `names` (DNS names or IP addresses) and writes cert and key.
    pub fn issue(&self, names: &[&str], dir: &Path, stem: &str) -> Files {
        self.issue_with(names, dir, stem, false)
    }

    /// Like [`Ca::issue`]; `expired` makes a certificate whose validity ended in 2020.
    pub fn issue_with(&self, names: &[&str], dir: &Path, stem: &str, expired: bool) -> Files {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = Files {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// A rustls client config trusting this CA (aws-lc-rs, chosen explicitly), optionally with
    /// a client certificate.
    pub fn client_config(&self, client: Option<&Files>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        match client {
            None => builder.with_no_client_auth(),
            Some(f) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f.cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&f.key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        }
    }
}
