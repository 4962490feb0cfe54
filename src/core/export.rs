//! Which NFS export a volume lives on and how the provisioner reaches it. The export of
//! `NFS_SERVER`/`NFS_PATH` is reached through its mount at `NFS_MOUNT_PATH`; an export named by a
//! StorageClass's `server` and `share` parameters is reached directly, by a userspace NFS client
//! configured from the class's `mountOptions` (the options that concern a client; the rest are
//! for the kubelet's mount and are ignored here).

use std::time::Duration;

/// An NFS export: the server and the exported path PVs point at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Export {
    pub server: String,
    /// Normalised: absolute, no trailing '/', "/" stays "/".
    pub path: String,
}

impl std::fmt::Display for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.server, self.path)
    }
}

/// How the provisioner reaches an export.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Access {
    /// The export mounted at `NFS_MOUNT_PATH` (the `NFS_SERVER`/`NFS_PATH` export).
    Mounted,
    /// A userspace NFS client, no mount.
    Direct(ClientOptions),
}

/// The NFS protocol a direct client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NfsVersion {
    /// NFSv3, with the portmapper and MOUNT (the default, as before NFSv4.1 was served).
    #[default]
    V3,
    /// NFSv4.1 (also for `nfsvers=4` and `4.2`): one port, no portmapper or MOUNT.
    V4_1,
}

impl std::fmt::Display for NfsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NfsVersion::V3 => "NFSv3",
            NfsVersion::V4_1 => "NFSv4.1",
        })
    }
}

