//! PLACEHOLDER so the crate compiles while the embedded backend is written; the real one replaces this file.
use super::*;
pub struct EmbeddedStore;
impl EmbeddedStore { pub async fn open(_d: impl AsRef<std::path::Path>) -> Result<Self, StoreError> { todo!() } }
#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, _: &str) -> Result<Option<KeyValue>, StoreError> { todo!() }
    async fn range(&self, _: &str, _: usize) -> Result<RangeResult, StoreError> { todo!() }
    async fn count(&self, _: &str) -> Result<usize, StoreError> { todo!() }
    async fn txn(&self, _: Txn) -> Result<TxnOutcome, StoreError> { todo!() }
    async fn watch(&self, _: &str, _: i64) -> Result<WatchStream, StoreError> { todo!() }
    async fn lease_grant(&self, _: Duration) -> Result<LeaseId, StoreError> { todo!() }
    async fn lease_keep_alive(&self, _: LeaseId) -> Result<(), StoreError> { todo!() }
    async fn lease_revoke(&self, _: LeaseId) -> Result<(), StoreError> { todo!() }
    async fn revision(&self) -> Result<i64, StoreError> { todo!() }
    fn name(&self) -> &'static str { "embedded" }
}
