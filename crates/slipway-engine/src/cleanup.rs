//! Who owns which Docker resource, and removing what nobody alive owns any more.
//!
//! Every container, network and volume the engine creates carries three labels:
//! [`LABEL_MANAGED`], [`LABEL_OWNER`] (`<hostname>:<pid>:<process start time>`) and
//! [`LABEL_BUILD`]. A build removes its own resources on every exit path; the owner label is
//! for what a crashed or killed process left behind: [`remove_orphans`] removes resources
//! whose owner process on this host is gone, and never those of a live process, so several
//! engines (or parallel tests) can share one Docker engine. [`labelled`] lists what carries
//! a label (how the tests check that a build left nothing behind).
//!
//! Images carry these labels only when an untrusted build made them (a native
//! `plugins/docker` step of a build that is not [`crate::RunOptions::trusted`]): such an image
//! is tagged only in [`UNTRUSTED_IMAGES`] and is removed with the build's other resources
//! (untagged, which deletes it and the layers only it used). Images of trusted builds are
//! theirs to keep and carry no labels of ours.

use std::collections::HashMap;
use std::sync::OnceLock;

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    RemoveVolumeOptionsBuilder,
};

use crate::error::EngineError;

/// `true` on everything the engine creates.
pub const LABEL_MANAGED: &str = "io.slipway.managed";
/// `<hostname>:<pid>:<start time>` of the process that created the resource.
pub const LABEL_OWNER: &str = "io.slipway.owner";
/// The build id ([`crate::BuildReport::build_id`]).
pub const LABEL_BUILD: &str = "io.slipway.build";
/// The pipeline name (informational).
pub const LABEL_PIPELINE: &str = "io.slipway.pipeline";
/// The step or service name (informational, containers only).
pub const LABEL_STEP: &str = "io.slipway.step";

/// The namespace of the only names an untrusted build's images get
/// (`slipway-untrusted/<build id>:<pipeline>-<step>`); reserved: no image, step or setting of
/// any build may name it.
pub const UNTRUSTED_IMAGES: &str = "slipway-untrusted/";

/// The owner label value of this process.
pub fn current_owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let pid = std::process::id();
        let start = start_time(pid).unwrap_or_default();
        format!("{}:{pid}:{start}", hostname())
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks after boot.
/// Together with the pid it identifies a process even after its pid was reused.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (the command) may contain spaces and parentheses; it ends at the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the command come fields 3, 4, ...; field 22 is the 20th of those.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named by an owner label is alive: same host, and a process with that
/// pid exists and started at that time. `None` for another host: that is not ours to judge.
fn owner_alive(owner: &str) -> Option<bool> {
    let mut parts = owner.rsplitn(3, ':');
    let start = parts.next()?;
    let pid: u32 = parts.next()?.parse().ok()?;
    let host = parts.next()?;
    if host != hostname() {
        return None;
    }
    Some(start_time(pid).map(|t| t.to_string()) == Some(start.to_string()))
}

/// A fresh random build id (16 hex digits).
pub(crate) fn new_build_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !random {
        // No /dev/urandom: time and pid still make collisions between builds unlikely.
        use std::hash::{BuildHasher, RandomState};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let hash = RandomState::new().hash_one((nanos, std::process::id()));
        bytes = hash.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The labels of a resource created by build `build_id`.
pub(crate) fn labels(build_id: &str, pipeline: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_OWNER.to_string(), current_owner().to_string()),
        (LABEL_BUILD.to_string(), build_id.to_string()),
        (LABEL_PIPELINE.to_string(), pipeline.to_string()),
    ])
}

/// Removes containers, networks, volumes and images labelled [`LABEL_MANAGED`] whose owner
/// process on this host is gone; returns how many were removed.
pub async fn remove_orphans() -> Result<usize, EngineError> {
    let docker = crate::backend::docker::connect().await?;
    remove_orphans_with(&docker).await
}

pub(crate) async fn remove_orphans_with(docker: &Docker) -> Result<usize, EngineError> {
    let orphan = |labels: &HashMap<String, String>| {
        labels.get(LABEL_OWNER).and_then(|owner| owner_alive(owner)) == Some(false)
    };
    remove_labelled(docker, &format!("{LABEL_MANAGED}=true"), orphan).await
}

/// Removes everything labelled with build `build_id`: the last line of a build's cleanup,
/// catching what a pipeline's own teardown could not know about (e.g. a container whose
/// creation was interrupted).
pub(crate) async fn sweep_build(docker: &Docker, build_id: &str) -> Result<usize, EngineError> {
    remove_labelled(docker, &format!("{LABEL_BUILD}={build_id}"), |_| true).await
}

