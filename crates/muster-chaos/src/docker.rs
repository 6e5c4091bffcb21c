//! The nemesis's hands: the `docker` CLI, one bounded command at a time. Containers are found
//! by the labels every Compose implementation (v1 `docker-compose` and v2 `docker compose`)
//! puts on them, so container names never need to be guessed.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tokio::process::Command;

/// How long one docker command may take before it is killed and reported as failed.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

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
}

#[derive(Deserialize)]
struct Inspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "NetworkSettings")]
    network_settings: NetworkSettings,
}

#[derive(Deserialize)]
struct NetworkSettings {
    #[serde(rename = "Networks")]
    networks: std::collections::BTreeMap<String, Endpoint>,
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
        let json = self.run(&["inspect", id]).await?;
        let mut all: Vec<Inspect> =
            serde_json::from_str(&json).context("parsing docker inspect")?;
        let c = all.pop().context("docker inspect returned nothing")?;
        let mut nets = c.network_settings.networks.into_iter();
        let (Some((network, ep)), None) = (nets.next(), nets.next()) else {
            bail!("container {} must be on exactly one network", c.name);
        };
        Ok(Container {
            service: service.to_string(),
            id: c.id,
            name: c.name.trim_start_matches('/').to_string(),
            network,
            aliases: ep.aliases.unwrap_or_default(),
            ipv4: ep.ipam.and_then(|i| i.ipv4).filter(|s| !s.is_empty()),
        })
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
