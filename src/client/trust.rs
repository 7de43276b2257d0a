//! Whether to trust a relay's TLS certificate: as TLS normally works, or the way SSH does.
//!
//! 1. A certificate that chains to a trusted root (Mozilla's, bundled by `webpki-roots`, plus any
//!    `--tls-ca`) and names the host is accepted as any TLS client would.
//! 2. Otherwise (a relay's own self-signed certificate, the usual case) the client pins it: the
//!    file `known_relays` in the config dir maps `HOST:PORT` to the certificate's fingerprint,
//!    as `~/.ssh/known_hosts` does.
//!    - A known relay must show the same fingerprint. A different one is a hard error that says
//!      what changed and which file to edit: it is what an attacker in the middle looks like.
//!    - An unknown relay is **first contact**: with `--fingerprint SHA256:…` it must match; a
//!      terminal client asks the person; a script accepts it with a notice on stderr; the
//!      window asks in a dialog. Once accepted, it is written to `known_relays`.
//!
//! The decision is made *inside* the TLS handshake, in the certificate check (`Pinning`, below), so a
//! refused relay never gets our Finished message, let alone a byte of application data: the
//! password in our hello never leaves this machine. (`tls::TlsStream::handshake` also skips the
//! alert rustls would send, so nothing at all follows the ClientHello.)

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::tls;

/// How a client decides to trust a relay (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// The `known_relays` file. `None` keeps nothing: every contact is a first contact.
    pub known_relays: Option<PathBuf>,
    /// `--fingerprint`: the relay must show this one (unless a CA vouches for it).
    pub fingerprint: Option<String>,
    /// `--tls-ca`: certificates of extra roots to trust, besides Mozilla's.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// What to do with a relay seen for the first time.
    pub first_contact: FirstContact,
}

/// What to do on first contact with a relay whose certificate no CA vouches for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FirstContact {
    /// Refuse with [`TrustError::Unknown`], so the caller can ask the person and try again
    /// after [`remember`]. What a terminal client and the window do; the safe default.
    #[default]
    Refuse,
    /// Trust it, write it to `known_relays` once the handshake succeeds, and say so
    /// ([`Verdict::FirstContact`]). What a script (no terminal to ask on) does.
    Accept,
}

/// Why a relay's certificate was not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// First contact, and the policy is to ask first ([`FirstContact::Refuse`]).
    Unknown { server: String, fingerprint: String },
    /// The relay shows a different key than the one pinned for it.
    Changed { server: String, known: String, presented: String, file: PathBuf },
    /// The relay's key is not the one `--fingerprint` names.
    NotExpected { server: String, expected: String, presented: String },
    /// `known_relays` could not be read or written.
    File { path: PathBuf, why: String },
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::Unknown { server, fingerprint } => write!(
                f,
                "the relay at {server} is not known yet; its key's fingerprint is {fingerprint} (compare it \
                 with the one the relay's operator gives you, then trust it, or pass --fingerprint)"
            ),
            TrustError::Changed { server, known, presented, file } => write!(
                f,
                "THE RELAY'S KEY HAS CHANGED. The relay at {server} used to show {known} and now shows \
                 {presented}. Someone may be between you and the relay, or its operator made a new key. \
                 Nothing was sent. If the operator confirms the new fingerprint, remove the line for \
                 {server} from {}",
                file.display()
            ),
            TrustError::NotExpected { server, expected, presented } => write!(
                f,
                "the relay at {server} shows the key {presented}, not {expected} as --fingerprint says; \
                 nothing was sent"
            ),
            TrustError::File { path, why } => write!(f, "{}: {why}", path.display()),
        }
    }
}

impl std::error::Error for TrustError {}

/// Why a relay was trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A CA vouched for it.
    Authority,
    /// Its key is the one pinned for it (or named by `--fingerprint`).
    Pinned,
    /// First contact, accepted by policy; the fingerprint is now in `known_relays`.
    FirstContact { fingerprint: String },
}

/// The fingerprints in a `known_relays` file, by `HOST:PORT`.
pub fn read_known(path: &Path) -> Result<BTreeMap<String, String>, TrustError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(TrustError::File { path: path.to_owned(), why: e.to_string() }),
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(char::is_whitespace))
        .map(|(server, fingerprint)| (server.to_owned(), fingerprint.trim().to_owned()))
        .collect())
}

