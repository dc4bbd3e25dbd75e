//! Reading workspace content on the host without ever leaving the workspace.
//!
//! The workspace is the checkout of a commit, and a commit may plant symbolic links
//! (`.tags -> /var/lib/slipway/secret.key`). Whatever the runner process reads of it on the
//! host (the native plugins' `.tags`, `.dockerignore`, Dockerfile and build context) is
//! opened through a [`Root`], never by path.
//!
//! Invariants:
//! - A path is resolved one component at a time from a descriptor of the workspace root
//!   (`openat` with `O_NOFOLLOW`, as `openat2(RESOLVE_BENEATH)` would, but on any kernel):
//!   a symbolic link is followed only by reading it and resolving its target lexically
//!   against the directory holding it; an absolute target, or one whose `..` climbs above the
//!   root, is refused with an error naming the link and its target. At most [`MAX_LINKS`]
//!   links are followed for one path.
//! - Every open is `O_NOFOLLOW`, relative to a descriptor already known to be beneath the
//!   root, so an entry swapped for a link between the check and the open (by a container of
//!   the pipeline writing the workspace meanwhile) makes the open fail instead of leaving
//!   the workspace. Files are opened `O_NONBLOCK` and checked again after the open, so a
//!   fifo or device is refused rather than read.
//! - Directories are read through their descriptors too ([`Root::entries`]), so a walk of the
//!   build context never passes through a link either.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// How many symbolic links one resolution may follow (Linux's own limit).
pub(crate) const MAX_LINKS: usize = 40;

/// Why a path of the workspace could not be read. Messages name the path as the pipeline
/// wrote it (relative to the workspace) and say what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BeneathError {
    #[error("`{path}` does not exist in the workspace")]
    NotFound { path: String },

    #[error(
        "`{path}` is not read: the symbolic link `{link}` points to `{target}`, which is \
         outside the workspace (links the build reads must stay inside the workspace: \
         commit the file itself, or a relative link to a file of the repository)"
    )]
    Escapes {
        path: String,
        link: String,
        target: String,
    },

    #[error("`{path}` is outside the workspace (its `..` climbs above the workspace root)")]
    Outside { path: String },

    #[error(
        "`{path}` is not read: resolving it follows more than {MAX_LINKS} symbolic links \
         (a loop of links?)"
    )]
    TooManyLinks { path: String },

    #[error("`{path}` is not a {wanted} (it is {found})")]
    WrongType {
        path: String,
        wanted: &'static str,
        found: &'static str,
    },

    #[error("`{path}` changed while it was being read (a link put in its place?)")]
    Changed { path: String },

    #[error("reading `{path}`: {error}")]
    Io { path: String, error: io::Error },
}

impl BeneathError {
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, BeneathError::NotFound { .. })
    }
}

/// What a resolution must end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    File,
    Dir,
}

/// The workspace root, held open.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
}

/// A file or directory found beneath the root: its path relative to the root after links
/// were followed (`/`-separated, `""` for the root itself) and the open handle.
#[derive(Debug)]
pub(crate) struct Found {
    pub resolved: String,
    pub file: File,
}

/// One entry of a directory read by descriptor.
#[derive(Debug)]
pub(crate) struct Entry {
    pub name: OsString,
    pub kind: EntryKind,
}

#[derive(Debug)]
pub(crate) enum EntryKind {
    /// Opened (`O_NOFOLLOW`), with its metadata from the open descriptor.
    Dir(File, std::fs::Metadata),
    File(File, std::fs::Metadata),
    /// A link, never followed: its target as written, and its modification time.
    Link {
        target: OsString,
        mtime: u64,
    },
    /// Sockets, fifos, devices: never opened.
    Other,
}

fn kind_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a fifo",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        FileType::Unknown => "of an unknown type",
    }
}

/// `/`-separated components of a relative path, `.` and empty ones dropped.
fn components(path: &OsStr) -> Vec<OsString> {
    path.as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect()
}

