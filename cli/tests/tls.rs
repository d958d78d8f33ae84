//! TLS everywhere, with real processes: `serve` and `up` over TLS (grpcurl, the generated
//! Python client, the CLI, HTTP/1.1 for browsers), mutual TLS (workers and clients with
//! client certificates; connections without one refused), and `serve` on an etcd that
//! requires TLS client certificates and a user and password.
//!
//! The certificates are made here with rcgen: a throwaway CA, a server certificate for
//! `localhost` and 127.0.0.1, a client certificate, and a rogue CA's client certificate.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::Arc,
    time::Duration,
};

use deephardway::{
    ClientTls, Remote,
    v1::{GetJobRequest, JobState, ListModelsRequest, job_event::Event, model_service_client::ModelServiceClient},
};
use deephardway_service::local_etcd::{EtcdAuth, EtcdSecurity, EtcdTls, LocalEtcd};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::{Child, Command},
};

/// PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let rogue = new_ca("someone else's CA");
        let ca = new_ca("deephardway test CA");
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        write("ca.pem", ca.pem());
        let (cert, key) = leaf(&ca, vec!["localhost".into(), "127.0.0.1".into()], "deephardway server");
        write("server.pem", cert);
        write("server.key", key);
        let (cert, key) = leaf(&ca, vec![], "dhw-test-client");
        write("client.pem", cert);
        write("client.key", key);
        let (cert, key) = leaf(&rogue, vec![], "rogue-client");
        write("rogue.pem", cert);
        write("rogue.key", key);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Trusts the test CA; with `client`, presents the client certificate.
    fn client_tls(&self, client: bool) -> ClientTls {
        let (cert, key) = (self.path("client.pem"), self.path("client.key"));
        let identity = if client { (Some(cert.as_path()), Some(key.as_path())) } else { (None, None) };
        ClientTls::load(Some(&self.path("ca.pem")), identity.0, identity.1).unwrap()
    }
}

/// A local etcd that requires TLS client certificates from the test CA, and the user
/// `deephardway` (password `s3cret`) with read/write on `/dhw/` only.
async fn secured_etcd(pki: &Pki) -> LocalEtcd {
    let security = EtcdSecurity {
        tls: Some(EtcdTls {
            cert: pki.path("server.pem"),
            key: pki.path("server.key"),
            client_ca: pki.path("ca.pem"),
            client: pki.client_tls(true),
        }),
        auth: Some(EtcdAuth {
            root_password: "root-secret".into(),
            user: "deephardway".into(),
            password: "s3cret".into(),
        }),
    };
    LocalEtcd::start_secured(security).await.expect("etcd with TLS and auth")
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate (PEM) and key (PEM) signed by `issuer`.
fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, names: Vec<String>, common_name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, common_name);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `deephardway ARGS…`, with none of the TLS variables of the caller's environment.
fn deephardway<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(binary());
    command.args(args).env("RUST_LOG", "warn").stdin(Stdio::null()).kill_on_drop(true);
    for name in [
        "DEEPHARDWAY_CA_CERT",
        "DEEPHARDWAY_CLIENT_CERT",
        "DEEPHARDWAY_CLIENT_KEY",
        "DEEPHARDWAY_TLS_CERT",
        "DEEPHARDWAY_TLS_KEY",
        "DEEPHARDWAY_TLS_CLIENT_CA",
        "DEEPHARDWAY_SERVER",
        "DEEPHARDWAY_ETCD_USER",
        "DEEPHARDWAY_ETCD_PASSWORD",
    ] {
        command.env_remove(name);
    }
    command
}

