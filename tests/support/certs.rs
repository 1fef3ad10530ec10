//! Throw-away TLS identities for tests, generated with OpenSSL at test
//! time: a self-signed certificate for `localhost` and 127.0.0.1 with a
//! fresh P-256 key, valid for a day.
#![allow(dead_code)]

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};

/// A certificate and its private key, both PEM.
pub struct TestCert {
    /// The certificate (also the trust anchor clients add).
    pub cert_pem: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: Vec<u8>,
}

/// A self-signed certificate for `localhost` and 127.0.0.1.
pub fn self_signed_localhost() -> TestCert {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(&name).unwrap();
    builder.set_pubkey(&key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    builder
        .append_extension(BasicConstraints::new().critical().build().unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&builder.x509v3_context(None, None))
        .unwrap();
    builder.append_extension(san).unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    TestCert {
        cert_pem: builder.build().to_pem().unwrap(),
        key_pem: key.private_key_to_pem_pkcs8().unwrap(),
    }
}

/// A native-tls client that trusts only `cert`.
pub fn client_trusting(cert: &TestCert) -> native_tls::TlsConnector {
    native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(&cert.cert_pem).unwrap())
        .disable_built_in_roots(true)
        .build()
        .unwrap()
}

/// A native-tls server acceptor for `cert`.
pub fn acceptor(cert: &TestCert) -> native_tls::TlsAcceptor {
    let id = native_tls::Identity::from_pkcs8(&cert.cert_pem, &cert.key_pem).unwrap();
    native_tls::TlsAcceptor::new(id).unwrap()
}
