//! `mmbal`: train, evaluate, value modalities, preprocess and check datasets from the command line.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use mmbal_data::{Dataset, Manifest, Split};
use mmbal_preprocess::preprocess::{
    prepare_output, preprocess_folder, preprocess_video, read_labels, write_lists, FolderReport,
    PreprocessRecipe,
};
use mmbal_train::checkpoint::Checkpoint;
use mmbal_train::{EpochRecord, Events, SplitMetrics, TrainConfig, Trainer};
use mmbal_valuation::{Benefit, MaskRoute};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A split of the dataset.
#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Val,
    Test,
}

impl SplitArg {
    fn split(self) -> Split {
        match self {
            SplitArg::Train => Split::Train,
            SplitArg::Val => Split::Val,
            SplitArg::Test => Split::Test,
        }
    }
}

/// Where a modality is removed for valuation.
#[derive(Clone, Copy, ValueEnum)]
enum RouteArg {
    /// Zero the modality's pooled feature (the reference).
    Features,
    /// Zero the modality's input.
    Inputs,
}

/// The benefit of a subset of modalities for one sample.
#[derive(Clone, Copy, ValueEnum)]
enum BenefitArg {
    /// |S| if the subset's top-1 prediction is the label, else 0 (Wei et al.).
    SizeIfCorrect,
    /// 1 if the subset's top-1 prediction is the label, else 0.
    Correct,
    /// The softmax probability of the label.
    TrueClassProb,
}

/// A named preprocessing recipe.
#[derive(Clone, Copy, ValueEnum)]
enum RecipeArg {
    /// Frames and WAV audio only.
    Plain,
    /// Kinetics-Sounds layout, Kaldi fbank spectrograms.
    KsFbank,
    /// CREMA-D layout, OGM-GE's STFT spectrograms.
    CremadStft,
    /// VGGSound layout, its STFT spectrograms.
    VggsoundStft,
}

/// The name clap shows and parses for a value.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

