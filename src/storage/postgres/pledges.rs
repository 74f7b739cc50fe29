//! The cluster leader's pledge records (`cluster/inherit.rs`), written and pruned inside
//! the writer's transaction.

use super::tx::PgTx;
use crate::storage::tx::{PledgeWrite, Result, PLEDGE_KEEP_SECS};

/// Inserts the commit's record, prunes this leader's old ones, or deletes an inherited one
/// (`PledgeWrite`).
pub(super) fn write(tx: &PgTx<'_, '_>, w: &PledgeWrite) -> Result<()> {
    if let Some((record, last)) = &w.record {
        let last = i64::try_from(*last).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO cluster_pledges (node_id, incarnation, last_batch, body)
             VALUES ($1, $2, $3, $4)",
            &[&w.node, &w.incarnation, &last, record],
        )?;
    }
    if let Some(below) = w.prune_below {
        let below = i64::try_from(below).unwrap_or(i64::MAX);
        tx.execute(
            "DELETE FROM cluster_pledges WHERE node_id = $1 AND incarnation = $2
                 AND last_batch < $3 AND written_at < now() - make_interval(secs => $4)",
            &[&w.node, &w.incarnation, &below, &PLEDGE_KEEP_SECS],
        )?;
    }
    if let Some(id) = w.forget {
        tx.execute("DELETE FROM cluster_pledges WHERE id = $1", &[&id])?;
    }
    Ok(())
}
