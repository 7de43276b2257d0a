//! The relay's TLS identity: a key pair and a certificate.
//!
//! A relay usually has no domain name and no certificate from a CA, so, like an SSH server, it
//! makes its own on first start (with rcgen) and keeps it in its data dir: `tls/cert.pem` and
//! `tls/key.pem` (the key readable by the owner only). Clients pin its fingerprint on first
//! contact (`client/trust.rs`) and refuse loudly if it ever changes. An operator who has a real
//! certificate (Let's Encrypt, a company CA) gives it with `--tls-cert` and `--tls-key` instead,
//! and clients then trust it as TLS normally works.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls;

/// The relay's certificate chain and key, and the fingerprint people compare.
pub struct RelayKeys {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// `SHA256:…` of the first certificate: what `server --fingerprint` prints.
    pub fingerprint: String,
}

impl fmt::Debug for RelayKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayKeys").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

/// Why the relay's keys could not be loaded or made.
#[derive(Debug)]
pub enum KeyError {
    /// A key or certificate file could not be read or written.
    Io { path: PathBuf, source: io::Error },
    /// A file holds no usable PEM certificate or key.
    BadPem { path: PathBuf, why: String },
    /// Making a new key pair or certificate failed.
    Generate(rcgen::Error),
    /// rustls refused the pair (a key that does not match the certificate, say).
    Tls(rustls::Error),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            KeyError::BadPem { path, why } => write!(f, "{}: {why}", path.display()),
            KeyError::Generate(e) => write!(f, "cannot make the relay's TLS key: {e}"),
            KeyError::Tls(e) => write!(f, "the TLS certificate and key do not work together: {e}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Where a relay keeps the keys it made, inside its data dir.
pub fn key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The keys in `data_dir`, made and saved first if there are none yet.
pub fn load_or_create(data_dir: &Path) -> Result<RelayKeys, KeyError> {
    let dir = key_dir(data_dir);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() || key.exists() {
        return from_pem_files(&cert, &key);
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyError::Io { path, source }
    };
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    // "relaychat" as the name: clients pin the key, so the name is never checked against a host.
    let made =
        rcgen::generate_simple_self_signed(vec!["relaychat".to_string()]).map_err(KeyError::Generate)?;
    // The key first, created with mode 0600 so it is never readable by others, not even for a
    // moment; the certificate (public) after it. A crash between the two leaves a key with no
    // certificate, which the next start reports instead of silently making a new identity.
    write_new(&key, made.signing_key.serialize_pem().as_bytes(), 0o600).map_err(io(&key))?;
    write_new(&cert, made.cert.pem().as_bytes(), 0o644).map_err(io(&cert))?;
    log::warn!("made a new TLS key for this relay in {}", dir.display());
    from_pem_files(&cert, &key)
}

/// Keys from PEM files (`--tls-cert`, `--tls-key`): a certificate chain, leaf first, and its key.
pub fn from_pem_files(cert: &Path, key: &Path) -> Result<RelayKeys, KeyError> {
    let bad = |path: &Path, why: String| KeyError::BadPem { path: path.to_owned(), why };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, format!("cannot read a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad(key, format!("cannot read a PEM private key: {e}")))?;
    let fingerprint = tls::fingerprint(&chain[0]);
    Ok(RelayKeys { chain, key: key_der, fingerprint })
}

/// The rustls side of the relay: TLS 1.3 only, these keys, no client certificates.
pub fn server_config(keys: &RelayKeys) -> Result<Arc<rustls::ServerConfig>, KeyError> {
    let config = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(tls::VERSIONS)
        .map_err(KeyError::Tls)?
        .with_no_client_auth()
        .with_single_cert(keys.chain.clone(), keys.key.clone_key())
        .map_err(KeyError::Tls)?;
    Ok(Arc::new(config))
}

/// Creates `path` (which must not exist yet) with `mode`, writes `bytes` and syncs them.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_and_kept_private() {
        let dir = std::env::temp_dir().join(format!("relaychat-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = load_or_create(&dir).unwrap();
        let again = load_or_create(&dir).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint, "the same identity on every start");
        assert!(first.fingerprint.starts_with("SHA256:") && first.fingerprint.len() == 7 + 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(key_dir(&dir).join("key.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the key is the owner's only");
        }
        assert!(server_config(&first).is_ok());
        // A key without its certificate is reported, not silently replaced.
        fs::remove_file(key_dir(&dir).join("cert.pem")).unwrap();
        assert!(matches!(load_or_create(&dir), Err(KeyError::BadPem { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
