//! `remove_orphans`: resources of dead owners on this host go, those of live ones stay.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use slipway_engine::cleanup::{LABEL_BUILD, LABEL_MANAGED, LABEL_OWNER, current_owner};

use crate::support::*;

/// Creates a container (never started), a network and a volume with these labels; all
/// named `name`.
async fn create_set(docker: &Docker, name: &str, owner: &str) -> TestResult {
    let labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_OWNER.to_string(), owner.to_string()),
        (LABEL_BUILD.to_string(), name.to_string()),
    ]);
    docker
        .create_network(NetworkCreateRequest {
            name: name.to_string(),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await?;
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await?;
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(name).build()),
            ContainerCreateBody {
                image: Some(image()),
                cmd: Some(vec!["true".to_string()]),
                labels: Some(labels),
                ..Default::default()
            },
        )
        .await?;
    Ok(())
}

/// Which of the set still exist: (container, network, volume).
async fn exists(docker: &Docker, name: &str) -> (bool, bool, bool) {
    (
        docker.inspect_container(name, None).await.is_ok(),
        docker.inspect_network(name, None).await.is_ok(),
        docker.inspect_volume(name).await.is_ok(),
    )
}

#[tokio::test]
async fn removes_resources_of_dead_owners_and_keeps_live_ones() -> TestResult {
    let docker = docker().await?;
    let unique = format!("slipway-orphan-test-{}-{}", std::process::id(), nanos());
    let (dead, live) = (format!("{unique}-dead"), format!("{unique}-live"));

    // Same host and pid as this process but another start time: that process is gone
    // (its pid was reused by us).
    let me = current_owner();
    let (host_and_pid, _start) = me.rsplit_once(':').ok_or("owner without start time")?;
    create_set(&docker, &dead, &format!("{host_and_pid}:1")).await?;
    create_set(&docker, &live, me).await?;

    let removed = slipway_engine::remove_orphans().await;
    let dead_left = exists(&docker, &dead).await;
    let live_left = exists(&docker, &live).await;

    // Clean up what the test made before asserting, so a failure leaves nothing behind.
    let force = RemoveContainerOptionsBuilder::new().force(true).build();
    for name in [&dead, &live] {
        let _ = docker.remove_container(name, Some(force.clone())).await;
        let _ = docker.remove_network(name).await;
        let _ = docker
            .remove_volume(name, Some(RemoveVolumeOptionsBuilder::new().build()))
            .await;
    }

    // Other tests' runs also call remove_orphans and may have removed the dead set first,
    // so the count is only known to be a number, not which one.
    removed?;
    assert_eq!(dead_left, (false, false, false), "orphans survived");
    assert_eq!(
        live_left,
        (true, true, true),
        "a live owner's resources were removed"
    );
    assert_clean(&dead).await?;
    assert_clean(&live).await
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// An untrusted build's image (labelled like its containers) whose owner is `owner`.
fn build_labelled_image(name: &str, owner: &str) -> TestResult {
    use std::io::Write;
    let mut child = std::process::Command::new("docker")
        .args(["build", "-q", "-t", name])
        .arg(format!("--label={LABEL_MANAGED}=true"))
        .arg(format!("--label={LABEL_OWNER}={owner}"))
        .arg(format!("--label={LABEL_BUILD}={name}"))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(format!("FROM {}\n", image()).as_bytes())?;
    let status = child.wait()?;
    assert!(status.success(), "docker build of {name}");
    Ok(())
}

#[tokio::test]
async fn removes_untrusted_images_of_dead_owners() -> TestResult {
    let docker = docker().await?;
    let unique = format!(
        "slipway-untrusted/orphan-test-{}-{}",
        std::process::id(),
        nanos()
    );
    let (dead, live) = (format!("{unique}:dead"), format!("{unique}:live"));
    let me = current_owner();
    let (host_and_pid, _start) = me.rsplit_once(':').ok_or("owner without start time")?;
    build_labelled_image(&dead, &format!("{host_and_pid}:1"))?;
    build_labelled_image(&live, me)?;

    let removed = slipway_engine::remove_orphans().await;
    let dead_left = docker.inspect_image(&dead).await.is_ok();
    let live_left = docker.inspect_image(&live).await.is_ok();
    let _ = docker
        .remove_image(
            &live,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
    let _ = docker
        .remove_image(
            &dead,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;

    removed?;
    assert!(!dead_left, "an orphaned untrusted image survived");
    assert!(live_left, "a live owner's image was removed");
    Ok(())
}