/// What carries one label on the Docker engine, as [`labelled`] lists it.
#[derive(Debug, Default)]
pub struct Labelled {
    pub containers: Vec<bollard::models::ContainerSummary>,
    pub networks: Vec<bollard::models::Network>,
    pub volumes: Vec<bollard::models::Volume>,
    pub images: Vec<bollard::models::ImageSummary>,
}

impl Labelled {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
            && self.networks.is_empty()
            && self.volumes.is_empty()
            && self.images.is_empty()
    }
}

/// The containers (stopped ones too), networks, volumes and images (intermediate ones too)
/// labelled `label` (`key=value`).
pub async fn labelled(docker: &Docker, label: &str) -> Result<Labelled, EngineError> {
    let filters = HashMap::from([("label", vec![label])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| EngineError::docker("listing containers", e))?;
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(|e| EngineError::docker("listing networks", e))?;
    let volumes = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(|e| EngineError::docker("listing volumes", e))?
        .volumes
        .unwrap_or_default();
    let images = docker
        .list_images(Some(
            ListImagesOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| EngineError::docker("listing images", e))?;
    Ok(Labelled {
        containers,
        networks,
        volumes,
        images,
    })
}

/// Removes containers first, then networks and volumes (which Docker refuses to remove while
/// a container uses them), then images.
async fn remove_labelled(
    docker: &Docker,
    label: &str,
    select: impl Fn(&HashMap<String, String>) -> bool,
) -> Result<usize, EngineError> {
    let Labelled {
        containers,
        networks,
        volumes,
        mut images,
    } = labelled(docker, label).await?;
    let mut removed = 0;

    let force = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    let doomed = containers.iter().filter_map(|c| {
        let labels = c.labels.as_ref()?;
        select(labels).then_some(c.id.as_deref()?)
    });
    let results = futures_util::future::join_all(
        doomed.map(|id| docker.remove_container(id, Some(force.clone()))),
    )
    .await;
    removed += count_removed(results, "container");

    for network in networks {
        let (Some(labels), Some(id)) = (&network.labels, &network.id) else {
            continue;
        };
        if select(labels) {
            removed += count_removed([docker.remove_network(id).await], "network");
        }
    }

    for volume in volumes {
        if select(&volume.labels) {
            let result = docker
                .remove_volume(
                    &volume.name,
                    Some(RemoveVolumeOptionsBuilder::new().force(true).build()),
                )
                .await;
            removed += count_removed([result], "volume");
        }
    }

    // Newest first: a child before its parent (intermediate images of a build carry the
    // labels set so far), so each removal finds its image free.
    images.sort_by_key(|image| std::cmp::Reverse(image.created));
    for image in images {
        if !select(&image.labels) {
            continue;
        }
        // By name, never forced: removing the last name deletes the image and the layers no
        // other image uses; an image still in use somewhere stays (and is reported).
        let names: Vec<&str> = image
            .repo_tags
            .iter()
            .map(String::as_str)
            .filter(|t| *t != "<none>:<none>")
            .collect();
        let names = if names.is_empty() {
            vec![image.id.as_str()]
        } else {
            names
        };
        for name in names {
            let result = docker
                .remove_image(name, Some(RemoveImageOptionsBuilder::new().build()), None)
                .await
                .map(drop);
            removed += count_removed([result], "image");
        }
    }
    Ok(removed)
}

fn count_removed(
    results: impl IntoIterator<Item = Result<(), bollard::errors::Error>>,
    kind: &str,
) -> usize {
    let mut removed = 0;
    for result in results {
        match result {
            Ok(()) => removed += 1,
            // Someone else (a concurrent sweep, auto-removal) was faster: fine.
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!("could not remove {kind}: {e}"),
        }
    }
    removed
}

pub(crate) fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let owner = current_owner();
        assert_eq!(owner_alive(owner), Some(true));
        let pid = std::process::id();
        let host = hostname();
        assert_eq!(owner_alive(&format!("{host}:{pid}:1")), Some(false));
        assert_eq!(owner_alive(&format!("{host}:4294967295:1")), Some(false));
        assert_eq!(owner_alive(&format!("other-host-{host}:{pid}:1")), None);
        assert_eq!(owner_alive("garbage"), None);
    }

    #[test]
    fn build_ids_are_hex_and_distinct() {
        let (a, b) = (new_build_id(), new_build_id());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
