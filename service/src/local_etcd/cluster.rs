//! A throwaway etcd cluster: several members of one cluster on loopback ports, each with
//! its own data dir, for the tests of what the service does when members fail. Each
//! member can be killed (SIGKILL) and restarted on its data, or stopped (SIGSTOP) and
//! continued, and [`LocalEtcdCluster::leader`] says which one leads. Plain HTTP, no auth.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tempfile::TempDir;
use tokio::process::Child;

use super::{ATTEMPTS, Member, READY_WITHIN, etcd_binary, read_log, spawn};

/// One member: its ports are fixed for its life, so a restart rejoins as itself.
struct ClusterMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// `None` while killed.
    child: Option<Child>,
    dir: TempDir,
}

/// A running etcd cluster on 127.0.0.1; every member is killed when it is dropped.
pub struct LocalEtcdCluster {
    binary: PathBuf,
    initial_cluster: String,
    members: Vec<ClusterMember>,
}

impl LocalEtcdCluster {
    /// Starts `size` members and waits until each serves linearizable reads (a leader is
    /// elected). The error carries the members' logs.
    pub async fn start(size: usize) -> anyhow::Result<LocalEtcdCluster> {
        anyhow::ensure!(size > 0, "a cluster needs a member");
        let binary = etcd_binary()?;
        let mut last_logs = String::new();
        for _ in 0..ATTEMPTS {
            let mut members = Vec::with_capacity(size);
            for _ in 0..size {
                let dir = tempfile::Builder::new().prefix("dhw-etcd-cluster-").tempdir()?;
                let name = dir.path().file_name().expect("temp dir name").to_string_lossy().into_owned();
                let (client_port, peer_port) = super::free_ports();
                members.push(ClusterMember { name, client_port, peer_port, child: None, dir });
            }
            let initial_cluster = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            let mut cluster = LocalEtcdCluster { binary: binary.clone(), initial_cluster, members };
            // All at once: each waits for the others to elect a leader.
            for i in 0..size {
                cluster.spawn(i)?;
            }
            let mut ready = Ok(());
            for i in 0..size {
                ready = cluster.wait_until_serving(i, true).await;
                if ready.is_err() {
                    break;
                }
            }
            match ready {
                Ok(()) => return Ok(cluster),
                Err(why) => {
                    last_logs = cluster.logs();
                    if !last_logs.contains("address already in use") {
                        anyhow::bail!("etcd cluster did not start: {why}\n{last_logs}");
                    }
                }
            }
        }
        anyhow::bail!("etcd cluster did not start after {ATTEMPTS} attempts (ports taken)\n{last_logs}")
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// SIGKILLs member `i` and waits until it is gone.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts killed member `i` again on its data dir and waits until it answers (a
    /// linearizable read only if `with_quorum`: alone it cannot serve one).
    pub async fn restart(&mut self, i: usize, with_quorum: bool) -> anyhow::Result<()> {
        anyhow::ensure!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i)?;
        self.wait_until_serving(i, with_quorum).await.map_err(|why| anyhow::anyhow!("{why}\n{}", self.log(i)))
    }

    /// Freezes member `i` (SIGSTOP): it keeps its connections open but answers nothing.
    pub fn stop(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Continues member `i` after [`LocalEtcdCluster::stop`] (SIGCONT).
    pub fn cont(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// The index of the member that leads: the running member whose status names itself
    /// as the leader.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let status = tokio::time::timeout(Duration::from_secs(2), async {
                let mut client = etcd_client::Client::connect([self.endpoint(i)], None).await?;
                client.status().await
            })
            .await;
            let Ok(Ok(status)) = status else { continue };
            if status.header().is_some_and(|h| h.member_id() == status.leader()) {
                return Ok(i);
            }
        }
        anyhow::bail!("no running member says it leads")
    }

    /// Member `i`'s log (every run of it).
    pub fn log(&self, i: usize) -> String {
        format!("--- etcd member {i} log ---\n{}", read_log(self.members[i].dir.path()))
    }

    /// Every member's log, for a failing test's message.
    pub fn logs(&self) -> String {
        (0..self.members.len()).map(|i| self.log(i)).collect::<Vec<_>>().join("\n")
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &self.members[i];
        let args = Member {
            name: &member.name,
            client_port: member.client_port,
            peer_port: member.peer_port,
            initial_cluster: &self.initial_cluster,
        };
        let child = spawn(&self.binary, member.dir.path(), &args, None)?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.members[i].child.as_ref().and_then(Child::id).expect("member is running");
        let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pid} failed");
    }

    async fn wait_until_serving(&mut self, i: usize, linearizable: bool) -> Result<(), String> {
        let endpoint = self.endpoint(i);
        let deadline = Instant::now() + READY_WITHIN;
        let mut last = "no answer yet".to_string();
        while Instant::now() < deadline {
            let child = self.members[i].child.as_mut().ok_or("member is not running")?;
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("etcd member {i} exited with {status}"));
            }
            let answered = tokio::time::timeout(Duration::from_secs(2), async {
                let mut client = etcd_client::Client::connect([endpoint.as_str()], None).await?;
                if linearizable {
                    client.get("\0", Some(etcd_client::GetOptions::new().with_count_only())).await?;
                } else {
                    client.status().await?;
                }
                Ok::<_, etcd_client::Error>(())
            })
            .await;
            match answered {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "a request took over 2 s".into(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("etcd member {i} did not answer within {READY_WITHIN:?}: {last}"))
    }
}

impl Drop for LocalEtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(child) = member.child.as_mut() {
                // A stopped process dies of SIGKILL too.
                let _ = child.start_kill();
            }
        }
    }
}