#[derive(Parser)]
#[command(name = "mmbal", version, about = "Balanced multimodal learning")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// TOML config; every field has a default (see `mmbal config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue a run from its checkpoint (its own config and folder are used).
    #[arg(long, conflicts_with_all = ["config", "name", "overwrite"])]
    resume: Option<PathBuf>,
    /// Override the number of epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// `cpu` or `cuda:N`.
    #[arg(long)]
    device: Option<String>,
    /// Override the run name (results in <out_dir>/<name>).
    #[arg(long)]
    name: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// CPU threads (overrides the config's `threads`; 0 = every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Any config field, KEY=VALUE (TOML value; dotted keys: `optimizer.lr=0.01`,
    /// `method.options.alpha=0.5`); applied after --config, before --epochs and --device.
    #[arg(long = "set", conflicts_with = "resume")]
    sets: Vec<String>,
    /// Replace the results of an earlier run of the same name (refused without it).
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint written by training (`best.safetensors` or `last.safetensors` in a run
    /// folder); repeat it to evaluate several runs (their robustness curves share one plot).
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// The split evaluated.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Missing rates per modality, e.g. `audio=0.5,visual=0`: that share of the rows lose the
    /// modality (drawn from the run's seed; the same rows on every call), as `[data] missing`
    /// does in training.
    #[arg(long)]
    missing: Option<String>,
    /// The accuracy with every non-empty subset of the modalities present, the others zeroed.
    #[arg(long)]
    subsets: bool,
    /// Robustness curves: accuracy and macro-F1 with each modality missing from 0, 10, ...,
    /// 100% of the rows (the others present), written as `robustness.json`, `robustness.md` and
    /// `robustness.svg`/`.png` into --out.
    #[arg(long)]
    robustness: bool,
    /// Where --robustness writes (default: the first checkpoint's run folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Device to run on (`cpu`, `cuda` or `cuda:N`), overriding the run's.
    #[arg(long)]
    device: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model. Without --config: joint training on the generated synthetic dataset.
    Train(TrainArgs),
    /// Evaluate checkpoints on a split: its metrics as JSON, with modalities missing when asked,
    /// per subset of the modalities present, or as robustness curves.
    Eval(EvalArgs),
    /// Each modality's pooled features of a split as `.npy` (with the labels), their 2-D t-SNE
    /// and its plot by class, for a checkpoint (any method, MMTM included).
    Features {
        /// A checkpoint written by training.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The split.
        #[arg(long, value_enum, default_value_t = SplitArg::Test)]
        split: SplitArg,
        /// Where the files go (default: `features/` in the checkpoint's run folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seed of t-SNE's initial embedding.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// t-SNE's perplexity (lowered to (N - 1) / 3 for small splits).
        #[arg(long, default_value_t = 30.0)]
        perplexity: f64,
        /// Only the `.npy` features and labels, no t-SNE.
        #[arg(long)]
        no_tsne: bool,
        /// Device to run on (`cpu`, `cuda` or `cuda:N`), overriding the run's.
        #[arg(long)]
        device: Option<String>,
    },
    /// Shapley contribution of every modality to every sample of a split, for a checkpoint.
    /// Writes `<out>/valuation_<split>.npy` (samples x modalities) and `.samples.npy` (indices).
    Valuate {
        /// A checkpoint written by training (`best.safetensors` or `last.safetensors` in a run
        /// folder).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The split valued.
        #[arg(long, value_enum, default_value_t = SplitArg::Train)]
        split: SplitArg,
        /// Where a modality is removed.
        #[arg(long, value_enum, default_value_t = RouteArg::Features)]
        route: RouteArg,
        /// The benefit of a subset of modalities.
        #[arg(long, value_enum, default_value_t = BenefitArg::SizeIfCorrect)]
        benefit: BenefitArg,
        /// Output folder (default: the checkpoint's folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Device to run on (`cpu`, `cuda` or `cuda:N`), overriding the run's.
        #[arg(long)]
        device: Option<String>,
    },
    /// Linear probes of a checkpoint: each modality's frozen features, a new linear classifier
    /// per modality fitted on train with SGD and selected on val; prints the val and test
    /// accuracies as JSON (the quality of each modality's features after training).
    Probe {
        /// A checkpoint written by training (`best.safetensors` or `last.safetensors` in a run
        /// folder).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Passes over the training features.
        #[arg(long, default_value_t = 100)]
        epochs: usize,
        /// SGD's learning rate (momentum 0.9, weight decay 1e-4).
        #[arg(long, default_value_t = 0.01)]
        lr: f64,
        /// Seed of the classifiers and the shuffles.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Device to run on (`cpu`, `cuda` or `cuda:N`), overriding the run's.
        #[arg(long)]
        device: Option<String>,
    },
    /// Print the default config (or the resolved form of --config) as TOML, every option of the
    /// method with the value in use.
    Config {
        /// A TOML config to resolve (every absent field takes its default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Turn videos into one of the field's layouts with ffmpeg: frames, WAV audio and, for the
    /// named recipes, spectrograms as .npy; the recipe is written to OUTPUT/recipe.toml.
    Preprocess {
        /// A video file or a folder of videos.
        #[arg(long)]
        input: PathBuf,
        /// The layout folder written (created if absent).
        #[arg(long)]
        output: PathBuf,
        /// What is written: the layout and the spectrograms.
        #[arg(long, value_enum, default_value_t = RecipeArg::Plain)]
        recipe: RecipeArg,
        /// Frames per second to extract (the field uses 1; GRID lips need 25).
        #[arg(long)]
        fps: Option<f64>,
        /// Sample rate of the WAV written.
        #[arg(long)]
        sample_rate: Option<u32>,
        /// JPEG quality of the frames written (ffmpeg's scale, 2 best to 31 worst).
        #[arg(long)]
        jpeg_quality: Option<u32>,
        /// Any recipe parameter, KEY=VALUE (TOML value; dotted keys: audio.frames=512).
        #[arg(long = "set")]
        sets: Vec<String>,
        /// `id,label[,split]` per line: write the recipe's layout lists for the clips done.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// The output folder was made with another recipe: delete its outputs and make them
        /// anew (refused without it).
        #[arg(long)]
        replace: bool,
    },
    /// Dataset checks.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Checks a dataset layout: counts per class and split, and every missing or corrupt file.
    Doctor {
        /// A training config naming the dataset and its recipes (default: the synthetic one).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Writes the val list of a layout whose community has none (Kinetics-Sounds, CREMA-D,
    /// UCF-101, VGGSound), carved from train, and says what it wrote; loading never writes it.
    CarveVal {
        /// A training config naming the dataset (its card with a [layout], and the data root).
        #[arg(long)]
        config: PathBuf,
    },
}

/// Every bar the command line draws, so that they stack instead of overwriting each other.
fn bars() -> &'static MultiProgress {
    static BARS: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Bars for the library's long passes (`mmbal_data::progress`): the input cache build,
/// valuation, evaluation, preprocessing. Drawn on stderr when it is a terminal.
#[derive(Default)]
struct PassBars {
    open: std::sync::Mutex<std::collections::HashMap<u64, ProgressBar>>,
}

impl mmbal_data::progress::ProgressSink for PassBars {
    fn start(&self, id: u64, name: &str, total: usize) {
        let bar = bars().add(ProgressBar::new(total as u64));
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(name.to_string());
        self.open.lock().unwrap().insert(id, bar);
    }
    fn advance(&self, id: u64, n: usize) {
        if let Some(b) = self.open.lock().unwrap().get(&id) {
            b.inc(n as u64);
        }
    }
    fn finish(&self, id: u64) {
        if let Some(b) = self.open.lock().unwrap().remove(&id) {
            b.finish_and_clear();
        }
    }
}

/// Progress bar per epoch and one summary line per epoch.
struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    epochs: usize,
}

impl Events for Progress {
    fn epoch_start(&mut self, epoch: usize, batches: usize) {
        if self.quiet {
            return;
        }
        let bar = bars().add(ProgressBar::new(batches as u64));
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} batches, loss {msg} ({elapsed})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, self.epochs));
        self.bar = Some(bar);
    }
    fn batch_end(&mut self, loss: f64) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{loss:.4}"));
            b.inc(1);
        }
    }
    fn epoch_end(&mut self, r: &EpochRecord) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let split = |name: &str, m: &Option<SplitMetrics>| match m {
            Some(m) => format!("{name} {}", metrics_line(m)),
            None => String::new(),
        };
        println!(
            "epoch {:>3}  lr {:.2e}  train loss {:.4} {}  |  {}  |  {}  ({:.1} s, {:.0} samples/s)",
            r.epoch,
            r.lr,
            r.train.loss,
            metrics_line(&r.train),
            split("val", &r.val),
            split("test", &r.test),
            r.train_seconds,
            r.train_samples_per_s
        );
        if !r.method.is_empty() {
            let d: Vec<String> = r
                .method
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            println!("           method: {}", d.join(", "));
        }
    }
}

