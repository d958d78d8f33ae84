//! A throwaway etcd: the `etcd` binary (Debian package `etcd-server`) on free loopback
//! ports with a temporary data dir, killed when the handle is dropped. `deephardway bench`
//! measures against one, and the tests start one each, side by side.
//!
//! [`LocalEtcd::start_secured`] starts one as a secured cluster would run: TLS with client
//! certificates required (`--client-cert-auth`), and/or auth enabled with a `root` user
//! and a service user whose role may read and write only under the store's prefix.
//!
//! [`cluster::LocalEtcdCluster`] starts three members that form one cluster, with handles
//! to kill, restart, stop and continue each: the tests of failover use it.

pub mod cluster;

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use etcd_client::{ConnectOptions, Permission};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// How long etcd may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// Start attempts; a port picked as free can be taken by someone else before etcd binds it.
const ATTEMPTS: usize = 5;

/// How a [`LocalEtcd`] is secured; the default: neither TLS nor auth.
#[derive(Clone, Debug, Default)]
pub struct EtcdSecurity {
    pub tls: Option<EtcdTls>,
    pub auth: Option<EtcdAuth>,
}

/// TLS for a local etcd: its certificate and key, the CA its clients' certificates must be
/// signed by (`--trusted-ca-file`, `--client-cert-auth`), and what this module connects
/// with to check and set it up (the CA that signed etcd's certificate, a client certificate).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub client: deephardway::ClientTls,
}

/// Auth for a local etcd: `root` with `root_password`, and `user` with `password`, whose
/// role reads and writes under [`crate::keys::ROOT`] and nothing else.
#[derive(Clone, Debug)]
pub struct EtcdAuth {
    pub root_password: String,
    pub user: String,
    pub password: String,
}

/// A running etcd, single member, listening on 127.0.0.1.
pub struct LocalEtcd {
    child: Child,
    client_port: u16,
    scheme: &'static str,
    /// Data dir and log; removed after the process is killed (fields drop in order).
    dir: TempDir,
}

impl LocalEtcd {
    /// Starts etcd and waits until it serves requests; the error carries etcd's log.
    pub async fn start() -> anyhow::Result<LocalEtcd> {
        Self::start_secured(EtcdSecurity::default()).await
    }

    /// Starts etcd with TLS and/or auth, and waits until it serves requests (and, with
    /// auth, until the users exist and auth is on).
    pub async fn start_secured(security: EtcdSecurity) -> anyhow::Result<LocalEtcd> {
        let binary = etcd_binary()?;
        let scheme = if security.tls.is_some() { "https" } else { "http" };
        let options = security.tls.as_ref().map(|tls| ConnectOptions::new().with_tls(tls.client.config()));
        let mut last_log = String::new();
        for _ in 0..ATTEMPTS {
            let dir = tempfile::Builder::new().prefix("dhw-etcd-").tempdir()?;
            let (client_port, peer_port) = free_ports();
            // A unique member name tells our etcd apart from another that got the port.
            let name = dir.path().file_name().expect("temp dir name").to_string_lossy().into_owned();
            let initial_cluster = format!("{name}=http://127.0.0.1:{peer_port}");
            let member = Member { name: &name, client_port, peer_port, initial_cluster: &initial_cluster };
            let mut child = spawn(&binary, dir.path(), &member, security.tls.as_ref())?;
            match wait_until_ready(&mut child, &name, client_port, scheme, &options).await {
                Ok(()) => {
                    let etcd = LocalEtcd { child, client_port, scheme, dir };
                    if let Some(auth) = &security.auth {
                        enable_auth(&etcd.endpoint(), options.clone(), auth)
                            .await
                            .map_err(|e| anyhow::anyhow!("cannot enable auth on etcd: {e}"))?;
                    }
                    return Ok(etcd);
                }
                Err(why) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    last_log = read_log(dir.path());
                    if !last_log.contains("address already in use") {
                        anyhow::bail!("etcd did not start: {why}\n--- etcd log ---\n{last_log}");
                    }
                }
            }
        }
        anyhow::bail!("etcd did not start after {ATTEMPTS} attempts (ports taken)\n--- etcd log ---\n{last_log}")
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    /// etcd's log so far, for a failing test's message.
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        // SIGKILL; the temp dir goes right after.
        let _ = self.child.start_kill();
    }
}

