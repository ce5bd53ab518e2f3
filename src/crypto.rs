//! Secrets at rest (DESIGN.md §4): an AEAD key for env var and build token secrets, and API token hashing.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Size of the secret key, in bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// File name of the generated key inside the data dir.
pub const KEY_FILE: &str = "secret.key";

/// Encrypts and decrypts secrets with XChaCha20-Poly1305 and a random nonce per value.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// From raw key bytes.
    pub fn from_key(key: &[u8; KEY_LEN]) -> Self {
        SecretBox {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// The key from `KILN_SECRET_KEY` (base64 or hex of 32 bytes) if given, else from `<data_dir>/secret.key`,
    /// created with mode 0600 on first use.
    pub fn load(explicit: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(text) = explicit {
            return Ok(Self::from_key(&decode_key(text)?));
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Self::from_key(
                &decode_key(text.trim()).with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_new_key(&path, &key)?;
                Ok(Self::from_key(&key))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Encrypts `plain`; the output is nonce ‖ ciphertext.
    pub fn seal(&self, plain: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plain)
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`SecretBox::seal`] produced.
    pub fn open(&self, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            bail!("sealed value too short");
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| anyhow::anyhow!("decryption failed: wrong secret key or corrupted value"))
    }

    /// Encrypts a UTF-8 string.
    pub fn seal_str(&self, plain: &str) -> anyhow::Result<Vec<u8>> {
        self.seal(plain.as_bytes())
    }

    /// Decrypts a UTF-8 string.
    pub fn open_str(&self, sealed: &[u8]) -> anyhow::Result<String> {
        String::from_utf8(self.open(sealed)?).context("decrypted secret is not UTF-8")
    }
}

fn decode_key(text: &str) -> anyhow::Result<[u8; KEY_LEN]> {
    let text = text.trim();
    let bytes = if text.len() == KEY_LEN * 2 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text)?
    } else {
        STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text))
            .context("secret key must be 32 bytes as hex or base64")?
    };
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("secret key must be exactly {KEY_LEN} bytes"))
}

fn write_new_key(path: &Path, key: &[u8; KEY_LEN]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(hex::encode(key).as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// SHA-256 of a credential, hex encoded. Credentials are 256-bit random values, so a fast hash suffices.
pub fn hash_credential(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random credential with a recognisable prefix, e.g. `kiln_…`.
pub fn new_credential(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let b = SecretBox::from_key(&[7u8; KEY_LEN]);
        let sealed = b.seal_str("hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(b.open_str(&sealed).unwrap(), "hunter2");
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(b.open(&bad).is_err());
        let other = SecretBox::from_key(&[8u8; KEY_LEN]);
        assert!(other.open(&sealed).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load(None, dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SecretBox::load(None, dir.path()).unwrap();
        assert_eq!(b.open_str(&a.seal_str("x").unwrap()).unwrap(), "x");
    }

    #[test]
    fn explicit_keys() {
        assert!(SecretBox::load(Some(&"ab".repeat(32)), Path::new("/nonexistent")).is_ok());
        assert!(SecretBox::load(Some("short"), Path::new("/nonexistent")).is_err());
    }
}
