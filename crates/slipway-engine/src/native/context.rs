//! The build context: a directory of the workspace streamed to the Docker engine as a tar
//! archive, without what its `.dockerignore` excludes.
//!
//! Owns [`stream`]. Invariants:
//! - Nothing outside the context directory is read: it is walked through descriptors
//!   ([`crate::beneath::entries`]), every entry opened `O_NOFOLLOW`; symbolic links are
//!   archived as links (as `docker build` sends them, also one pointing outside the
//!   context: the engine resolves it inside the context, never on the host), never
//!   followed; only regular files, directories and links are archived (sockets, fifos and
//!   devices are skipped).
//! - Entries are owned by uid/gid 0 with no user or group names, as `docker build` sends
//!   them, so who cloned the workspace does not leak into the image or its cache keys;
//!   modes and modification times are kept.
//! - The Dockerfile and `.dockerignore` are always sent, whatever `.dockerignore` says; a
//!   Dockerfile outside the context (opened beneath the workspace by the caller) is added
//!   under [`OUTSIDE_DOCKERFILE`].
//! - The archive is produced on a blocking thread while it is sent, in chunks through a
//!   small bounded channel, so memory stays bounded whatever the context's size, and the
//!   walk stops as soon as the receiving side (the build) is gone. A read error ends the
//!   stream with that error, naming the file.

use std::fs::File;
use std::io::{self, Write};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::dockerignore::IgnoreRules;
use crate::beneath::{self, EntryKind};

/// Name in the archive of a Dockerfile that lives outside the context directory.
pub(crate) const OUTSIDE_DOCKERFILE: &str = ".slipway.Dockerfile";

/// Bytes per chunk sent to the engine.
const CHUNK: usize = 256 * 1024;

/// What to archive.
#[derive(Debug)]
pub(crate) struct ContextSpec {
    /// The context directory, opened beneath the workspace.
    pub dir: File,
    /// How the context directory is named in errors (`/drone/src/app`).
    pub shown: String,
    pub rules: IgnoreRules,
    /// Paths (relative to `dir`) sent whatever the rules say: the Dockerfile, `.dockerignore`.
    pub always: Vec<String>,
    /// A Dockerfile outside `dir` (opened beneath the workspace), added as
    /// [`OUTSIDE_DOCKERFILE`].
    pub outside_dockerfile: Option<File>,
}

/// How many entries went into the archive, and how many bytes of file content.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ContextStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Starts archiving `spec` on a blocking thread: the chunks as a stream for the build
/// request, and the walk's outcome (an error names the path that failed).
pub(crate) fn stream(
    spec: ContextSpec,
) -> (
    impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    JoinHandle<Result<ContextStats, io::Error>>,
) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(4);
    let walk = tokio::task::spawn_blocking(move || {
        let writer = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let result = archive(&spec, writer);
        if let Err(e) = &result {
            // The engine must see a broken body, not a short archive it might accept.
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (chunks, walk)
}

fn archive(spec: &ContextSpec, writer: ChunkWriter) -> Result<ContextStats, io::Error> {
    let mut tar = tar::Builder::new(writer);
    tar.follow_symlinks(false);
    let mut stats = ContextStats::default();
    walk(&mut tar, spec, &spec.dir, "", &mut stats)?;
    if let Some(file) = &spec.outside_dockerfile {
        let at = |e| at(OUTSIDE_DOCKERFILE, e);
        let meta = file.metadata().map_err(at)?;
        let mut header = header(&meta);
        tar.append_data(&mut header, OUTSIDE_DOCKERFILE, file)
            .map_err(at)?;
        stats.entries += 1;
        stats.bytes += meta.len();
    }
    let mut writer = tar.into_inner()?;
    writer.flush()?;
    Ok(stats)
}

fn at(path: &str, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{path}: {error}"))
}

/// A tar header from a file's metadata, owned by root with no names.
fn header(meta: &std::fs::Metadata) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Archives the directory `rel` (relative to the context; `""` is the context itself),
/// open as `dir`.
fn walk(
    tar: &mut tar::Builder<ChunkWriter>,
    spec: &ContextSpec,
    dir: &File,
    rel: &str,
    stats: &mut ContextStats,
) -> Result<(), io::Error> {
    let shown = if rel.is_empty() {
        spec.shown.clone()
    } else {
        format!("{}/{rel}", spec.shown)
    };
    for entry in beneath::entries(dir, &shown)? {
        let name = entry.name.to_string_lossy();
        let child = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let shown_child = format!("{}/{child}", spec.shown);
        let kept = spec.always.contains(&child);
        let excluded = !kept && spec.rules.excluded(&child);
        match entry.kind {
            EntryKind::Dir(sub, meta) => {
                let prefix = format!("{child}/");
                let holds_kept = spec.always.iter().any(|a| a.starts_with(&prefix));
                if excluded && !spec.rules.has_exceptions() && !holds_kept {
                    continue;
                }
                if !excluded {
                    let mut header = header(&meta);
                    header.set_size(0);
                    tar.append_data(&mut header, &prefix, io::empty())
                        .map_err(|e| at(&shown_child, e))?;
                    stats.entries += 1;
                }
                walk(tar, spec, &sub, &child, stats)?;
            }
            _ if excluded => continue,
            EntryKind::Link { target, mtime } => {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_mtime(mtime);
                header.set_uid(0);
                header.set_gid(0);
                header.set_size(0);
                tar.append_link(&mut header, &child, std::path::Path::new(&target))
                    .map_err(|e| at(&shown_child, e))?;
                stats.entries += 1;
            }
            EntryKind::File(file, meta) => {
                let mut header = header(&meta);
                tar.append_data(&mut header, &child, file)
                    .map_err(|e| at(&shown_child, e))?;
                stats.entries += 1;
                stats.bytes += meta.len();
            }
            EntryKind::Other => {}
        }
    }
    Ok(())
}

/// Collects the archive into chunks and hands them to the async side.
struct ChunkWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the build ended"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn archives_what_dockerignore_leaves() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n")?;
        std::fs::write(
            root.join(".dockerignore"),
            "secret.txt\nlogs\n!logs/keep\nDockerfile\n",
        )?;
        std::fs::write(root.join("secret.txt"), "no")?;
        std::fs::write(root.join("app.txt"), "yes")?;
        std::fs::create_dir_all(root.join("logs"))?;
        std::fs::write(root.join("logs/keep"), "k")?;
        std::fs::write(root.join("logs/drop"), "d")?;
        std::os::unix::fs::symlink("/etc/passwd", root.join("link"))?;
        let spec = ContextSpec {
            dir: crate::beneath::Root::open(root)?.open_dir("")?.file,
            shown: "/drone/src".into(),
            rules: IgnoreRules::parse(&std::fs::read_to_string(root.join(".dockerignore"))?),
            always: vec!["Dockerfile".into(), ".dockerignore".into()],
            outside_dockerfile: None,
        };
        let (chunks, walk) = stream(spec);
        let chunks: Vec<_> = chunks.collect().await;
        let stats = walk.await??;
        let mut bytes = Vec::new();
        for chunk in chunks {
            bytes.extend_from_slice(&chunk?);
        }
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut names = Vec::new();
        for entry in archive.entries()? {
            let entry = entry?;
            assert_eq!(entry.header().uid()?, 0);
            names.push(entry.path()?.to_string_lossy().into_owned());
        }
        assert_eq!(
            names,
            vec![
                ".dockerignore",
                "Dockerfile",
                "app.txt",
                "link",
                "logs/keep"
            ]
        );
        assert_eq!(stats.entries, 5);
        Ok(())
    }
}
