//! A real etcd for tests: [`LocalEtcd`] (the `etcd` binary on free loopback ports with a
//! throwaway data dir, killed on drop), with failures turned into panics so that a test
//! without etcd fails loudly instead of skipping. Every test starts its own, so tests and
//! test binaries run side by side.

use deephardway_service::local_etcd::LocalEtcd;

/// A running etcd, single member, listening on 127.0.0.1.
pub struct EtcdServer(LocalEtcd);

impl EtcdServer {
    /// Starts etcd and waits until it serves requests. Panics, with etcd's log or with how
    /// to install etcd, if it cannot.
    pub async fn start() -> EtcdServer {
        match LocalEtcd::start().await {
            Ok(etcd) => EtcdServer(etcd),
            Err(e) => panic!("{e:#}"),
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        self.0.endpoint()
    }

    /// etcd's log so far, for a failing test's message.
    pub fn log(&self) -> String {
        self.0.log()
    }
}
