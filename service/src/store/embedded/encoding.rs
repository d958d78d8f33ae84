//! The bytes on disk: a key's entry (revisions, lease, value) and a revision's changes
//! in the log. Fixed-width little-endian integers and length-prefixed bytes; redb keeps
//! them durable, these functions only lay them out.

use super::internal;
use crate::store::{EventKind, KeyValue, StoreError, WatchEvent};

/// A stored key's metadata and value.
pub(super) struct Entry {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.value.len());
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.mod_revision.to_le_bytes());
        out.extend_from_slice(&self.lease.to_le_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, StoreError> {
        if bytes.len() < 24 {
            return Err(internal("corrupt entry"));
        }
        let int = |i: usize| i64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Ok(Entry { create_revision: int(0), mod_revision: int(8), lease: int(16), value: bytes[24..].to_vec() })
    }

    pub fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

/// Encodes one revision's changes: per change, kind, key, and for puts the entry.
pub(super) fn encode_changes(changes: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for change in changes {
        out.push(if change.kind == EventKind::Put { 1 } else { 0 });
        out.extend_from_slice(&(change.kv.key.len() as u32).to_le_bytes());
        out.extend_from_slice(change.kv.key.as_bytes());
        let entry = Entry {
            create_revision: change.kv.create_revision,
            mod_revision: change.kv.mod_revision,
            lease: change.kv.lease,
            value: change.kv.value.clone(),
        }
        .encode();
        out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        out.extend_from_slice(&entry);
    }
    out
}

pub(super) fn decode_changes(mut bytes: &[u8]) -> Result<Vec<WatchEvent>, StoreError> {
    let mut changes = Vec::new();
    let take = |bytes: &mut &[u8], n: usize| -> Result<Vec<u8>, StoreError> {
        if bytes.len() < n {
            return Err(internal("corrupt log"));
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Ok(head.to_vec())
    };
    while !bytes.is_empty() {
        let kind = if take(&mut bytes, 1)?[0] == 1 { EventKind::Put } else { EventKind::Delete };
        let len = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes")) as usize;
        let key = String::from_utf8(take(&mut bytes, len)?).map_err(internal)?;
        let len = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes")) as usize;
        let entry = Entry::decode(&take(&mut bytes, len)?)?;
        changes.push(WatchEvent { kind, kv: entry.into_kv(key) });
    }
    Ok(changes)
}