fn joined(parts: &[OsString]) -> String {
    parts
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

impl Root {
    /// Opens the workspace root itself (a directory the engine made, so its own path is
    /// trusted).
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    /// Opens the regular file at `path` (relative to the root), following only links that
    /// stay beneath it.
    pub(crate) fn open_file(&self, path: &str) -> Result<Found, BeneathError> {
        self.resolve(path, Want::File)
    }

    /// Opens the directory at `path` (relative to the root; `""` is the root), following
    /// only links that stay beneath it.
    pub(crate) fn open_dir(&self, path: &str) -> Result<Found, BeneathError> {
        self.resolve(path, Want::Dir)
    }

    fn resolve(&self, path: &str, want: Want) -> Result<Found, BeneathError> {
        let shown = || path.trim_start_matches("./").to_string();
        let io_error = |error: io::Error| BeneathError::Io {
            path: shown(),
            error,
        };
        let mut pending: Vec<OsString> = components(OsStr::new(path));
        pending.reverse(); // popped from the end: the next component is last
        let mut done: Vec<OsString> = Vec::new();
        // A descriptor for each component of `done`, so `..` goes back without a lookup.
        let mut dirs: Vec<File> = Vec::new();
        let mut links = 0usize;
        while let Some(part) = pending.pop() {
            let dir = dirs.last().map_or(self.fd.as_fd(), |d| d.as_fd());
            if part == ".." {
                // Links already followed are real directories here, so `..` is lexical.
                if done.pop().is_none() {
                    return Err(BeneathError::Outside { path: shown() });
                }
                dirs.pop();
                continue;
            }
            let last = pending.is_empty();
            let stat = match rustix::fs::statat(dir, &part, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(rustix::io::Errno::NOENT) => {
                    return Err(BeneathError::NotFound { path: shown() });
                }
                Err(e) => return Err(io_error(e.into())),
            };
            let file_type = FileType::from_raw_mode(stat.st_mode);
            match file_type {
                FileType::Symlink => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(BeneathError::TooManyLinks { path: shown() });
                    }
                    let target = rustix::fs::readlinkat(dir, &part, Vec::new())
                        .map_err(|e| io_error(e.into()))?;
                    let target = OsString::from_vec(target.into_bytes());
                    let mut link = done.clone();
                    link.push(part);
                    let escapes = || BeneathError::Escapes {
                        path: shown(),
                        link: joined(&link),
                        target: target.to_string_lossy().into_owned(),
                    };
                    if target.as_bytes().starts_with(b"/") {
                        return Err(escapes());
                    }
                    // Whether the target climbs above the root, judged before following it
                    // so the error names this link.
                    let mut depth = done.len();
                    for c in components(&target) {
                        if c == ".." {
                            depth = depth.checked_sub(1).ok_or_else(escapes)?;
                        } else {
                            depth += 1;
                        }
                    }
                    pending.extend(components(&target).into_iter().rev());
                }
                FileType::Directory if !last || want == Want::Dir => {
                    let fd = rustix::fs::openat(
                        dir,
                        &part,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| match e {
                        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                            BeneathError::Changed { path: shown() }
                        }
                        e => io_error(e.into()),
                    })?;
                    done.push(part);
                    dirs.push(File::from(fd));
                }
                FileType::RegularFile if last && want == Want::File => {
                    let fd = rustix::fs::openat(
                        dir,
                        &part,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| match e {
                        rustix::io::Errno::LOOP => BeneathError::Changed { path: shown() },
                        e => io_error(e.into()),
                    })?;
                    let file = File::from(fd);
                    let meta = file.metadata().map_err(io_error)?;
                    if !meta.is_file() {
                        return Err(BeneathError::Changed { path: shown() });
                    }
                    done.push(part);
                    return Ok(Found {
                        resolved: joined(&done),
                        file,
                    });
                }
                other => {
                    return Err(BeneathError::WrongType {
                        path: if last { shown() } else { joined(&done) },
                        wanted: match want {
                            Want::File if last => "regular file",
                            _ => "directory",
                        },
                        found: kind_name(other),
                    });
                }
            }
        }
        // Every component was a directory (or there were none).
        match want {
            Want::Dir => {
                let file = match dirs.pop() {
                    Some(file) => file,
                    None => {
                        let fd = rustix::fs::openat(
                            &self.fd,
                            ".",
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .map_err(|e| io_error(e.into()))?;
                        File::from(fd)
                    }
                };
                Ok(Found {
                    resolved: joined(&done),
                    file,
                })
            }
            Want::File => Err(BeneathError::WrongType {
                path: shown(),
                wanted: "regular file",
                found: "a directory",
            }),
        }
    }
}

