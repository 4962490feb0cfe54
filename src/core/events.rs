//! The one table of user-visible messages: each outcome becomes a Kubernetes Event with a reason
//! users of sig-storage-lib-external-provisioner already know.

use std::fmt::Display;

use crate::core::clone::Copied;

/// A Kubernetes Event, independent of the client that publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// The API server caps an Event note at 1 kB.
const NOTE_MAX: usize = 1024;

fn event(warning: bool, reason: &'static str, action: &'static str, note: String) -> UserEvent {
    let note = if note.len() > NOTE_MAX {
        let mut cut = NOTE_MAX - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &note[..cut])
    } else {
        note
    };
    UserEvent {
        warning,
        reason,
        action,
        note,
    }
}

pub fn provisioning(claim: &str) -> UserEvent {
    event(
        false,
        "Provisioning",
        "Provision",
        format!("External provisioner is provisioning volume for claim {claim:?}"),
    )
}

pub fn provisioned(pv: &str, directory: &dyn Display) -> UserEvent {
    event(
        false,
        "ProvisioningSucceeded",
        "Provision",
        format!("Successfully provisioned volume {pv} in directory {directory}"),
    )
}

/// Used both for refusals (bad input; no retry until something changes) and for failures (retried).
pub fn provisioning_failed(error: &dyn Display, retrying: bool) -> UserEvent {
    let tail = if retrying {
        "; will retry"
    } else {
        "; fix the claim or its StorageClass"
    };
    event(
        true,
        "ProvisioningFailed",
        "Provision",
        format!("failed to provision volume: {error}{tail}"),
    )
}

pub fn archived(from: &dyn Display, to: &str) -> UserEvent {
    event(
        false,
        "VolumeArchived",
        "Archive",
        format!("Directory {from} archived as {to}"),
    )
}

pub fn delete_failed(error: &dyn Display) -> UserEvent {
    event(true, "VolumeFailedDelete", "Delete", format!("{error}"))
}

/// external-resizer's three reasons and notes, so resize alerts and dashboards carry over.
pub fn resizing(pv: &str) -> UserEvent {
    event(
        false,
        "Resizing",
        "Resize",
        format!("External resizer is resizing volume {pv}"),
    )
}

pub fn resized(pv: &str, capacity: &str) -> UserEvent {
    event(
        false,
        "VolumeResizeSuccessful",
        "Resize",
        format!("Resize volume succeeded: {pv} holds {capacity}"),
    )
}

pub fn resize_failed(pv: &str, error: &dyn Display) -> UserEvent {
    event(
        true,
        "VolumeResizeFailed",
        "Resize",
        format!("resize volume {pv:?} failed: {error}"),
    )
}

/// A claim an existing PV is pre-bound to: kube-controller-manager binds the two.
pub fn waiting_for_pre_bound(pv: &str) -> UserEvent {
    event(
        false,
        "WaitingForPreBoundVolume",
        "Provision",
        format!(
            "PersistentVolume {pv} is pre-bound to this claim (spec.claimRef); nothing is provisioned, \
             kube-controller-manager binds the two"
        ),
    )
}

/// Bytes as people read them: `5.6 GiB`, `312 KiB`, `17 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How far a clone's copy is, or that it waits for a slot.
pub fn cloning(source: &str, source_pv: &str, copied: &Copied, waiting: Option<usize>) -> UserEvent {
    let note = match waiting {
        Some(limit) => format!(
            "Copying claim {source:?} (volume {source_pv}) waits: {limit} clones are being copied (MAX_CONCURRENT_CLONES)"
        ),
        None => format!(
            "Copying claim {source:?} (volume {source_pv}): {} entries, {} so far",
            copied.entries,
            human_bytes(copied.bytes)
        ),
    };
    event(false, "Cloning", "Provision", note)
}

