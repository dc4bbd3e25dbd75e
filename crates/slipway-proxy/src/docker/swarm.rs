//! Live Docker Swarm services, for the Docker provider when its engine is a swarm manager.
//!
//! In Swarm mode a stack's `deploy.labels` land on the *service* (`Spec.Labels`), not on
//! its task containers, so Traefik's swarm mode (and this provider) reads services: each
//! one is a [`Workload`] of kind service whose labels are its container spec's labels with
//! the service's labels over them (as [`compose`](crate::compose) reads a stack file), its
//! container spec's environment, and the targets of its endpoint's TCP ports as exposed
//! ports. How it is reached:
//! - at its tasks, when the proxy shares a network with it (one named in
//!   [`DockerOptions::networks`], or one the proxy's own container is attached to, found
//!   through `/proc/self/mountinfo`): each running task's IP on the best such network
//!   (the configured order, then the `traefik.docker.network` label's, then by name), one
//!   backend each. The ingress network is never one: it carries the routing mesh only.
//! - else at its published ports: an `ingress` port on 127.0.0.1, where the routing mesh
//!   balances it over the replicas; a `host` port on 127.0.0.1 only while one of its tasks
//!   runs on this node (the port is bound where a task runs, nowhere else).
//!
//! A task on this node is judged by its container, which the provider follows by events
//! (a `kill` drains it at once); a task elsewhere by what the manager says (state
//! `running`, desired `running`), re-read on every service event, on a task container's
//! `start`/`die` here, and every [`DockerOptions::swarm_refresh`] (Traefik's
//! `swarmModeRefreshSeconds`): there is no event when a task on another node changes.
//!
//! The manager's task list is read with bollard's `list_tasks`; the task IPs come from the
//! network's verbose inspect (`Services.NAME.Tasks`), as bollard's `Task` has no
//! `NetworksAttachments`. What is fetched is turned into a [`Service`] by [`describe`],
//! which does no IO.

use std::collections::{BTreeSet, HashMap};

use bollard::Docker;
use bollard::models::{
    ContainerInspectResponse, EndpointPortConfig, EndpointPortConfigProtocolEnum,
    EndpointPortConfigPublishModeEnum, LocalNodeState, NetworkInspect, ServiceInfo, Task,
    TaskState,
};
use bollard::query_parameters::{
    InspectNetworkOptionsBuilder, ListServicesOptionsBuilder, ListTasksOptionsBuilder,
};

use super::{DockerOptions, Reach};
use crate::labels::{PublishedPort, Workload, WorkloadKind};

/// The label a task's container carries: the id of the service it runs for.
pub(super) const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";

/// An API call that failed, and what it was.
#[derive(Debug)]
pub(super) struct ApiError {
    pub what: String,
    pub source: bollard::errors::Error,
}

fn api(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> ApiError {
    let what = what.into();
    move |source| ApiError { what, source }
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The engine as a swarm manager: services can be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Swarm {
    /// This node's id, to tell its tasks from those on other nodes.
    pub node_id: String,
    /// Networks the proxy is on, by name and by id.
    pub shared: BTreeSet<String>,
}

/// A running task reached at its IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TaskAt {
    pub ip: String,
    /// Its container, when it runs on this node (judged by the provider's container).
    pub local_container: Option<String>,
}

/// A Swarm service as the provider keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Service {
    /// Its labels, environment, ports and `ingress` published ports; `task_addresses` is
    /// filled when the routes are made.
    pub workload: Workload,
    /// `Some` when reached at its tasks on a network the proxy shares.
    pub tasks: Option<Vec<TaskAt>>,
    /// `host`-mode published ports, reached on 127.0.0.1 while one of `local_containers`
    /// runs.
    pub host_ports: Vec<PublishedPort>,
    /// The containers of its tasks on this node that are to run.
    pub local_containers: Vec<String>,
}

