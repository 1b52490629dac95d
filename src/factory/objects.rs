//! The OpenAI object shapes the factory answers with (`file`, `fine_tuning.job`,
//! `fine_tuning.job.event`, `fine_tuning.job.checkpoint`, and `list` pages with `has_more`), as
//! the openai-python SDK's types declare them; `created_at`/`finished_at` are Unix seconds.

use super::store::{CheckpointRow, EventRow, FileRow, JobRow, Page};
use serde_json::{json, Value};

pub fn file(f: &FileRow) -> Value {
    json!({
        "id": f.id.as_str(),
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": null,
        "expires_at": null,
    })
}

pub fn file_deleted(id: &str) -> Value {
    json!({"id": id, "object": "file", "deleted": true})
}

pub fn job(j: &JobRow) -> Value {
    let s = &j.spec;
    let hp = s.hyperparameters();
    json!({
        "id": j.id.as_str(),
        "object": "fine_tuning.job",
        "created_at": j.created_at,
        "error": j.error,
        "fine_tuned_model": j.fine_tuned_model,
        "finished_at": j.finished_at,
        "hyperparameters": hp,
        "model": s.model,
        "organization_id": "openlora",
        "result_files": [],
        "seed": s.seed,
        "status": j.status.as_str(),
        "trained_tokens": j.trained_tokens,
        "training_file": s.training_file,
        "validation_file": s.validation_file,
        "integrations": [],
        "estimated_finish": null,
        "metadata": s.metadata,
        "user_provided_suffix": s.suffix,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        "lora": s.lora,
        "datanet": s.datanet.as_ref().map(|d| json!({
            "id": d.id,
            "owner": d.owner,
            "price_per_million_input_tokens": d.price_per_million_input_tokens,
            "price_per_million_output_tokens": d.price_per_million_output_tokens,
            "fee_split_bps": {"owner": d.fee_split_bps[0], "contributors": d.fee_split_bps[1], "operator": d.fee_split_bps[2]},
        })),
    })
}

pub fn event(e: &EventRow) -> Value {
    json!({
        "id": e.id.as_str(),
        "object": "fine_tuning.job.event",
        "created_at": e.created_at,
        "level": e.level,
        "message": e.message,
        "type": e.kind,
        "data": e.data.clone().unwrap_or_else(|| json!({})),
    })
}

/// `model` is the job's `fine_tuned_model` name to come (checkpoints are named after it).
pub fn checkpoint(c: &CheckpointRow, model: &str) -> Value {
    json!({
        "id": c.id.as_str(),
        "object": "fine_tuning.job.checkpoint",
        "created_at": c.created_at,
        "fine_tuned_model_checkpoint": format!("{model}:ckpt-step-{}", c.step),
        "fine_tuning_job_id": c.job_id.as_str(),
        "metrics": c.metrics,
        "step_number": c.step,
    })
}

pub fn list<T>(page: &Page<T>, shape: impl Fn(&T) -> Value) -> Value {
    let data: Vec<Value> = page.data.iter().map(shape).collect();
    let id = |v: Option<&Value>| v.and_then(|v| v.get("id").cloned());
    json!({
        "object": "list",
        "first_id": id(data.first()),
        "last_id": id(data.last()),
        "has_more": page.has_more,
        "data": data,
    })
}
