//! TEMPORARY STUB — replaced by the real backend.
#![allow(dead_code, unused_variables, clippy::unused_self)]
use std::path::{Path, PathBuf};
pub struct DirAttrs {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    New,
    Adopted,
}
#[derive(Debug)]
pub enum Archived {
    To(String),
    Missing,
}
#[derive(Debug)]
pub enum Removed {
    Removed { entries: u64 },
    Missing,
}
pub struct Capacity {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
}
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct StorageError;
pub struct MountedExport {
    root: PathBuf,
}
impl MountedExport {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn create_volume(
        &self,
        pv_name: &str,
        path: &[String],
        attrs: &DirAttrs,
    ) -> Result<Created, StorageError> {
        Err(StorageError)
    }
    pub fn finish_volume(&self, pv_name: &str) -> Result<(), StorageError> {
        Err(StorageError)
    }
    pub fn staged_volumes(&self) -> Result<Vec<String>, StorageError> {
        Err(StorageError)
    }
    pub fn archive_volume(&self, path: &[String]) -> Result<Archived, StorageError> {
        Err(StorageError)
    }
    pub fn delete_volume(&self, path: &[String], c: usize) -> Result<Removed, StorageError> {
        Err(StorageError)
    }
    pub fn capacity(&self) -> Result<Capacity, StorageError> {
        Err(StorageError)
    }
}