/// Pins `fingerprint` for `server` in `path` (replacing an older line for it). The file is
/// written to a temporary file of this process and renamed over the old one, so a crash never
/// leaves half a file. Two clients on one machine may pin at the same moment (scripts do): each
/// rename is whole, and a writer whose line another writer's rename dropped writes again.
pub fn remember(path: &Path, server: &str, fingerprint: &str) -> Result<(), TrustError> {
    let fail = |e: io::Error| TrustError::File { path: path.to_owned(), why: e.to_string() };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(fail)?;
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..8 {
        let mut known = read_known(path)?;
        known.insert(server.to_owned(), fingerprint.to_owned());
        let mut text =
            String::from("# relaychat: relays this machine trusts, as HOST:PORT and key fingerprint\n");
        for (server, fingerprint) in &known {
            text.push_str(&format!("{server} {fingerprint}\n"));
        }
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
        let written = fs::File::create(&temp).and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        });
        if let Err(e) = written.and_then(|()| fs::rename(&temp, path)) {
            let _ = fs::remove_file(&temp);
            return Err(fail(e));
        }
        if read_known(path)?.get(server).is_some_and(|f| f == fingerprint) {
            return Ok(());
        }
    }
    Err(fail(io::Error::other("other clients kept rewriting the file; try again")))
}

/// The certificate check that makes the decision during the handshake (see the module docs).
/// It keeps what it decided, for [`tls_config`]'s caller to read once the handshake is over.
#[derive(Debug)]
pub(crate) struct Pinning {
    server: String,
    authority: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    trust: Trust,
    known: Option<String>,
    outcome: Mutex<Option<Result<Verdict, TrustError>>>,
    /// A fingerprint to write to `known_relays` once the handshake has succeeded: only then has
    /// the relay proved it holds the certificate's key. (Pinning in the certificate check itself
    /// would let anyone who copied the certificate get it pinned, while failing the handshake.)
    to_pin: Mutex<Option<String>>,
}