pub(crate) fn etcd_binary() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file());
    let fallback = PathBuf::from("/usr/bin/etcd");
    match on_path {
        Some(binary) => Ok(binary),
        None if fallback.is_file() => Ok(fallback),
        None => anyhow::bail!(
            "the etcd binary was not found (on PATH or at /usr/bin/etcd); these tests need a real etcd: \
             run `scripts/setup` or `apt-get install etcd-server`"
        ),
    }
}

/// Two distinct ports that were free a moment ago.
fn free_ports() -> (u16, u16) {
    let client = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let peer = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    (client.local_addr().expect("addr").port(), peer.local_addr().expect("addr").port())
}

/// What one member is called and where it listens, and the cluster it starts in
/// (`--initial-cluster`: `name=peer-url,…`).
pub(crate) struct Member<'a> {
    pub name: &'a str,
    pub client_port: u16,
    pub peer_port: u16,
    pub initial_cluster: &'a str,
}

pub(crate) fn spawn(binary: &Path, dir: &Path, member: &Member<'_>, tls: Option<&EtcdTls>) -> anyhow::Result<Child> {
    let Member { name, client_port, peer_port, initial_cluster } = member;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    // Appended to, so that a restarted member's log follows its first run's.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("etcd.log"))?;
    let mut command = Command::new(binary);
    if let Some(tls) = tls {
        command
            .arg(format!("--cert-file={}", tls.cert.display()))
            .arg(format!("--key-file={}", tls.key.display()))
            .arg(format!("--trusted-ca-file={}", tls.client_ca.display()))
            .arg("--client-cert-auth");
    }
    command
        .arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg("--initial-cluster-state=new")
        // A short election timeout makes etcd's minimum lease TTL (1.5 × the election
        // timeout, rounded up) 1 s instead of 2 s, so lease tests stay quick and exact.
        .args(["--heartbeat-interval=50", "--election-timeout=500"])
        .args(["--logger=zap", "--log-outputs=stderr"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", binary.display()))
}

/// Waits until our etcd accepts connections and answers a request.
async fn wait_until_ready(
    child: &mut Child,
    name: &str,
    client_port: u16,
    scheme: &str,
    options: &Option<ConnectOptions>,
) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], client_port));
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    let mut answered = Err("no answer yet".to_string());
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("etcd exited with {status}"));
        }
        // A TCP connect first: etcd-client waits out its timeout on a closed port.
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            answered = answers(name, client_port, scheme, options.clone()).await;
            if answered.is_ok() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("etcd did not answer within {READY_WITHIN:?}: {}", answered.unwrap_err()))
}

/// The member is ours, and a linearizable read (which needs an elected leader) succeeds.
async fn answers(name: &str, client_port: u16, scheme: &str, options: Option<ConnectOptions>) -> Result<(), String> {
    let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
    let request = async {
        let mut client = etcd_client::Client::connect([endpoint], options).await?;
        let members = client.member_list().await?;
        let ours = members.members().iter().any(|member| member.name() == name);
        client.get("\0", Some(etcd_client::GetOptions::new().with_count_only())).await?;
        Ok::<_, etcd_client::Error>(ours)
    };
    match tokio::time::timeout(Duration::from_secs(2), request).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(format!("another etcd answers on port {client_port}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("a request took over 2 s".into()),
    }
}

/// Adds the role and users of `auth`, then turns auth on.
async fn enable_auth(
    endpoint: &str,
    options: Option<ConnectOptions>,
    auth: &EtcdAuth,
) -> Result<(), etcd_client::Error> {
    const ROLE: &str = "deephardway";
    let mut client = etcd_client::Client::connect([endpoint], options).await?;
    client.role_add(ROLE).await?;
    client.role_grant_permission(ROLE, Permission::read_write(crate::keys::ROOT).with_prefix()).await?;
    client.user_add("root", auth.root_password.as_str(), None).await?;
    client.user_grant_role("root", "root").await?;
    client.user_add(auth.user.as_str(), auth.password.as_str(), None).await?;
    client.user_grant_role(auth.user.as_str(), ROLE).await?;
    client.auth_enable().await?;
    Ok(())
}

pub(crate) fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_else(|e| format!("(no log: {e})"))
}
