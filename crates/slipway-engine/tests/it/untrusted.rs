//! Issue 13's attacks on what an untrusted build (a pull request) can reach through native
//! steps: host files through symbolic links the commit planted, and images other builds
//! run. Each failed before the fix.

use std::process::Command;

use serde_json::json;
use slipway_engine::{BuildReport, Status};

use crate::docker_plugin::{Error, cloned, docker_step, repo_with, run_cmd, unique, with_git};
use crate::support::*;

/// A file outside every workspace whose content must never show up anywhere.
struct HostFile {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    marker: String,
}

impl HostFile {
    fn new(content_before_marker: &str) -> Result<HostFile, Error> {
        let dir = tempfile::tempdir()?;
        let marker = unique("HOSTMARKER");
        let path = dir.path().join("host-secret.txt");
        std::fs::write(&path, format!("{content_before_marker}{marker}\n"))?;
        Ok(HostFile {
            _dir: dir,
            path,
            marker,
        })
    }
}

/// Everything a build said: log lines, errors, the whole report.
fn everything(report: &BuildReport, events: &Collector) -> String {
    format!("{:?}\n{report:?}", events.events())
}

/// Commits `links` (path -> target) as symbolic links, with `files`.
fn repo_with_links(
    dir: &std::path::Path,
    files: &[(&str, &str)],
    links: &[(&str, &str)],
) -> Result<String, Error> {
    for (path, target) in links {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(target, path)?;
    }
    repo_with(dir, files)
}

#[tokio::test]
async fn untrusted_native_reads_refuse_links_out_of_the_workspace() -> TestResult {
    // Each file is what the step would read on the host: a tag list, ignore rules, a
    // Dockerfile whose RUN would print the marker.
    let tags = HostFile::new("")?;
    let ignore = HostFile::new("")?;
    let dockerfile = HostFile::new("FROM slipway-test/busybox:latest\nRUN echo ")?;
    let repo = tempfile::tempdir()?;
    let good = "FROM slipway-test/busybox:latest\nRUN echo built\n";
    // Enough `..` to climb from any work directory to `/`, then down to the host file.
    let climb = format!("{}{}", "../".repeat(32), dockerfile.path.display());
    let commit = repo_with_links(
        repo.path(),
        &[("t/Dockerfile", good), ("i/Dockerfile", good)],
        &[
            (".tags", &tags.path.display().to_string()),
            ("i/.dockerignore", &ignore.path.display().to_string()),
            ("d/Dockerfile", &climb),
        ],
    )?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    assert!(!options.trusted, "a pull request's build");
    with_git(&mut options, repo.path(), &commit);
    let mut steps = vec![
        // No `tags`: the default is the workspace's `.tags` file.
        docker_step(
            "tags",
            json!({"repo": "slipway-test/links", "context": "t", "dockerfile": "t/Dockerfile", "dry_run": true}),
        ),
        docker_step(
            "ignore",
            json!({"repo": "slipway-test/links", "tags": "x", "context": "i", "dockerfile": "i/Dockerfile", "dry_run": true}),
        ),
        docker_step(
            "dockerfile",
            json!({"repo": "slipway-test/links", "tags": "x", "context": "d", "dockerfile": "d/Dockerfile", "dry_run": true}),
        ),
    ];
    for step in &mut steps {
        step.run_on.failure = true;
    }
    let (report, events) = run(&plan(vec![cloned(pipeline("links", steps))]), options).await?;

    for (step, file) in [
        ("tags", ".tags"),
        ("ignore", "i/.dockerignore"),
        ("dockerfile", "d/Dockerfile"),
    ] {
        let found = step_report(&report, "links", step);
        let error = found.error.clone().unwrap_or_default();
        assert_eq!(
            found.status,
            Status::Failure,
            "{step}: {report:#?}\n{:#?}",
            events.logs(step)
        );
        assert!(
            error.contains(&format!("`{file}`")) && error.contains("outside the workspace"),
            "{step}: {error}"
        );
    }
    let said = everything(&report, &events);
    for host in [&tags, &ignore, &dockerfile] {
        assert!(
            !said.contains(&host.marker),
            "{} leaked: {said}",
            host.path.display()
        );
    }
    assert!(!said.contains("built"), "nothing was built: {said}");
    assert_clean(&report.build_id).await?;
    assert_work_root_empty(work.path())
}

