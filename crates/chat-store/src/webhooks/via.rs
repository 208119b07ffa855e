//! `impl WebhookStore` for both backends, written once (like `crate::store_calls`).

/// `impl WebhookStore for $store`, where `$store` has the fields `inner` (an `Arc` of the
/// backend's state) and `runtime` (the runtime every call runs on; see
/// [`crate::support::detached`]).
///
/// `$read!(inner, statement(args))` must run `statements::<backend>::statement(conn, args)`
/// on a pooled connection and answer `Result<_, StoreError>`; `$write!(inner,
/// statement(args))` the same in a write transaction.
macro_rules! webhook_store_via {
    ($store:ty, read: $read:ident, write: $write:ident) => {
        #[async_trait::async_trait]
        impl $crate::webhooks::WebhookStore for $store {
            async fn scan_cursor(
                &self,
            ) -> Result<Option<chat_domain::Timestamp>, $crate::error::StoreError> {
                let inner = self.inner.clone();
                $crate::support::detached(
                    &self.runtime,
                    async move { $read!(inner, scan_cursor()) },
                )
                .await
            }

            async fn forget_user(
                &self,
                user: &chat_domain::UserId,
            ) -> Result<u64, $crate::error::StoreError> {
                let (inner, user) = (self.inner.clone(), user.to_string());
                $crate::support::detached(&self.runtime, async move {
                    $write!(inner, forget_user(&user))
                })
                .await
            }

            async fn save_scan_cursor(
                &self,
                at: chat_domain::Timestamp,
            ) -> Result<(), $crate::error::StoreError> {
                let inner = self.inner.clone();
                let at = at.unix_micros();
                $crate::support::detached(&self.runtime, async move {
                    $write!(inner, save_scan_cursor(at))
                })
                .await
            }

            async fn unseen_between(
                &self,
                after: chat_domain::Timestamp,
                up_to: chat_domain::Timestamp,
            ) -> Result<Vec<$crate::webhooks::Candidate>, $crate::error::StoreError> {
                let inner = self.inner.clone();
                let (after, up_to) = (after.unix_micros(), up_to.unix_micros());
                $crate::support::detached(&self.runtime, async move {
                    $read!(inner, unseen_between(after, up_to))
                })
                .await
            }

            async fn burst_page(
                &self,
                after: Option<$crate::webhooks::BurstKey>,
                limit: u32,
            ) -> Result<$crate::webhooks::BurstPage, $crate::error::StoreError> {
                let inner = self.inner.clone();
                $crate::support::detached(&self.runtime, async move {
                    $read!(inner, burst_page(after, limit.max(1)))
                })
                .await
            }

            async fn prune_bursts(
                &self,
                keys: &[$crate::webhooks::BurstKey],
            ) -> Result<u64, $crate::error::StoreError> {
                if keys.is_empty() {
                    return Ok(0);
                }
                let (inner, keys) = (self.inner.clone(), keys.to_vec());
                $crate::support::detached(&self.runtime, async move {
                    $write!(inner, prune_bursts(&keys))
                })
                .await
            }

            async fn due(
                &self,
                candidates: &[$crate::webhooks::Candidate],
                now: chat_domain::Timestamp,
                rule: $crate::webhooks::DueRule,
            ) -> Result<Vec<$crate::webhooks::DueBurst>, $crate::error::StoreError> {
                let mut due = Vec::new();
                for chunk in candidates.chunks($crate::webhooks::statements::DUE_CHUNK) {
                    let (inner, chunk) = (self.inner.clone(), chunk.to_vec());
                    due.extend(
                        $crate::support::detached(&self.runtime, async move {
                            $read!(inner, due(&chunk, now, rule))
                        })
                        .await?,
                    );
                }
                Ok(due)
            }

            async fn open_bursts(
                &self,
                bursts: &[$crate::webhooks::DueBurst],
                now: chat_domain::Timestamp,
                rule: $crate::webhooks::DueRule,
            ) -> Result<Vec<$crate::webhooks::Delivery>, $crate::error::StoreError> {
                let mut made = Vec::new();
                for chunk in bursts.chunks($crate::webhooks::OPEN_CHUNK) {
                    let (inner, chunk) = (self.inner.clone(), chunk.to_vec());
                    let ids: Vec<String> = chunk
                        .iter()
                        .map(|_| uuid::Uuid::new_v4().hyphenated().to_string())
                        .collect();
                    made.extend(
                        $crate::support::detached(&self.runtime, async move {
                            $write!(inner, open_bursts(&chunk, now, rule, &ids))
                        })
                        .await?,
                    );
                }
                Ok(made)
            }

            async fn claim(
                &self,
                now: chat_domain::Timestamp,
                lease_until: chat_domain::Timestamp,
                limit: u32,
            ) -> Result<Vec<$crate::webhooks::Delivery>, $crate::error::StoreError> {
                if limit == 0 {
                    return Ok(Vec::new());
                }
                let inner = self.inner.clone();
                let (now, lease_until) = (now.unix_micros(), lease_until.unix_micros());
                $crate::support::detached(&self.runtime, async move {
                    // A read first: a sender with nothing due writes nothing.
                    if !$read!(inner, any_due(now))? {
                        return Ok(Vec::new());
                    }
                    $write!(inner, claim(now, lease_until, limit))
                })
                .await
            }

            async fn message_body(
                &self,
                room: &chat_domain::RoomId,
                seq: chat_domain::Seq,
            ) -> Result<Option<String>, $crate::error::StoreError> {
                let (inner, room) = (self.inner.clone(), room.clone());
                $crate::support::detached(&self.runtime, async move {
                    $read!(inner, message_body(&room, seq))
                })
                .await
            }

            async fn delivered(
                &self,
                delivery_ids: &[String],
            ) -> Result<(), $crate::error::StoreError> {
                for chunk in delivery_ids.chunks($crate::webhooks::statements::DELETE_CHUNK) {
                    let (inner, chunk) = (self.inner.clone(), chunk.to_vec());
                    $crate::support::detached(&self.runtime, async move {
                        $write!(inner, delivered(&chunk))
                    })
                    .await?;
                }
                Ok(())
            }

            async fn retry_at(
                &self,
                delivery_id: &str,
                lease: chat_domain::Timestamp,
                at: chat_domain::Timestamp,
                error: &str,
            ) -> Result<bool, $crate::error::StoreError> {
                let (inner, id, error) =
                    (self.inner.clone(), delivery_id.to_owned(), error.to_owned());
                let (lease, at) = (lease.unix_micros(), at.unix_micros());
                $crate::support::detached(&self.runtime, async move {
                    $write!(inner, retry_at(&id, lease, at, &error))
                })
                .await
            }

            async fn give_up(
                &self,
                delivery_id: &str,
                lease: chat_domain::Timestamp,
                now: chat_domain::Timestamp,
                error: &str,
            ) -> Result<bool, $crate::error::StoreError> {
                let (inner, id, error) =
                    (self.inner.clone(), delivery_id.to_owned(), error.to_owned());
                let (lease, now) = (lease.unix_micros(), now.unix_micros());
                $crate::support::detached(&self.runtime, async move {
                    $write!(inner, give_up(&id, lease, now, &error))
                })
                .await
            }

            async fn counts(
                &self,
            ) -> Result<$crate::webhooks::OutboxCounts, $crate::error::StoreError> {
                let inner = self.inner.clone();
                $crate::support::detached(&self.runtime, async move { $read!(inner, counts()) })
                    .await
            }

            async fn failed(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::webhooks::Delivery>, $crate::error::StoreError> {
                let inner = self.inner.clone();
                $crate::support::detached(
                    &self.runtime,
                    async move { $read!(inner, failed(limit)) },
                )
                .await
            }
        }
    };
}

pub(crate) use webhook_store_via;
