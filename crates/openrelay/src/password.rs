//! Reading an account password: from a file or standard input (`openrelay account`), and
//! from a file that only its owner may read (`openrelay client --refill-account`).

use std::path::Path;

use anyhow::Context;

/// Reads the password: the first line of `file`, or of standard input without one.
pub(crate) fn read(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let line = match file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the password file {}", p.display()))?,
        None => {
            eprint!("password: ");
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line
        }
    };
    let pw = line.lines().next().unwrap_or_default().as_bytes().to_vec();
    if pw.is_empty() {
        anyhow::bail!("the password is empty; give one on standard input or with --password-file");
    }
    Ok(pw)
}

/// Refuses a password file that anyone but its owner may read or write (mode & 0o077), as
/// ssh refuses such private keys: a client that refills by itself keeps the file for good,
/// and the password is all it takes to spend the account's credit.
pub(crate) fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read the password file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the password file {} can be read or written by other users (mode {:04o}); run \
             `chmod 600 {}` and start again",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    Ok(())
}

/// Reads the password from `path` after [`check_private`].
pub(crate) fn read_private(path: &Path) -> anyhow::Result<Vec<u8>> {
    check_private(path)?;
    read(Some(path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_with_mode(mode: u32) -> (std::path::PathBuf, impl Drop) {
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let path = std::env::temp_dir().join(format!(
            "openrelay-password-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, "correct horse battery staple\nsecond line\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (path.clone(), Remove(path))
    }

    #[test]
    fn a_password_file_readable_by_others_is_refused_with_the_fix() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606] {
            let (path, _remove) = file_with_mode(mode);
            let err = read_private(&path).unwrap_err().to_string();
            assert!(
                err.contains(&format!("chmod 600 {}", path.display())),
                "{mode:o}: {err}"
            );
            assert!(err.contains(&format!("{mode:04o}")), "{err}");
            assert!(
                !err.contains("horse"),
                "the error shows the password: {err}"
            );
        }
    }

    #[test]
    fn a_password_file_for_its_owner_only_is_read() {
        for mode in [0o600, 0o400] {
            let (path, _remove) = file_with_mode(mode);
            assert_eq!(
                read_private(&path).unwrap(),
                b"correct horse battery staple"
            );
        }
    }

    #[test]
    fn a_missing_password_file_is_named() {
        let path = std::env::temp_dir().join("openrelay-no-such-password-file");
        let err = format!("{:#}", read_private(&path).unwrap_err());
        assert!(err.contains("cannot read the password file"), "{err}");
    }
}
