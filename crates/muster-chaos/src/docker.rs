//! The nemesis's hands: the `docker` CLI, one bounded command at a time. Containers are found
//! by the labels every Compose implementation (v1 `docker-compose` and v2 `docker compose`)
//! puts on them, so container names never need to be guessed. Nodes added by membership faults
//! are started with `docker run` beside the compose ones (same image and network) and carry the
//! label [`RUN_LABEL`], by which `scripts/chaos.sh` removes them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use tokio::process::Command;

/// How long one docker command may take before it is killed and reported as failed.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// Label (`RUN_LABEL=<compose project>`) on every container the checker starts itself.
pub const RUN_LABEL: &str = "muster-chaos.project";

/// The node's ports inside its container: client gRPC and HTTP (/health). Peers talk on 2380,
/// which is not published.
pub const CLIENT_PORT: &str = "2379/tcp";
pub const HTTP_PORT: &str = "2381/tcp";

/// Node settings a joining node must not inherit from the container it is modelled on: it gets
/// its id, `--join` and address on the command line, and an initial cluster that does not list
/// its id is refused.
const NOT_INHERITED: [&str; 5] = [
    "MUSTER_INITIAL_CLUSTER=",
    "MUSTER_NODE_ID=",
    "MUSTER_JOIN=",
    "MUSTER_ADVERTISE=",
    "MUSTER_PEER_ADVERTISE=",
];

/// Runs `docker …` commands.
#[derive(Debug, Clone)]
pub struct Docker {
    bin: String,
}

/// One node's container and how to put it back on its network after a partition.
#[derive(Debug, Clone)]
pub struct Container {
    /// Compose service name (also its DNS alias on the network).
    pub service: String,
    /// Container id (full).
    pub id: String,
    /// Container name (for messages).
    pub name: String,
    /// The compose network the node talks to its peers on.
    pub network: String,
    /// Aliases on that network (the service name among them).
    pub aliases: Vec<String>,
    /// Static IPv4 address on that network, if the compose file fixes one.
    pub ipv4: Option<String>,
    /// Image id it runs.
    pub image: String,
    /// Its environment (`KEY=value`; the image's defaults included).
    pub env: Vec<String>,
    /// Configured host bindings of published ports: container port ([`CLIENT_PORT`]) → host
    /// `ip:port` (port empty when Docker picks one).
    pub bindings: BTreeMap<String, String>,
    /// The volume mounted at `/data` (named by compose, or anonymous).
    pub data_volume: Option<String>,
    /// The volume holding the cluster's peer secret, mounted at `/secrets`.
    pub secrets_volume: Option<String>,
}

/// A node container the checker starts itself, modelled on a compose node: same image,
/// environment and network; a member added with MemberAdd, so it runs with `--join`.
#[derive(Debug, Clone)]
pub struct RunSpec<'a> {
    /// The container whose image, environment and network to use.
    pub template: &'a Container,
    /// Compose project (container name prefix and [`RUN_LABEL`] value).
    pub project: &'a str,
    /// DNS alias on the network and hostname; peers reach the node at `{alias}:2380`.
    pub alias: &'a str,
    /// The Raft id MemberAdd assigned.
    pub node_id: u64,
    /// Host bindings like [`Container::bindings`] (`127.0.0.1:` lets Docker pick the port).
    pub bindings: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Inspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Image")]
    image: String,
    #[serde(rename = "Config")]
    config: Config,
    #[serde(rename = "HostConfig")]
    host_config: HostConfig,
    #[serde(rename = "Mounts", default)]
    mounts: Vec<Mount>,
    #[serde(rename = "NetworkSettings")]
    network_settings: NetworkSettings,
}

#[derive(Deserialize)]
struct Config {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct HostConfig {
    #[serde(rename = "PortBindings", default)]
    port_bindings: Option<BTreeMap<String, Option<Vec<Binding>>>>,
}

#[derive(Deserialize)]
struct Binding {
    #[serde(rename = "HostIp", default)]
    host_ip: String,
    #[serde(rename = "HostPort", default)]
    host_port: String,
}

#[derive(Deserialize)]
struct Mount {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "Destination", default)]
    destination: String,
}