fn metrics_line(m: &SplitMetrics) -> String {
    let per: Vec<String> = m
        .modality_acc
        .iter()
        .map(|(k, v)| format!("{k} {:.1}%", 100.0 * v))
        .collect();
    format!(
        "acc {:.1}% f1 {:.3} ({})",
        100.0 * m.acc,
        m.macro_f1,
        per.join(", ")
    )
}

/// Sets the thread count before any pool exists: rayon's (the loader) reads `RAYON_NUM_THREADS`,
/// candle's (its element-wise ops and mmbal's kernels) `CANDLE_NUM_THREADS` first, so both are
/// set; 0 leaves the default (every core, or the variables as the user set them).
fn use_threads(n: usize) {
    if n > 0 {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
}

fn load_config(path: &Option<PathBuf>) -> Result<TrainConfig> {
    match path {
        Some(p) => TrainConfig::load(p),
        None => Ok(TrainConfig::default()),
    }
}

fn train(args: TrainArgs) -> Result<()> {
    let TrainArgs {
        config,
        resume,
        epochs,
        device,
        name,
        quiet,
        threads,
        sets,
        overwrite,
    } = args;
    let started = Instant::now();
    let mut trainer = match resume {
        Some(ck) => {
            let saved = Checkpoint::load(&ck)?;
            let cfg = TrainConfig::from_toml(saved.meta("config")?, &ck)?;
            use_threads(threads.unwrap_or(cfg.threads));
            Trainer::resume(&ck, epochs, device.as_deref())?
        }
        None => {
            let mut cfg = load_config(&config)?.with_overrides(&sets)?;
            if let Some(t) = threads {
                cfg.threads = t;
            }
            use_threads(cfg.threads);
            if let Some(e) = epochs {
                cfg.epochs = e;
            }
            if let Some(d) = device {
                cfg.device = d;
            }
            if let Some(n) = name {
                cfg.name = n;
            }
            println!(
                "# resolved config (saved as {}/config.toml)",
                cfg.run_dir().display()
            );
            println!("{}", cfg.to_toml());
            let mut t = Trainer::from_config(cfg)?;
            t.set_overwrite(overwrite);
            t
        }
    };
    let ds = &trainer.dataset;
    println!(
        "dataset {}: {} samples ({} train / {} val / {} test), modalities {:?}; method {}; device {:?}",
        ds.manifest.name,
        ds.manifest.samples.len(),
        ds.manifest.indices(Split::Train).len(),
        ds.manifest.indices(Split::Val).len(),
        ds.manifest.indices(Split::Test).len(),
        ds.manifest.modalities,
        trainer.method.name(),
        trainer.model.device().location()
    );
    for note in &ds.manifest.notes {
        println!("note: {note}");
    }
    let mut progress = Progress {
        bar: None,
        quiet,
        epochs: trainer.config.epochs,
    };
    let summary = trainer.run(&mut progress)?;
    let dir = trainer.config.run_dir();
    if let Some(b) = &summary.best {
        println!(
            "best val epoch {}: val acc {:.1}%, test {}",
            b.epoch,
            100.0 * b.val.as_ref().map(|v| v.acc).unwrap_or(f64::NAN),
            b.test
                .as_ref()
                .map(metrics_line)
                .unwrap_or_else(|| "not evaluated".into())
        );
    }
    if let Some(l) = &summary.last {
        println!(
            "last epoch {}: test {}",
            l.epoch,
            l.test
                .as_ref()
                .map(metrics_line)
                .unwrap_or_else(|| "not evaluated".into())
        );
    }
    println!(
        "results in {} (metrics.jsonl, summary.json, best.safetensors, last.safetensors); {:.1} s in all",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `audio=0.5,visual=0` as rates in `modalities`' order (0 for a modality not named); a name the
/// run does not have, or a rate outside [0, 1], is an error.
fn parse_missing(text: &str, modalities: &[String]) -> Result<Vec<f64>> {
    let mut rates = vec![0.0; modalities.len()];
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, value) = part
            .split_once('=')
            .with_context(|| format!("--missing {text}: expected MODALITY=RATE, got `{part}`"))?;
        let Some(m) = modalities.iter().position(|n| n == name.trim()) else {
            bail!(
                "--missing {text}: no modality `{}` (the run has {modalities:?})",
                name.trim()
            );
        };
        let rate: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("--missing {text}: `{value}` is not a number"))?;
        if !(0.0..=1.0).contains(&rate) {
            bail!(
                "--missing {text}: {} = {rate}; a rate is between 0 and 1",
                name.trim()
            );
        }
        rates[m] = rate;
    }
    Ok(rates)
}

