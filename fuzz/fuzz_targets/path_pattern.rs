//! pathPattern rendering with hostile claim values: never a panic, never a path outside the
//! export, and the path written into the PV maps back to exactly the directory made.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use nfs_subdir_provisioner::core::naming::{
    ClaimNames, check_single_component, relative_to_export, render_pattern, server_path,
};

fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xff: pattern, namespace, name, label value, annotation value.
    let mut fields = data.split(|b| *b == 0xff).map(String::from_utf8_lossy);
    let mut next = || fields.next().unwrap_or_default().into_owned();
    let (pattern, namespace, name, label, annotation) = (next(), next(), next(), next(), next());
    let labels = BTreeMap::from([("app".to_owned(), label)]);
    let annotations = BTreeMap::from([("example.com/dir".to_owned(), annotation)]);
    let claim = ClaimNames {
        namespace: &namespace,
        name: &name,
        labels: &labels,
        annotations: &annotations,
        pv_name: "pvc-0d9e2a6c-3b1f-4f7a-9c55-0123456789ab",
    };
    let Ok(path) = render_pattern(&pattern, &claim) else {
        return;
    };
    assert!(!path.components().is_empty());
    for component in path.components() {
        assert!(check_single_component(component).is_ok(), "{component:?}");
    }
    for export in ["/", "/export", "/srv/nfs/k8s"] {
        let on_server = server_path(export, &path);
        assert_eq!(relative_to_export(&on_server, export).expect("inside the export"), path);
    }
});
