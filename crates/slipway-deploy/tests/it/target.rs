//! `DockerTarget` against the real engine: a container made from every part of a
//! `ContainerSpec`, its health and IP, stop with grace, start again, remove; labelled
//! networks and volumes; images.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use slipway_deploy::target::{
    ContainerSpec, EngineHealth, Healthcheck, MountKind, MountSpec, NetworkAttachment, Owner,
    Resources, RestartPolicy, RunState, Selector, Target, TargetError,
};

use crate::docker_env::{Env, docker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_as_its_spec_says_and_reports_health_and_address() {
    let Some(env) = Env::new("target").await else {
        return;
    };
    let t = &env.target;
    let owner = Owner {
        env: env.env.clone(),
        stack: env.stack.clone(),
        service: "worker".into(),
        revision: "4".into(),
        replica: None,
    };
    let made = t
        .ensure_network(&env.network, &owner)
        .await
        .expect("network");
    assert!(made.created && made.managed);
    let again = t
        .ensure_network(&env.network, &owner)
        .await
        .expect("network again");
    assert!(!again.created && again.managed);
    let other = Owner {
        stack: "other".into(),
        ..owner.clone()
    };
    assert!(matches!(
        t.ensure_network(&env.network, &other).await,
        Err(TargetError::Taken { .. })
    ));
    let volume = format!("{}-data", env.env);
    assert!(
        t.ensure_volume(&volume, &owner)
            .await
            .expect("volume")
            .created
    );

    let spec = ContainerSpec {
        name: Some(format!("{}-worker", env.env)),
        image: env.image.clone(),
        entrypoint: Some(vec!["sh".into(), "-c".into()]),
        command: Some(vec![
            "echo ok > /data/ready; trap 'exit 0' TERM; sleep 300 & wait".into(),
        ]),
        env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
        labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
        networks: vec![NetworkAttachment {
            name: env.network.clone(),
            aliases: vec!["worker".into()],
        }],
        mounts: vec![
            MountSpec {
                kind: MountKind::Volume,
                source: volume.clone(),
                target: "/data".into(),
                read_only: false,
            },
            MountSpec {
                kind: MountKind::Tmpfs,
                source: String::new(),
                target: "/scratch".into(),
                read_only: false,
            },
        ],
        healthcheck: Some(Healthcheck {
            test: vec![
                "CMD".into(),
                "test".into(),
                "-f".into(),
                "/data/ready".into(),
            ],
            interval: Some(Duration::from_millis(300)),
            timeout: Some(Duration::from_secs(1)),
            retries: Some(2),
            start_period: None,
        }),
        restart: RestartPolicy::OnFailure {
            max_retries: Some(2),
        },
        stop_signal: Some("SIGTERM".into()),
        stop_grace: Some(Duration::from_secs(3)),
        user: Some("0:0".into()),
        working_dir: Some("/data".into()),
        resources: Resources {
            memory_bytes: Some(64 * 1024 * 1024),
            nano_cpus: Some(500_000_000),
            pids_limit: Some(64),
            ..Resources::default()
        },
        ..ContainerSpec::default()
    };
    let info = t
        .run_container(&owner.replica(1), &spec)
        .await
        .expect("run");
    assert_eq!(info.state, RunState::Running);
    assert!(info.ip_on(&env.network).is_some(), "{info:?}");
    assert_eq!(info.owner().and_then(|o| o.replica), Some(1));
    let inspected = docker(&[
        "inspect",
        "-f",
        "{{.Config.WorkingDir}} {{.Config.User}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} \
         {{.HostConfig.RestartPolicy.Name}} {{.Config.StopTimeout}} {{index .Config.Labels \"team\"}} \
         {{index .Config.Labels \"io.slipway.service\"}} {{range .Config.Env}}{{.}},{{end}}",
        &info.id,
    ])
    .expect("inspect");
    assert!(
        inspected.starts_with("/data 0:0 67108864 500000000 on-failure 3 a worker "),
        "{inspected}"
    );
    assert!(inspected.contains("GREETING=hello"), "{inspected}");
    let aliases = docker(&[
        "inspect",
        "-f",
        &format!(
            "{{{{json (index .NetworkSettings.Networks \"{}\").Aliases}}}}",
            env.network
        ),
        &info.id,
    ])
    .expect("aliases");
    assert!(aliases.contains("\"worker\""), "{aliases}");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = t
            .inspect_container(&info.id)
            .await
            .expect("inspect")
            .expect("exists");
        if now.health == EngineHealth::Healthy {
            break;
        }
        assert!(Instant::now() < deadline, "never healthy: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let listed = t
        .list_containers(&Selector::service(&env.env, &env.stack, "worker").revision("4"))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert!(
        t.list_containers(&Selector::service(&env.env, &env.stack, "worker").revision("5"))
            .await
            .expect("list")
            .is_empty()
    );

    let stopping = Instant::now();
    t.stop_container(&info.id, Duration::from_secs(3))
        .await
        .expect("stop");
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "TERM was not sent first"
    );
    let stopped = t
        .inspect_container(&info.id)
        .await
        .expect("inspect")
        .expect("exists");
    assert_eq!(stopped.state, RunState::Exited);
    t.start_container(&info.id).await.expect("start again");
    let running = t
        .inspect_container(&info.id)
        .await
        .expect("inspect")
        .expect("exists");
    assert_eq!(running.state, RunState::Running);

    t.remove_container(&info.id).await.expect("remove");
    assert!(
        t.inspect_container(&info.id)
            .await
            .expect("inspect")
            .is_none()
    );
    t.remove_container(&info.id)
        .await
        .expect("removing twice is fine");
    t.remove_volume(&volume).await.expect("remove volume");
    t.remove_network(&env.network)
        .await
        .expect("remove network");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlabelled_networks_are_used_but_never_removed_and_images_resolve() {
    let Some(env) = Env::new("foreign").await else {
        return;
    };
    let t = &env.target;
    // `env.network` is made by hand here, without labels.
    docker(&["network", "create", &env.network]).expect("network");
    let owner = Owner {
        env: env.env.clone(),
        stack: env.stack.clone(),
        service: "-".into(),
        revision: "-".into(),
        replica: None,
    };
    let used = t
        .ensure_network(&env.network, &owner)
        .await
        .expect("ensure");
    assert!(!used.created && !used.managed);
    assert!(matches!(
        t.remove_network(&env.network).await,
        Err(TargetError::NotOurs { .. })
    ));
    assert!(docker(&["network", "inspect", &env.network]).is_ok());

    // A local build has no repo digest (else it is its repository's); a missing image is NotFound; a registry that is
    // not there fails the pull with the image named.
    let repo_digests = docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .RepoDigests}}",
        &env.image,
    ])
    .expect("inspect image");
    let resolved = t.resolve_digest(&env.image).await.expect("resolve");
    match &resolved {
        None => assert!(!repo_digests.contains("@sha256:"), "{repo_digests}"),
        Some(d) => assert!(
            repo_digests.contains(d.as_str()),
            "{d} not in {repo_digests}"
        ),
    }
    assert!(matches!(
        t.resolve_digest("slipway-test/never-built:nope").await,
        Err(TargetError::NotFound { .. })
    ));
    let pulled = t.pull_image("127.0.0.1:9/slipway/none:1", None).await;
    assert!(
        matches!(&pulled, Err(TargetError::Pull { image, .. }) if image.contains("none")),
        "{pulled:?}"
    );
}
