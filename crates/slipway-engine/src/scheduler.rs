//! When things run: pipelines in the order of their `depends_on`, and inside a pipeline the
//! clone, the services, then the steps as their `depends_on` allow, in parallel wherever
//! possible, script steps pre-started while their dependencies still run. Also where time
//! limits and cancellation turn into kills, and where every pipeline's resources are torn
//! down on every path.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use slipway_spec::plan::{PipelinePlan, PipelineType, Plan, StepPlan};
use tokio::sync::oneshot;

use crate::abort::{Abort, human};
use crate::backend::docker::{DockerBackend, KnownImages};
use crate::backend::host::HostBackend;
use crate::backend::{Backend, Role, StepSpec};
use crate::dag::{self, Dag};
use crate::error::EngineError;
use crate::event::{Event, EventSink, PipelineReport, Status, StepReport};
use crate::log::StepLog;
use crate::mask::Masker;
use crate::options::{RunOptions, WorkspaceSource};
use crate::workspace::{self, CloneSpec};

/// How long a killed process may take to be reaped and have its last output read.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Name of the pseudo-step that reports the clone.
const CLONE_STEP: &str = "clone";

/// At most this many steps of a pipeline are pre-started and waiting to be released.
const MAX_PRESTARTED: usize = 2;

/// One build in progress: what every pipeline of it shares.
pub(crate) struct Build<'a> {
    pub plan: &'a Plan,
    pub options: &'a RunOptions,
    pub sink: Arc<dyn EventSink>,
    pub masker: Arc<Masker>,
    pub docker: Option<Docker>,
    pub build_id: &'a str,
    pub build_dir: &'a Path,
    pub images: KnownImages,
    /// The images this build's steps pushed (from the sink, see `crate::Recording`), for
    /// deploy steps.
    pub pushed: Arc<std::sync::Mutex<Vec<crate::deployer::PushedImage>>>,
}

/// A step or service that keeps running in the background until the pipeline ends.
struct Background<P> {
    slot: Slot,
    name: String,
    process: P,
    started: Instant,
    log: StepLog,
}

#[derive(Clone, Copy)]
enum Slot {
    Service(usize),
    Step(usize),
}

enum StepOutcome<P> {
    Finished(StepReport),
    /// A detached step that started: done as far as its dependents are concerned.
    Detached(Background<P>),
    /// A pre-started step that did not run after all: discarded unseen.
    Discarded,
}

/// How a step's task begins.
enum Launch {
    /// The step is due: start it. `failed`: the pipeline has failed so far.
    Now { failed: bool },
    /// Pre-start the step, then wait at its gate: a value (`failed`, as above) releases it,
    /// the sender being dropped discards it.
    Prestart {
        gate: oneshot::Receiver<bool>,
        failed: bool,
    },
}

/// Whether `step` runs, as far as its `status` condition says, given the pipeline so far.
fn wanted(step: &StepPlan, failed: bool) -> bool {
    if failed {
        step.run_on.failure
    } else {
        step.run_on.success
    }
}

/// How a pipeline is going so far.
#[derive(Default)]
struct PipelineState {
    /// A step (or the clone, or a service start) failed: only `run_on.failure` steps run now.
    failed: bool,
    /// Something was killed, or skipped because the pipeline was aborted.
    killed: bool,
}

impl PipelineState {
    /// `aborted`: the pipeline was cancelled or ran out of time while the step ran.
    fn record(&mut self, report: &StepReport, failure_ignore: bool, aborted: bool) {
        match report.status {
            // Killed by a cancellation or the pipeline's time limit: the pipeline is killed.
            Status::Killed if aborted => {
                self.killed = true;
                self.failed = true;
            }
            // Killed by its own time limit: a failure like any other, so `failure: ignore`
            // applies and the rest behaves as after a failure (only `run_on.failure` runs).
            Status::Killed | Status::Failure | Status::Error if !failure_ignore => {
                self.failed = true
            }
            _ => {}
        }
    }
}

