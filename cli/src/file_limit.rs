//! The connection limit fits the process's file limit.
//!
//! Every open connection is a file descriptor. With the common soft limit of 1,024 and the
//! default `--max-connections` of 10,000, idle peers would use up the descriptors long
//! before the connection limit turned any away: then `accept` fails for everyone,
//! workers and the store included. So the service raises its soft limit to the hard
//! limit, as a server should, and keeps the connection limit [`RESERVED`] below it.

/// Descriptors kept for everything but client connections: the store's files or etcd
/// connections, the artifact store, the listener, logs, outgoing calls.
pub const RESERVED: u64 = 256;

/// Raises the soft file limit to the hard one (or as far as the system allows); returns
/// the soft limit now in force, the old one if raising failed, or `None` where it cannot
/// be read.
pub fn raise() -> Option<u64> {
    let current = || rlimit::Resource::NOFILE.get().map(|(soft, _)| soft);
    rlimit::increase_nofile_limit(u64::MAX).or_else(|_| current()).ok()
}

/// The connection limit to use: `asked`, or less where the file limit `files` would not
/// leave [`RESERVED`] descriptors beside it.
pub fn connections_within(asked: usize, files: Option<u64>) -> usize {
    match files {
        Some(files) => asked.min(files.saturating_sub(RESERVED).max(1) as usize),
        None => asked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_room_below_the_file_limit() {
        assert_eq!(connections_within(10_000, Some(1_024)), 768);
        assert_eq!(connections_within(10_000, Some(1 << 20)), 10_000);
        assert_eq!(connections_within(10_000, None), 10_000);
        assert_eq!(connections_within(10_000, Some(100)), 1);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let files = raise().expect("a file limit on unix");
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!((files, soft), (hard, hard));
    }
}