/// The run's name for a checkpoint: its folder's name.
fn run_label(checkpoint: &Path) -> String {
    checkpoint.parent().and_then(|p| p.file_name()).map_or_else(
        || checkpoint.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn eval(a: EvalArgs) -> Result<()> {
    let split = a.split.split();
    let mut curves = Vec::new();
    let several = a.checkpoint.len() > 1;
    for checkpoint in &a.checkpoint {
        let trainer = Trainer::open(checkpoint, a.device.as_deref())?;
        let metrics = match &a.missing {
            Some(text) => {
                let rates = parse_missing(text, &trainer.model.modalities)?;
                Some(mmbal_train::robustness::evaluate_missing(
                    &trainer, split, &rates,
                )?)
            }
            None => trainer.evaluate(split)?,
        };
        let Some(metrics) = metrics else {
            bail!(
                "split {split:?} of {} is empty",
                trainer.dataset.manifest.name
            );
        };
        let subsets = if a.subsets {
            Some(mmbal_train::robustness::subset_metrics(&trainer, split)?)
        } else {
            None
        };
        if several || subsets.is_some() {
            let mut v = serde_json::json!({
                "checkpoint": checkpoint.display().to_string(),
                "metrics": metrics,
            });
            if let Some(s) = &subsets {
                v["subsets"] = serde_json::to_value(s)?;
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&metrics)?);
        }
        if let Some(s) = &subsets {
            println!("| present | acc | macro-F1 |\n|---|---|---|");
            for x in s {
                println!(
                    "| {} | {:.1} | {:.3} |",
                    x.present.join(" + "),
                    x.acc * 100.0,
                    x.macro_f1
                );
            }
        }
        if a.robustness {
            let c = mmbal_train::robustness::robustness(&trainer, split, 10)?;
            curves.push((run_label(checkpoint), c));
        }
    }
    if a.robustness {
        let out = match &a.out {
            Some(o) => o.clone(),
            None => a.checkpoint[0]
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        };
        std::fs::create_dir_all(&out)
            .with_context(|| format!("{}: cannot create the folder", out.display()))?;
        let json: Vec<serde_json::Value> = curves
            .iter()
            .map(|(run, c)| serde_json::json!({ "run": run, "split": format!("{split:?}").to_lowercase(), "curves": c }))
            .collect();
        std::fs::write(
            out.join("robustness.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
        let table = mmbal_train::robustness::curves_table(&curves);
        std::fs::write(out.join("robustness.md"), &table)?;
        let lines: Vec<(String, Vec<(f64, f64)>)> = curves
            .iter()
            .flat_map(|(run, cs)| {
                cs.iter().map(move |c| {
                    let name = if several {
                        format!("{run}: {} missing", c.modality)
                    } else {
                        format!("{} missing", c.modality)
                    };
                    (
                        name,
                        c.points.iter().map(|p| (p.rate * 100.0, p.acc)).collect(),
                    )
                })
            })
            .collect();
        mmbal_train::plots::xy_figure(
            &out.join("robustness"),
            &format!("Accuracy as a modality goes missing ({split:?})"),
            ("missing rate (%)", "accuracy"),
            &lines,
        )?;
        print!("{table}");
        println!(
            "robustness curves written to {} (robustness.json, .md, .svg, .png)",
            out.display()
        );
    }
    Ok(())
}

fn valuate(
    checkpoint: &Path,
    split: SplitArg,
    route: RouteArg,
    benefit: BenefitArg,
    out: Option<PathBuf>,
    device: Option<String>,
) -> Result<()> {
    let route = match route {
        RouteArg::Features => MaskRoute::Features,
        RouteArg::Inputs => MaskRoute::Inputs,
    };
    let benefit = match benefit {
        BenefitArg::SizeIfCorrect => Benefit::SizeIfCorrect,
        BenefitArg::Correct => Benefit::Correct,
        BenefitArg::TrueClassProb => Benefit::TrueClassProb,
    };
    let split_name = value_name(split);
    let split = split.split();
    let trainer = Trainer::open(checkpoint, device.as_deref())?;
    let rows = trainer.dataset.rows(split);
    if rows.is_empty() {
        bail!(
            "split {split_name} of {} is empty",
            trainer.dataset.manifest.name
        );
    }
    let started = Instant::now();
    let v = mmbal_valuation::valuate(
        &trainer.model,
        &trainer.dataset,
        &rows,
        trainer.config.batch_size,
        route,
        benefit,
        None,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let dir = out.unwrap_or_else(|| {
        checkpoint
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("valuation_{split_name}.npy"));
    v.write_npy(&path)?;
    let means: serde_json::Map<String, serde_json::Value> = trainer
        .model
        .modalities
        .iter()
        .zip(v.means())
        .map(|(m, x)| (m.clone(), x.into()))
        .collect();
    let report = serde_json::json!({
        "split": split_name,
        "samples": v.samples.len(),
        "route": format!("{route:?}"),
        "benefit": format!("{benefit:?}"),
        "mean_contribution": means,
        "seconds": seconds,
        "file": path.display().to_string(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn doctor(config: &Option<PathBuf>) -> Result<()> {
    let cfg = load_config(config)?;
    let (card, root) = cfg.dataset_location()?;
    let mut manifest = Manifest::load(&card, &root)?;
    let card_modalities = manifest.modalities.clone();
    if let Some(keep) = &cfg.data.modalities {
        manifest
            .keep_modalities(keep)
            .context("[data] modalities")?;
    }
    let (recipes, _) = cfg.per_modality(&card_modalities, &manifest.modalities)?;
    let mut ex = mmbal_preprocess::doctor::examine(&manifest, &recipes, &root);
    for line in &ex.lines {
        println!("{line}");
    }
    let ds = Dataset::new(manifest, recipes)?;
    ex.problems.extend(ds.check_all());
    if ex.problems.is_empty() {
        println!("every file decodes with the configured recipes");
        return Ok(());
    }
    for p in &ex.problems {
        println!("  problem: {p}");
    }
    bail!("{} problem(s) found", ex.problems.len())
}

fn carve_val(config: &Path) -> Result<()> {
    let cfg = TrainConfig::load(config)?;
    let (card_dir, root) = cfg.dataset_location()?;
    let (card, card_path) = mmbal_dataset::manifest::DatasetCard::read(&card_dir)?;
    let Some(layout) = &card.layout else {
        bail!(
            "{}: no [layout]; a card with a split file names its val samples itself",
            card_path.display()
        );
    };
    match mmbal_dataset::layouts::carve_val(&card, layout, &root)
        .with_context(|| format!("dataset card {}", card_path.display()))?
    {
        Some(wrote) => println!("{wrote}"),
        None => println!(
            "nothing written: the {} layout under {} has its val list",
            layout.kind.name(),
            root.display()
        ),
    }
    Ok(())
}

fn preprocess(
    input: &Path,
    output: &Path,
    recipe: &PreprocessRecipe,
    labels: Option<&Path>,
) -> Result<()> {
    let report = if input.is_dir() {
        preprocess_folder(input, output, recipe)?
    } else {
        let id = input
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{}: no file name", input.display()))?;
        let mut r = FolderReport {
            removed: prepare_output(output, recipe)?,
            ..FolderReport::default()
        };
        match preprocess_video(input, output, id, recipe) {
            Ok(n) => r.done.push((id.to_string(), n)),
            Err(e) => r.failed.push(format!("{e:#}")),
        }
        r
    };
    println!(
        "{} video(s) preprocessed into {} with recipe {} (written to recipe.toml)",
        report.done.len(),
        output.display(),
        recipe.name
    );
    for f in &report.removed {
        println!("  removed (made with the earlier recipe): {}", f.display());
    }
    for f in &report.ignored {
        println!("  not a video (by extension), left alone: {}", f.display());
    }
    for f in &report.failed {
        println!("  failed: {f}");
    }
    if let Some(labels) = labels {
        let layout = recipe.layout.with_context(|| {
            format!(
                "--labels: recipe {} follows no layout (use ks-fbank, cremad-stft or vggsound-stft)",
                recipe.name
            )
        })?;
        let lines = read_labels(labels)?;
        let left_out = write_lists(layout, output, &lines, &report.done)?;
        println!(
            "split lists of the {layout:?} layout written for {} clip(s)",
            report.done.len()
        );
        if !left_out.is_empty() {
            println!(
                "  labelled but not preprocessed, so in no list: {}",
                left_out.join(", ")
            );
        }
    }
    if !report.failed.is_empty() {
        bail!(
            "{} of {} videos failed",
            report.failed.len(),
            report.done.len() + report.failed.len()
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    // A speed setting of the allocator (glibc); without it runs are slower, not different.
    mmbal_ops::retain_freed_memory();
    let cli = Cli::parse();
    if !matches!(&cli.command, Command::Train(a) if a.quiet) {
        mmbal_data::progress::set_sink(Some(std::sync::Arc::new(PassBars::default())));
    }
    match cli.command {
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Features {
            checkpoint,
            split,
            out,
            seed,
            perplexity,
            no_tsne,
            device,
        } => {
            let trainer = Trainer::open(&checkpoint, device.as_deref())?;
            let out = out.unwrap_or_else(|| {
                checkpoint
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .join("features")
            });
            let tsne = (!no_tsne).then_some(mmbal_train::features::TsneOptions {
                seed,
                perplexity,
                ..Default::default()
            });
            let files =
                mmbal_train::features::export_features(&trainer, split.split(), &out, tsne)?;
            for f in files {
                println!("{}", f.display());
            }
            Ok(())
        }
        Command::Valuate {
            checkpoint,
            split,
            route,
            benefit,
            out,
            device,
        } => valuate(&checkpoint, split, route, benefit, out, device),
        Command::Probe {
            checkpoint,
            epochs,
            lr,
            seed,
            device,
        } => {
            let trainer = Trainer::open(&checkpoint, device.as_deref())?;
            let opts = mmbal_train::probe::ProbeOptions {
                epochs,
                lr,
                seed,
                batch_size: trainer.config.batch_size,
                ..Default::default()
            };
            let results =
                mmbal_train::probe::linear_probe(&trainer.model, &trainer.dataset, &opts)?;
            println!("{}", serde_json::to_string_pretty(&results)?);
            Ok(())
        }
        Command::Config { config } => {
            let mut c = load_config(&config)?;
            c.resolve_method_options()?;
            print!("{}", c.to_toml());
            Ok(())
        }
        Command::Preprocess {
            input,
            output,
            recipe,
            fps,
            sample_rate,
            jpeg_quality,
            mut sets,
            labels,
            replace,
        } => {
            // The flags are shorthands for --set.
            if let Some(v) = fps {
                sets.push(format!("fps={v:?}"));
            }
            if let Some(v) = sample_rate {
                sets.push(format!("wav_sample_rate={v}"));
            }
            if let Some(v) = jpeg_quality {
                sets.push(format!("jpeg_quality={v}"));
            }
            let mut recipe = PreprocessRecipe::named(&value_name(recipe))?.with_overrides(&sets)?;
            recipe.replace = replace;
            preprocess(&input, &output, &recipe, labels.as_deref())
        }
        Command::Data {
            command: DataCommand::Doctor { config },
        } => doctor(&config),
        Command::Data {
            command: DataCommand::CarveVal { config },
        } => carve_val(&config),
    }
}
