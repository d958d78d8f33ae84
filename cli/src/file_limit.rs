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

/// Raises the soft file limit to the hard one; returns the soft limit now in force, or
/// `None` where it cannot be read.
pub fn raise() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit into the struct it is given, which lives
        // for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            // SAFETY: setrlimit reads the struct it is given, which lives for the call.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        Some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    None
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
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as in `raise`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!((files, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }
}
