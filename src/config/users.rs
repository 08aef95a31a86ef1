//! The RFC 1929 users file: one `user:password` per line, `#` comments.
//!
//! A password is stored plain or as an Argon2 hash in the PHC string form
//! (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`, what `coresocks
//! hash-password` prints); a stored value that begins with `$argon2` is a
//! hash. Plain passwords are compared in constant time on the core. A hash
//! costs tens of milliseconds of CPU by design, so it is checked on the
//! core's blocking-thread pool ([`Verification::Slow`]), and an unknown user
//! is checked against a dummy hash, so that the time taken does not say
//! which user names exist.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::Argon2;
use subtle::ConstantTimeEq;

/// A stored password.
enum Secret {
    Plain(Vec<u8>),
    /// A PHC string, checked to parse when the file is read.
    Hashed(Arc<str>),
}

/// How a password check proceeds.
pub enum Verification {
    /// Decided on the spot (plain passwords).
    Decided(bool),
    /// Needs an Argon2 verification: call [`SlowCheck::run`] off the core.
    Slow(SlowCheck),
}

/// An Argon2 verification to run on a blocking thread.
pub struct SlowCheck {
    phc: Arc<str>,
    password: Vec<u8>,
    /// False for an unknown user checked against the dummy hash.
    known: bool,
}

impl SlowCheck {
    /// Verifies; takes tens of milliseconds of CPU.
    pub fn run(self) -> bool {
        let ok = verify_in_own_pages(&self.phc, &self.password).unwrap_or(false);
        ok && self.known
    }
}

/// Argon2 verification whose working memory (the hash's `m` KiB) is
/// mapped for this check alone and unmapped after it: a burst of checks
/// leaves nothing resident behind, and the most a core's hashing holds is
/// its `--hash-threads` checks' memory.
fn verify_in_own_pages(phc: &str, password: &[u8]) -> Option<bool> {
    let hash = PasswordHash::new(phc).ok()?;
    let algorithm = argon2::Algorithm::try_from(hash.algorithm).ok()?;
    let version = match hash.version {
        Some(v) => argon2::Version::try_from(v).ok()?,
        None => argon2::Version::default(),
    };
    let params = argon2::Params::try_from(&hash).ok()?;
    let expected = hash.hash?;
    let mut salt = [0u8; 64];
    let salt = hash.salt?.decode_b64(&mut salt).ok()?;
    let mut out = [0u8; 64];
    let out = out.get_mut(..expected.len())?;
    hash_in_own_pages(
        &Argon2::new(algorithm, version, params),
        password,
        salt,
        out,
    )
    .ok()?;
    Some(bool::from(out.ct_eq(expected.as_bytes())))
}

/// One Argon2 hash into `out`, its working memory mapped for it alone.
fn hash_in_own_pages(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> std::io::Result<()> {
    let block_bytes = std::mem::size_of::<argon2::Block>();
    let mut memory = crate::sys::ZeroedPages::new(argon.params().block_count() * block_bytes)?;
    argon
        .hash_password_into_with_memory(password, salt, out, memory.as_mut_slice::<argon2::Block>())
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Whether `phc` is a whole Argon2 hash: a known variant, valid
/// parameters, a salt and an output.
fn check_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| e.to_string())?;
    argon2::Algorithm::try_from(hash.algorithm).map_err(|e| e.to_string())?;
    argon2::Params::try_from(&hash).map_err(|e| e.to_string())?;
    match (hash.salt, hash.hash) {
        (Some(_), Some(_)) => Ok(()),
        _ => Err("no salt or no hash output".to_owned()),
    }
}