/// `Some` when the engine is an active swarm manager (a worker cannot list services).
pub(super) async fn swarm(
    docker: &Docker,
    options: &DockerOptions,
) -> Result<Option<Swarm>, ApiError> {
    let info = docker
        .info()
        .await
        .map_err(api("reading the engine's info"))?;
    let Some(s) = info.swarm else { return Ok(None) };
    let manager =
        s.local_node_state == Some(LocalNodeState::ACTIVE) && s.control_available == Some(true);
    let Some(node_id) = s.node_id.filter(|id| manager && !id.is_empty()) else {
        return Ok(None);
    };
    let mut shared: BTreeSet<String> = options.networks.iter().cloned().collect();
    let own = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| own_container_id(&m));
    if let Some(id) = own {
        match docker.inspect_container(&id, None).await {
            Ok(c) => shared.extend(container_networks(&c)),
            // Not a container of this engine (another engine's, or a stale mount).
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(api(format!("inspecting the proxy's container {id}"))(e)),
        }
    }
    Ok(Some(Swarm { node_id, shared }))
}

/// The id of the container this process runs in, from the bind mounts Docker gives every
/// container (`/var/lib/docker/containers/ID/hostname` on `/etc/hostname`).
pub(super) fn own_container_id(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let root = fields.nth(3)?;
        let target = fields.next()?;
        if !matches!(target, "/etc/hostname" | "/etc/hosts" | "/etc/resolv.conf") {
            return None;
        }
        let (_, rest) = root.rsplit_once("/containers/")?;
        let id = rest.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

/// A container's networks, by name and by id.
fn container_networks(c: &ContainerInspectResponse) -> Vec<String> {
    c.network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|(name, endpoint)| {
            std::iter::once(name.clone()).chain(endpoint.network_id.clone())
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// Every service, by id.
pub(super) async fn services(
    docker: &Docker,
    swarm: &Swarm,
    options: &DockerOptions,
) -> Result<Vec<(String, Service)>, ApiError> {
    let listed = docker
        .list_services(Some(ListServicesOptionsBuilder::new().build()))
        .await
        .map_err(api("listing swarm services"))?;
    let mut out = Vec::new();
    for s in listed {
        let Some(id) = s.id.clone() else { continue };
        if let Some(service) = fetch(docker, swarm, options, &s).await? {
            out.push((id, service));
        }
    }
    Ok(out)
}

/// The service `id`; `None` when it is gone.
pub(super) async fn service(
    docker: &Docker,
    swarm: &Swarm,
    options: &DockerOptions,
    id: &str,
) -> Result<Option<Service>, ApiError> {
    match docker.inspect_service(id, None).await {
        Ok(s) => fetch(docker, swarm, options, &s).await,
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(api(format!("inspecting swarm service {id}"))(e)),
    }
}

/// A network of a service, as [`describe`] needs it.
#[derive(Debug, Clone, Default)]
pub(super) struct Net {
    pub id: String,
    pub name: String,
    pub ingress: bool,
    /// The service's tasks on it: (task container name `SERVICE.SLOT.TASK`, IP).
    pub tasks: Vec<(String, String)>,
}

async fn fetch(
    docker: &Docker,
    swarm: &Swarm,
    options: &DockerOptions,
    s: &bollard::models::Service,
) -> Result<Option<Service>, ApiError> {
    let Some(id) = s.id.as_deref() else {
        return Ok(None);
    };
    let name = s.spec.as_ref().and_then(|s| s.name.clone());
    let filters = HashMap::from([("service", vec![id]), ("desired-state", vec!["running"])]);
    let tasks = docker
        .list_tasks(Some(
            ListTasksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(api(format!("listing the tasks of swarm service {id}")))?;
    let mut nets = Vec::new();
    if options.reach == Reach::Networks && !swarm.shared.is_empty() {
        for target in network_targets(s) {
            let inspected = docker
                .inspect_network(
                    &target,
                    Some(InspectNetworkOptionsBuilder::new().verbose(true).build()),
                )
                .await;
            match inspected {
                Ok(n) => nets.push(net(&n, name.as_deref().unwrap_or(id))),
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(api(format!("inspecting network {target}"))(e)),
            }
        }
    }
    Ok(Some(describe(s, &tasks, &nets, swarm, options)))
}

/// The networks a service's tasks join (ids or names).
fn network_targets(s: &bollard::models::Service) -> Vec<String> {
    let spec = s.spec.as_ref();
    let template = spec
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.networks.as_ref());
    let legacy = spec.and_then(|s| s.networks.as_ref());
    let mut seen = BTreeSet::new();
    template
        .into_iter()
        .chain(legacy)
        .flatten()
        .filter_map(|n| n.target.clone())
        .filter(|t| !t.is_empty() && seen.insert(t.clone()))
        .collect()
}

fn net(n: &NetworkInspect, service: &str) -> Net {
    let info: Option<ServiceInfo> = n
        .services
        .as_ref()
        .and_then(|s| s.get(service))
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let tasks = info
        .and_then(|i| i.tasks)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let ip = t.endpoint_ip?;
            let ip = ip.split('/').next().unwrap_or("").to_owned();
            Some((t.name?, ip)).filter(|(_, ip)| !ip.is_empty())
        })
        .collect();
    Net {
        id: n.id.clone().unwrap_or_default(),
        name: n.name.clone().unwrap_or_default(),
        ingress: n.ingress.unwrap_or(false) || n.name.as_deref() == Some("ingress"),
        tasks,
    }
}

/// A service, its tasks (desired `running`) and its networks as a [`Service`]. No IO.
pub(super) fn describe(
    s: &bollard::models::Service,
    tasks: &[Task],
    nets: &[Net],
    swarm: &Swarm,
    options: &DockerOptions,
) -> Service {
    let spec = s.spec.as_ref();
    let container = spec
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.container_spec.as_ref());
    let name = spec
        .and_then(|s| s.name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| s.id.clone())
        .unwrap_or_else(|| "unnamed".to_owned());
    // Container labels first, the service's (`deploy.labels`) over them.
    let mut labels: std::collections::BTreeMap<String, String> = container
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.extend(spec.and_then(|s| s.labels.clone()).unwrap_or_default());
    let environment = super::environment(container.and_then(|c| c.env.as_deref()));
    let endpoint = s.endpoint.as_ref();
    let ports: Vec<&EndpointPortConfig> = endpoint
        .and_then(|e| e.ports.as_ref())
        .or_else(|| endpoint.and_then(|e| e.spec.as_ref()?.ports.as_ref()))
        .or_else(|| spec.and_then(|s| s.endpoint_spec.as_ref()?.ports.as_ref()))
        .into_iter()
        .flatten()
        .filter(|p| {
            matches!(
                p.protocol,
                None | Some(
                    EndpointPortConfigProtocolEnum::TCP | EndpointPortConfigProtocolEnum::EMPTY
                )
            )
        })
        .collect();
    let mut exposed_ports = Vec::new();
    let mut published_ports = Vec::new();
    let mut host_ports = Vec::new();
    for p in &ports {
        let Some(target) = p.target_port.and_then(|t| u16::try_from(t).ok()) else {
            continue;
        };
        if target == 0 {
            continue;
        }
        exposed_ports.push(target);
        let Some(published) = p
            .published_port
            .and_then(|t| u16::try_from(t).ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        let port = PublishedPort {
            target,
            published,
            host_ip: None,
        };
        if p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST) {
            host_ports.push(port);
        } else {
            published_ports.push(port);
        }
    }
    // Tasks on this node count while their container runs (the provider sees it); tasks
    // elsewhere while the manager says they run.
    let live: Vec<(&str, Option<String>)> = tasks
        .iter()
        .filter(|t| t.desired_state == Some(TaskState::RUNNING))
        .filter_map(|t| {
            let id = t.id.as_deref()?;
            let state = t.status.as_ref().and_then(|s| s.state);
            if t.node_id.as_deref() == Some(swarm.node_id.as_str()) {
                let container = t
                    .status
                    .as_ref()
                    .and_then(|s| s.container_status.as_ref())
                    .and_then(|c| c.container_id.clone())
                    .filter(|c| !c.is_empty())?;
                Some((id, Some(container)))
            } else {
                (state == Some(TaskState::RUNNING)).then_some((id, None))
            }
        })
        .collect();
    let local_containers = live.iter().filter_map(|(_, c)| c.clone()).collect();
    let task_addresses = match options.reach {
        Reach::PublishedPorts => None,
        Reach::Networks => best_network(nets, &labels, swarm, options).map(|net| {
            live.iter()
                .filter_map(|(id, container)| {
                    let suffix = format!(".{id}");
                    let (_, ip) = net.tasks.iter().find(|(n, _)| n.ends_with(&suffix))?;
                    Some(TaskAt {
                        ip: ip.clone(),
                        local_container: container.clone(),
                    })
                })
                .collect()
        }),
    };
    Service {
        workload: Workload {
            name,
            kind: WorkloadKind::Service,
            labels,
            environment,
            exposed_ports,
            published_ports,
            addresses: Vec::new(),
            task_addresses: None,
        },
        tasks: task_addresses,
        host_ports,
        local_containers,
    }
}

/// The network the proxy shares with the service that it reaches the tasks on.
fn best_network<'a>(
    nets: &'a [Net],
    labels: &std::collections::BTreeMap<String, String>,
    swarm: &Swarm,
    options: &DockerOptions,
) -> Option<&'a Net> {
    let label = labels.get("traefik.docker.network");
    nets.iter()
        .filter(|n| !n.ingress)
        .filter(|n| swarm.shared.contains(&n.name) || swarm.shared.contains(&n.id))
        .min_by_key(|n| {
            let rank = options
                .networks
                .iter()
                .position(|c| *c == n.name || *c == n.id)
                .or_else(|| (label == Some(&n.name)).then_some(options.networks.len()))
                .unwrap_or(usize::MAX);
            (rank, n.name.clone())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = r#"{
        "ID": "svc1",
        "Spec": {
            "Name": "shop_web",
            "Labels": {"traefik.enable": "true", "traefik.http.routers.web.rule": "Host(`shop.test`)", "shared": "service"},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": "busybox",
                    "Labels": {"shared": "container", "only": "container"},
                    "Env": ["VIRTUAL_HOST=other.test", "EMPTY="]
                },
                "Networks": [{"Target": "net-front"}, {"Target": "net-back"}]
            }
        },
        "Endpoint": {
            "Ports": [
                {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 38080, "PublishMode": "ingress"},
                {"Protocol": "tcp", "TargetPort": 9000, "PublishedPort": 39000, "PublishMode": "host"},
                {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353, "PublishMode": "ingress"}
            ]
        }
    }"#;

    fn tasks() -> Vec<Task> {
        serde_json::from_str(
            r#"[
            {"ID": "t1", "NodeID": "me", "DesiredState": "running",
             "Status": {"State": "starting", "ContainerStatus": {"ContainerID": "c1"}}},
            {"ID": "t2", "NodeID": "other", "DesiredState": "running", "Status": {"State": "running"}},
            {"ID": "t3", "NodeID": "other", "DesiredState": "running", "Status": {"State": "preparing"}},
            {"ID": "t4", "NodeID": "other", "DesiredState": "shutdown", "Status": {"State": "running"}}
        ]"#,
        )
        .expect("tasks JSON")
    }

    fn nets() -> Vec<Net> {
        let tasks = vec![
            ("shop_web.1.t1".to_owned(), "10.0.1.3".to_owned()),
            ("shop_web.2.t2".to_owned(), "10.0.1.4".to_owned()),
            ("shop_web.3.t3".to_owned(), "10.0.1.5".to_owned()),
        ];
        vec![
            Net {
                id: "net-front".into(),
                name: "front".into(),
                ingress: false,
                tasks: tasks.clone(),
            },
            Net {
                id: "net-back".into(),
                name: "back".into(),
                ingress: false,
                tasks: tasks
                    .iter()
                    .map(|(n, ip)| (n.clone(), ip.replace("10.0.1.", "10.0.2.")))
                    .collect(),
            },
        ]
    }

    fn swarm(shared: &[&str]) -> Swarm {
        Swarm {
            node_id: "me".into(),
            shared: shared.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn parsed() -> bollard::models::Service {
        serde_json::from_str(SERVICE).expect("service JSON")
    }

    #[test]
    fn a_service_is_a_workload_with_its_labels_over_its_containers() {
        let s = describe(
            &parsed(),
            &tasks(),
            &[],
            &swarm(&[]),
            &DockerOptions::default(),
        );
        let w = &s.workload;
        assert_eq!(w.name, "shop_web");
        assert_eq!(w.kind, WorkloadKind::Service);
        assert_eq!(w.labels["shared"], "service");
        assert_eq!(w.labels["only"], "container");
        assert_eq!(w.environment["VIRTUAL_HOST"], "other.test");
        assert_eq!(w.exposed_ports, vec![8080, 9000]);
        assert_eq!(
            w.published_ports,
            vec![PublishedPort {
                target: 8080,
                published: 38080,
                host_ip: None
            }]
        );
        assert_eq!(s.host_ports[0].published, 39000);
        // No shared network: reached at its published ports.
        assert_eq!(s.tasks, None);
        assert_eq!(s.local_containers, vec!["c1"]);
    }

    #[test]
    fn running_tasks_are_reached_on_the_best_shared_network() {
        let options = DockerOptions::default();
        let s = describe(
            &parsed(),
            &tasks(),
            &nets(),
            &swarm(&["back", "net-front"]),
            &options,
        );
        // Both are shared and neither is configured nor labelled: by name.
        let ips: Vec<&str> = s
            .tasks
            .as_ref()
            .expect("reached at its tasks")
            .iter()
            .map(|t| t.ip.as_str())
            .collect();
        assert_eq!(ips, vec!["10.0.2.3", "10.0.2.4"]);
        let at = s.tasks.as_ref().expect("tasks");
        assert_eq!(at[0].local_container.as_deref(), Some("c1"));
        assert_eq!(at[1].local_container, None);

        let options = DockerOptions {
            networks: vec!["front".into()],
            ..DockerOptions::default()
        };
        let s = describe(
            &parsed(),
            &tasks(),
            &nets(),
            &swarm(&["back", "front"]),
            &options,
        );
        assert_eq!(s.tasks.expect("tasks")[0].ip, "10.0.1.3");

        let mut ingress = nets();
        ingress.iter_mut().for_each(|n| n.ingress = true);
        let s = describe(
            &parsed(),
            &tasks(),
            &ingress,
            &swarm(&["back", "front"]),
            &DockerOptions::default(),
        );
        assert_eq!(s.tasks, None, "the ingress network is not reached");

        let published = DockerOptions {
            reach: Reach::PublishedPorts,
            ..DockerOptions::default()
        };
        let s = describe(&parsed(), &tasks(), &nets(), &swarm(&["back"]), &published);
        assert_eq!(s.tasks, None);
    }

    #[test]
    fn the_own_container_is_found_in_mountinfo() {
        let id = "3f2a".repeat(16);
        let mountinfo = format!(
            "100 90 0:50 / / rw,relatime - overlay overlay rw\n\
             210 100 8:1 /var/lib/docker/containers/{id}/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(own_container_id(&mountinfo), Some(id));
        assert_eq!(
            own_container_id("24 1 8:1 / / rw - ext4 /dev/sda1 rw\n"),
            None
        );
        assert_eq!(own_container_id(""), None);
    }
}
