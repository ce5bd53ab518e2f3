//! Checksums of downloaded tarballs: the registry's SRI `integrity` (or its legacy hex `shasum`)
//! and Corepack-style pinned hashes (`sha512.<hex>`) from `package.json`'s `packageManager`.
//!
//! Written on `sha1`/`sha2`/`base64` rather than the `ssri` crate: we need only "does one of the
//! strongest published hashes match", and `ssri` would bring `miette` and `xxhash` along.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// A hash algorithm, weakest first (the derived order ranks SRI candidates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Algo {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Algo {
    fn parse(name: &str) -> Option<Algo> {
        Some(match name {
            "sha1" => Algo::Sha1,
            "sha224" => Algo::Sha224,
            "sha256" => Algo::Sha256,
            "sha384" => Algo::Sha384,
            "sha512" => Algo::Sha512,
            _ => return None,
        })
    }
}

/// Every digest of one file, computed in a single pass (cheap next to the download), so a pinned
/// hash of any algorithm can be checked later against an installed toolchain's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Digests {
    pub sha1: String,
    pub sha224: String,
    pub sha256: String,
    pub sha384: String,
    pub sha512: String,
}

impl Digests {
    fn hex(&self, algo: Algo) -> &str {
        match algo {
            Algo::Sha1 => &self.sha1,
            Algo::Sha224 => &self.sha224,
            Algo::Sha256 => &self.sha256,
            Algo::Sha384 => &self.sha384,
            Algo::Sha512 => &self.sha512,
        }
    }
}

/// Feeds bytes to all five hashes.
#[derive(Default)]
pub(crate) struct Hashers {
    sha1: Sha1,
    sha224: Sha224,
    sha256: Sha256,
    sha384: Sha384,
    sha512: Sha512,
}

impl Hashers {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.sha1.update(bytes);
        self.sha224.update(bytes);
        self.sha256.update(bytes);
        self.sha384.update(bytes);
        self.sha512.update(bytes);
    }

    pub(crate) fn finish(self) -> Digests {
        Digests {
            sha1: hex::encode(self.sha1.finalize()),
            sha224: hex::encode(self.sha224.finalize()),
            sha256: hex::encode(self.sha256.finalize()),
            sha384: hex::encode(self.sha384.finalize()),
            sha512: hex::encode(self.sha512.finalize()),
        }
    }
}

/// Checks a download against what the registry published: the strongest algorithm in the SRI
/// `integrity` string must have a matching hash; without a usable `integrity`, the hex SHA-1
/// `shasum`. `Err` carries a reason fit for the user (no hashes of ours, which say nothing).
pub(crate) fn check_published(
    got: &Digests,
    integrity: Option<&str>,
    shasum: Option<&str>,
) -> Result<(), String> {
    let candidates: Vec<(Algo, Vec<u8>)> = integrity
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|item| {
            let (algo, rest) = item.split_once('-')?;
            let b64 = rest.split('?').next().unwrap_or(rest);
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            Some((Algo::parse(algo)?, bytes))
        })
        .collect();
    if let Some(strongest) = candidates.iter().map(|(a, _)| *a).max() {
        let ok = candidates
            .iter()
            .filter(|(a, _)| *a == strongest)
            .any(|(a, want)| hex::encode(want) == got.hex(*a));
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "the tarball does not match the registry's published {strongest:?} integrity"
            ))
        };
    }
    match shasum.map(str::trim).filter(|s| !s.is_empty()) {
        Some(want) if want.eq_ignore_ascii_case(&got.sha1) => Ok(()),
        Some(_) => Err("the tarball does not match the registry's published shasum".to_owned()),
        None => Err("the registry publishes no integrity or shasum for this version".to_owned()),
    }
}

/// The digests of a file, read in 1 MiB pieces (blocking).
pub(crate) fn hash_file(path: &std::path::Path) -> std::io::Result<Digests> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hashers = Hashers::default();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hashers.finish());
        }
        hashers.update(&buf[..n]);
    }
}

/// A Corepack-style pinned hash: `sha512.<hex>` (also `sha1`, `sha224`, `sha256`, `sha384`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pinned {
    algo: Algo,
    hex: String,
}

impl Pinned {
    /// Parses `<algo>.<hex>`; `Err` says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Pinned, String> {
        let text = text.trim();
        let (algo, hex) = text
            .split_once('.')
            .ok_or_else(|| format!("pinned hash {text:?} is not <algorithm>.<hex>"))?;
        let algo = Algo::parse(algo).ok_or_else(|| {
            format!("pinned hash algorithm {algo:?} is not sha1, sha224, sha256, sha384 or sha512")
        })?;
        let hex = hex.to_ascii_lowercase();
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("pinned hash {text:?} is not hexadecimal"));
        }
        Ok(Pinned { algo, hex })
    }

    /// Checks the digests of a download (or of an installed toolchain's record).
    pub(crate) fn check(&self, got: &Digests) -> Result<(), String> {
        if got.hex(self.algo) == self.hex {
            Ok(())
        } else {
            Err(format!(
                "the tarball does not match the pinned {:?} hash from packageManager",
                self.algo
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(bytes: &[u8]) -> Digests {
        let mut h = Hashers::default();
        h.update(bytes);
        h.finish()
    }

    fn sri(bytes: &[u8]) -> String {
        let d = Sha512::digest(bytes);
        format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(d)
        )
    }

    #[test]
    fn published_integrity() {
        let d = digests(b"tarball");
        assert_eq!(check_published(&d, Some(&sri(b"tarball")), None), Ok(()));
        assert!(check_published(&d, Some(&sri(b"other")), Some(&d.sha1)).is_err());
        // The strongest algorithm decides, a weaker matching one does not help.
        let sha1 = base64::engine::general_purpose::STANDARD.encode(hex::decode(&d.sha1).unwrap());
        let mixed = format!("sha1-{sha1} {}", sri(b"other"));
        assert!(check_published(&d, Some(&mixed), None).is_err());
        assert_eq!(
            check_published(&d, Some(&format!("sha1-{sha1}")), None),
            Ok(())
        );
        // Legacy shasum only.
        assert_eq!(
            check_published(&d, None, Some(&d.sha1.to_uppercase())),
            Ok(())
        );
        assert!(check_published(&d, Some("md5-xyz"), None).is_err());
        assert!(check_published(&d, None, None).is_err());
    }

    #[test]
    fn pinned_hashes() {
        let d = digests(b"tarball");
        assert_eq!(
            Pinned::parse(&format!("sha224.{}", d.sha224))
                .unwrap()
                .check(&d),
            Ok(())
        );
        assert_eq!(
            Pinned::parse(&format!("sha512.{}", d.sha512.to_uppercase()))
                .unwrap()
                .check(&d),
            Ok(())
        );
        assert!(
            Pinned::parse(&format!("sha256.{}", d.sha1))
                .unwrap()
                .check(&d)
                .is_err()
        );
        assert!(Pinned::parse("md5.abcd").is_err());
        assert!(Pinned::parse("sha512").is_err());
        assert!(Pinned::parse("sha512.xyz").is_err());
    }
}