/// A clone was provisioned: what was copied, and what was not, and why.
pub fn cloned(pv: &str, directory: &dyn Display, source: &str, copied: &Copied) -> UserEvent {
    let mut note = format!(
        "Successfully provisioned volume {pv} in directory {directory} as a copy of claim {source:?}: {} entries, {}",
        copied.entries,
        human_bytes(copied.bytes)
    );
    if copied.kept > 0 {
        note.push_str(&format!(
            " ({} files kept from an interrupted attempt)",
            copied.kept
        ));
    }
    let left_out: Vec<String> = [
        (copied.fifos, "FIFO"),
        (copied.sockets, "socket"),
        (copied.devices, "device node"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}{}", if n == 1 { "" } else { "s" }))
    .collect();
    if !left_out.is_empty() {
        note.push_str(&format!(
            "; left out: {} (they mean nothing without their process or need privileges)",
            left_out.join(", ")
        ));
    }
    if copied.hard_links > 0 {
        note.push_str(&format!(
            "; {} names of hard-linked files copied as separate files",
            copied.hard_links
        ));
    }
    if copied.owners_refused {
        note.push_str(
            "; owners not kept: the server does not let the provisioner set owners (root_squash, or no \
             CAP_CHOWN), so the copy belongs to the user the server maps it to",
        );
    }
    event(false, "ProvisioningSucceeded", "Provision", note)
}

/// A volume's directory takes more than its claim asks for.
pub fn over_capacity(pv: &str, used: u64, capacity: u64) -> UserEvent {
    event(
        true,
        "VolumeOverCapacity",
        "Measure",
        format!(
            "Volume {pv} takes {} on the NFS server, more than the {} its claim asks for; NFS does not \
             enforce sizes, so it draws on the free space every volume of the export shares",
            human_bytes(used),
            human_bytes(capacity)
        ),
    )
}

/// A volume's directory is back within what its claim asks for.
pub fn within_capacity(pv: &str, used: u64, capacity: u64) -> UserEvent {
    event(
        false,
        "VolumeWithinCapacity",
        "Measure",
        format!(
            "Volume {pv} takes {} on the NFS server, within the {} its claim asks for again",
            human_bytes(used),
            human_bytes(capacity)
        ),
    )
}

pub fn reused(pv: &str, directory: &dyn Display) -> UserEvent {
    event(
        false,
        "ProvisioningSucceeded",
        "Provision",
        format!(
            "Successfully provisioned volume {pv} in the existing directory {directory} (reused, as the \
             StorageClass allows; its contents, owner and mode are as they were)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_note_carries_the_real_error_and_fits_the_api_limit() {
        let e = provisioning_failed(&"create directory x: permission denied", true);
        assert!(e.warning && e.reason == "ProvisioningFailed");
        assert!(e.note.contains("permission denied"));
        let long = provisioning_failed(&"é".repeat(2000), false);
        assert!(long.note.len() <= NOTE_MAX && long.note.ends_with("..."));
    }

    #[test]
    fn a_clone_says_what_it_copied_and_what_it_left_out_and_why() {
        let copied = Copied {
            entries: 1234,
            bytes: 6 * 1024 * 1024 * 1024 + 1,
            hard_links: 2,
            fifos: 1,
            sockets: 2,
            devices: 0,
            kept: 0,
            owners_refused: true,
        };
        let e = cloned("pvc-2", &"team-c-pvc-2", "src", &copied);
        assert_eq!(e.reason, "ProvisioningSucceeded");
        assert!(e.note.contains("1234 entries, 6.0 GiB"), "{}", e.note);
        assert!(e.note.contains("left out: 1 FIFO, 2 sockets"), "{}", e.note);
        assert!(e.note.contains("2 names of hard-linked files"), "{}", e.note);
        assert!(e.note.contains("owners not kept"), "{}", e.note);
        let plain = cloned("pvc-2", &"d", "src", &Copied::default());
        assert!(
            !plain.note.contains("left out") && !plain.note.contains("owners"),
            "{}",
            plain.note
        );
        assert!(
            cloning("src", "pvc-1", &copied, Some(2))
                .note
                .contains("MAX_CONCURRENT_CLONES")
        );
        assert_eq!(human_bytes(17), "17 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn crossings_of_the_request_are_a_warning_and_a_return_within_is_normal() {
        let over = over_capacity("pvc-1", 3 * 1024 * 1024, 1024 * 1024);
        assert!(over.warning && over.reason == "VolumeOverCapacity");
        assert!(
            over.note.contains("3.0 MiB") && over.note.contains("1.0 MiB"),
            "{}",
            over.note
        );
        let within = within_capacity("pvc-1", 10, 1024 * 1024);
        assert!(!within.warning && within.reason == "VolumeWithinCapacity");
    }

    #[test]
    fn reasons_match_sig_storage_lib() {
        assert_eq!(provisioning("ns/c").reason, "Provisioning");
        assert_eq!(provisioned("pvc-1", &"d").reason, "ProvisioningSucceeded");
        assert_eq!(delete_failed(&"x").reason, "VolumeFailedDelete");
        assert_eq!(archived(&"d", "archived-d").reason, "VolumeArchived");
        assert_eq!(resizing("pvc-1").reason, "Resizing");
        assert_eq!(resized("pvc-1", "5Mi").reason, "VolumeResizeSuccessful");
        let failed = resize_failed("pvc-1", &"denied");
        assert!(failed.warning && failed.reason == "VolumeResizeFailed");
    }
}
