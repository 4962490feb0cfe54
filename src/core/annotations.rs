//! Annotation and label keys the provisioner reads or writes, with who sets them and why.

/// Set by kube-controller-manager ≥ 1.23 on claims it hands to an external provisioner.
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The same, as kube-controller-manager ≤ 1.22 sets it (and newer ones still do).
pub const STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// Set by the scheduler on WaitForFirstConsumer claims once a pod using them has a node.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Legacy way to name a claim's class, still honoured by Kubernetes.
pub const STORAGE_CLASS_BETA: &str = "volume.beta.kubernetes.io/storage-class";
/// Marks a PV as made by a provisioner (sig-storage-lib-external-provisioner's annDynamicallyProvisioned);
/// nfs-subdir-external-provisioner writes only this one, which is how we adopt its volumes.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Our record of the volume's directory relative to the export, so release never depends on the
/// StorageClass or on re-deriving the path.
pub const DIRECTORY: &str = "nfs-subdir-provisioner/directory";
/// Our record of what release does (archive, delete, retain), fixed when the volume was made.
pub const ON_DELETE: &str = "nfs-subdir-provisioner/on-delete";
/// The finalizer of deletion protection (KEP-2644), under sig-storage-lib-external-provisioner's
/// name, so a PV of ours and one of an external-provisioner sidecar read alike.
pub const FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
/// On a StorageClass of ours: `"true"` lets claims of the class take a directory that already
/// exists at their path (an annotation, because a class's parameters cannot be changed).
pub const REUSE_EXISTING: &str = "nfs-subdir-provisioner/reuse-existing-directory";
/// Set on a protected PV together with the removal of [`FINALIZER`], once its directory is
/// released: what is left is deleting the PV.
pub const RELEASED: &str = "nfs-subdir-provisioner/released";
/// On a source claim while a clone of it is copied (external-provisioner's name, so the finalizer
/// reads alike whichever provisioner set it): the source is not deleted under the copy.
pub const CLONING_PROTECTION: &str = "provisioner.storage.kubernetes.io/cloning-protection";
/// Our record on a cloned volume's PV of the claim and volume it was copied from.
pub const CLONED_FROM: &str = "nfs-subdir-provisioner/cloned-from";
/// On a PV of ours while its directory takes more than its claim asks for (set and removed as
/// the usage measurements cross the request), so each crossing is told once, across restarts.
pub const OVER_CAPACITY: &str = "nfs-subdir-provisioner/over-capacity";
/// On a StorageClass of ours: `"true"` refuses a claim whose request exceeds the export's free
/// space (an annotation, like [`REUSE_EXISTING`], so an existing class can turn it on).
pub const CHECK_FREE_SPACE: &str = "nfs-subdir-provisioner/check-free-space";
