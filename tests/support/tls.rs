//! A throwaway test CA made at test time with OpenSSL: a CA certificate and
//! a server certificate (for `localhost` and `127.0.0.1` unless asked for
//! another name) signed by it,
//! written as PEM files (the key as PKCS#8, as native-tls wants), plus
//! client configurations that trust only that CA.
#![allow(dead_code)]

use std::path::PathBuf;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

use super::tmp::TempDir;

/// A CA and a server identity signed by it, on disk.
pub struct TestCa {
    dir: TempDir,
    /// The CA certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// Path of the CA certificate (PEM).
    pub ca_path: PathBuf,
    /// Path of the server certificate (PEM).
    pub cert_path: PathBuf,
    /// Path of the server key (PKCS#8 PEM).
    pub key_path: PathBuf,
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn builder(cn: &str, key: &PKey<Private>, days: u32) -> X509Builder {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(days).unwrap())
        .unwrap();
    b
}

impl TestCa {
    /// Generates a fresh CA and server certificate (for `localhost` and
    /// 127.0.0.1) in a new temp dir.
    pub fn new() -> TestCa {
        TestCa::for_name("localhost", Some("127.0.0.1"))
    }

    /// Like [`TestCa::new`], with the server certificate issued for `dns`
    /// (and `ip`, if given) only.
    pub fn for_name(dns: &str, ip: Option<&str>) -> TestCa {
        let dir = TempDir::new("testca");
        let ca_key = new_key();
        let mut ca = builder("collabd test CA", &ca_key, 30);
        let mut issuer = X509NameBuilder::new().unwrap();
        issuer
            .append_entry_by_text("CN", "collabd test CA")
            .unwrap();
        ca.set_issuer_name(&issuer.build()).unwrap();
        ca.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        ca.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        let ski = SubjectKeyIdentifier::new()
            .build(&ca.x509v3_context(None, None))
            .unwrap();
        ca.append_extension(ski).unwrap();
        ca.sign(&ca_key, MessageDigest::sha256()).unwrap();
        let ca_cert: X509 = ca.build();

        let key = new_key();
        let mut srv = builder(dns, &key, 30);
        srv.set_issuer_name(ca_cert.subject_name()).unwrap();
        srv.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        srv.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()
                .unwrap(),
        )
        .unwrap();
        srv.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
            .unwrap();
        let ctx = srv.x509v3_context(Some(&ca_cert), None);
        let mut san = SubjectAlternativeName::new();
        san.dns(dns);
        if let Some(ip) = ip {
            san.ip(ip);
        }
        let san = san.build(&ctx).unwrap();
        let ski = SubjectKeyIdentifier::new().build(&ctx).unwrap();
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&ctx)
            .unwrap();
        srv.append_extension(san).unwrap();
        srv.append_extension(ski).unwrap();
        srv.append_extension(aki).unwrap();
        srv.sign(&ca_key, MessageDigest::sha256()).unwrap();
        let cert = srv.build();

        let ca_pem = ca_cert.to_pem().unwrap();
        let ca_path = dir.join("ca.pem");
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server.key");
        std::fs::write(&ca_path, &ca_pem).unwrap();
        std::fs::write(&cert_path, cert.to_pem().unwrap()).unwrap();
        std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        TestCa {
            dir,
            ca_pem,
            ca_path,
            cert_path,
            key_path,
        }
    }

    /// A ureq TLS configuration (native-tls) trusting only this CA.
    pub fn ureq_tls_config(&self) -> ureq::tls::TlsConfig {
        let cert = ureq::tls::Certificate::from_pem(&self.ca_pem).unwrap();
        ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
            .build()
    }

    /// A native-tls connector trusting only this CA.
    pub fn native_connector(&self) -> native_tls::TlsConnector {
        native_tls::TlsConnector::builder()
            .disable_built_in_roots(true)
            .add_root_certificate(native_tls::Certificate::from_pem(&self.ca_pem).unwrap())
            .build()
            .unwrap()
    }
}
