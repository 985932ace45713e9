//! The cluster's shared secret, handled as a secret: read from a file or an environment
//! variable (there is no compiled-in default), never printed (`Debug` shows only its length),
//! and used only to derive the Noise pre-shared key of the link handshake.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// Fewest bytes a secret may have.
pub const MIN_SECRET_LEN: usize = 16;

/// The shared secret every member of a cluster holds. Its `Debug` never shows its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

/// Why a secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret file could not be read.
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The environment variable is not set (or not Unicode).
    #[error("the environment variable {0} holds no secret")]
    MissingEnv(String),
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("a cluster secret needs at least {min} bytes, this one has {len}")]
    TooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// No randomness to generate one.
    #[error("cannot generate a secret: {0}")]
    Random(String),
}

impl Secret {
    /// A secret from bytes (leading and trailing whitespace are part of it).
    ///
    /// # Errors
    /// [`SecretError::TooShort`] below [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, SecretError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                len: bytes.len(),
                min: MIN_SECRET_LEN,
            });
        }
        Ok(Secret(bytes))
    }

    /// The secret in the file at `path`, without a trailing newline.
    ///
    /// # Errors
    /// [`SecretError::Read`] if the file cannot be read, [`SecretError::TooShort`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SecretError> {
        let path = path.as_ref();
        let mut bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        Secret::new(bytes)
    }

    /// The secret in the environment variable `var`.
    ///
    /// # Errors
    /// [`SecretError::MissingEnv`] if it is not set, [`SecretError::TooShort`].
    pub fn from_env(var: &str) -> Result<Self, SecretError> {
        let v = std::env::var(var).map_err(|_| SecretError::MissingEnv(var.to_string()))?;
        Secret::new(v.into_bytes())
    }

    /// A new random secret: 32 random bytes written as 64 hex digits (so it fits a text file).
    ///
    /// # Errors
    /// [`SecretError::Random`] if the system has no randomness.
    pub fn generate() -> Result<Self, SecretError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| SecretError::Random(e.to_string()))?;
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        Secret::new(hex.into_bytes())
    }

    /// Writes the secret to a new file at `path` that only its owner may read (mode 0600).
    ///
    /// # Errors
    /// The I/O error if the file cannot be created (it must not exist yet).
    pub fn write_new_file(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        o.mode(0o600);
        let mut f = o.open(path)?;
        f.write_all(&self.0)?;
        f.write_all(b"\n")
    }

    /// The 32-byte pre-shared key of the link handshake:
    /// HMAC-SHA256(secret, "riffle-link-psk-v2" | cluster name).
    pub(crate) fn psk(&self, cluster: &str) -> [u8; 32] {
        // HMAC takes keys of any length, so this cannot fail.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(b"riffle-link-psk-v2");
        m.update(cluster.as_bytes());
        m.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new(b"correct horse battery staple".to_vec()).expect("long enough");
        let shown = format!("{s:?}");
        assert!(!shown.contains("horse"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn short_secrets_and_missing_sources_are_errors() {
        assert!(matches!(
            Secret::new(b"short".to_vec()),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        assert!(matches!(
            Secret::from_env("RIFFLE_TEST_NO_SUCH_VARIABLE"),
            Err(SecretError::MissingEnv(_))
        ));
        assert!(matches!(
            Secret::from_file("/nonexistent/riffle/secret"),
            Err(SecretError::Read { .. })
        ));
    }

    #[test]
    fn a_generated_secret_round_trips_through_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        let s = Secret::generate().expect("random");
        s.write_new_file(&path).expect("write");
        assert_eq!(Secret::from_file(&path).expect("read"), s);
        assert!(s.write_new_file(&path).is_err(), "an existing file is kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_ne!(s.psk("a"), s.psk("b"), "the key depends on the cluster");
    }
}
