//! Dependency caches (`cache: {}` volumes): kept between builds of one cache scope, never
//! seen by another scope (a pull request's included), left in place by every cleanup.

use std::collections::HashMap;

use bollard::query_parameters::RemoveVolumeOptionsBuilder;
use slipway_engine::cache::{self, LABEL_CACHE};
use slipway_engine::cleanup::{LABEL_BUILD, LABEL_MANAGED, LABEL_OWNER};
use slipway_engine::{BuildReport, Status};
use slipway_spec::plan::{VolumeMount, VolumePlan, VolumeSource};

use crate::support::*;

/// One build of a pipeline whose step `s` runs `commands` with cache volume `deps` (key
/// `key`) at `/deps`, in cache scope `scope`.
async fn build_with_cache(
    scope: Option<&str>,
    key: Option<&str>,
    commands: &[&str],
) -> Result<(BuildReport, Vec<String>), Box<dyn std::error::Error + Send + Sync>> {
    let work = tempfile::tempdir()?;
    let mut s = step("s", commands);
    s.volumes.push(VolumeMount {
        name: "deps".into(),
        path: "/deps".into(),
    });
    let mut p = pipeline("cache", vec![s]);
    p.volumes.push(VolumePlan {
        name: "deps".into(),
        source: VolumeSource::Cache {
            key: key.map(str::to_owned),
        },
    });
    let mut options = options(work.path());
    options.cache_scope = scope.map(str::to_owned);
    let (report, events) = run(&plan(vec![p]), options).await?;
    assert_clean(&report.build_id).await?;
    assert_work_root_empty(work.path())?;
    Ok((report, events.logs("s")))
}

#[tokio::test]
async fn caches_are_kept_per_scope_and_survive_every_cleanup() -> TestResult {
    let branch = unique_scope("branch");
    let pull_request = format!("{branch}-pr");
    let other = unique_scope("other");
    let scopes = CacheScopes(vec![branch.clone(), pull_request.clone(), other.clone()]);

    // The first build fills the cache; its cleanup leaves it in place.
    let (report, _) = build_with_cache(
        Some(&branch),
        None,
        &["echo from-first-build > /deps/marker"],
    )
    .await?;
    assert_eq!(report.status, Status::Success, "{report:#?}");
    let name = cache::volume_name(&branch, "deps", None);
    let docker = docker().await?;
    let volume = docker.inspect_volume(&name).await?;
    let labels = &volume.labels;
    assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
    assert_eq!(labels.get(LABEL_CACHE), Some(&branch));
    assert!(
        !labels.contains_key(LABEL_OWNER) && !labels.contains_key(LABEL_BUILD),
        "a cache must belong to no build or process: {labels:?}"
    );
    // Nor does the orphan sweep touch it (it has no owner to be dead).
    slipway_engine::remove_orphans().await?;
    docker.inspect_volume(&name).await?;

    // A second build of the same scope reads it.
    let (report, logs) = build_with_cache(Some(&branch), None, &["cat /deps/marker"]).await?;
    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert!(logs.iter().any(|l| l == "from-first-build"), "{logs:?}");

    // A pull request's scope does not see it, and what it writes stays in its own scope.
    let (report, logs) = build_with_cache(
        Some(&pull_request),
        None,
        &[
            "test ! -e /deps/marker && echo pr-sees-nothing",
            "echo poisoned > /deps/marker",
        ],
    )
    .await?;
    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert!(logs.iter().any(|l| l == "pr-sees-nothing"), "{logs:?}");
    let (report, logs) = build_with_cache(Some(&branch), None, &["cat /deps/marker"]).await?;
    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert!(logs.iter().any(|l| l == "from-first-build"), "{logs:?}");

    // Another repository's scope sees nothing either.
    let (report, logs) = build_with_cache(
        Some(&other),
        None,
        &["test ! -e /deps/marker && echo other-sees-nothing"],
    )
    .await?;
    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert!(logs.iter().any(|l| l == "other-sees-nothing"), "{logs:?}");

    // A key keeps a separate cache of the same name.
    let (report, logs) = build_with_cache(
        Some(&branch),
        Some("feature/x"),
        &[
            "test ! -e /deps/marker && echo keyed-starts-empty",
            "echo keyed > /deps/marker",
        ],
    )
    .await?;
    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert!(logs.iter().any(|l| l == "keyed-starts-empty"), "{logs:?}");
    let (_, logs) =
        build_with_cache(Some(&branch), Some("feature/x"), &["cat /deps/marker"]).await?;
    assert!(logs.iter().any(|l| l == "keyed"), "{logs:?}");

    let mut left = scopes.volumes();
    left.sort();
    let mut expected = vec![
        name,
        cache::volume_name(&branch, "deps", Some("feature/x")),
        cache::volume_name(&pull_request, "deps", None),
        cache::volume_name(&other, "deps", None),
    ];
    expected.sort();
    assert_eq!(left, expected);
    for volume in &left {
        docker
            .remove_volume(volume, Some(RemoveVolumeOptionsBuilder::new().build()))
            .await?;
    }
    assert!(scopes.volumes().is_empty());
    Ok(())
}

#[tokio::test]
async fn without_a_scope_a_cache_is_a_temp_volume_with_a_warning() -> TestResult {
    for _ in 0..2 {
        let (report, logs) = build_with_cache(
            None,
            None,
            &[
                "test ! -e /deps/marker && echo starts-empty",
                "echo x > /deps/marker",
            ],
        )
        .await?;
        assert_eq!(report.status, Status::Success, "{report:#?}");
        assert!(
            logs.first().is_some_and(|l| l.starts_with(
                "warning: this run has no cache scope, so cache volume `deps` is a temp volume"
            )),
            "{logs:?}"
        );
        assert!(logs.iter().any(|l| l == "starts-empty"), "{logs:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_volume_of_the_cache_name_from_elsewhere_is_refused() -> TestResult {
    let scope = unique_scope("squatted");
    let scopes = CacheScopes(vec![scope.clone()]);
    let name = cache::volume_name(&scope, "deps", None);
    let docker = docker().await?;
    // Same name, but labelled as the cache of another scope.
    docker
        .create_volume(bollard::models::VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(HashMap::from([(
                LABEL_CACHE.to_string(),
                "repo-999".to_string(),
            )])),
            ..Default::default()
        })
        .await?;
    let (report, _) = build_with_cache(Some(&scope), None, &["true"]).await?;
    assert_eq!(report.status, Status::Error, "{report:#?}");
    let error = report.pipelines[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "cache volume `deps` (Docker volume {name}): a Docker volume of this name exists \
             but is not the cache of scope `{scope}` (its io.slipway.cache label is `repo-999`)"
        )),
        "{error}"
    );
    docker
        .remove_volume(&name, Some(RemoveVolumeOptionsBuilder::new().build()))
        .await?;
    drop(scopes);
    Ok(())
}
