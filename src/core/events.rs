//! The one table of user-visible messages: each outcome becomes a Kubernetes Event with a reason
//! users of sig-storage-lib-external-provisioner already know.

use std::fmt::Display;

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