#[tokio::test]
async fn build_context_links_are_sent_as_links() -> TestResult {
    let host = HostFile::new("")?;
    let repo = tempfile::tempdir()?;
    let commit = repo_with_links(
        repo.path(),
        &[
            (
                "Dockerfile",
                "FROM slipway-test/busybox:latest\nCOPY . /ctx\n\
                 RUN echo inside=$(readlink /ctx/inside) dir=$(readlink /ctx/dirlink) \
                 outside=$(readlink /ctx/outside) && cat /ctx/inside && cat /ctx/dirlink/file.txt \
                 && (cat /ctx/outside 2>/dev/null || echo outside-not-followed)\n",
            ),
            ("sub/file.txt", "inside-content\n"),
        ],
        &[
            ("inside", "sub/file.txt"),
            ("dirlink", "sub"),
            ("outside", &host.path.display().to_string()),
        ],
    )?;
    let image = format!("slipway-test/{}", unique("links"));
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    with_git(&mut options, repo.path(), &commit);
    // Trusted, so the image keeps its name and can be looked at afterwards.
    options.trusted = true;
    let step = docker_step(
        "image",
        json!({"repo": image, "tags": "t", "dry_run": true}),
    );
    let (report, events) = run(&plan(vec![cloned(pipeline("ctx", vec![step]))]), options).await?;
    let logs = events.logs("image");
    let reference = format!("{image}:t");
    let result = (|| -> TestResult {
        assert_eq!(report.status, Status::Success, "{report:#?}\n{logs:#?}");
        let expected = format!(
            "inside=sub/file.txt dir=sub outside={}",
            host.path.display()
        );
        for line in [expected.as_str(), "inside-content", "outside-not-followed"] {
            assert!(logs.iter().any(|l| l == line), "{line}: {logs:#?}");
        }
        // In the image the links are links, as `docker build` makes them.
        let links = run_cmd(Command::new("docker").args([
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            &reference,
            "-c",
            "for l in inside dirlink outside; do test -L /ctx/$l && echo link:$l; done",
        ]))?;
        assert_eq!(links, "link:inside\nlink:dirlink\nlink:outside");
        let saved = Command::new("docker")
            .args(["save", &reference])
            .output()?
            .stdout;
        assert!(saved.len() > 1000, "docker save gave {} bytes", saved.len());
        let marker = host.marker.as_bytes();
        assert!(
            !saved.windows(marker.len()).any(|w| w == marker),
            "the host file is in the image"
        );
        assert!(!format!("{:?}", events.events()).contains(&host.marker));
        Ok(())
    })();
    let _ = Command::new("docker").args(["rmi", &reference]).output();
    result?;
    assert_clean(&report.build_id).await
}

fn image_id(reference: &str) -> Result<String, Error> {
    run_cmd(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", reference]))
}

/// Images whose name is in the reserved namespace, for one build (all builds with `None`).
fn untrusted_images(build_id: Option<&str>) -> Result<Vec<String>, Error> {
    let filter = match build_id {
        Some(id) => format!("reference=slipway-untrusted/{id}"),
        None => "reference=slipway-untrusted/*".to_string(),
    };
    let out = run_cmd(Command::new("docker").args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        &filter,
    ]))?;
    Ok(out.lines().map(str::to_string).collect())
}

#[tokio::test]
async fn untrusted_build_cannot_replace_an_image_a_trusted_build_runs() -> TestResult {
    // X lives on a registry nobody listens on, so a push would fail.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = closed.local_addr()?.port();
    drop(closed);
    let victim = format!("127.0.0.1:{port}/slipway-test/{}", unique("victim"));
    let reference = format!("{victim}:latest");
    run_cmd(Command::new("docker").args(["tag", &image(), &reference]))?;
    let original = image_id(&reference)?;

    let result = async {
        let repo = tempfile::tempdir()?;
        let commit = repo_with(
            repo.path(),
            &[(
                "Dockerfile",
                "FROM slipway-test/busybox:latest\nRUN echo pwned > /pwned\n",
            )],
        )?;
        let work = tempfile::tempdir()?;
        let mut untrusted = options(work.path());
        assert!(!untrusted.trusted);
        with_git(&mut untrusted, repo.path(), &commit);
        let dry = docker_step(
            "dry",
            json!({"repo": victim, "tags": "latest", "dry_run": true}),
        );
        let push = after(
            docker_step("push", json!({"repo": victim, "tags": ["latest"]})),
            &["dry"],
        );
        let (report, events) = run(
            &plan(vec![cloned(pipeline("pr", vec![dry, push]))]),
            untrusted,
        )
        .await?;
        assert_eq!(
            report.status,
            Status::Success,
            "{report:#?}\n{:#?}",
            events.all_logs()
        );
        let push_logs = events.logs("push");
        assert!(
            push_logs
                .iter()
                .any(|l| l.starts_with("not pushing: this build is untrusted")
                    && l.contains("mark the repository trusted")),
            "{push_logs:#?}"
        );
        assert!(
            !push_logs.iter().any(|l| l.starts_with("pushing ")),
            "{push_logs:#?}"
        );
        assert!(
            events
                .logs("dry")
                .iter()
                .any(|l| l.contains("tagged slipway-untrusted/")),
            "{:#?}",
            events.logs("dry")
        );
        assert_eq!(image_id(&reference)?, original, "{reference} was replaced");
        assert_eq!(
            untrusted_images(Some(&report.build_id))?,
            Vec::<String>::new()
        );
        assert_clean(&report.build_id).await?;

        // The next trusted build that runs X runs the original.
        let work = tempfile::tempdir()?;
        let mut options = options(work.path());
        options.trusted = true;
        let mut use_it = step(
            "use",
            &["if test -e /pwned; then echo ran-the-pull-request; else echo ran-the-original; fi"],
        );
        use_it.image = reference.clone();
        let (report, events) = run(&plan(vec![pipeline("main", vec![use_it])]), options).await?;
        assert_eq!(report.status, Status::Success, "{report:#?}");
        let logs = events.logs("use");
        assert!(
            logs.iter().any(|l| l == "ran-the-original")
                && !logs.iter().any(|l| l == "ran-the-pull-request"),
            "{logs:#?}"
        );
        assert_clean(&report.build_id).await?;
        Ok::<_, Error>(())
    }
    .await;
    let _ = Command::new("docker").args(["rmi", &reference]).output();
    result?;
    Ok(())
}

