use std::fmt::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::HostError;

const BACKUP: &str = "resolv.conf.openrelay-backup";
const LINK_MARK: &str = "symlink:";

/// Points the host's resolver configuration at the tunnel.
pub struct Dns;

/// The original resolver configuration, put back by [`DnsGuard::restore`] (or drop).
#[derive(Debug)]
pub struct DnsGuard {
    path: PathBuf,
    backup_dir: PathBuf,
    active: bool,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> HostError + '_ {
    move |source| HostError::File {
        path: path.display().to_string(),
        source,
    }
}

impl Dns {
    /// Writes /etc/resolv.conf with `servers`, keeping the original in `backup_dir`.
    pub fn point_to(servers: &[IpAddr], backup_dir: &Path) -> Result<DnsGuard, HostError> {
        Self::point_to_at(Path::new("/etc/resolv.conf"), servers, backup_dir)
    }

    /// As [`Dns::point_to`], for the resolver file at `path`.
    pub fn point_to_at(
        path: &Path,
        servers: &[IpAddr],
        backup_dir: &Path,
    ) -> Result<DnsGuard, HostError> {
        // A backup left by a crash holds the real original: restore it before saving again.
        Self::restore_from_backup_at(path, backup_dir)?;
        std::fs::create_dir_all(backup_dir).map_err(file_err(backup_dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(backup_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(file_err(backup_dir))?;
        }
        let backup = backup_dir.join(BACKUP);
        let original = match std::fs::read_link(path) {
            Ok(target) => format!("{LINK_MARK}{}", target.display()).into_bytes(),
            Err(_) => std::fs::read(path).map_err(file_err(path))?,
        };
        std::fs::write(&backup, original).map_err(file_err(&backup))?;
        let mut text = String::from("# Written by OpenRelay while the tunnel is up; names are resolved at the egress.\n# If this stays after a crash, restore the original with: openrelay client --unblock\n");
        for s in servers {
            let _ = writeln!(text, "nameserver {s}");
        }
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(path).map_err(file_err(path))?;
        }
        std::fs::write(path, text).map_err(file_err(path))?;
        Ok(DnsGuard {
            path: path.to_owned(),
            backup_dir: backup_dir.to_owned(),
            active: true,
        })
    }

    /// Restores /etc/resolv.conf from a backup left in `backup_dir`; says whether it did.
    pub fn restore_from_backup(backup_dir: &Path) -> Result<bool, HostError> {
        Self::restore_from_backup_at(Path::new("/etc/resolv.conf"), backup_dir)
    }

    /// As [`Dns::restore_from_backup`], for the resolver file at `path`.
    pub fn restore_from_backup_at(path: &Path, backup_dir: &Path) -> Result<bool, HostError> {
        let backup = backup_dir.join(BACKUP);
        let Ok(original) = std::fs::read(&backup) else {
            return Ok(false);
        };
        let _ = std::fs::remove_file(path);
        match original.strip_prefix(LINK_MARK.as_bytes()) {
            Some(target) => {
                let target = PathBuf::from(String::from_utf8_lossy(target).into_owned());
                std::os::unix::fs::symlink(target, path).map_err(file_err(path))?;
            }
            None => std::fs::write(path, original).map_err(file_err(path))?,
        }
        std::fs::remove_file(&backup).map_err(file_err(&backup))?;
        Ok(true)
    }
}

impl DnsGuard {
    /// Puts the original configuration back.
    pub fn restore(mut self) -> Result<(), HostError> {
        self.undo()
    }

    fn undo(&mut self) -> Result<(), HostError> {
        if std::mem::take(&mut self.active) {
            Dns::restore_from_backup_at(&self.path, &self.backup_dir)?;
        }
        Ok(())
    }
}

impl Drop for DnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            tracing::warn!("cannot restore the resolver configuration: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("openrelay-dns-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn point_and_restore_gives_back_identical_bytes() {
        let d = tmp("file");
        let conf = d.join("resolv.conf");
        let original = b"search lan\nnameserver 192.168.1.1\noptions edns0\n";
        std::fs::write(&conf, original).unwrap();
        let guard =
            Dns::point_to_at(&conf, &["100.64.0.1".parse().unwrap()], &d.join("state")).unwrap();
        let during = std::fs::read_to_string(&conf).unwrap();
        assert!(during.contains("nameserver 100.64.0.1") && !during.contains("192.168.1.1"));
        guard.restore().unwrap();
        assert_eq!(std::fs::read(&conf).unwrap(), original);
        assert!(!d.join("state").join(BACKUP).exists());
    }

    #[test]
    fn a_symlink_is_put_back_as_a_symlink() {
        let d = tmp("link");
        let target = d.join("stub-resolv.conf");
        std::fs::write(&target, "nameserver 127.0.0.53\n").unwrap();
        let conf = d.join("resolv.conf");
        std::os::unix::fs::symlink(&target, &conf).unwrap();
        let guard =
            Dns::point_to_at(&conf, &["100.64.0.1".parse().unwrap()], &d.join("state")).unwrap();
        assert!(!std::fs::symlink_metadata(&conf)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "nameserver 127.0.0.53\n",
            "the link's target is untouched"
        );
        drop(guard);
        assert_eq!(std::fs::read_link(&conf).unwrap(), target);
    }

    #[test]
    fn after_a_crash_the_backup_restores_the_original() {
        let d = tmp("crash");
        let conf = d.join("resolv.conf");
        std::fs::write(&conf, "nameserver 10.0.0.1\n").unwrap();
        let state = d.join("state");
        std::mem::forget(
            Dns::point_to_at(&conf, &["100.64.0.1".parse().unwrap()], &state).unwrap(),
        );
        assert!(std::fs::read_to_string(&conf)
            .unwrap()
            .contains("100.64.0.1"));
        assert!(Dns::restore_from_backup_at(&conf, &state).unwrap());
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "nameserver 10.0.0.1\n"
        );
        assert!(
            !Dns::restore_from_backup_at(&conf, &state).unwrap(),
            "nothing left to restore"
        );
        // A second start after a crash saves the real original, not OpenRelay's file.
        std::mem::forget(
            Dns::point_to_at(&conf, &["100.64.0.1".parse().unwrap()], &state).unwrap(),
        );
        let g = Dns::point_to_at(&conf, &["100.64.0.1".parse().unwrap()], &state).unwrap();
        g.restore().unwrap();
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "nameserver 10.0.0.1\n"
        );
    }
}
