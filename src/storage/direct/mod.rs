//! Direct NFS: an export reached by a userspace NFSv3 client, no mount, no privileges.

use crate::core::export::{ClientOptions, Export};
use crate::storage::{Archived, Backend, Capacity, Created, DirAttrs, OpFuture, Removed};

#[derive(Debug, thiserror::Error)]
#[error("direct NFS to {export} is not available yet")]
pub struct DirectError {
    export: String,
}

pub struct DirectBackend {
    export: Export,
    #[allow(dead_code)]
    options: ClientOptions,
}

impl DirectBackend {
    pub fn new(export: Export, options: ClientOptions) -> Self {
        DirectBackend { export, options }
    }

    fn unavailable<T: Send + 'static>(&self) -> OpFuture<'static, T> {
        let export = self.export.to_string();
        Box::pin(async move { Err(DirectError { export }.into()) })
    }
}

impl Backend for DirectBackend {
    fn create_volume<'a>(
        &'a self,
        _pv: &'a str,
        _path: &'a [String],
        _attrs: DirAttrs,
    ) -> OpFuture<'a, Created> {
        self.unavailable()
    }
    fn finish_volume<'a>(&'a self, _pv: &'a str) -> OpFuture<'a, ()> {
        self.unavailable()
    }
    fn staged_volumes(&self) -> OpFuture<'_, Vec<String>> {
        self.unavailable()
    }
    fn archive_volume<'a>(&'a self, _path: &'a [String]) -> OpFuture<'a, Archived> {
        self.unavailable()
    }
    fn delete_volume<'a>(&'a self, _path: &'a [String], _concurrency: usize) -> OpFuture<'a, Removed> {
        self.unavailable()
    }
    fn capacity(&self) -> OpFuture<'_, Capacity> {
        self.unavailable()
    }
    fn probe_writable<'a>(&'a self, _tag: &'a str) -> OpFuture<'a, ()> {
        self.unavailable()
    }
}