/// Hashes a password with Argon2id at the default cost (19 MiB, 2 passes:
/// the OWASP minimum) and a random salt from the kernel.
pub fn hash_password(password: &[u8]) -> std::io::Result<String> {
    let mut salt = [0u8; 16];
    crate::sys::random_bytes(&mut salt)?;
    let argon = Argon2::default();
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    hash_in_own_pages(&argon, password, &salt, &mut out)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| std::io::Error::other(e.to_string()))?;
    let output = argon2::password_hash::Output::new(&out)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(PasswordHash {
        algorithm: argon2::Algorithm::default().ident(),
        version: Some(argon2::Version::default().into()),
        params: argon2::password_hash::ParamsString::try_from(argon.params())
            .map_err(|e| std::io::Error::other(e.to_string()))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    }
    .to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users file {path}, line {line}: {message} (a stored password that begins with $argon2 must be a whole hash from `coresocks hash-password`)")]
    BadHash {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("users file {path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: &'static str,
    },
    #[error("users file {path} holds no users; remove --users to run without authentication")]
    Empty { path: PathBuf },
}

/// Users and passwords, read once at start and shared read-only by all
/// cores.
#[derive(Clone)]
pub struct UserDb {
    users: Arc<HashMap<Vec<u8>, Secret>>,
    /// A hash of nothing anyone knows, checked for unknown users when the
    /// file holds hashes; `None` when every password is plain.
    dummy: Option<Arc<str>>,
    /// Problems worth a warning (e.g. a world-readable file), logged once
    /// logging is up.
    pub warnings: Vec<String>,
    /// Which reading of the file this is: a reload's is new, so logins
    /// remembered against an older one do not count.
    generation: u64,
}

impl std::fmt::Debug for UserDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserDb({} users)", self.users.len())
    }
}