impl Pinning {
    /// What was decided, once the handshake got as far as the certificate.
    pub(crate) fn outcome(&self) -> Option<Result<Verdict, TrustError>> {
        self.outcome.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The handshake succeeded: keep the fingerprint it was decided to pin, if any.
    pub(crate) fn pin_now(&self) -> Result<(), TrustError> {
        let fingerprint = self.to_pin.lock().unwrap_or_else(|e| e.into_inner()).take();
        match (fingerprint, &self.trust.known_relays) {
            (Some(fingerprint), Some(path)) => remember(path, &self.server, &fingerprint),
            _ => Ok(()),
        }
    }

    fn decide(&self, presented: String, by_authority: bool) -> Result<Verdict, TrustError> {
        if by_authority {
            return Ok(Verdict::Authority);
        }
        let server = self.server.clone();
        if let Some(expected) = &self.trust.fingerprint {
            if !same_fingerprint(expected, &presented) {
                return Err(TrustError::NotExpected { server, expected: expected.clone(), presented });
            }
            if self.known.as_deref() != Some(presented.as_str()) {
                self.pin(&presented)?;
            }
            return Ok(Verdict::Pinned);
        }
        match (&self.known, self.trust.first_contact) {
            (Some(known), _) if same_fingerprint(known, &presented) => Ok(Verdict::Pinned),
            (Some(known), _) => Err(TrustError::Changed {
                server,
                known: known.clone(),
                presented,
                file: self.trust.known_relays.clone().unwrap_or_default(),
            }),
            (None, FirstContact::Refuse) => Err(TrustError::Unknown { server, fingerprint: presented }),
            (None, FirstContact::Accept) => {
                self.pin(&presented)?;
                Ok(Verdict::FirstContact { fingerprint: presented })
            }
        }
    }

    /// Decides to pin `fingerprint`; [`Pinning::pin_now`] writes it once the handshake is done.
    fn pin(&self, fingerprint: &str) -> Result<(), TrustError> {
        *self.to_pin.lock().unwrap_or_else(|e| e.into_inner()) = Some(fingerprint.to_owned());
        Ok(())
    }
}

impl ServerCertVerifier for Pinning {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let by_authority = self
            .authority
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .is_ok();
        let outcome = self.decide(tls::fingerprint(end_entity), by_authority);
        let ok = outcome.is_ok();
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the relay's certificate is not trusted".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered (`tls::VERSIONS`), so this is never asked.
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    /// The relay must prove it holds the key of the certificate it showed: always checked, also
    /// for a pinned certificate (a pin of a certificate anyone could copy would be worthless).
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Fingerprints compare without regard to case (people paste them in either).
fn same_fingerprint(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// The client side of TLS for one connection to `server` (`HOST:PORT` as typed), and the check
/// that will hold its decision.
pub(crate) fn tls_config(
    server: &str,
    trust: &Trust,
) -> Result<(Arc<rustls::ClientConfig>, Arc<Pinning>), TrustError> {
    let provider = tls::provider();
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for ca in &trust.extra_roots {
        // A CA that cannot be parsed is skipped here; `--tls-ca` already checked the file.
        let _ = roots.add(ca.clone());
    }
    let authority = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TrustError::File { path: PathBuf::from("(trusted roots)"), why: e.to_string() })?;
    let known = match &trust.known_relays {
        Some(path) => read_known(path)?.remove(server),
        None => None,
    };
    let pinning = Arc::new(Pinning {
        server: server.to_owned(),
        authority,
        provider: provider.clone(),
        trust: trust.clone(),
        known,
        outcome: Mutex::new(None),
        to_pin: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(tls::VERSIONS)
        .map_err(|e| TrustError::File { path: PathBuf::from("(TLS setup)"), why: e.to_string() })?
        .dangerous()
        .with_custom_certificate_verifier(pinning.clone())
        .with_no_client_auth();
    Ok((Arc::new(config), pinning))
}

/// The rustls configuration the client uses to reach `server` under `trust` (TLS 1.3, ring, the
/// pinning check above), for callers that drive a TLS session by hand, such as the hostile-TLS
/// tests. [`crate::client::Client::connect_tcp`] uses the same.
pub fn client_config(server: &str, trust: &Trust) -> Result<Arc<rustls::ClientConfig>, TrustError> {
    tls_config(server, trust).map(|(config, _)| config)
}

/// The name the relay's certificate should carry: the host part of `HOST:PORT` (an IP address,
/// or a DNS name; `[::1]:21567` gives `::1`).
pub(crate) fn server_name(server: &str) -> Option<ServerName<'static>> {
    let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_relays_round_trip_and_replace() {
        let path = std::env::temp_dir().join(format!("relaychat-known-{}", std::process::id()));
        let _ = fs::remove_file(&path);
        assert!(read_known(&path).unwrap().is_empty(), "a missing file knows nobody");
        remember(&path, "relay.example:21567", "SHA256:aa").unwrap();
        remember(&path, "127.0.0.1:9", "SHA256:bb").unwrap();
        remember(&path, "relay.example:21567", "SHA256:cc").unwrap();
        let known = read_known(&path).unwrap();
        assert_eq!(known.len(), 2);
        assert_eq!(known["relay.example:21567"], "SHA256:cc");
        let _ = fs::remove_file(&path);
    }

    #[test]
    fn server_names_come_from_the_host_part() {
        assert!(matches!(server_name("127.0.0.1:21567"), Some(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]:21567"), Some(ServerName::IpAddress(_))));
        assert!(matches!(server_name("relay.example.org:21567"), Some(ServerName::DnsName(_))));
    }

    #[test]
    fn a_first_contact_is_pinned_only_after_the_handshake() {
        // The certificate check decides; the file is written only once the relay has proved it
        // holds the key (the handshake succeeded), so a copied certificate gets nothing pinned.
        let path = std::env::temp_dir().join(format!("relaychat-pin-late-{}", std::process::id()));
        let _ = fs::remove_file(&path);
        let trust = Trust {
            known_relays: Some(path.clone()),
            first_contact: FirstContact::Accept,
            ..Trust::default()
        };
        let (_, pinning) = tls_config("relay.example:9", &trust).unwrap();
        let verdict = pinning.decide("SHA256:ab".into(), false);
        assert_eq!(verdict, Ok(Verdict::FirstContact { fingerprint: "SHA256:ab".into() }));
        assert!(read_known(&path).unwrap().is_empty(), "nothing kept before the handshake is done");
        pinning.pin_now().unwrap();
        assert_eq!(read_known(&path).unwrap()["relay.example:9"], "SHA256:ab");
        let _ = fs::remove_file(&path);
    }
}
