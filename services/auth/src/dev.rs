//! Development credentials: what `healthcode up` creates on first start so
//! that a newcomer's client verbs, tests and the load test authenticate
//! without a PKI. A deployment brings its own CA, certificates, tokens file
//! and pseudonym key instead.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

use crate::tokens::write_private;
use crate::{AuthError, ClientCert, Pseudonymizer, Role, TokenRegistry, new_token};

/// The principal created for each role, with its token in `<role>.token`
/// and its client certificate in `<role>.pem` / `<role>.key`.
pub const DEV_PRINCIPALS: [(&str, Role); 4] = [
    ("dev-station", Role::Station),
    ("dev-lab", Role::Lab),
    ("dev-authority", Role::Authority),
    ("dev-ops", Role::Ops),
];

/// The files of a credentials directory.
#[derive(Clone, Debug)]
pub struct DevCredentials {
    pub dir: PathBuf,
}

impl DevCredentials {
    pub fn at(dir: &Path) -> DevCredentials {
        DevCredentials { dir: dir.to_owned() }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn tokens_file(&self) -> PathBuf {
        self.dir.join("tokens.toml")
    }
    pub fn pseudonym_key(&self) -> PathBuf {
        self.dir.join("pseudonym.key")
    }
    pub fn token_file(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{role}.token"))
    }
    pub fn client_cert(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{role}.pem"))
    }
    pub fn client_key(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{role}.key"))
    }

    /// The development token of `role`.
    pub fn token(&self, role: Role) -> Result<String, AuthError> {
        let path = self.token_file(role);
        Ok(std::fs::read_to_string(&path).map_err(|e| AuthError::io(&path, e))?.trim().to_owned())
    }

    /// Creates whatever is missing: CA with server and client certificates,
    /// tokens, pseudonym key. Returns the names of what it created.
    pub fn ensure(&self) -> Result<Vec<&'static str>, AuthError> {
        self.ensure_for(&["localhost", "127.0.0.1"])
    }

    /// As [`Self::ensure`], with a server certificate for these DNS names
    /// or IP addresses (the names clients dial in a deployment).
    pub fn ensure_for(&self, server_names: &[&str]) -> Result<Vec<&'static str>, AuthError> {
        let server_names = if server_names.is_empty() { &["localhost", "127.0.0.1"][..] } else { server_names };
        std::fs::create_dir_all(&self.dir).map_err(|e| AuthError::io(&self.dir, e))?;
        let mut created = Vec::new();
        if !self.ca_cert().exists() {
            let issuer = Issuer::create(self)?;
            let server = issuer.server_cert(server_names)?;
            write_pair(&self.server_cert(), &self.server_key(), &server)?;
            for (name, role) in DEV_PRINCIPALS {
                let client = issuer.client_cert(name, role)?;
                write_pair(&self.client_cert(role), &self.client_key(role), &client)?;
            }
            created.push("certificates");
        }
        if !self.token_file(Role::Station).exists() {
            let mut entries = Vec::new();
            for (name, role) in DEV_PRINCIPALS {
                let (token, entry) = new_token(name, role);
                write_private(&self.token_file(role), format!("{token}\n").as_bytes())?;
                entries.push(entry);
            }
            TokenRegistry::append(&self.tokens_file(), &entries)?;
            created.push("tokens");
        }
        if !self.pseudonym_key().exists() {
            Pseudonymizer::generate_key_file(&self.pseudonym_key())?;
            created.push("pseudonym key");
        }
        Ok(created)
    }
}

fn write_pair(cert: &Path, key: &Path, pair: &ClientCert) -> Result<(), AuthError> {
    std::fs::write(cert, &pair.cert_pem).map_err(|e| AuthError::io(cert, e))?;
    write_private(key, pair.key_pem.as_bytes())
}

/// A certificate authority that signs server and client certificates.
pub struct Issuer {
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl Issuer {
    /// A new CA, written to the credentials directory.
    fn create(dir: &DevCredentials) -> Result<Issuer, AuthError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "healthcode development CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_pair(&dir.ca_cert(), &dir.ca_key(), &ClientCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })?;
        Ok(Issuer { issuer: rcgen::Issuer::new(params, key) })
    }

    /// The CA of a credentials directory, to sign more client certificates.
    pub fn open(dir: &DevCredentials) -> Result<Issuer, AuthError> {
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| AuthError::io(&p, e));
        let key = KeyPair::from_pem(&read(dir.ca_key())?)?;
        Ok(Issuer { issuer: rcgen::Issuer::from_ca_cert_pem(&read(dir.ca_cert())?, key)? })
    }

    fn server_cert(&self, names: &[&str]) -> Result<ClientCert, AuthError> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate naming `name` (CN) in `role` (OU).
    pub fn client_cert(&self, name: &str, role: Role) -> Result<ClientCert, AuthError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationalUnitName, role.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<ClientCert, AuthError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ClientCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal_from_cert;

    #[test]
    fn dev_credentials_are_created_once_and_name_their_principals() {
        let dir = tempfile::tempdir().unwrap();
        let creds = DevCredentials::at(dir.path());
        assert_eq!(creds.ensure().unwrap(), vec!["certificates", "tokens", "pseudonym key"]);
        assert!(creds.ensure().unwrap().is_empty(), "a second start creates nothing");
        let registry = TokenRegistry::open(&creds.tokens_file()).unwrap();
        for (name, role) in DEV_PRINCIPALS {
            let principal = registry.authenticate(&creds.token(role).unwrap()).unwrap();
            assert_eq!((principal.name.as_str(), principal.role), (name, role));
            let pem = std::fs::read_to_string(creds.client_cert(role)).unwrap();
            let der = rustls_pem(&pem);
            let by_cert = crate::Principal { proof: crate::Proof::ClientCertificate, ..principal };
            assert_eq!(principal_from_cert(&der), Some(by_cert));
        }
        // The CA can be reopened to sign more.
        let issuer = Issuer::open(&creds).unwrap();
        let more = issuer.client_cert("st-9", Role::Station).unwrap();
        assert_eq!(principal_from_cert(&rustls_pem(&more.cert_pem)).unwrap().name, "st-9");
    }

    fn rustls_pem(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        parsed.contents
    }
}
