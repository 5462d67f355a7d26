//! Client certificates: the TLS layer has already checked the chain against
//! the client CA, so the subject can be trusted: CN is the principal's name,
//! OU its role.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Principal, Proof, Role};

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The principal a verified client certificate names, if it names one.
pub fn principal_from_cert(der: &[u8]) -> Option<Principal> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?;
    let role = subject.iter_organizational_unit().next()?.as_str().ok()?.parse::<Role>().ok()?;
    (!name.is_empty()).then(|| Principal { name: name.to_owned(), role, proof: Proof::ClientCertificate })
}
