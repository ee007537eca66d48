//! The training loop. Per epoch: the method's row plan (or every training sample once), shuffled
//! with `(seed, epoch)`, its learning-rate factors and its phase (encoders held in eval mode, a
//! fresh optimizer, where the schedule counts from); per batch: [`crate::train_step`]; then the
//! method's epoch-end hook, evaluation on val (and test), one record in the run log, and
//! checkpoints. The reported model
//! is the selected epoch's (best val accuracy); the last epoch is reported too. Test never
//! selects anything.
//!
//! The parts live beside it: building a trainer (`assemble`), the step (`step`), the run log and
//! its selection (`run_log`), checkpoints (`checkpointer`), the run folder (`run_folder`) and
//! opt-in monitors (`monitor`).

use crate::checkpointer::promote_last_to_best;
use crate::config::TrainConfig;
use crate::loss_scale::LossScaler;
use crate::metrics::{accuracy, argmax, macro_f1};
use crate::monitor::ScoreRatio;
use crate::optim::Optimizer;
use crate::run_folder::{clear_earlier_results, write_run_files};
use crate::run_log::{EpochRecord, Events, RunLog, RunSummary, SplitMetrics};
use crate::step::{to_device, train_step_scaled, StepInputs, StepReport};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use mmbal_data::{batches, shuffle_rows, Batch, Dataset, Row, Split};
use mmbal_fusion::{ForwardOut, MultimodalModel};
use mmbal_methods::{collect_outputs, BalanceMethod, EpochCtx, StepIndex};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// A training run: its config, data, model and balancing method, with the optimizer state
/// and progress; holds its run folder's lock while it trains.
pub struct Trainer {
    /// The run's config, with the method's options resolved to every value in use.
    pub config: TrainConfig,
    /// The dataset, shared with the loader's threads.
    pub dataset: Arc<Dataset>,
    /// The multimodal model being trained.
    pub model: MultimodalModel,
    /// The balancing method (`joint` for plain joint training).
    pub method: Box<dyn BalanceMethod>,
    pub(crate) optimizer: Box<dyn Optimizer>,
    /// The dynamic loss scale of bf16 mixed precision (`None` in f32).
    pub(crate) scaler: Option<LossScaler>,
    pub(crate) epochs_done: usize,
    pub(crate) step: usize,
    pub(crate) run_dir: PathBuf,
    /// Held for the trainer's life: one training per run folder (`None` for a checkpoint opened
    /// to evaluate, which writes no results).
    pub(crate) lock: Option<std::fs::File>,
    pub(crate) overwrite: bool,
    /// The per-epoch score ratio, when the config asks for it.
    pub(crate) score_ratio: Option<ScoreRatio>,
    /// Encoders the method holds fixed this epoch ([`mmbal_methods::Phase`]).
    pub(crate) frozen_encoders: Vec<usize>,
    /// The TensorBoard event file of this training session, while `run` trains.
    pub(crate) events: Option<crate::tensorboard::EventWriter>,
}

impl Trainer {
    /// Number of epochs trained so far, those restored from a checkpoint included.
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// The dynamic loss scale of a bf16 run (`precision = "bf16"`), to read or to start elsewhere
    /// than PyTorch's 2^16; `None` in f32.
    pub fn loss_scaler(&mut self) -> Option<&mut LossScaler> {
        self.scaler.as_mut()
    }

    /// One training step on `batch`, the `batch_index`-th of `batches` in `epoch` (see
    /// [`train_step`]).
    pub fn train_step(
        &mut self,
        batch: &Batch,
        epoch: usize,
        batch_index: usize,
        batches: usize,
    ) -> Result<StepReport> {
        let (inputs, labels, keep) = to_device(batch, self.model.device())?;
        let (loss, out) = train_step_scaled(
            &self.model,
            self.method.as_mut(),
            self.optimizer.as_mut(),
            StepInputs {
                inputs: &inputs,
                labels: &labels,
                keep: &keep,
                rows: &batch.rows,
                frozen_encoders: &self.frozen_encoders,
            },
            StepIndex {
                epoch,
                step: self.step,
                batch: batch_index,
                batches,
            },
            self.scaler.as_mut(),
        )?;
        self.step += 1;
        let scored = self.method.predict(&self.model, &out)?;
        let fused = argmax(&scored.fused)?;
        let uni = scored.unimodal.iter().map(argmax).collect::<Result<_>>()?;
        if let Some(monitor) = &mut self.score_ratio {
            monitor.add(&out.unimodal_logits, &labels)?;
        }
        Ok(StepReport {
            loss,
            fused,
            unimodal: uni,
        })
    }