#[derive(Deserialize)]
struct NetworkSettings {
    #[serde(rename = "Networks")]
    networks: BTreeMap<String, Endpoint>,
    /// Actual host bindings while running (Docker's pick included).
    #[serde(rename = "Ports", default)]
    ports: Option<BTreeMap<String, Option<Vec<Binding>>>>,
}

/// The first binding of each port as `ip:port`.
fn first_bindings(
    ports: Option<BTreeMap<String, Option<Vec<Binding>>>>,
) -> BTreeMap<String, String> {
    ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(port, b)| {
            let b = b?.into_iter().next()?;
            Some((port, format!("{}:{}", b.host_ip, b.host_port)))
        })
        .collect()
}

#[derive(Deserialize)]
struct Endpoint {
    #[serde(rename = "Aliases", default)]
    aliases: Option<Vec<String>>,
    #[serde(rename = "IPAMConfig", default)]
    ipam: Option<Ipam>,
}

#[derive(Deserialize)]
struct Ipam {
    #[serde(rename = "IPv4Address", default)]
    ipv4: Option<String>,
}

impl Docker {
    pub fn new(bin: impl Into<String>) -> Self {
        Docker { bin: bin.into() }
    }

    /// Runs `docker args…`, returning stdout.
    ///
    /// # Errors
    /// Non-zero exit (with docker's stderr), or no answer within [`DOCKER_TIMEOUT`].
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        let out = tokio::time::timeout(DOCKER_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("docker {} timed out", args.join(" ")))?
            .with_context(|| format!("running {} {}", self.bin, args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "docker {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Finds the container of `service` in compose project `project` and the compose network
    /// it is on.
    ///
    /// # Errors
    /// No such container, several, or it is not on exactly one network.
    pub async fn find(&self, project: &str, service: &str) -> anyhow::Result<Container> {
        let ids = self
            .run(&[
                "ps",
                "-a",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label=com.docker.compose.project={project}"),
                "--filter",
                &format!("label=com.docker.compose.service={service}"),
            ])
            .await?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let [id] = ids.as_slice() else {
            bail!(
                "expected one container for service '{service}' of compose project '{project}', found {}",
                ids.len()
            );
        };
        Ok(self.inspect(id, service).await?.0)
    }

    /// Inspects container `id` (of `service`): the container, and the host addresses its
    /// ports are published on at the moment (empty while it is not running).
    ///
    /// # Errors
    /// docker failed, or the container is not on exactly one network.
    pub async fn inspect(
        &self,
        id: &str,
        service: &str,
    ) -> anyhow::Result<(Container, BTreeMap<String, String>)> {
        let json = self.run(&["inspect", id]).await?;
        parse_inspect(&json, service)
    }

    /// Starts a node container (`docker run -d`): on the template's network under
    /// `spec.alias`, `--node-id <id> --join --advertise <alias>:2379 --peer-advertise
    /// <alias>:2380`, a fresh anonymous data volume and the template's peer secret volume. Returns it and the host addresses its ports were published on.
    ///
    /// # Errors
    /// docker failed.
    pub async fn run_node(
        &self,
        spec: &RunSpec<'_>,
    ) -> anyhow::Result<(Container, BTreeMap<String, String>)> {
        let t = spec.template;
        let name = format!("{}-{}-{}", spec.project, spec.alias, spec.node_id);
        let label = format!("{RUN_LABEL}={}", spec.project);
        let node_id = spec.node_id.to_string();
        let advertise = format!("{}:2379", spec.alias);
        let peer_advertise = format!("{}:2380", spec.alias);
        let secrets = t.secrets_volume.as_ref().map(|v| format!("{v}:/secrets"));
        let mut args = vec!["run", "--detach", "--name", &name, "--label", &label];
        args.extend(["--hostname", spec.alias, "--network", &t.network]);
        args.extend(["--network-alias", spec.alias]);
        for e in &t.env {
            if !NOT_INHERITED.iter().any(|p| e.starts_with(p)) {
                args.extend(["--env", e.as_str()]);
            }
        }
        let publish: Vec<String> = spec
            .bindings
            .iter()
            .map(|(port, host)| format!("{host}:{}", port.trim_end_matches("/tcp")))
            .collect();
        for p in &publish {
            args.extend(["--publish", p.as_str()]);
        }
        if let Some(v) = &secrets {
            args.extend(["--volume", v.as_str()]);
        }
        args.extend([t.image.as_str(), "--node-id", &node_id, "--join"]);
        args.extend([
            "--advertise",
            &advertise,
            "--peer-advertise",
            &peer_advertise,
        ]);
        let id = self.run(&args).await?;
        self.inspect(id.trim(), spec.alias).await
    }

    /// Deletes the container and its data: `rm --force --volumes` (anonymous volumes go with
    /// it), then its data volume if that is still there (a named one).
    ///
    /// # Errors
    /// docker failed.
    pub async fn remove(&self, c: &Container) -> anyhow::Result<()> {
        self.run(&["rm", "--force", "--volumes", &c.id]).await?;
        if let Some(v) = &c.data_volume {
            let left = self
                .run(&[
                    "volume",
                    "ls",
                    "--quiet",
                    "--filter",
                    &format!("name=^{v}$"),
                ])
                .await?;
            if !left.trim().is_empty() {
                self.run(&["volume", "rm", v]).await?;
            }
        }
        Ok(())
    }

    /// Waits until the container has exited by itself; false if it still runs at `timeout`.
    ///
    /// # Errors
    /// docker failed.
    pub async fn wait_exited(&self, c: &Container, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let (running, _, _) = self.state(c).await?;
            if !running {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGKILLs the container (the process gets no chance to flush anything).
    pub async fn kill(&self, c: &Container) -> anyhow::Result<()> {
        self.run(&["kill", "--signal", "KILL", &c.id])
            .await
            .map(drop)
    }

    pub async fn start(&self, c: &Container) -> anyhow::Result<()> {
        self.run(&["start", &c.id]).await.map(drop)
    }

    /// Freezes every process of the container (cgroup freezer: like SIGSTOP, unobservable).
    pub async fn pause(&self, c: &Container) -> anyhow::Result<()> {
        self.run(&["pause", &c.id]).await.map(drop)
    }

    pub async fn unpause(&self, c: &Container) -> anyhow::Result<()> {
        self.run(&["unpause", &c.id]).await.map(drop)
    }

    /// Cuts the container off its compose network: peers and (through the published ports)
    /// clients lose it.
    pub async fn disconnect(&self, c: &Container) -> anyhow::Result<()> {
        self.run(&["network", "disconnect", "--force", &c.network, &c.id])
            .await
            .map(drop)
    }

    /// Puts the container back with its aliases (the service name peers resolve) and, if fixed,
    /// its address.
    pub async fn connect(&self, c: &Container) -> anyhow::Result<()> {
        let mut args = vec!["network", "connect"];
        let short_id = &c.id[..c.id.len().min(12)];
        for a in &c.aliases {
            // Docker adds the short container id by itself; passing it again is harmless but
            // noisy, so only the service-level aliases are given back.
            if a != short_id {
                args.extend(["--alias", a.as_str()]);
            }
        }
        if let Some(ip) = &c.ipv4 {
            args.extend(["--ip", ip.as_str()]);
        }
        args.extend([c.network.as_str(), c.id.as_str()]);
        self.run(&args).await.map(drop)
    }

    /// The container's state: (running, paused, on its network).
    pub async fn state(&self, c: &Container) -> anyhow::Result<(bool, bool, bool)> {
        let out = self
            .run(&[
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.Paused}} {{json .NetworkSettings.Networks}}",
                &c.id,
            ])
            .await?;
        let mut it = out.splitn(3, ' ');
        let running = it.next() == Some("true");
        let paused = it.next() == Some("true");
        let on_net = it
            .next()
            .is_some_and(|n| n.contains(&format!("\"{}\"", c.network)));
        Ok((running, paused, on_net))
    }

    /// Undoes every fault on the container, whatever state it was left in. Idempotent.
    ///
    /// # Errors
    /// A docker command failed (each step is still attempted).
    pub async fn heal(&self, c: &Container) -> anyhow::Result<()> {
        let (running, paused, on_net) = self.state(c).await?;
        let mut errs = Vec::new();
        if paused {
            if let Err(e) = self.unpause(c).await {
                errs.push(e);
            }
        }
        if !on_net {
            if let Err(e) = self.connect(c).await {
                errs.push(e);
            }
        }
        if !running {
            if let Err(e) = self.start(c).await {
                errs.push(e);
            }
        }
        match errs.pop() {
            Some(e) => Err(e.context(format!("healing {}", c.name))),
            None => Ok(()),
        }
    }
}

/// Parses `docker inspect` output of one container (see [`Docker::inspect`]).
fn parse_inspect(
    json: &str,
    service: &str,
) -> anyhow::Result<(Container, BTreeMap<String, String>)> {
    let mut all: Vec<Inspect> = serde_json::from_str(json).context("parsing docker inspect")?;
    let c = all.pop().context("docker inspect returned nothing")?;
    let published = first_bindings(c.network_settings.ports);
    let mut nets = c.network_settings.networks.into_iter();
    let (Some((network, ep)), None) = (nets.next(), nets.next()) else {
        bail!("container {} must be on exactly one network", c.name);
    };
    let volume_at = |dest: &str| {
        c.mounts
            .iter()
            .find(|m| m.destination == dest && m.kind == "volume")
            .and_then(|m| m.name.clone())
    };
    let (data_volume, secrets_volume) = (volume_at("/data"), volume_at("/secrets"));
    let container = Container {
        service: service.to_string(),
        id: c.id,
        name: c.name.trim_start_matches('/').to_string(),
        network,
        aliases: ep.aliases.unwrap_or_default(),
        ipv4: ep.ipam.and_then(|i| i.ipv4).filter(|s| !s.is_empty()),
        image: c.image,
        env: c.config.env.unwrap_or_default(),
        bindings: first_bindings(c.host_config.port_bindings),
        data_volume,
        secrets_volume,
    };
    Ok((container, published))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed `docker inspect` of a running compose node (docker 20.10, docker-compose 1.29).
    const INSPECT: &str = r#"[{"Id": "dc6fbd75c700cc86", "Name": "/muster-chaos_muster1_1",
        "Image": "sha256:44d28f093ea4",
        "Config": {"Env": ["MUSTER_INITIAL_CLUSTER=1=muster1:2380,2=muster2:2380,3=muster3:2380",
            "MUSTER_LOG=info,openraft=warn", "MUSTER_DATA_DIR=/data"]},
        "HostConfig": {"PortBindings": {
            "2379/tcp": [{"HostIp": "127.0.0.1", "HostPort": "23791"}],
            "2381/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
        "Mounts": [{"Type": "volume", "Name": "muster-chaos_muster1-data", "Destination": "/data"}],
        "NetworkSettings": {
            "Ports": {"2379/tcp": [{"HostIp": "127.0.0.1", "HostPort": "23791"}],
                      "2381/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]},
            "Networks": {"muster-chaos_muster": {"Aliases": ["dc6fbd75c700", "muster1"],
                                                 "IPAMConfig": null}}}}]"#;

    #[test]
    fn parses_what_a_replacement_node_needs() {
        let (c, published) = parse_inspect(INSPECT, "muster1").expect("parse");
        assert_eq!(c.name, "muster-chaos_muster1_1");
        assert_eq!(c.network, "muster-chaos_muster");
        assert_eq!(c.image, "sha256:44d28f093ea4");
        assert_eq!(c.data_volume.as_deref(), Some("muster-chaos_muster1-data"));
        assert_eq!(c.bindings[CLIENT_PORT], "127.0.0.1:23791");
        assert_eq!(
            c.bindings[HTTP_PORT], "127.0.0.1:",
            "Docker picks this port"
        );
        assert_eq!(published[HTTP_PORT], "127.0.0.1:49153");
        assert!(c
            .env
            .iter()
            .any(|e| e.starts_with("MUSTER_INITIAL_CLUSTER=")));
        assert!(c.ipv4.is_none());
    }

    #[test]
    fn a_stopped_container_publishes_nothing() {
        let json = INSPECT.replace(
            r#""Ports": {"2379/tcp": [{"HostIp": "127.0.0.1", "HostPort": "23791"}],
                      "2381/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]},"#,
            r#""Ports": {},"#,
        );
        let (c, published) = parse_inspect(&json, "muster1").expect("parse");
        assert!(published.is_empty());
        assert_eq!(c.bindings.len(), 2, "the configured bindings remain");
    }
}
