//! The RFC 1929 users file: one `user:password` per line, `#` comments.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
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
    users: Arc<HashMap<Vec<u8>, Vec<u8>>>,
    /// Problems worth a warning (e.g. a world-readable file), logged once
    /// logging is up.
    pub warnings: Vec<String>,
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
        let mut db = UserDb::parse(&text).map_err(|(line, message)| UsersError::Line {
            path: path.to_owned(),
            line,
            message,
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

    /// Parses the file's text; an error is (1-based line, reason).
    pub fn parse(text: &str) -> Result<UserDb, (usize, &'static str)> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (user, pass) = line
                .split_once(':')
                .ok_or((i + 1, "expected user:password"))?;
            if user.is_empty() {
                return Err((i + 1, "empty user name"));
            }
            // RFC 1929 carries each field in at most 255 bytes.
            if user.len() > 255 || pass.len() > 255 {
                return Err((i + 1, "user name or password longer than 255 bytes"));
            }
            if users
                .insert(user.as_bytes().to_vec(), pass.as_bytes().to_vec())
                .is_some()
            {
                return Err((i + 1, "user listed twice"));
            }
        }
        Ok(UserDb {
            users: Arc::new(users),
            warnings: Vec::new(),
        })
    }

    /// Checks a user's password in time that does not depend on where the
    /// password differs; an unknown user costs the same comparison.
    pub fn verify(&self, user: &[u8], password: &[u8]) -> bool {
        // 255 bytes is the longest password RFC 1929 can carry.
        const DUMMY: [u8; 255] = [0u8; 255];
        match self.users.get(user) {
            Some(stored) => bool::from(stored.as_slice().ct_eq(password)),
            None => {
                let _ = DUMMY[..password.len().min(255)].ct_eq(password);
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users_comments_and_blank_lines() {
        let db = UserDb::parse("# team\nalice:s3cret\n\n  # more\nbob:pa:ss\ncarol:\n").unwrap();
        assert_eq!(db.len(), 3);
        assert!(db.verify(b"alice", b"s3cret"));
        assert!(db.verify(b"bob", b"pa:ss"), "password may contain ':'");
        assert!(db.verify(b"carol", b""));
        assert!(!db.verify(b"alice", b"s3cre"));
        assert!(!db.verify(b"alice", b"s3cret!"));
        assert!(!db.verify(b"mallory", b"s3cret"));
    }

    #[test]
    fn rejects_bad_lines_with_line_numbers() {
        assert_eq!(UserDb::parse("ok:1\nnocolon\n").unwrap_err().0, 2);
        assert_eq!(UserDb::parse(":pw\n").unwrap_err().0, 1);
        assert_eq!(UserDb::parse("a:1\na:2\n").unwrap_err().0, 2);
        let long = format!("{}:x\n", "u".repeat(256));
        assert_eq!(UserDb::parse(&long).unwrap_err().0, 1);
    }
}
