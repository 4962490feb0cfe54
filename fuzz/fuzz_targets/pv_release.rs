//! A PersistentVolume as read back at release (annotations, nfs source, mountOptions all
//! attacker-shaped): never a panic, and a release plan only ever names a directory strictly
//! inside one of the configured exports, exactly where the PV points.
#![no_main]

use k8s_openapi::api::core::v1::PersistentVolume;
use libfuzzer_sys::fuzz_target;
use nfs_subdir_provisioner::core::export::Export;
use nfs_subdir_provisioner::core::naming::{relative_to_export, server_path};
use nfs_subdir_provisioner::core::volume::{VolumeDecision, decide_among};

fuzz_target!(|data: &[u8]| {
    let Ok(pv) = serde_json::from_slice::<PersistentVolume>(data) else {
        return;
    };
    let mounted = Export {
        server: "10.0.0.1".into(),
        path: "/export".into(),
    };
    let served = [
        Export {
            server: "10.0.0.2".into(),
            path: "/srv".into(),
        },
        Export {
            server: "10.0.0.2".into(),
            path: "/srv/k8s".into(),
        },
    ];
    let VolumeDecision::Release(plan) = decide_among(&pv, "example.com/nfs", Some(&mounted), &served, None)
    else {
        return;
    };
    assert!(plan.export == mounted || served.contains(&plan.export));
    let nfs = pv.spec.and_then(|s| s.nfs).expect("a release has an nfs source");
    assert_eq!(nfs.server, plan.export.server);
    assert_eq!(relative_to_export(&nfs.path, &plan.export.path).as_ref(), Ok(&plan.path));
    let on_server = server_path(&plan.export.path, &plan.path);
    assert!(on_server.starts_with(&plan.export.path) && on_server != plan.export.path);
});