#[tokio::test]
async fn untrusted_images_are_removed_when_the_stage_fails_or_is_cancelled() -> TestResult {
    let repo = tempfile::tempdir()?;
    let commit = repo_with(
        repo.path(),
        &[(
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nRUN echo layer > /layer\n",
        )],
    )?;
    // Fails after the image was built and tagged; then one cancelled while a later step runs.
    for cancel in [false, true] {
        let work = tempfile::tempdir()?;
        let mut options = options(work.path());
        with_git(&mut options, repo.path(), &commit);
        let token = options.cancel.clone();
        let image = docker_step("image", json!({"dry_run": true}));
        let then = after(
            step("then", &[if cancel { "sleep 30" } else { "exit 3" }]),
            &["image"],
        );
        let name = unique("end");
        let p = cloned(pipeline(&name, vec![image, then]));
        let plan = plan(vec![p]);
        let run = run(&plan, options);
        let (report, events) = if cancel {
            let canceller = async {
                // Cancel once the image exists (the next step then runs for 30 s).
                let label = format!("label={}={name}", slipway_engine::cleanup::LABEL_PIPELINE);
                for _ in 0..600 {
                    let built = run_cmd(Command::new("docker").args([
                        "images",
                        "-q",
                        "--filter",
                        &label,
                        "--filter",
                        "reference=slipway-untrusted/*",
                    ]))
                    .unwrap_or_default();
                    if !built.is_empty() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                token.cancel();
            };
            let (result, ()) = tokio::join!(run, canceller);
            result?
        } else {
            run.await?
        };
        let expected = if cancel {
            Status::Killed
        } else {
            Status::Failure
        };
        assert_eq!(
            report.status,
            expected,
            "{report:#?}\n{:#?}",
            events.all_logs()
        );
        assert_eq!(
            step_report(&report, &name, "image").status,
            Status::Success,
            "{:#?}",
            events.logs("image")
        );
        assert_eq!(
            untrusted_images(Some(&report.build_id))?,
            Vec::<String>::new()
        );
        assert_clean(&report.build_id).await?;
    }
    Ok(())
}

#[tokio::test]
async fn no_build_may_name_the_untrusted_namespace() -> TestResult {
    let repo = tempfile::tempdir()?;
    let commit = repo_with(
        repo.path(),
        &[("Dockerfile", "FROM slipway-test/busybox:latest\n")],
    )?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    with_git(&mut options, repo.path(), &commit);
    options.trusted = true;
    let mut run_it = step("run", &["true"]);
    run_it.image = "docker.io/slipway-untrusted/0123456789abcdef:0-0".into();
    let mut steps = vec![
        run_it,
        docker_step(
            "repo",
            json!({"repo": "slipway-untrusted/0123456789abcdef", "dry_run": true}),
        ),
        docker_step(
            "cache",
            json!({"repo": "team/app", "cache_from": ["slipway-untrusted/x:1"], "dry_run": true}),
        ),
    ];
    for step in &mut steps {
        step.run_on.failure = true;
    }
    let (report, events) = run(&plan(vec![cloned(pipeline("names", steps))]), options).await?;
    for (step, what) in [
        ("run", "uses image"),
        ("repo", "setting `repo`"),
        ("cache", "setting `cache_from`"),
    ] {
        let found = step_report(&report, "names", step);
        let error = found.error.clone().unwrap_or_default();
        assert!(
            matches!(found.status, Status::Error | Status::Failure)
                && error.contains(what)
                && error.contains("reserved for the images of untrusted builds"),
            "{step}: {error}\n{:#?}",
            events.logs(step)
        );
    }
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn untrusted_pull_always_does_not_replace_a_present_image() -> TestResult {
    // A local-only name, as a trusted build's `dry_run` leaves it: on Docker Hub the name
    // could be anyone's, so a pull would replace it with their image.
    let reference = format!("slipway-test/{}:latest", unique("local-only"));
    run_cmd(Command::new("docker").args(["tag", &image(), &reference]))?;
    let original = image_id(&reference)?;
    let result = async {
        let work = tempfile::tempdir()?;
        let mut use_it = step("use", &["echo ran"]);
        use_it.image = reference.clone();
        use_it.pull = slipway_spec::plan::PullPolicy::Always;
        let (report, events) = run(
            &plan(vec![pipeline("pr", vec![use_it])]),
            options(work.path()),
        )
        .await?;
        let logs = events.logs("use");
        assert_eq!(report.status, Status::Success, "{report:#?}\n{logs:#?}");
        assert!(
            logs.iter()
                .any(|l| l.contains("untrusted build: not re-pulling")),
            "{logs:#?}"
        );
        assert!(logs.iter().any(|l| l == "ran"), "{logs:#?}");
        assert_eq!(image_id(&reference)?, original);
        assert_clean(&report.build_id).await?;
        Ok::<_, Error>(())
    }
    .await;
    let _ = Command::new("docker").args(["rmi", &reference]).output();
    result
}

/// Docker keeps the proxy build arguments out of the layer cache's key: a pull request that
/// set one could build a layer (`RUN` fetching through its proxy) that a trusted build of
/// the same Dockerfile then takes from the cache as its own. So an untrusted build's
/// `plugins/docker` passes none of them, and says so; a trusted build's still does.
#[tokio::test]
async fn untrusted_builds_pass_no_proxy_build_arguments() -> TestResult {
    let repo = tempfile::tempdir()?;
    let commit = repo_with(
        repo.path(),
        &[(
            "Dockerfile",
            "FROM slipway-test/busybox:latest\n\
             RUN echo \"proxy=[${HTTP_PROXY}${http_proxy}${HTTPS_PROXY}${ALL_PROXY}]\"\n",
        )],
    )?;
    let settings = json!({
        "repo": "slipway-test/proxied",
        "dry_run": true,
        "no_cache": true,
        "build_args": {"HTTP_PROXY": "http://evil.invalid:3128",
                       "HTTPS_PROXY": "http://evil.invalid:3128",
                       "ALL_PROXY": "socks5://evil.invalid:1080"},
    });
    let mut step = docker_step("image", settings);
    step.environment.insert(
        "http_proxy".to_owned(),
        "http://evil.invalid:3128".to_owned(),
    );

    let work = tempfile::tempdir()?;
    let mut untrusted = options(work.path());
    with_git(&mut untrusted, repo.path(), &commit);
    let (report, events) = run(
        &plan(vec![cloned(pipeline("pr", vec![step.clone()]))]),
        untrusted,
    )
    .await?;
    assert_eq!(report.status, Status::Success, "{:#?}", events.all_logs());
    let logs = events.logs("image");
    assert!(logs.iter().any(|l| l == "proxy=[]"), "{logs:#?}");
    assert!(!logs.iter().any(|l| l.contains("proxy=[http")), "{logs:#?}");
    assert!(
        logs.iter()
            .any(|l| l.contains("not passed in an untrusted build")
                && l.contains("HTTP_PROXY")
                && l.contains("http_proxy")),
        "{logs:#?}"
    );
    assert_clean(&report.build_id).await?;

    // A trusted build passes them (Docker's own behaviour).
    let work = tempfile::tempdir()?;
    let mut trusted = options(work.path());
    trusted.trusted = true;
    with_git(&mut trusted, repo.path(), &commit);
    let (report, events) = run(&plan(vec![cloned(pipeline("main", vec![step]))]), trusted).await?;
    assert_eq!(report.status, Status::Success, "{:#?}", events.all_logs());
    let logs = events.logs("image");
    assert!(
        logs.iter()
            .any(|l| l.starts_with("proxy=[http://evil.invalid:3128")),
        "{logs:#?}"
    );
    Ok(())
}