impl Build<'_> {
    /// Runs every pipeline; returns their reports in plan order.
    pub(crate) async fn run(&self, abort: &Abort) -> Vec<PipelineReport> {
        let pipelines = &self.plan.pipelines;
        let mut reports: Vec<Option<PipelineReport>> = vec![None; pipelines.len()];
        let mut dag = match Dag::new(
            "pipeline",
            pipelines
                .iter()
                .map(|p| (p.name.as_str(), p.depends_on.as_slice())),
        ) {
            Ok(dag) => dag,
            // `run` validated the plan already; this keeps the engine total anyway.
            Err(e) => {
                return pipelines
                    .iter()
                    .map(|p| self.not_run(p, Status::Error, Some(e.clone())))
                    .collect();
            }
        };
        let mut running = FuturesUnordered::new();
        loop {
            // Deciding to skip a pipeline finishes it at once, which may make others ready.
            let mut settled = true;
            while settled {
                settled = false;
                for i in dag.take_ready() {
                    let pipeline = &pipelines[i];
                    let deps_failed = dag
                        .deps(i)
                        .iter()
                        .any(|&d| reports[d].as_ref().is_some_and(|r| r.status.is_failed()));
                    let wanted = if deps_failed {
                        pipeline.run_on.failure
                    } else {
                        pipeline.run_on.success
                    };
                    if abort.is_aborted() || pipeline.skipped || !wanted {
                        let report = self.not_run(pipeline, Status::Skipped, None);
                        self.emit(Event::PipelineFinished {
                            pipeline: pipeline.name.clone(),
                            status: report.status,
                        });
                        reports[i] = Some(report);
                        dag.finish(i);
                        settled = true;
                    } else {
                        let abort = abort.child();
                        running.push(async move { (i, self.run_pipeline(i, &abort).await) });
                    }
                }
            }
            match running.next().await {
                Some((i, report)) => {
                    reports[i] = Some(report);
                    dag.finish(i);
                }
                None => break,
            }
        }
        reports.into_iter().flatten().collect()
    }

    fn step_log(&self, pipeline: &PipelinePlan, step: &str) -> StepLog {
        StepLog::new(
            &pipeline.name,
            step,
            Arc::clone(&self.sink),
            Arc::clone(&self.masker),
        )
    }

    fn emit(&self, event: Event) {
        self.sink.event(event);
    }

    /// The report of a pipeline none of whose steps ran (emitting their `StepFinished`).
    fn not_run(
        &self,
        pipeline: &PipelinePlan,
        status: Status,
        error: Option<String>,
    ) -> PipelineReport {
        let steps = pipeline
            .services
            .iter()
            .chain(&pipeline.steps)
            .map(|step| self.skip(pipeline, &step.name))
            .collect();
        PipelineReport {
            name: pipeline.name.clone(),
            status,
            steps,
            error: error.map(|e| self.masker.mask_text(&e)),
        }
    }

    fn skip(&self, pipeline: &PipelinePlan, step: &str) -> StepReport {
        self.emit(Event::StepFinished {
            pipeline: pipeline.name.clone(),
            step: step.to_string(),
            status: Status::Skipped,
            exit_code: None,
            duration: Duration::ZERO,
        });
        StepReport::skipped(step)
    }

    async fn run_pipeline(&self, index: usize, abort: &Abort) -> PipelineReport {
        let pipeline = &self.plan.pipelines[index];
        self.emit(Event::PipelineStarted {
            pipeline: pipeline.name.clone(),
        });
        let report = self.run_pipeline_inner(index, pipeline, abort).await;
        self.emit(Event::PipelineFinished {
            pipeline: pipeline.name.clone(),
            status: report.status,
        });
        report
    }

    async fn run_pipeline_inner(
        &self,
        index: usize,
        pipeline: &PipelinePlan,
        abort: &Abort,
    ) -> PipelineReport {
        if let PipelineType::Other(kind) = &pipeline.kind {
            let error = EngineError::UnsupportedType(kind.clone());
            return self.not_run(pipeline, Status::Error, Some(error.to_string()));
        }
        let work_root = &self.options.work_root;
        let workspace =
            match workspace::create(work_root, self.build_dir, index, &pipeline.name).await {
                Ok(dir) => dir,
                Err(e) => return self.not_run(pipeline, Status::Error, Some(e.to_string())),
            };
        let (report, reusable) = match (&pipeline.kind, &self.docker) {
            (PipelineType::Docker, Some(docker)) => {
                let backend = DockerBackend::new(
                    docker.clone(),
                    self.build_id,
                    index,
                    pipeline,
                    &workspace,
                    self.options.trusted,
                    self.options.native_plugins,
                    &self.images,
                    self.options.cache_scope.as_deref(),
                );
                self.run_with(&backend, pipeline, &workspace, abort).await
            }
            (PipelineType::Docker, None) => (
                self.not_run(
                    pipeline,
                    Status::Error,
                    Some("no connection to a Docker engine".to_string()),
                ),
                true,
            ),
            _ => {
                let backend = HostBackend::new(&workspace);
                self.run_with(&backend, pipeline, &workspace, abort).await
            }
        };
        if reusable {
            workspace::remove(work_root, &workspace).await;
        } else {
            workspace::remove_for_good(&workspace).await;
        }
        report
    }

    /// Runs a pipeline on `backend` within its time limit, then tears the backend down:
    /// the body always runs to completion (an abort only makes it wind down), so teardown
    /// is reached on every path. With the report, whether the workspace may be reused (see
    /// [`Backend::teardown`]).
    async fn run_with<B: Backend>(
        &self,
        backend: &B,
        pipeline: &PipelinePlan,
        workspace: &Path,
        abort: &Abort,
    ) -> (PipelineReport, bool) {
        let limit = pipeline.timeout_secs.map(Duration::from_secs);
        let body = self.pipeline_body(backend, pipeline, workspace, abort);
        let report = abort.with_timeout("pipeline", limit, body).await;
        let reusable = backend.teardown().await;
        (report, reusable)
    }

    async fn pipeline_body<B: Backend>(
        &self,
        backend: &B,
        pipeline: &PipelinePlan,
        workspace: &Path,
        abort: &Abort,
    ) -> PipelineReport {
        let dag = match dag::steps(pipeline) {
            Ok(dag) => dag,
            // `run` validated the plan already; this keeps the engine total anyway.
            Err(e) => return self.not_run(pipeline, Status::Error, Some(e)),
        };
        if let Err(e) = backend.setup().await {
            let status = if abort.is_aborted() {
                Status::Killed
            } else {
                Status::Error
            };
            return self.not_run(pipeline, status, Some(e.to_string()));
        }
        let mut state = PipelineState::default();

        let mut clone_report = None;
        if let WorkspaceSource::Git {
            repo,
            commit,
            depth,
        } = &self.options.workspace
            && !pipeline.clone.disable
        {
            let spec = CloneSpec {
                repo,
                commit,
                depth: depth.or(pipeline.clone.depth),
            };
            let report = self.clone_step(pipeline, &spec, workspace, abort).await;
            state.record(&report, false, abort.is_aborted());
            clone_report = Some(report);
        }

        let mut background = Vec::new();
        let mut service_reports: Vec<Option<StepReport>> = vec![None; pipeline.services.len()];
        for (index, service) in pipeline.services.iter().enumerate() {
            if service.skipped || abort.is_aborted() {
                state.killed |= abort.is_aborted() && !service.skipped;
                service_reports[index] = Some(self.skip(pipeline, &service.name));
                continue;
            }
            let spec = StepSpec::prepare(
                service,
                Role::Service,
                index,
                &self.options.secrets,
                state.failed,
            );
            let (log, started) = self.begin(pipeline, &spec);
            match backend.start(&spec, log.clone(), abort.token()).await {
                Ok(process) => background.push(Background {
                    slot: Slot::Service(index),
                    name: service.name.clone(),
                    process,
                    started,
                    log,
                }),
                Err(e) => {
                    let report = self.start_failed(&log, started, e, abort);
                    state.record(&report, false, abort.is_aborted());
                    service_reports[index] = Some(report);
                }
            }
        }

        let mut step_reports: Vec<Option<StepReport>> = vec![None; pipeline.steps.len()];
        self.run_steps(
            backend,
            pipeline,
            dag,
            abort,
            &mut state,
            &mut step_reports,
            &mut background,
        )
        .await;

        // Services and detached steps have done their job once the steps are through.
        let stopped = futures_util::future::join_all(
            background
                .into_iter()
                .map(|bg| self.stop_background(backend, bg)),
        )
        .await;
        for (slot, report) in stopped {
            match slot {
                Slot::Service(i) => service_reports[i] = Some(report),
                Slot::Step(i) => step_reports[i] = Some(report),
            }
        }

        let status = if state.killed {
            Status::Killed
        } else if state.failed {
            Status::Failure
        } else {
            Status::Success
        };
        let steps = clone_report
            .into_iter()
            .chain(service_reports.into_iter().flatten())
            .chain(step_reports.into_iter().flatten())
            .collect();
        PipelineReport {
            name: pipeline.name.clone(),
            status,
            steps,
            error: None,
        }
    }

    /// Runs the steps as their dependencies allow. Steps with `commands` are also
    /// pre-started (see [`Backend::prepare`]) once all their dependencies have started, at
    /// most [`MAX_PRESTARTED`] at a time, and released when they are due; a pre-started step
    /// that is not going to run is discarded without a trace in the events.
    #[allow(clippy::too_many_arguments)]
    async fn run_steps<B: Backend>(
        &self,
        backend: &B,
        pipeline: &PipelinePlan,
        mut dag: Dag,
        abort: &Abort,
        state: &mut PipelineState,
        reports: &mut [Option<StepReport>],
        background: &mut Vec<Background<B::Process>>,
    ) {
        let mut running = FuturesUnordered::new();
        // Gates of pre-started steps not released yet, and which steps were pre-started.
        let mut gates: Vec<Option<oneshot::Sender<bool>>> =
            pipeline.steps.iter().map(|_| None).collect();
        let mut prestarted = vec![false; pipeline.steps.len()];
        loop {
            let mut settled = true;
            while settled {
                settled = false;
                for index in dag.take_ready() {
                    let step = &pipeline.steps[index];
                    // Dropping a gate discards its pre-started step.
                    let gate = gates[index].take();
                    // `status` conditions are decided now, against the pipeline so far.
                    if abort.is_aborted() || step.skipped || !wanted(step, state.failed) {
                        drop(gate);
                        state.killed |= abort.is_aborted() && !step.skipped;
                        reports[index] = Some(self.skip(pipeline, &step.name));
                        dag.finish(index);
                        settled = true;
                        continue;
                    }
                    let failed = state.failed;
                    // A pre-started step's task is running already: it only needs its gate
                    // opened (which cannot fail while the task waits at it).
                    if gate.is_none_or(|gate| gate.send(failed).is_err()) {
                        let launch = Launch::Now { failed };
                        running.push(self.step_task(backend, pipeline, index, abort, launch));
                    }
                }
            }
            if !abort.is_aborted() {
                for index in dag.deps_started() {
                    if gates.iter().flatten().count() >= MAX_PRESTARTED {
                        break;
                    }
                    let step = &pipeline.steps[index];
                    if prestarted[index]
                        || step.detach
                        || step.skipped
                        || !wanted(step, state.failed)
                        || !backend.can_prepare(step)
                    {
                        continue;
                    }
                    let (open, gate) = oneshot::channel();
                    gates[index] = Some(open);
                    prestarted[index] = true;
                    let launch = Launch::Prestart {
                        gate,
                        failed: state.failed,
                    };
                    running.push(self.step_task(backend, pipeline, index, abort, launch));
                }
            }
            match running.next().await {
                Some((index, StepOutcome::Finished(report))) => {
                    state.record(
                        &report,
                        pipeline.steps[index].failure_ignore,
                        abort.is_aborted(),
                    );
                    reports[index] = Some(report);
                    dag.finish(index);
                }
                Some((index, StepOutcome::Detached(bg))) => {
                    background.push(bg);
                    dag.finish(index);
                }
                // Its skip was reported when that was decided.
                Some((_, StepOutcome::Discarded)) => {}
                None => break,
            }
        }
    }

    /// Everything a step goes through, from its pre-start (if any) to its end.
    async fn step_task<B: Backend>(
        &self,
        backend: &B,
        pipeline: &PipelinePlan,
        index: usize,
        abort: &Abort,
        launch: Launch,
    ) -> (usize, StepOutcome<B::Process>) {
        let step = &pipeline.steps[index];
        let secrets = &self.options.secrets;
        let outcome = match launch {
            Launch::Now { failed } => {
                let spec = StepSpec::prepare(step, Role::Step, index, secrets, failed);
                self.run_step(backend, pipeline, abort, spec, failed, None)
                    .await
            }
            Launch::Prestart { mut gate, failed } => {
                let spec = StepSpec::prepare(step, Role::Step, index, secrets, failed);
                // Preparing is never dropped half-way (a request in flight could still create
                // a container after teardown); a step given up on while it is being prepared
                // only cuts a pull short.
                let give_up = abort.token().child_token();
                let (prepared, opened) = {
                    let prepare = backend.prepare(&spec, &give_up);
                    tokio::pin!(prepare);
                    tokio::select! {
                        biased;
                        prepared = &mut prepare => (prepared, None),
                        opened = &mut gate => {
                            if opened.is_err() {
                                give_up.cancel();
                            }
                            (prepare.await, Some(opened))
                        }
                    }
                };
                let opened = match opened {
                    Some(opened) => opened,
                    None => gate.await,
                };
                match (opened, prepared) {
                    (Ok(failed), prepared) => {
                        let prepared = prepared
                            .inspect_err(|e| tracing::debug!("pre-starting `{}`: {e}", step.name))
                            .ok();
                        self.run_step(backend, pipeline, abort, spec, failed, prepared)
                            .await
                    }
                    (Err(_), Ok(prepared)) => {
                        backend.discard(prepared).await;
                        StepOutcome::Discarded
                    }
                    (Err(_), Err(_)) => StepOutcome::Discarded,
                }
            }
        };
        (index, outcome)
    }

    /// Emits `StepStarted`, then the step's warnings.
    fn begin(&self, pipeline: &PipelinePlan, spec: &StepSpec<'_>) -> (StepLog, Instant) {
        let log = self.step_log(pipeline, &spec.plan.name);
        self.emit(Event::StepStarted {
            pipeline: pipeline.name.clone(),
            step: spec.plan.name.clone(),
        });
        let started = Instant::now();
        for warning in &spec.warnings {
            log.line(warning);
        }
        (log, started)
    }

    /// Runs a step that is due: releases it when it was pre-started (falling back to a
    /// normal start should that fail), else starts it.
    async fn run_step<B: Backend>(
        &self,
        backend: &B,
        pipeline: &PipelinePlan,
        abort: &Abort,
        mut spec: StepSpec<'_>,
        failed: bool,
        prepared: Option<B::Prepared>,
    ) -> StepOutcome<B::Process> {
        let step = spec.plan;
        spec.set_build_status(failed);
        let (log, started) = self.begin(pipeline, &spec);
        if let Some(plugin) = crate::native::native_plugin(step)
            && let Some(host) = backend.native_host()
        {
            // Never pre-started (it has no `commands`); discarded should that change.
            if let Some(prepared) = prepared {
                backend.discard(prepared).await;
            }
            let report = self
                .run_native(plugin, host, &spec, &log, started, abort)
                .await;
            return StepOutcome::Finished(report);
        }
        let released = match prepared {
            Some(prepared) => backend
                .release(prepared, failed, log.clone())
                .await
                .inspect_err(|e| tracing::debug!("releasing `{}`: {e}", step.name))
                .ok(),
            None => None,
        };
        let process = match released {
            Some(process) => Ok(process),
            None => backend.start(&spec, log.clone(), abort.token()).await,
        };
        let mut process = match process {
            Ok(process) => process,
            Err(e) => return StepOutcome::Finished(self.start_failed(&log, started, e, abort)),
        };
        if step.detach {
            return StepOutcome::Detached(Background {
                slot: Slot::Step(spec.index),
                name: step.name.clone(),
                process,
                started,
                log,
            });
        }

        enum Ended {
            Exited(Result<i64, EngineError>),
            TimedOut(Duration),
            Aborted,
        }
        let limit = step
            .timeout_secs
            .map(Duration::from_secs)
            .or(self.options.default_step_timeout);
        let ended = tokio::select! {
            result = backend.wait(&mut process) => Ended::Exited(result),
            limit = sleep_for(limit) => Ended::TimedOut(limit),
            () = abort.aborted() => Ended::Aborted,
        };
        let (status, exit_code, error) = match ended {
            Ended::Exited(Ok(0)) => (Status::Success, Some(0), None),
            Ended::Exited(Ok(code)) => (Status::Failure, Some(code), None),
            Ended::Exited(Err(e)) => {
                let error = e.to_string();
                log.text(&format!("error: {error}"));
                (Status::Error, None, Some(error))
            }
            Ended::TimedOut(limit) => {
                let reason = format!("step timed out after {}", human(limit));
                log.line(&reason);
                let code = kill_and_reap(backend, &mut process).await;
                (Status::Killed, code, Some(reason))
            }
            Ended::Aborted => {
                let reason = abort.reason();
                log.line(&reason);
                let code = kill_and_reap(backend, &mut process).await;
                (Status::Killed, code, Some(reason))
            }
        };
        backend.remove(process).await;
        StepOutcome::Finished(self.finish(&log, started, status, exit_code, error))
    }

    /// Runs a native plugin step (see [`crate::native`]) within its time limit. It fails
    /// with exit code 1 and the reason in its log and report.
    async fn run_native(
        &self,
        plugin: crate::native::NativePlugin,
        host: crate::native::NativeHost<'_>,
        spec: &StepSpec<'_>,
        log: &StepLog,
        started: Instant,
        abort: &Abort,
    ) -> StepReport {
        enum Ended {
            Done(Result<(), String>),
            TimedOut(Duration),
            Aborted,
        }
        let limit = spec
            .plan
            .timeout_secs
            .map(Duration::from_secs)
            .or(self.options.default_step_timeout);
        let pushed = self
            .pushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let work = crate::native::run(plugin, host, spec, log, self.options, pushed);
        // Dropping the work on a time-out or abort closes its requests to the engine, which
        // stops the build or push under way.
        let ended = tokio::select! {
            result = work => Ended::Done(result),
            limit = sleep_for(limit) => Ended::TimedOut(limit),
            () = abort.aborted() => Ended::Aborted,
        };
        match ended {
            Ended::Done(Ok(())) => self.finish(log, started, Status::Success, Some(0), None),
            Ended::Done(Err(error)) => {
                log.text(&format!("error: {error}"));
                self.finish(log, started, Status::Failure, Some(1), Some(error))
            }
            Ended::TimedOut(limit) => {
                let reason = format!("step timed out after {}", human(limit));
                log.line(&reason);
                self.finish(log, started, Status::Killed, None, Some(reason))
            }
            Ended::Aborted => {
                let reason = abort.reason();
                log.line(&reason);
                self.finish(log, started, Status::Killed, None, Some(reason))
            }
        }
    }

    /// A step or service that could not be started: Killed if that was because of an abort
    /// (e.g. an interrupted pull), else Error with the reason in its log.
    fn start_failed(
        &self,
        log: &StepLog,
        started: Instant,
        error: EngineError,
        abort: &Abort,
    ) -> StepReport {
        if abort.is_aborted() {
            let reason = abort.reason();
            log.line(&reason);
            return self.finish(log, started, Status::Killed, None, Some(reason));
        }
        let error = error.to_string();
        log.text(&format!("error: {error}"));
        self.finish(log, started, Status::Error, None, Some(error))
    }

    fn finish(
        &self,
        log: &StepLog,
        started: Instant,
        status: Status,
        exit_code: Option<i64>,
        error: Option<String>,
    ) -> StepReport {
        let duration = started.elapsed();
        log.emit(Event::StepFinished {
            pipeline: log.pipeline().to_string(),
            step: log.step().to_string(),
            status,
            exit_code,
            duration,
        });
        StepReport {
            name: log.step().to_string(),
            status,
            exit_code,
            duration,
            error: error.map(|e| self.masker.mask_text(&e)),
        }
    }

    /// Stops a service or detached step at the end of its pipeline. One that was still
    /// running did its job: Success. One that had exited reports its exit code. Neither
    /// changes the pipeline's status: their outcome is only known after the steps that
    /// decide it.
    async fn stop_background<B: Backend>(
        &self,
        backend: &B,
        mut bg: Background<B::Process>,
    ) -> (Slot, StepReport) {
        let was_running = backend.kill(&mut bg.process).await;
        let exit = tokio::time::timeout(KILL_GRACE, backend.wait(&mut bg.process)).await;
        backend.remove(bg.process).await;
        let (status, exit_code, error) = match exit {
            _ if was_running => {
                bg.log.line("stopped at the end of the pipeline");
                (Status::Success, None, None)
            }
            Ok(Ok(0)) => (Status::Success, Some(0), None),
            Ok(Ok(code)) => (Status::Failure, Some(code), None),
            Ok(Err(e)) => (Status::Error, None, Some(e.to_string())),
            Err(_) => (
                Status::Error,
                None,
                Some(format!(
                    "`{}` did not stop within {}",
                    bg.name,
                    human(KILL_GRACE)
                )),
            ),
        };
        (
            bg.slot,
            self.finish(&bg.log, bg.started, status, exit_code, error),
        )
    }

    async fn clone_step(
        &self,
        pipeline: &PipelinePlan,
        spec: &CloneSpec<'_>,
        workspace: &Path,
        abort: &Abort,
    ) -> StepReport {
        let log = self.step_log(pipeline, CLONE_STEP);
        self.emit(Event::StepStarted {
            pipeline: pipeline.name.clone(),
            step: CLONE_STEP.to_string(),
        });
        let started = Instant::now();
        match workspace::clone(spec, workspace, &log, abort.token()).await {
            Ok(()) => self.finish(&log, started, Status::Success, Some(0), None),
            Err(_) if abort.is_aborted() => {
                let reason = abort.reason();
                log.line(&reason);
                self.finish(&log, started, Status::Killed, None, Some(reason))
            }
            Err(e) => {
                // git's stderr is already in the log; the report gets the whole story.
                log.line("clone failed");
                self.finish(&log, started, Status::Failure, Some(1), Some(e.to_string()))
            }
        }
    }
}

/// Kills a process and waits (bounded) for it to be gone; returns its exit code if known.
async fn kill_and_reap<B: Backend>(backend: &B, process: &mut B::Process) -> Option<i64> {
    backend.kill(process).await;
    match tokio::time::timeout(KILL_GRACE, backend.wait(process)).await {
        Ok(Ok(code)) => Some(code),
        _ => None,
    }
}

/// Sleeps for `limit` and returns it; never returns without a limit.
async fn sleep_for(limit: Option<Duration>) -> Duration {
    match limit {
        Some(limit) => {
            tokio::time::sleep(limit).await;
            limit
        }
        None => std::future::pending().await,
    }
}
