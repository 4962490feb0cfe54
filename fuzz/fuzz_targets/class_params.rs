//! StorageClass parameters and mountOptions: never a panic; what is accepted is well-formed.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use nfs_subdir_provisioner::core::export::client_options;
use nfs_subdir_provisioner::core::naming::normalize_export_path;
use nfs_subdir_provisioner::core::params::ClassParams;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Lines of key=value are parameters; lines starting with '-' are mount options.
    let mut params = BTreeMap::new();
    let mut options = Vec::new();
    for line in text.lines() {
        if let Some(option) = line.strip_prefix('-') {
            options.push(option.to_owned());
        } else if let Some((k, v)) = line.split_once('=') {
            params.insert(k.to_owned(), v.to_owned());
        }
    }
    if let Ok(p) = ClassParams::parse(&params) {
        assert!(p.dir.mode <= 0o7777);
        if let Some(export) = p.export {
            assert!(!export.server.is_empty());
            assert_eq!(normalize_export_path(&export.path).as_deref(), Ok(export.path.as_str()));
        }
    }
    if let Ok(o) = client_options(&options) {
        assert!(!o.timeout.is_zero());
        assert!(o.port != Some(0) && o.mount_port != Some(0));
    }
});
