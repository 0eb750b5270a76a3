//! A development PKI in one directory: a CA, citd's server certificate for loopback, client
//! certificates for units and gateways, and a token signing key. The demo makes a throwaway one
//! in its temporary directory, the tests one per server, and `cit pki init` one for an operator
//! trying citd out. Production brings its own CA and identity provider.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::token::KeyConfig;
use super::{GATEWAY_URI, Kind, UNIT_URI};

/// The files of a development PKI.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The token verification key as citd's configuration names it.
    pub token_key: KeyConfig,
    /// The token signing key (Ed25519, PKCS#8 PEM).
    pub token_signing_key: PathBuf,
    /// The run-head signing key (Ed25519, PKCS#8 PEM).
    pub run_signing_key: PathBuf,
}

/// The key id of the development token key.
pub const DEV_KID: &str = "local-1";

fn err(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

fn ca_params() -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err("CA"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "cit development CA");
    dn.push(DnType::OrganizationName, "cit (development only)");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// Makes a CA, a server certificate for localhost, 127.0.0.1 and ::1, and a token key in `dir`
/// (created if missing).
pub fn generate(dir: &Path) -> Result<DevPki, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca_key = KeyPair::generate().map_err(err("CA key"))?;
    let ca_cert = ca_params()?.self_signed(&ca_key).map_err(err("CA"))?;
    let ca = write(dir, "ca.pem", &ca_cert.pem())?;
    write(dir, "ca.key.pem", &ca_key.serialize_pem())?;
    let (server_cert, server_key) = issue(
        dir,
        "server",
        "citd",
        vec![
            SanType::DnsName("localhost".try_into().map_err(err("SAN"))?),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    let (token_key, token_signing_key) = token_key(dir, DEV_KID)?;
    let run_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(err("run signing key"))?;
    let run_signing_key = write(dir, "run-signing.key.pem", &run_key.serialize_pem())?;
    Ok(DevPki {
        run_signing_key,
        dir: dir.to_path_buf(),
        ca,
        server_cert,
        server_key,
        token_key,
        token_signing_key,
    })
}

/// A certificate signed by the CA in `dir`, written as `<name>.pem` and `<name>.key.pem`.
pub fn issue(
    dir: &Path,
    name: &str,
    common_name: &str,
    sans: Vec<SanType>,
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<(PathBuf, PathBuf), String> {
    let ca_pem = std::fs::read_to_string(dir.join("ca.key.pem"))
        .map_err(|e| format!("{}: {e}", dir.join("ca.key.pem").display()))?;
    let ca_key = KeyPair::from_pem(&ca_pem).map_err(err("CA key"))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate().map_err(err("key"))?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err(name))?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.subject_alt_names = sans;
    p.extended_key_usages = usages;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = p.signed_by(&key, &issuer).map_err(err(name))?;
    Ok((
        write(dir, &format!("{name}.pem"), &cert.pem())?,
        write(dir, &format!("{name}.key.pem"), &key.serialize_pem())?,
    ))
}

/// A client certificate for a unit or gateway `id` (SAN URI `urn:cit:unit:<id>` or
/// `urn:cit:gateway:<id>`), written as `<kind>-<id>.pem` and `.key.pem`.
pub fn issue_client(dir: &Path, kind: Kind, id: &str) -> Result<(PathBuf, PathBuf), String> {
    let prefix = match kind {
        Kind::Gateway => GATEWAY_URI,
        _ => UNIT_URI,
    };
    let uri = format!("{prefix}{id}");
    issue(
        dir,
        &format!("{}-{id}", kind.as_str()),
        id,
        vec![SanType::URI(uri.as_str().try_into().map_err(err("SAN"))?)],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )
}

/// A token key pair `token-<kid>.key.pem` (signing, Ed25519 PKCS#8) and `token-<kid>.pub.pem`;
/// returns the verification key's configuration and the signing key's path.
pub fn token_key(dir: &Path, kid: &str) -> Result<(KeyConfig, PathBuf), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(err("token key"))?;
    let signing = write(dir, &format!("token-{kid}.key.pem"), &key.serialize_pem())?;
    let public = write(dir, &format!("token-{kid}.pub.pem"), &key.public_key_pem())?;
    Ok((
        KeyConfig {
            kid: kid.into(),
            alg: "EdDSA".into(),
            public_key: public,
        },
        signing,
    ))
}