/// What a direct NFS client takes from `mountOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientOptions {
    /// `nfsvers`/`vers` (or `v3`, `v4.1`, ...): 3, or 4.1 for 4, 4.1 and 4.2.
    pub version: NfsVersion,
    /// NFS port; `None` asks the server's portmapper (NFSv3) or is 2049 (NFSv4.1).
    pub port: Option<u16>,
    /// MOUNT protocol port; `None` asks the server's portmapper. NFSv4.1 has no MOUNT.
    pub mount_port: Option<u16>,
    /// Deadline of one request (`timeo`, deciseconds). Default 10 s, below the kernel's 60 s on
    /// purpose: an operation is several requests, and a server that stopped answering must fail
    /// it well within FS_OPERATION_TIMEOUT rather than hang it.
    pub timeout: Duration,
    /// Further attempts, each on a fresh connection, after a request timed out or lost its
    /// connection (`retrans`; Linux default 2).
    pub retrans: u32,
    /// Source ports below 1024 (`resvport`, the kernel's default; `noresvport` turns it off).
    /// Falls back to an ephemeral port when binding one is not permitted.
    pub resvport: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            version: NfsVersion::V3,
            port: None,
            mount_port: None,
            timeout: Duration::from_secs(10),
            retrans: 2,
            resvport: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error(
        "mount option {0:?}: NFS versions 3 and 4.1 are served directly (the server and share parameters; 4 and 4.2          are served as 4.1); NFSv4.0 has no sessions: use nfsvers=4.1, or nfsvers=3"
    )]
    UnsupportedVersion(String),
    #[error("mount option {option:?}: the direct NFS client supports only {supported}")]
    Unsupported { option: String, supported: &'static str },
    #[error("mount option {option:?} is invalid: {expected}")]
    Invalid { option: String, expected: &'static str },
}

/// Reads the client options from a class's (or PV's) `mountOptions`. Entries may hold several
/// comma-separated options, as `mount -o` takes them. Later options win, as with mount(8).
pub fn client_options(mount_options: &[String]) -> Result<ClientOptions, OptionsError> {
    let mut options = ClientOptions::default();
    for option in mount_options.iter().flat_map(|o| o.split(',')) {
        let option = option.trim();
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (option, ""),
        };
        let invalid = |expected| OptionsError::Invalid {
            option: option.to_owned(),
            expected,
        };
        let port = || {
            value
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid("a port number from 1 to 65535"))
        };
        match key {
            "nfsvers" | "vers" if value == "3" => options.version = NfsVersion::V3,
            "v3" => options.version = NfsVersion::V3,
            "nfsvers" | "vers" if matches!(value, "4" | "4.1" | "4.2") => options.version = NfsVersion::V4_1,
            "v4" | "v4.1" | "v4.2" => options.version = NfsVersion::V4_1,
            "minorversion" if matches!(value, "1" | "2") => {}
            "nfsvers" | "vers" | "v2" | "v4.0" | "minorversion" => {
                return Err(OptionsError::UnsupportedVersion(option.to_owned()));
            }
            "port" => options.port = Some(port()?),
            "mountport" => options.mount_port = Some(port()?),
            "timeo" => {
                let deciseconds = value
                    .parse::<u64>()
                    .ok()
                    .filter(|d| *d > 0)
                    .ok_or_else(|| invalid("a positive number of deciseconds"))?;
                options.timeout = Duration::from_millis(deciseconds.saturating_mul(100));
            }
            "retrans" => {
                options.retrans = value
                    .parse::<u32>()
                    .map_err(|_| invalid("a number of retransmissions"))?;
            }
            "resvport" => options.resvport = true,
            "noresvport" => options.resvport = false,
            "proto" | "mountproto" if value == "tcp" => {}
            "proto" | "mountproto" => {
                return Err(OptionsError::Unsupported {
                    option: option.to_owned(),
                    supported: "proto=tcp",
                });
            }
            "sec" if value == "sys" => {}
            "sec" => {
                return Err(OptionsError::Unsupported {
                    option: option.to_owned(),
                    supported: "sec=sys",
                });
            }
            // hard, soft, noatime, rsize, nolock, … concern the kubelet's mount only.
            _ => {}
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Result<ClientOptions, OptionsError> {
        client_options(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn no_options_mean_portmapper_and_linux_defaults() {
        assert_eq!(opts(&[]).unwrap(), ClientOptions::default());
    }

    #[test]
    fn ports_deadlines_and_retries_are_read_from_any_entry() {
        let o = opts(&[
            "hard",
            "nfsvers=3,port=12049",
            "mountport=12048",
            "timeo=25",
            "retrans=5",
        ])
        .unwrap();
        assert_eq!(o.port, Some(12049));
        assert_eq!(o.mount_port, Some(12048));
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert_eq!(o.retrans, 5);
    }

    #[test]
    fn transport_and_security_are_checked_and_resvport_read() {
        assert!(!opts(&["noresvport"]).unwrap().resvport);
        assert!(opts(&["proto=tcp,sec=sys"]).is_ok());
        for bad in ["proto=udp", "sec=krb5"] {
            assert!(
                matches!(opts(&[bad]), Err(OptionsError::Unsupported { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn later_options_win() {
        assert_eq!(opts(&["port=1", "port=2"]).unwrap().port, Some(2));
    }

    #[test]
    fn nfs_v4_1_and_4_2_are_served_as_4_1_and_v4_0_is_refused_with_a_reason() {
        for v in ["nfsvers=4.1", "vers=4", "v4.2", "nfsvers=4,minorversion=1", "v4"] {
            assert_eq!(opts(&[v]).unwrap().version, NfsVersion::V4_1, "{v}");
        }
        for v in [
            "nfsvers=4.0",
            "v4.0",
            "nfsvers=4,minorversion=0",
            "vers=2",
            "nfsvers=5",
        ] {
            let err = opts(&[v]).unwrap_err();
            assert!(matches!(err, OptionsError::UnsupportedVersion(_)), "{v}");
            assert!(err.to_string().contains("4.1"), "{err}");
        }
        assert_eq!(opts(&["vers=3", "v3"]).unwrap().version, NfsVersion::V3);
        assert_eq!(opts(&[]).unwrap().version, NfsVersion::V3);
        // Later options win, the version too.
        assert_eq!(
            opts(&["nfsvers=4.1", "nfsvers=3"]).unwrap().version,
            NfsVersion::V3
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in ["port=0", "port=70000", "mountport=x", "timeo=0", "retrans=-1"] {
            assert!(matches!(opts(&[bad]), Err(OptionsError::Invalid { .. })), "{bad}");
        }
    }
}
