//! This machine's identity: a random secret kept in the config dir, from which the client derives
//! a different token for every relay. A relay binds a name to the token the first time it sees it
//! without a password (a *machine-bound account*, see docs/PROTOCOL.md, "Identity"), so two
//! friends who never set a password still keep their names, and files can wait for them.
//!
//! - The secret: 32 random bytes from the OS, as 64 hex digits in `<config dir>/relaychat/identity`
//!   (`~/.config/relaychat/identity` on Linux, honouring `XDG_CONFIG_HOME`), readable by its owner
//!   only (mode 0600 on Unix). `RELAYCHAT_CONFIG_DIR` names another directory to keep it in; the
//!   tests use that, so they never touch the real home.
//! - The token for a relay: `hex(SHA-256(secret ‖ "relaychat-identity-v1" ‖ relay address as
//!   typed))`. Each relay sees a different token, so one relay cannot log in as you on another.
//!   (The address *as typed*: `localhost:21567` and `127.0.0.1:21567` are two relays to it.)
//! - Moving to a second machine: copy the identity file, or set a password from the first
//!   machine (log in once with `--password`) and use it on the second.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::sha::{hex, unhex};

/// The file that holds the secret, in the identity directory.
pub const IDENTITY_FILE: &str = "identity";
/// The variable that names another identity directory (tests, several identities on one machine).
pub const CONFIG_DIR_VAR: &str = "RELAYCHAT_CONFIG_DIR";
/// Mixed into every token, so a token made for this purpose can never be mistaken for another hash.
const CONTEXT: &[u8] = b"relaychat-identity-v1";

/// Why the identity could not be loaded or created.
#[derive(Debug)]
pub enum IdentityError {
    /// The OS says nothing about where configuration goes, and `RELAYCHAT_CONFIG_DIR` is unset.
    NoConfigDir,
    /// Reading or writing the file failed.
    Io { path: PathBuf, source: io::Error },
    /// The file exists but does not hold 64 hex digits. It is never overwritten: it may be the
    /// only key to someone's names.
    Corrupt { path: PathBuf },
    /// The OS gave no random bytes.
    Random(String),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::NoConfigDir => write!(f, "no config directory (set {CONFIG_DIR_VAR})"),
            IdentityError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            IdentityError::Corrupt { path } => {
                write!(
                    f,
                    "{} does not hold an identity (64 hex digits); move it away to make a new one",
                    path.display()
                )
            }
            IdentityError::Random(e) => write!(f, "no random bytes from the OS: {e}"),
        }
    }
}

impl std::error::Error for IdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdentityError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// This machine's secret.
pub struct Identity {
    secret: [u8; 32],
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity(..)") // never print the secret
    }
}

impl Identity {
    /// Where the identity lives: `$RELAYCHAT_CONFIG_DIR` if set, else `<config dir>/relaychat`.
    pub fn default_dir() -> Option<PathBuf> {
        match std::env::var_os(CONFIG_DIR_VAR) {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => dirs::config_dir().map(|d| d.join("relaychat")),
        }
    }

    /// Loads the identity from [`Identity::default_dir`], creating it on first use.
    pub fn load_default() -> Result<Identity, IdentityError> {
        Identity::load_or_create(&Identity::default_dir().ok_or(IdentityError::NoConfigDir)?)
    }

    /// Loads `dir/identity`, or creates it with a fresh secret if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let secret =
                    unhex(text.trim()).ok_or_else(|| IdentityError::Corrupt { path: path.clone() })?;
                keep_private(&path);
                Ok(Identity { secret })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Identity::create(dir, &path),
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    /// The token to send to the relay at `relay` (the address as the person typed it).
    pub fn token_for(&self, relay: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.secret);
        hasher.update(CONTEXT);
        hasher.update(relay.as_bytes());
        hex(&hasher.finalize())
    }

    /// Writes a new secret to a private temporary file, then links it into place: the identity
    /// file appears whole or not at all, and if another client created one meanwhile, theirs
    /// wins and is used.
    fn create(dir: &Path, path: &Path) -> Result<Identity, IdentityError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        let mut secret = [0u8; 32];
        OsRng.try_fill_bytes(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
        create_private_dir(dir).map_err(io_error(dir))?;
        let temp = dir.join(format!("{IDENTITY_FILE}.{}.tmp", std::process::id()));
        let written = write_private(&temp, format!("{}\n", hex(&secret)).as_bytes());
        let placed = written.and_then(|()| match fs::hard_link(&temp, path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => fs::rename(&temp, path),
            other => other,
        });
        let _ = fs::remove_file(&temp);
        match placed {
            Ok(()) => Ok(Identity { secret }),
            // Another client won the race: use its identity, not ours.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Identity::load_or_create(dir),
            Err(source) => Err(IdentityError::Io { path: path.to_path_buf(), source }),
        }
    }
}

/// The token for `relay` from this machine's identity, creating the identity on first use. If
/// it cannot be loaded or created, a warning is logged and the token is empty: the client then
/// joins as a guest, as clients without an identity do.
pub fn token_or_guest(relay: &str) -> String {
    match Identity::load_default() {
        Ok(identity) => identity.token_for(relay),
        Err(e) => {
            log::warn!("no identity token, joining as a guest unless a password is given: {e}");
            String::new()
        }
    }
}

/// Creates the directory (and its parents); on Unix the last one only for its owner.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes a new file that only its owner can read (mode 0600 on Unix), flushed to disk.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Takes group and other access away from an existing identity file (a copy brought from
/// another machine may have arrived readable by all).
fn keep_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!("{} was readable by others; making it private", path.display());
                let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("relaychat-identity-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn an_identity_is_created_once_and_loaded_after() {
        let dir = temp_dir("once");
        let first = Identity::load_or_create(&dir.join("relaychat")).unwrap();
        let again = Identity::load_or_create(&dir.join("relaychat")).unwrap();
        assert_eq!(first.token_for("relay:1"), again.token_for("relay:1"));
        let text = fs::read_to_string(dir.join("relaychat").join(IDENTITY_FILE)).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(!format!("{first:?}").contains(text.trim()), "Debug hides the secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("relaychat").join(IDENTITY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(dir.join("relaychat")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn tokens_differ_per_relay_and_per_machine_and_are_hex() {
        let (a, b) = (temp_dir("a"), temp_dir("b"));
        let mine = Identity::load_or_create(&a).unwrap();
        let theirs = Identity::load_or_create(&b).unwrap();
        let token = mine.token_for("chat.example:21567");
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(token, mine.token_for("other.example:21567"));
        assert_ne!(token, theirs.token_for("chat.example:21567"));
        // The derivation is the documented one.
        let expected =
            Sha256::new().chain_update(mine.secret).chain_update(CONTEXT).chain_update(b"chat.example:21567");
        assert_eq!(token, hex(&expected.finalize()));
        let _ = (fs::remove_dir_all(&a), fs::remove_dir_all(&b));
    }

    #[test]
    fn a_damaged_file_is_reported_and_never_replaced() {
        let dir = temp_dir("bad");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(IDENTITY_FILE), "not hex\n").unwrap();
        assert!(matches!(Identity::load_or_create(&dir), Err(IdentityError::Corrupt { .. })));
        assert_eq!(fs::read_to_string(dir.join(IDENTITY_FILE)).unwrap(), "not hex\n");
        let _ = fs::remove_dir_all(&dir);
    }
}