impl UserDb {
    pub fn load(path: &Path) -> Result<UserDb, UsersError> {
        let read_err = |source| UsersError::Read {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode();
        let mut db = UserDb::parse(&text).map_err(|e| match e {
            ParseError::Line(line, message) => UsersError::Line {
                path: path.to_owned(),
                line,
                message,
            },
            ParseError::Hash(line, message) => UsersError::BadHash {
                path: path.to_owned(),
                line,
                message,
            },
        })?;
        if db.users.is_empty() {
            return Err(UsersError::Empty {
                path: path.to_owned(),
            });
        }
        if mode & 0o004 != 0 {
            db.warnings.push(format!(
                "users file {} is readable by every user on this machine (mode {:o}); run: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            ));
        }
        Ok(db)
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<UserDb, ParseError> {
        let mut users = HashMap::new();
        let mut hashed = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let bad = |message| ParseError::Line(i + 1, message);
            let (user, pass) = line.split_once(':').ok_or(bad("expected user:password"))?;
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            let secret = if pass.starts_with("$argon2") {
                check_hash(pass).map_err(|e| ParseError::Hash(i + 1, e))?;
                hashed = true;
                Secret::Hashed(Arc::from(pass))
            } else {
                Secret::Plain(pass.as_bytes().to_vec())
            };
            // RFC 1929 carries each field in at most 255 bytes.
            if user.len() > 255 || matches!(&secret, Secret::Plain(p) if p.len() > 255) {
                return Err(bad("user name or password longer than 255 bytes"));
            }
            if users.insert(user.as_bytes().to_vec(), secret).is_some() {
                return Err(bad("user listed twice"));
            }
        }
        let dummy = match hashed {
            true => Some(Arc::from(
                hash_password(b"no user has this password")
                    .map_err(|e| ParseError::Hash(0, e.to_string()))?,
            )),
            false => None,
        };
        static READINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(UserDb {
            users: Arc::new(users),
            dummy,
            warnings: Vec::new(),
            generation: READINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Checks a user's password in time that does not depend on where the
    /// password differs; an unknown user costs the same comparison (the
    /// dummy hash's, when the file holds hashes).
    pub fn verify(&self, user: &[u8], password: &[u8]) -> Verification {
        // 255 bytes is the longest password RFC 1929 can carry.
        const DUMMY: [u8; 255] = [0u8; 255];
        let slow = |phc: &Arc<str>, known| {
            Verification::Slow(SlowCheck {
                phc: phc.clone(),
                password: password.to_vec(),
                known,
            })
        };
        match (self.users.get(user), &self.dummy) {
            (Some(Secret::Plain(stored)), _) => {
                Verification::Decided(bool::from(stored.as_slice().ct_eq(password)))
            }
            (Some(Secret::Hashed(phc)), _) => slow(phc, true),
            (None, Some(dummy)) => slow(dummy, false),
            (None, None) => {
                let _ = DUMMY[..password.len().min(255)].ct_eq(password);
                Verification::Decided(false)
            }
        }
    }

    /// Which reading of the users file this is (a reload makes a new one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether `user` is in the file.
    pub fn contains(&self, user: &[u8]) -> bool {
        self.users.contains_key(user)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Why the users file's text cannot be used: (1-based line, reason).
#[derive(Debug)]
pub enum ParseError {
    Line(usize, &'static str),
    Hash(usize, String),
}

impl ParseError {
    pub fn line(&self) -> usize {
        match self {
            ParseError::Line(line, _) | ParseError::Hash(line, _) => *line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check's answer, running a slow one inline.
    fn check(db: &UserDb, user: &str, password: &str) -> bool {
        match db.verify(user.as_bytes(), password.as_bytes()) {
            Verification::Decided(ok) => ok,
            Verification::Slow(slow) => slow.run(),
        }
    }

    #[test]
    fn parses_users_comments_and_blank_lines() {
        let db = UserDb::parse("# team\nalice:s3cret\n\n  # more\nbob:pa:ss\ncarol:\n").unwrap();
        assert_eq!(db.len(), 3);
        assert!(check(&db, "alice", "s3cret"));
        assert!(check(&db, "bob", "pa:ss"), "password may contain ':'");
        assert!(check(&db, "carol", ""));
        assert!(!check(&db, "alice", "s3cre"));
        assert!(!check(&db, "alice", "s3cret!"));
        assert!(!check(&db, "mallory", "s3cret"));
        assert!(db.dummy.is_none(), "plain files need no dummy hash");
    }

    #[test]
    fn hashed_and_plain_entries_side_by_side() {
        let phc = hash_password(b"wonderland").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_ne!(phc, hash_password(b"wonderland").unwrap(), "salts differ");
        let db = UserDb::parse(&format!(
            "alice:{phc}
bob:builder
"
        ))
        .unwrap();
        assert!(matches!(
            db.verify(b"alice", b"wonderland"),
            Verification::Slow(_)
        ));
        assert!(check(&db, "alice", "wonderland"));
        assert!(!check(&db, "alice", "wonderlan"));
        assert!(
            !check(&db, "alice", phc.as_str()),
            "the hash is not the password"
        );
        assert!(check(&db, "bob", "builder"));
        // An unknown user pays for a hash too, and never passes.
        assert!(matches!(db.verify(b"mallory", b"x"), Verification::Slow(_)));
        assert!(!check(&db, "mallory", "no user has this password"));
    }

    #[test]
    fn the_check_in_its_own_pages_agrees_with_argon2_for_every_variant() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        for (algorithm, version) in [
            (argon2::Algorithm::Argon2id, argon2::Version::V0x13),
            (argon2::Algorithm::Argon2i, argon2::Version::V0x10),
            (argon2::Algorithm::Argon2d, argon2::Version::V0x13),
        ] {
            let params = argon2::Params::new(64, 1, 2, Some(24)).unwrap();
            let argon = Argon2::new(algorithm, version, params);
            let phc = argon.hash_password(b"pw", &salt).unwrap().to_string();
            let parsed = PasswordHash::new(&phc).unwrap();
            for guess in [&b"pw"[..], b"pW", b""] {
                assert_eq!(
                    verify_in_own_pages(&phc, guess),
                    Some(argon.verify_password(guess, &parsed).is_ok()),
                    "{phc} {guess:?}"
                );
            }
        }
        assert_eq!(verify_in_own_pages("$argon2id$v=19$garbage", b"pw"), None);
    }

    #[test]
    fn a_malformed_hash_is_refused_with_its_line() {
        let err = UserDb::parse(
            "ok:1
alice:$argon2id$v=19$garbage
",
        )
        .unwrap_err();
        assert_eq!(err.line(), 2);
        assert!(matches!(err, ParseError::Hash(2, _)), "{err:?}");
    }

    #[test]
    fn rejects_bad_lines_with_line_numbers() {
        assert_eq!(UserDb::parse("ok:1\nnocolon\n").unwrap_err().line(), 2);
        assert_eq!(UserDb::parse(":pw\n").unwrap_err().line(), 1);
        assert_eq!(UserDb::parse("a:1\na:2\n").unwrap_err().line(), 2);
        let long = format!("{}:x\n", "u".repeat(256));
        assert_eq!(UserDb::parse(&long).unwrap_err().line(), 1);
    }
}
