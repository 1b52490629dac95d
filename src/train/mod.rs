//! The Model Factory's training engine: LoRA fine-tuning of the base model on candle tensors with
//! autograd, on the CPU or a CUDA device (`training_device`). `chat_data` reads chat-format JSONL (a bad line is an error naming it) and
//! tokenizes each conversation through the model's own chat template with the loss on assistant
//! tokens only; `batch` pads examples with masks; `train_model` is the Llama forward with frozen
//! base weights (`frozen_linear`), differentiable rms_norm/rope/softmax (`grad_ops`: candle's fused
//! kernels have no backward) and trainable `lora_params` (with `dropout`); `trainer` runs AdamW
//! (`adamw`, clipping) on the `lr_schedule` with gradient accumulation, `checkpoint` saves and
//! resumes a run, and `train_job` runs a whole job (data to adapter folder) for the CLI and APIs. What always holds: base weights never change, a seed fixes every random draw,
//! and every file written (adapter, checkpoint) appears whole or not at all.

mod adamw;
mod batch;
mod chat_data;
mod checkpoint;
mod dropout;
mod frozen_linear;
mod grad_ops;
mod lora_params;
mod lr_schedule;
pub(crate) mod tensor_io;
mod train_config;
mod train_job;
mod train_model;
mod trainer;

pub use adamw::{AdamW, AdamWConfig};
pub use batch::{Batch, TrainExample};
pub use chat_data::{encode, load_examples, parse_jsonl, ChatRecord};
pub use checkpoint::checkpoints;
pub use dropout::Dropout;
pub use frozen_linear::FrozenLinear;
pub use lora_params::{peft_name, LoraPair, LoraParams, LoraSettings};
pub use lr_schedule::{Decay, LrSchedule};
pub use train_config::TrainConfig;
pub use train_job::{training_device, JobEvent, TrainJob, TrainSummary};
pub use train_model::TrainModel;
pub use trainer::{StepReport, Trainer};