/// Runs a command to its end (within `within`), capturing its output.
async fn finish(mut command: Command, within: Duration) -> Output {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    tokio::time::timeout(within, child.wait_with_output()).await.expect("the command ends in time").expect("output")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Waits until `remote` answers ListModels, and until `workers` workers serve the
/// diagnostic model.
async fn wait_for(remote: &Remote, workers: u32) {
    for _ in 0..300 {
        if let Ok(channel) = remote.connect().await {
            let mut models = ModelServiceClient::new(channel);
            if let Ok(list) = models.list_models(ListModelsRequest::default()).await
                && (workers == 0
                    || list.into_inner().models.iter().any(|m| m.name == "diagnostic" && m.workers >= workers))
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{remote} did not serve (with {workers} workers) within 15 s");
}

/// Whether a ListModels call through `remote` gets through.
async fn answers(remote: &Remote) -> Result<(), String> {
    let channel = remote.connect().await.map_err(|e| format!("{e:?}"))?;
    ModelServiceClient::new(channel).list_models(ListModelsRequest::default()).await.map_err(|e| format!("{e:?}"))?;
    Ok(())
}

fn serve_tls(pki: &Pki, port: u16, data: &Path, mutual: bool) -> Child {
    let mut command = deephardway(["serve", "--store", "embedded", "--listen", &format!("127.0.0.1:{port}")]);
    command.args(["--tls-cert", &pki.arg("server.pem"), "--tls-key", &pki.arg("server.key")]);
    if mutual {
        command.args(["--tls-client-ca", &pki.arg("ca.pem")]);
    }
    command.arg("--data-dir").arg(data).spawn().expect("spawn serve")
}

fn worker(url: &str, name: &str, tls: &[String], scratch: &Path) -> Child {
    let mut command = deephardway(["worker", "--server", url, "--name", name, "--device", "cpu", "--slots", "2"]);
    // No models: only the built-in diagnostic runner, so it starts at once.
    std::fs::create_dir_all(scratch.join("models")).unwrap();
    command.args(tls).arg("--models-dir").arg(scratch.join("models"));
    command.arg("--artifact-cache").arg(scratch.join("cache"));
    command.spawn().expect("spawn worker")
}

async fn grpcurl(args: Vec<String>) -> Output {
    let mut command = Command::new(tool("grpcurl", "GRPCURL"));
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    finish(command, Duration::from_secs(30)).await
}

/// A TLS connection to 127.0.0.1:`port` that offers only `alpn`, trusting the test CA.
async fn tls_connect(pki: &Pki, port: u16, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio_rustls::rustls::{
        ClientConfig, RootCertStore,
        crypto::ring,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    };
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(pki.path("ca.pem")).unwrap()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// Sends one HTTP/1.1 request (with `Connection: close`) and reads the whole answer.
async fn http1(pki: &Pki, port: u16, head: &str, body: &[u8]) -> String {
    let mut tls = tls_connect(pki, port, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN picks HTTP/1.1 for an HTTP/1.1 client");
    let request = format!("{head}\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await.expect("an answer");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_tls_answers_grpcurl_python_the_cli_and_http1() {
    let pki = Pki::new();
    let scratch = tempfile::tempdir().unwrap();
    let port = free_port();
    let _service = serve_tls(&pki, port, scratch.path(), false);
    let url = format!("https://localhost:{port}");
    let remote = Remote::new(&url).with_tls(pki.client_tls(false));
    wait_for(&remote, 0).await;
    let _worker = worker(&url, "tls-worker", &["--ca-cert".into(), pki.arg("ca.pem")], scratch.path());
    wait_for(&remote, 1).await;
    let target = format!("localhost:{port}");

    // grpcurl through reflection, trusting the CA; in plain text it gets nowhere.
    let listed = grpcurl(vec!["-cacert".into(), pki.arg("ca.pem"), target.clone(), "list".into()]).await;
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(
        String::from_utf8_lossy(&listed.stdout).lines().any(|l| l == "deephardway.v1.JobService"),
        "{}",
        text(&listed)
    );
    let plain =
        grpcurl(vec!["-plaintext".into(), "-connect-timeout".into(), "3".into(), target.clone(), "list".into()]);
    let plain = plain.await;
    assert!(!plain.status.success(), "plain text on the TLS port: {}", text(&plain));

    // The generated Python client over TLS.
    let python = tool("python", "DEEPHARDWAY_PYTHON");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new(python);
    command.arg(root.join("cli/tests/python/client.py")).arg(root.join("proto")).arg(&target).arg("3");
    command.args(["--ca-cert", &pki.arg("ca.pem")]).stdin(Stdio::null()).kill_on_drop(true);
    let ran = finish(command, Duration::from_secs(60)).await;
    assert!(ran.status.success(), "{}", text(&ran));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&ran.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.last().unwrap()["state"], "JOB_STATE_SUCCEEDED", "{}", text(&ran));

    // The CLI: submit and watch to the end over https, trusting the CA.
    let submit = |ca: bool| {
        let mut command = deephardway(["submit", "--server", &url, "--watch", "diagnostic", "--steps", "3"]);
        command.args(["--step-ms", "10"]);
        if ca {
            command.args(["--ca-cert", &pki.arg("ca.pem")]);
        }
        finish(command, Duration::from_secs(60))
    };
    let submitted = submit(true).await;
    assert!(submitted.status.success(), "{}", text(&submitted));
    // Without the CA, the system's roots do not know this certificate.
    let untrusted = submit(false).await;
    assert!(!untrusted.status.success(), "{}", text(&untrusted));
    assert!(String::from_utf8_lossy(&untrusted.stderr).contains("cannot reach"), "{}", text(&untrusted));
    // TLS files with an http:// URL are refused rather than ignored.
    let mut command = deephardway(["jobs", "--server", &format!("http://127.0.0.1:{port}")]);
    command.args(["--ca-cert", &pki.arg("ca.pem")]);
    let mixed = finish(command, Duration::from_secs(30)).await;
    assert!(
        !mixed.status.success() && String::from_utf8_lossy(&mixed.stderr).contains("is not https://"),
        "{}",
        text(&mixed)
    );

    // Browsers' paths over HTTP/1.1: the page, and grpc-web (an empty Health/Check).
    let page = http1(&pki, port, "GET / HTTP/1.1", b"").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let head = "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nContent-Type: application/grpc-web+proto";
    let health = http1(&pki, port, head, &[0, 0, 0, 0, 0]).await;
    assert!(health.starts_with("HTTP/1.1 200") && health.contains("grpc-status:0"), "{health}");
    // gRPC clients offer h2 first and get it.
    let h2 = tls_connect(&pki, port, &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_certified_workers_and_clients_in_and_no_one_else() {
    let pki = Pki::new();
    let scratch = tempfile::tempdir().unwrap();
    let port = free_port();
    let _service = serve_tls(&pki, port, scratch.path(), true);
    let url = format!("https://localhost:{port}");
    let remote = Remote::new(&url).with_tls(pki.client_tls(true));
    wait_for(&remote, 0).await;
    let client_args = [
        "--ca-cert",
        &pki.arg("ca.pem"),
        "--client-cert",
        &pki.arg("client.pem"),
        "--client-key",
        &pki.arg("client.key"),
    ]
    .map(String::from);
    let _worker = worker(&url, "mtls-worker", &client_args, scratch.path());
    wait_for(&remote, 1).await;

    let mut client = deephardway::v1::job_service_client::JobServiceClient::new(remote.connect().await.unwrap());
    let events = run(&mut client, diagnostic(3, 10), Duration::from_secs(30)).await;
    assert_eq!(started_names(&events), ["mtls-worker"]);
    assert!(matches!(events.last().and_then(|e| e.event.as_ref()), Some(Event::Result(_))), "{events:?}");

    // No client certificate, or one from another CA: refused.
    let anonymous = Remote::new(&url).with_tls(pki.client_tls(false));
    assert!(answers(&anonymous).await.is_err(), "a connection without a client certificate got through");
    let rogue = ClientTls::load(Some(&pki.path("ca.pem")), Some(&pki.path("rogue.pem")), Some(&pki.path("rogue.key")));
    let rogue = Remote::new(&url).with_tls(rogue.unwrap());
    assert!(answers(&rogue).await.is_err(), "a client certificate from another CA got through");
    let target = format!("localhost:{port}");
    let denied = grpcurl(vec![
        "-connect-timeout".into(),
        "3".into(),
        "-cacert".into(),
        pki.arg("ca.pem"),
        target.clone(),
        "list".into(),
    ])
    .await;
    assert!(!denied.status.success(), "{}", text(&denied));
    let mut args = vec!["-cacert".into(), pki.arg("ca.pem"), "-cert".into(), pki.arg("client.pem")];
    args.extend(["-key".into(), pki.arg("client.key"), target, "list".into()]);
    let allowed = grpcurl(args).await;
    assert!(allowed.status.success(), "{}", text(&allowed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_over_mutual_tls_runs_jobs_on_its_local_worker() {
    let pki = Pki::new();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("models")).unwrap();
    let port = free_port();
    let up = |client_cert: bool| {
        let mut command = deephardway(["up", "--listen", &format!("127.0.0.1:{port}"), "--device", "cpu"]);
        command.args(["--tls-cert", &pki.arg("server.pem"), "--tls-key", &pki.arg("server.key")]);
        command.args(["--tls-client-ca", &pki.arg("ca.pem")]);
        if client_cert {
            command.args(["--client-cert", &pki.arg("client.pem"), "--client-key", &pki.arg("client.key")]);
        }
        command.arg("--data-dir").arg(scratch.path().join("data"));
        command.arg("--models-dir").arg(scratch.path().join("models"));
        command.arg("--artifact-cache").arg(scratch.path().join("cache"));
        command
    };
    // With mutual TLS, the local worker needs a client certificate too: said at start.
    let refused = finish(up(false), Duration::from_secs(30)).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--client-cert"), "{}", text(&refused));

    let _up = up(true).spawn().expect("spawn up");
    let url = format!("https://127.0.0.1:{port}");
    wait_for(&Remote::new(&url).with_tls(pki.client_tls(true)), 1).await;
    let mut command =
        deephardway(["submit", "--server", &url, "--watch", "diagnostic", "--steps", "3", "--step-ms", "10"]);
    command.args(["--ca-cert", &pki.arg("ca.pem")]);
    command.args(["--client-cert", &pki.arg("client.pem"), "--client-key", &pki.arg("client.key")]);
    let submitted = finish(command, Duration::from_secs(60)).await;
    assert!(submitted.status.success(), "{}", text(&submitted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replicas_share_an_etcd_with_tls_and_auth() {
    let pki = Pki::new();
    let etcd = secured_etcd(&pki).await;
    let scratch = tempfile::tempdir().unwrap();
    let replica = |port: u16, password: Option<&str>, client_cert: bool| {
        let mut command = deephardway(["serve", "--listen", &format!("127.0.0.1:{port}"), "--worker-lease-s", "2"]);
        command.args(["--store", &format!("etcd:{}", etcd.endpoint()), "--etcd-ca-cert", &pki.arg("ca.pem")]);
        if client_cert {
            command.args(["--etcd-client-cert", &pki.arg("client.pem"), "--etcd-client-key", &pki.arg("client.key")]);
        }
        command.args(["--etcd-user", "deephardway"]);
        if let Some(password) = password {
            command.env("DEEPHARDWAY_ETCD_PASSWORD", password);
        }
        command.arg("--data-dir").arg(scratch.path().join(format!("data-{port}")));
        command.arg("--artifacts").arg(scratch.path().join("artifacts"));
        command
    };

    // What is wrong is said at start, with a non-zero exit.
    let wrong = finish(replica(free_port(), Some("wrong"), true), Duration::from_secs(30)).await;
    assert!(!wrong.status.success(), "{}", text(&wrong));
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("refused access as user deephardway") && said.contains(&etcd.endpoint()), "{}", text(&wrong));
    assert!(said.contains("authentication failed"), "{}", text(&wrong));
    let unset = finish(replica(free_port(), None, true), Duration::from_secs(30)).await;
    assert!(!unset.status.success(), "{}", text(&unset));
    assert!(String::from_utf8_lossy(&unset.stderr).contains("DEEPHARDWAY_ETCD_PASSWORD"), "{}", text(&unset));
    let no_cert = finish(replica(free_port(), Some("s3cret"), false), Duration::from_secs(30)).await;
    assert!(!no_cert.status.success(), "{}", text(&no_cert));
    assert!(String::from_utf8_lossy(&no_cert.stderr).contains(&etcd.endpoint()), "{}", text(&no_cert));

    // Two replicas on the same etcd: a job submitted on one runs on the other's worker.
    let (port_a, port_b) = (free_port(), free_port());
    let _a = replica(port_a, Some("s3cret"), true).spawn().expect("spawn replica a");
    let _b = replica(port_b, Some("s3cret"), true).spawn().expect("spawn replica b");
    let (url_a, url_b) = (format!("http://127.0.0.1:{port_a}"), format!("http://127.0.0.1:{port_b}"));
    wait_until_serving(&url_a).await;
    wait_until_serving(&url_b).await;
    let _worker = TestWorker::start(&url_a, "etcd-worker", 1);
    wait_for_workers(&url_a, 1).await;
    let mut on_b = jobs_client(&url_b).await;
    let job = create(&mut on_b, diagnostic(3, 10)).await;
    let mut on_a = jobs_client(&url_a).await;
    let events = collect_events(watch(&mut on_a, &job.id, 0).await.unwrap(), Duration::from_secs(30)).await.unwrap();
    assert_eq!(started_names(&events), ["etcd-worker"]);
    assert!(matches!(events.last().and_then(|e| e.event.as_ref()), Some(Event::Result(_))), "{events:?}");
    let seen = on_b.get_job(GetJobRequest { job_id: job.id.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(seen.into_inner().job.unwrap().state, JobState::Succeeded as i32);
}

/// The three-host deployment of the README's "Running it securely", on one machine: etcd
/// with TLS, client certificates and a `deephardway` user; two replicas listening on all
/// addresses with TLS and auth (so no --insecure) and the bootstrap admin key; the admin
/// makes a worker key and a submitter key with the CLI; a worker process connects with
/// its key; the submitter runs a job on one replica and reads it on the other. The
/// attacks the deployment must stop are tried against it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_secure_deployment_runs() {
    const ADMIN: &str = "readme-bootstrap-admin-key-0123456789abcdef";
    let pki = Pki::new();
    let etcd = secured_etcd(&pki).await;
    let scratch = tempfile::tempdir().unwrap();
    let replica = |port: u16| {
        let mut command = deephardway(["serve", "--listen", &format!("0.0.0.0:{port}"), "--auth", "on"]);
        command.args(["--tls-cert", &pki.arg("server.pem"), "--tls-key", &pki.arg("server.key")]);
        command.args(["--store", &format!("etcd:{}", etcd.endpoint()), "--etcd-ca-cert", &pki.arg("ca.pem")]);
        command.args(["--etcd-client-cert", &pki.arg("client.pem"), "--etcd-client-key", &pki.arg("client.key")]);
        command.args(["--etcd-user", "deephardway"]).env("DEEPHARDWAY_ETCD_PASSWORD", "s3cret");
        command.env("DEEPHARDWAY_ADMIN_KEY", ADMIN);
        command.arg("--data-dir").arg(scratch.path().join(format!("data-{port}")));
        command.arg("--artifacts").arg(scratch.path().join("artifacts"));
        command.spawn().expect("spawn a replica")
    };
    let (port_a, port_b) = (free_port(), free_port());
    let (_a, _b) = (replica(port_a), replica(port_b));
    let (url_a, url_b) = (format!("https://localhost:{port_a}"), format!("https://localhost:{port_b}"));
    let ca = pki.arg("ca.pem");
    // Health answers without a key, so a load balancer (or this test) can wait for it.
    for url in [&url_a, &url_b] {
        let remote = Remote::new(url.as_str()).with_tls(pki.client_tls(false));
        for attempt in 0.. {
            let healthy = match remote.connect().await {
                Ok(channel) => tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if healthy {
                break;
            }
            assert!(attempt < 300, "{url} did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let cli = |args: &[&str], key: &str| {
        let mut command = deephardway(args);
        command.args(["--ca-cert", &ca]).env("DEEPHARDWAY_KEY", key);
        finish(command, Duration::from_secs(60))
    };

    // The admin makes the keys, over https, with the bootstrap key.
    let made = cli(&["keys", "create", "--server", &url_a, "--name", "gpu-1", "--role", "worker"], ADMIN).await;
    assert!(made.status.success(), "{}", text(&made));
    let worker_key = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let made = cli(
        &["keys", "create", "--server", &url_b, "--name", "alice", "--role", "submitter", "--tenant", "research"],
        ADMIN,
    )
    .await;
    assert!(made.status.success(), "{}", text(&made));
    let alice = String::from_utf8_lossy(&made.stdout).trim().to_string();

    // A worker host connects to replica A with its worker key.
    let mut worker_command = deephardway(["worker", "--server", &url_a, "--name", "gpu-1", "--device", "cpu"]);
    std::fs::create_dir_all(scratch.path().join("models")).unwrap();
    worker_command.args(["--ca-cert", &ca]).env("DEEPHARDWAY_KEY", &worker_key);
    worker_command.arg("--models-dir").arg(scratch.path().join("models"));
    worker_command.arg("--artifact-cache").arg(scratch.path().join("cache"));
    let _worker = worker_command.spawn().expect("spawn the worker");

    // Alice runs a job on replica B (it waits in line until the worker is there).
    let mut ran = None;
    for _ in 0..100 {
        let out =
            cli(&["submit", "--server", &url_b, "--watch", "diagnostic", "--steps", "3", "--step-ms", "10"], &alice)
                .await;
        if out.status.success() {
            ran = Some(out);
            break;
        }
        // Before the worker has connected for the first time, no one serves the model.
        assert!(String::from_utf8_lossy(&out.stderr).contains("no connected worker"), "{}", text(&out));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ran = ran.expect("alice's job ran");
    // The generated Python client, over TLS with alice's key as call metadata.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut python = Command::new(tool("python", "DEEPHARDWAY_PYTHON"));
    python.arg(root.join("cli/tests/python/client.py")).arg(root.join("proto")).arg(format!("localhost:{port_b}"));
    python.args(["2", "--ca-cert", &ca, "--key", &alice]).stdin(Stdio::null()).kill_on_drop(true);
    let from_python = finish(python, Duration::from_secs(60)).await;
    assert!(from_python.status.success(), "{}", text(&from_python));
    let printed = String::from_utf8_lossy(&from_python.stdout).replace(": ", ":");
    assert!(printed.contains(r#""tenant":"research""#), "{}", text(&from_python));
    let listed = cli(&["jobs", "--server", &url_a], &alice).await;
    assert!(
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains("succeeded"),
        "{}",
        text(&listed)
    );

    // What the deployment stops: the worker key cannot submit or list; alice cannot
    // connect as a worker or manage keys; no key, no entry; plain text gets nowhere.
    let refused = cli(&["submit", "--server", &url_a, "diagnostic"], &worker_key).await;
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("may not call"),
        "{}",
        text(&refused)
    );
    let refused = cli(&["jobs", "--server", &url_a], &worker_key).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    let refused = cli(&["keys", "list", "--server", &url_a], &alice).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    let refused = cli(&["jobs", "--server", &url_a], "").await;
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("API key"),
        "{}",
        text(&refused)
    );
    let remote = Remote::new(url_a.as_str()).with_tls(pki.client_tls(false));
    let channel = remote.connect().await.unwrap();
    let hello = deephardway::worker::v1::Hello {
        name: "impostor".into(),
        slots: 1,
        models: vec![deephardway::worker::v1::ServedModel {
            name: "diagnostic".into(),
            kind: deephardway::v1::JobKind::Diagnostic as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    let first = deephardway::worker::v1::ConnectRequest {
        message: Some(deephardway::worker::v1::connect_request::Message::Hello(hello)),
    };
    let mut request = tonic::Request::new(futures::stream::iter([first]));
    request.metadata_mut().insert("authorization", format!("Bearer {alice}").parse().unwrap());
    let impostor =
        deephardway::worker::v1::worker_service_client::WorkerServiceClient::new(channel).connect(request).await;
    assert_eq!(impostor.err().map(|s| s.code()), Some(tonic::Code::PermissionDenied));
    let plain = answers(&Remote::new(format!("http://127.0.0.1:{port_a}"))).await;
    assert!(plain.is_err(), "plain text on the TLS port answered");
    drop(ran);
}