/// The entries of the directory `dir` (opened beneath a [`Root`]), sorted by name, each
/// opened or read without following links. `shown` names the directory in errors.
pub(crate) fn entries(dir: &File, shown: &str) -> io::Result<Vec<Entry>> {
    let at = |name: &OsStr, error: io::Error| {
        let path = if shown.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{shown}/{}", name.to_string_lossy())
        };
        io::Error::new(error.kind(), format!("{path}: {error}"))
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(|e| at(OsStr::new("."), e.into()))? {
        let entry = entry.map_err(|e| at(OsStr::new("."), e.into()))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    // Sorted, so the same tree gives the same archive.
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let stat = match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // Gone since the directory was read: as if it had never been there.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(at(&name, e.into())),
        };
        let open = |flags: OFlags| -> io::Result<Option<(File, std::fs::Metadata)>> {
            match rustix::fs::openat(
                dir,
                &name,
                flags | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => {
                    let file = File::from(fd);
                    let meta = file.metadata()?;
                    Ok(Some((file, meta)))
                }
                // Replaced by a link (or removed) since it was looked at: left out.
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => Ok(None),
                Err(rustix::io::Errno::NOENT) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        let kind = match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => match open(OFlags::DIRECTORY).map_err(|e| at(&name, e))? {
                Some((file, meta)) if meta.is_dir() => EntryKind::Dir(file, meta),
                _ => continue,
            },
            FileType::RegularFile => match open(OFlags::NONBLOCK).map_err(|e| at(&name, e))? {
                Some((file, meta)) if meta.is_file() => EntryKind::File(file, meta),
                _ => continue,
            },
            FileType::Symlink => match rustix::fs::readlinkat(dir, &name, Vec::new()) {
                Ok(target) => EntryKind::Link {
                    target: OsString::from_vec(target.into_bytes()),
                    mtime: u64::try_from(stat.st_mtime).unwrap_or(0),
                },
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL) => continue,
                Err(e) => return Err(at(&name, e.into())),
            },
            _ => EntryKind::Other,
        };
        out.push(Entry { name, kind });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn read(found: Found) -> String {
        let mut text = String::new();
        let mut file = found.file;
        let _ = file.read_to_string(&mut text);
        text
    }

    #[test]
    fn links_inside_are_followed_and_links_out_refused() -> Result<(), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("host.txt"), "host secret")?;
        let dir = tempfile::tempdir()?;
        let root_path = dir.path().join("ws");
        std::fs::create_dir_all(root_path.join("sub/deeper"))?;
        std::fs::write(root_path.join("sub/file.txt"), "inside")?;
        symlink("sub/file.txt", root_path.join("rel"))?;
        symlink("../file.txt", root_path.join("sub/deeper/up"))?;
        symlink("sub", root_path.join("subdir"))?;
        symlink(outside.path().join("host.txt"), root_path.join("abs"))?;
        symlink("../../ws/sub/file.txt", root_path.join("sub/climb"))?;
        symlink("../outside", root_path.join("above"))?;
        symlink("loop", root_path.join("loop"))?;
        std::fs::write(dir.path().join("outside"), "host secret")?;
        let root = Root::open(&root_path)?;

        let found = root.open_file("rel")?;
        assert_eq!(found.resolved, "sub/file.txt");
        assert_eq!(read(found), "inside");
        assert_eq!(read(root.open_file("sub/deeper/up")?), "inside");
        assert_eq!(read(root.open_file("./subdir/file.txt")?), "inside");
        assert_eq!(root.open_dir("subdir")?.resolved, "sub");
        assert_eq!(root.open_dir("")?.resolved, "");

        for path in ["..", "sub/../../ws/sub/file.txt"] {
            assert!(
                matches!(root.open_file(path), Err(BeneathError::Outside { .. })),
                "{path}"
            );
        }
        for (path, link) in [
            ("abs", "abs"),
            ("sub/climb", "sub/climb"),
            ("above", "above"),
            ("subdir/../above", "above"),
        ] {
            match root.open_file(path) {
                Err(BeneathError::Escapes { link: l, .. }) => assert_eq!(l, link, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        let message = root.open_file("abs").err().map(|e| e.to_string());
        assert!(
            message.as_deref().is_some_and(|m| m.contains("`abs`")
                && m.contains("outside the workspace")
                && !m.contains("host secret")),
            "{message:?}"
        );
        assert!(matches!(
            root.open_file("loop"),
            Err(BeneathError::TooManyLinks { .. })
        ));
        assert!(root.open_file("missing").is_err_and(|e| e.is_not_found()));
        assert!(matches!(
            root.open_file("sub"),
            Err(BeneathError::WrongType { .. })
        ));
        Ok(())
    }

    #[test]
    fn entries_never_follow_links() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("d"))?;
        std::fs::write(dir.path().join("f"), "x")?;
        symlink("/etc/passwd", dir.path().join("l"))?;
        let root = Root::open(dir.path())?;
        let top = root.open_dir("")?;
        let found = entries(&top.file, "")?;
        let names: Vec<_> = found.iter().map(|e| e.name.to_string_lossy()).collect();
        assert_eq!(names, ["d", "f", "l"]);
        assert!(matches!(found[0].kind, EntryKind::Dir(..)));
        assert!(matches!(found[1].kind, EntryKind::File(..)));
        assert!(
            matches!(&found[2].kind, EntryKind::Link { target, .. } if target == "/etc/passwd")
        );
        Ok(())
    }
}
