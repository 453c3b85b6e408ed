//! Bulk operations of any size: split into API-sized requests (each retried by the client's
//! [`crate::RetryPolicy`] while the server rate-limits or fails), the keys a request's answer
//! reports unsuccessful sent again with backoff, and the keys that still failed reported
//! rather than lost.

use tokio::time::Instant;

use crate::{BulkItem, Client, Error, Result};

/// Most items of one bulk write or delete request (Workers KV's limit).
pub const MAX_BULK_ITEMS: usize = 10_000;

/// Largest body of one bulk request (Workers KV's limit is 100 MB).
pub const MAX_BULK_BODY_BYTES: usize = 100_000_000;

/// Told how many items each finished request covered, for a progress bar.
pub trait Progress {
    /// `items` more items are done (written, deleted, or given up on).
    fn advance(&self, items: u64);
}

impl Progress for () {
    fn advance(&self, _: u64) {}
}

/// What a bulk operation of any size did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkReport {
    /// Items the server took.
    pub succeeded: u64,
    /// Keys that still failed after every retry.
    pub failed_keys: Vec<String>,
    /// Requests sent again for the keys a request's answer reported unsuccessful.
    pub retries: u64,
    /// The last error behind `failed_keys`, when there was one.
    pub last_error: Option<String>,
}

/// Splits `items` into requests of at most `max_items` items and `max_bytes` of JSON body,
/// keeping their order. An item larger than `max_bytes` on its own is an error: no request
/// could carry it.
pub fn batches<T: serde::Serialize>(
    items: impl IntoIterator<Item = T>,
    max_items: usize,
    max_bytes: usize,
) -> impl Iterator<Item = Result<Vec<T>>> {
    let mut items = items.into_iter().peekable();
    // The JSON array's brackets.
    const FRAME: usize = 2;
    std::iter::from_fn(move || {
        let mut batch = Vec::new();
        let mut bytes = FRAME;
        while batch.len() < max_items {
            let Some(item) = items.peek() else { break };
            let size = match serde_json::to_vec(item) {
                Ok(encoded) => encoded.len() + 1,
                Err(e) => return Some(Err(Error::Invalid(format!("cannot encode an item: {e}")))),
            };
            if FRAME + size > max_bytes {
                return Some(Err(Error::Invalid(format!(
                    "an item of {size} bytes is larger than one bulk request may be ({max_bytes} bytes)"
                ))));
            }
            if bytes + size > max_bytes {
                break;
            }
            bytes += size;
            batch.push(items.next().expect("peeked"));
        }
        (!batch.is_empty()).then_some(Ok(batch))
    })
}

/// The key a bulk item addresses.
trait Keyed: serde::Serialize + Clone {
    fn key(&self) -> &str;
}

impl Keyed for BulkItem {
    fn key(&self) -> &str {
        &self.key
    }
}

impl Keyed for String {
    fn key(&self) -> &str {
        self
    }
}

impl Client {
    /// Writes any number of items, in API-sized requests, retrying rate-limited keys and
    /// failed requests. An error the server gives for the request itself (a bad item) stops
    /// the operation: retrying would not change it.
    pub async fn bulk_put_all(
        &self,
        namespace_id: &str,
        items: impl IntoIterator<Item = BulkItem>,
        progress: &dyn Progress,
    ) -> Result<BulkReport> {
        self.bulk_all(items, progress, |batch| async move {
            self.bulk_put(namespace_id, &batch).await
        })
        .await
    }

    /// Deletes any number of keys, in API-sized requests, with the same retries.
    pub async fn bulk_delete_all(
        &self,
        namespace_id: &str,
        keys: impl IntoIterator<Item = String>,
        progress: &dyn Progress,
    ) -> Result<BulkReport> {
        self.bulk_all(keys, progress, |batch| async move {
            self.bulk_delete(namespace_id, &batch).await
        })
        .await
    }

    async fn bulk_all<T, F, Fut>(
        &self,
        items: impl IntoIterator<Item = T>,
        progress: &dyn Progress,
        send: F,
    ) -> Result<BulkReport>
    where
        T: Keyed,
        F: Fn(Vec<T>) -> Fut,
        Fut: std::future::Future<Output = Result<crate::BulkResult>>,
    {
        let mut report = BulkReport::default();
        for batch in batches(items, MAX_BULK_ITEMS, MAX_BULK_BODY_BYTES) {
            let mut pending = batch?;
            let total = pending.len() as u64;
            let started = Instant::now();
            let mut attempt = 0;
            while !pending.is_empty() {
                if attempt > 0 {
                    let delay = self.retry.delay(attempt);
                    if started.elapsed() + delay > self.retry.give_up_after {
                        break;
                    }
                    report.retries += 1;
                    tokio::time::sleep(delay).await;
                }
                attempt += 1;
                match send(pending.clone()).await {
                    Ok(result) => {
                        report.succeeded += result.successful_key_count;
                        if result.unsuccessful_keys.is_empty() {
                            pending.clear();
                        } else {
                            // Only the keys the server did not take go again.
                            let refused: std::collections::HashSet<&str> = result
                                .unsuccessful_keys
                                .iter()
                                .map(String::as_str)
                                .collect();
                            pending.retain(|item| refused.contains(item.key()));
                            report.last_error =
                                Some("the server refused some keys (rate limited)".into());
                        }
                    }
                    // The request itself was already retried as long as the policy allows.
                    Err(e) if e.is_retryable() || matches!(e, Error::GaveUp { .. }) => {
                        report.last_error = Some(e.to_string());
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            report
                .failed_keys
                .extend(pending.drain(..).map(|item| item.key().to_owned()));
            progress.advance(total);
        }
        if report.failed_keys.is_empty() {
            report.last_error = None;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value_len: usize) -> BulkItem {
        BulkItem {
            key: key.into(),
            value: "v".repeat(value_len),
            base64: false,
            expiration: None,
            expiration_ttl: None,
            metadata: None,
        }
    }

    #[test]
    fn batches_respect_both_limits_and_keep_order() {
        let items: Vec<BulkItem> = (0..25).map(|i| item(&format!("k{i:02}"), 10)).collect();
        let by_count: Vec<Vec<BulkItem>> = batches(items.clone(), 10, 1_000_000)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(
            by_count.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        let one = serde_json::to_vec(&items[0]).unwrap().len() + 1;
        let by_size: Vec<Vec<BulkItem>> = batches(items.clone(), 100, 2 + one * 4)
            .collect::<Result<_>>()
            .unwrap();
        assert!(by_size.iter().all(|b| b.len() == 4 || b.len() == 1));
        for batch in &by_size {
            assert!(serde_json::to_vec(batch).unwrap().len() <= 2 + one * 4);
        }
        let flattened: Vec<BulkItem> = by_size.into_iter().flatten().collect();
        assert_eq!(flattened, items);
    }

    #[test]
    fn an_item_too_large_for_any_request_is_an_error() {
        let mut all = batches(vec![item("big", 500)], 10, 100);
        assert!(matches!(all.next(), Some(Err(Error::Invalid(_)))));
    }
}