    /// The plain rows of a split (every sample once, nothing zeroed); an error naming the
    /// dataset when the split has none.
    pub fn split_rows(&self, split: Split) -> Result<Vec<Row>> {
        let rows = self.dataset.rows(split);
        if rows.is_empty() {
            bail!("split {split:?} of {} is empty", self.dataset.manifest.name);
        }
        Ok(rows)
    }

    /// Eval-mode metrics of a split; `None` when the split is empty.
    pub fn evaluate(&self, split: Split) -> Result<Option<SplitMetrics>> {
        let rows = self.dataset.rows(split);
        if rows.is_empty() {
            return Ok(None);
        }
        self.evaluate_rows(&rows).map(Some)
    }

    /// Eval-mode metrics of `rows` (each with its zeroed modalities masked, as in training):
    /// the prediction is the method's, batch by batch.
    pub fn evaluate_rows(&self, rows: &[Row]) -> Result<SplitMetrics> {
        let bs = self.config.batch_size.max(1);
        let c = collect_outputs(&self.model, &self.dataset, rows, bs)?;
        // Predicted batch by batch: the same batches the loader served.
        let mut fused = Vec::with_capacity(rows.len().div_ceil(bs));
        let mut unimodal = vec![Vec::new(); c.unimodal.len()];
        for start in (0..rows.len()).step_by(bs) {
            let n = bs.min(rows.len() - start);
            // The outputs were gathered on the CPU; a method's prediction may use the model's
            // weights, so each batch goes back to the model's device, and the prediction returns.
            let dev = self.model.device();
            let slice = |ts: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
                ts.iter()
                    .map(|t| t.narrow(0, start, n)?.to_device(dev))
                    .collect()
            };
            let out = ForwardOut {
                features: slice(&c.features)?,
                unimodal_logits: slice(&c.unimodal)?,
                fused_logits: c.fused.narrow(0, start, n)?.to_device(dev)?,
            };
            let p = self.method.predict(&self.model, &out)?;
            fused.push(p.fused.to_device(&candle_core::Device::Cpu)?);
            for (m, u) in p.unimodal.into_iter().enumerate() {
                unimodal[m].push(u.to_device(&candle_core::Device::Cpu)?);
            }
        }
        let logits = Tensor::cat(&fused, 0)?;
        let unimodal = unimodal
            .iter()
            .map(|parts| Tensor::cat(parts, 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let labels = Tensor::new(c.labels.as_slice(), &Device::Cpu)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?.to_scalar::<f32>()? as f64;
        let pred = argmax(&logits)?;
        let mut modality_acc = BTreeMap::new();
        for (m, u) in unimodal.iter().enumerate() {
            modality_acc.insert(
                self.model.modalities[m].clone(),
                accuracy(&argmax(u)?, &c.labels),
            );
        }
        Ok(SplitMetrics {
            samples: c.labels.len(),
            loss,
            acc: accuracy(&pred, &c.labels),
            macro_f1: macro_f1(&pred, &c.labels),
            modality_acc,
        })
    }

    /// One learning-rate factor per parameter (in `model.params()` order, the optimizer's),
    /// from a method's factors per group: 1, times the factor of every group holding it.
    fn lr_scale_per_param(&self, groups: &[(mmbal_fusion::ParamGroup, f64)]) -> Result<Vec<f64>> {
        let params = self.model.params();
        // The method's own parameters follow the model's in the optimizer, at factor 1.
        let mut scales = vec![1.0; params.len() + self.method.params().len()];
        for (group, factor) in groups {
            for v in self.model.group(*group)? {
                let id = v.as_tensor().id();
                if let Some(i) = params.iter().position(|p| p.as_tensor().id() == id) {
                    scales[i] *= factor;
                }
            }
        }
        Ok(scales)
    }

    /// The config's missing rates (`[data] missing`) in the model's modality order, 0 where
    /// it names none.
    pub fn missing_rates(&self) -> Vec<f64> {
        self.model
            .modalities
            .iter()
            .map(|m| self.config.data.missing.get(m).copied().unwrap_or(0.0))
            .collect()
    }

    /// The epoch context and the method, borrowed together.
    fn epoch_ctx(&mut self, epoch: usize) -> (EpochCtx<'_>, &mut dyn BalanceMethod) {
        let ctx = EpochCtx {
            epoch,
            epochs: self.config.epochs,
            seed: self.config.seed,
            batch_size: self.config.batch_size,
            model: &self.model,
            dataset: &self.dataset,
            out_dir: Some(&self.run_dir),
        };
        (ctx, self.method.as_mut())
    }

    /// Trains one epoch (0-based `epoch`) and evaluates; returns its record.
    pub fn run_epoch(&mut self, epoch: usize, events: &mut dyn Events) -> Result<EpochRecord> {
        let (plan, lr_scales, phase) = {
            let (ctx, method) = self.epoch_ctx(epoch);
            let plan = method.epoch_plan(&ctx)?;
            let scales = method.lr_scales(&ctx)?;
            (plan, scales, method.phase(&ctx)?)
        };
        let scales = self.lr_scale_per_param(&lr_scales)?;
        self.optimizer.set_lr_scales(scales)?;
        if let Some(&m) = phase
            .frozen_encoders
            .iter()
            .find(|&&m| m >= self.model.num_modalities())
        {
            bail!(
                "epoch {}: method `{}` freezes encoder {m} of {}",
                epoch + 1,
                self.method.name(),
                self.model.num_modalities()
            );
        }
        self.frozen_encoders = phase.frozen_encoders;
        if phase.fresh_optimizer {
            self.optimizer.reset();
        }
        let cfg = &self.config;
        // A phase with its own scheduler counts the schedule's epochs from its start.
        let from = phase.schedule_from.min(epoch);
        let lr = cfg
            .schedule
            .lr(cfg.optimizer.lr(), epoch - from, cfg.epochs - from);
        self.optimizer.set_learning_rate(lr);
        let (seed, bs, prefetch) = (cfg.seed, cfg.batch_size, cfg.prefetch);
        let mut rows = plan.unwrap_or_else(|| self.dataset.rows(Split::Train));
        if rows.is_empty() {
            bail!("epoch {}: no training rows", epoch + 1);
        }
        if !cfg.data.missing.is_empty() {
            let rates = self.missing_rates();
            mmbal_data::drop_modalities(&mut rows, &rates, seed, epoch as u64)?;
        }
        shuffle_rows(&mut rows, seed, epoch as u64);
        events.epoch_start(epoch, rows.len().div_ceil(bs));
        let started = Instant::now();
        let (mut loss_sum, mut labels, mut fused) = (0.0, Vec::new(), Vec::new());
        let mut uni: Vec<Vec<u32>> = vec![Vec::new(); self.model.num_modalities()];
        if let Some(monitor) = &mut self.score_ratio {
            monitor.reset();
        }
        let n_rows = rows.len();
        let n_batches = n_rows.div_ceil(bs);
        for (batch_index, batch) in batches(
            self.dataset.clone(),
            rows,
            bs,
            Some((seed, epoch as u64)),
            prefetch,
        )
        .enumerate()
        {
            let batch = batch?;
            let step = self.train_step(&batch, epoch, batch_index, n_batches)?;
            let loss = step.loss;
            let b = batch.rows.len();
            loss_sum += loss * b as f64;
            labels.extend(batch.labels.to_vec1::<u32>()?);
            fused.extend(step.fused);
            for (acc, p) in uni.iter_mut().zip(step.unimodal) {
                acc.extend(p);
            }
            events.batch_end(loss);
            let every = self.config.tensorboard_every_steps;
            if let Some(tb) = &mut self.events {
                if every > 0 && self.step.is_multiple_of(every) {
                    let mut values = vec![("step/loss".to_string(), loss)];
                    for (k, v) in self.method.diagnostics() {
                        values.push((format!("step/method/{k}"), v));
                    }
                    tb.scalars(self.step as i64, &values)?;
                }
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        {
            let (ctx, method) = self.epoch_ctx(epoch);
            method.on_epoch_end(&ctx)?;
        }
        let train = SplitMetrics {
            samples: n_rows,
            loss: loss_sum / n_rows as f64,
            acc: accuracy(&fused, &labels),
            macro_f1: macro_f1(&fused, &labels),
            modality_acc: self
                .model
                .modalities
                .iter()
                .zip(&uni)
                .map(|(m, p)| (m.clone(), accuracy(p, &labels)))
                .collect(),
        };
        let contributions = if self.config.track_contributions {
            let route = if self.model.has_mixer() {
                mmbal_valuation::MaskRoute::Inputs
            } else {
                mmbal_valuation::MaskRoute::Features
            };
            // A diagnostic: its (masked) forwards must not move state that training goes on
            // with, such as MMTM running means fed by every forward.
            let v = self.model.keeping_buffers(|| {
                mmbal_valuation::valuate(
                    &self.model,
                    &self.dataset,
                    &self.dataset.rows(Split::Train),
                    self.config.batch_size,
                    route,
                    mmbal_valuation::Benefit::SizeIfCorrect,
                    None,
                )
            })?;
            self.model
                .modalities
                .iter()
                .cloned()
                .zip(v.means())
                .collect()
        } else {
            BTreeMap::new()
        };
        let val = self.evaluate(Split::Val)?;
        if let Some(v) = &val {
            // Per-modality accuracies in the model's modality order (the method's view).
            let per: Vec<f64> = self
                .model
                .modalities
                .iter()
                .map(|m| v.modality_acc.get(m).copied().unwrap_or(f64::NAN))
                .collect();
            let (ctx, method) = self.epoch_ctx(epoch);
            method.after_validation(&ctx, v.acc, &per)?;
        }
        let test = if self.config.eval_test {
            self.evaluate(Split::Test)?
        } else {
            None
        };
        let imbalance = crate::cost::imbalance(&train, val.as_ref(), &contributions);
        let linear_probe = if self.config.track_linear_probe {
            let opts = crate::probe::ProbeOptions {
                seed: self.config.seed,
                ..Default::default()
            };
            // Eval-mode passes; state every forward feeds (MMTM means) is put back.
            self.model
                .keeping_buffers(|| crate::probe::linear_probe(&self.model, &self.dataset, &opts))?
                .into_iter()
                .map(|p| {
                    (
                        p.modality,
                        crate::run_log::ProbeAcc {
                            val_acc: p.val_acc,
                            test_acc: p.test_acc,
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Ok(EpochRecord {
            epoch: epoch + 1,
            lr,
            train,
            val,
            test,
            method: self.method.diagnostics().into_iter().collect(),
            score_ratio: self
                .score_ratio
                .as_ref()
                .map(|m| m.ratios(&self.model.modalities))
                .unwrap_or_default(),
            contributions,
            train_seconds,
            train_samples_per_s: n_rows as f64 / train_seconds.max(1e-9),
            imbalance,
            linear_probe,
            peak_memory_mib: crate::cost::peak_memory_mib(self.model.device()),
            loss_scale: self
                .scaler
                .as_mut()
                .map(|s| crate::run_log::LossScaleRecord {
                    scale: s.scale(),
                    skipped_steps: s.take_skipped(),
                }),
        })
    }

    /// Trains the remaining epochs, writing `metrics.jsonl`, `last.safetensors`,
    /// `best.safetensors` (best val accuracy), `summary.json`, SVG plots, the resolved `config.toml`
    /// and, when the data root has one, the preprocessing `recipe.toml` as `data-recipe.toml`
    /// into the run folder.
    ///
    /// A fresh run refuses a folder that already holds results unless [`Trainer::set_overwrite`]
    /// allowed it. After every epoch the folder is consistent: `last.safetensors`, then
    /// `best.safetensors` when the epoch is selected (both written whole through a temporary
    /// file), then `summary.json` naming exactly those epochs.
    pub fn run(&mut self, events: &mut dyn Events) -> Result<RunSummary> {
        let dir = self.config.run_dir();
        if self.lock.is_none() {
            bail!(
                "{}: opened to evaluate, not to train (use Trainer::resume)",
                dir.display()
            );
        }
        if self.epochs_done >= self.config.epochs {
            bail!(
                "{}: the run already has {} epochs; ask for more than that to go on",
                dir.display(),
                self.epochs_done
            );
        }
        if self.epochs_done == 0 {
            clear_earlier_results(&dir, self.overwrite)?;
        }
        write_run_files(&dir, &self.config)?;
        let mut log = RunLog::open(&dir, self.epochs_done, self.config.select)?;
        let (method, dataset) = (
            self.method.name().to_string(),
            self.dataset.manifest.name.clone(),
        );
        let mut summary = None;
        let cost =
            crate::cost::run_cost(self).context("counting the model's parameters and compute")?;
        self.events = if self.config.tensorboard {
            Some(crate::tensorboard::EventWriter::create(&dir)?)
        } else {
            None
        };
        for epoch in self.epochs_done..self.config.epochs {
            let record = self
                .run_epoch(epoch, events)
                .with_context(|| match self.epochs_done {
                    0 => format!(
                        "{}: stopped; no epoch was finished, nothing was saved",
                        dir.display()
                    ),
                    n => format!(
                        "{}: stopped; the run can go on from its last good checkpoint (epoch {n}): \
                         --resume {}",
                        dir.display(),
                        dir.join("last.safetensors").display()
                    ),
                })?;
            let selected = log.push(&record)?;
            self.epochs_done = epoch + 1;
            self.save_checkpoint(&dir.join("last.safetensors"))?;
            if selected {
                promote_last_to_best(&dir)?;
            }
            summary = Some(log.write_summary(&dir, &method, &dataset, Some(&cost))?);
            if let Some(tb) = &mut self.events {
                tb.scalars(record.epoch as i64, &record.scalars())?;
            }
            events.epoch_end(&record);
        }
        crate::plots::plot_run(&dir, &self.model.modalities)?;
        Ok(summary.expect("at least one epoch ran"))
    }
}
