//! `GET /v1/receipts/{request_id}`: a call's receipt as committed on chain, with its Merkle proof,
//! batch id, root and settlement transaction, so a payer can check a charge with
//! `Settlement.verifyReceipt(batchId, leaf, proof)`. A payer sees only its own calls (others are
//! 404); the admin key sees all. `status` is `unsettled`, `batched`, `settled`, `unsettleable`
//! (the chain rejected the record alone, e.g. its payer withdrew; `unsettleable_reason` says why;
//! it is retried once it would settle) or `written_off` (it stayed unsettleable past
//! `--write-off-after-secs`: released from the payer's debt, never settled; `written_off_at`).

use super::api_error::ApiError;
use super::auth::{bearer_of, is_admin_key, payer_of};
use super::AppState;
use crate::chain::MerkleTree;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

fn not_found(msg: &str) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found_error", msg).into_response()
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Response {
    let Some(meter) = state.meter.clone() else {
        return not_found("metering is not enabled on this server");
    };
    // SQLite reads wait behind the ledger writer's commits: on the blocking pool.
    let (st, id) = (state.clone(), request_id.clone());
    let found = tokio::task::spawn_blocking(move || lookup(&st, &meter, &headers, &id))
        .await
        .unwrap_or_else(|e| {
            Err(crate::error::Error::Internal(format!(
                "receipt lookup: {e}"
            )))
        });
    match found {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => not_found(&format!("no receipt for request `{request_id}`")),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn lookup(
    state: &AppState,
    meter: &crate::ledger::Meter,
    headers: &HeaderMap,
    request_id: &str,
) -> crate::Result<Option<serde_json::Value>> {
    let Some(r) = meter.store.get(request_id)? else {
        return Ok(None);
    };
    let key = bearer_of(headers);
    let is_admin = is_admin_key(&state.opts, key);
    let own = key
        .and_then(|k| payer_of(&state.opts, k))
        .and_then(|p| p.parse::<alloy::primitives::Address>().ok())
        == Some(r.payer);
    if !state.opts.api_keys.is_empty() && !is_admin && !own {
        return Ok(None);
    }
    let (mut status, mut batch) = ("unsettled", serde_json::Value::Null);
    if let Some((id, index)) = r.batch {
        let b = meter.store.batch(id)?;
        let leaves = meter.store.batch_leaves(id)?;
        let tree = MerkleTree::new(leaves);
        let proof = tree
            .as_ref()
            .and_then(|t| t.proof(index as usize))
            .unwrap_or_default();
        let settled = b.as_ref().and_then(|b| b.settled);
        status = if settled.is_some() {
            "settled"
        } else {
            "batched"
        };
        batch = json!({
            "batch_id": id.0,
            "index": index,
            "merkle_root": tree.map(|t| t.root()),
            "proof": proof,
            "call_count": b.as_ref().map(|b| b.call_count),
            "settlement_tx": settled.map(|s| s.tx_hash),
            "block_number": settled.and_then(|s| s.block_number),
        });
    }
    if r.unsettleable.is_some() {
        status = match r.written_off_at {
            Some(_) => "written_off",
            None => "unsettleable",
        };
    }
    Ok(Some(json!({
        "request_id": r.request_id,
        "status": status,
        "unsettleable_reason": r.unsettleable,
        "written_off_at": r.written_off_at,
        "receipt": {
            "receipt_id": r.receipt_id,
            "adapter_id": r.adapter_id,
            "payer": r.payer,
            "operator": r.operator,
            "input_tokens": r.prompt_tokens,
            "output_tokens": r.completion_tokens,
            "cost": r.amount.to_string(),
            "timestamp": r.created_at,
        },
        "leaf": r.leaf,
        "output_hash": r.output_hash,
        "finish_reason": r.finish,
        "adapters": r.adapters,
        "attribution": r.attribution,
        "splits": r.splits.iter().map(|(a, x)| json!({"to": a, "amount": x.to_string()})).collect::<Vec<_>>(),
        "batch": batch,
    })))
}
