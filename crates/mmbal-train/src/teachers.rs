//! Teachers for the methods that read other runs' models (UMT, UME): one run per modality of a
//! config, on that modality alone.

use crate::{Quiet, TrainConfig, Trainer};
use anyhow::Result;

/// The config of each of `c`'s teachers, by modality: joint training of `c` (same seed, epochs,
/// encoders and optimizer) on that modality alone, named `<name>-teacher-<modality>`, with its
/// own input cache.
pub fn teacher_configs(c: &TrainConfig) -> Vec<(String, TrainConfig)> {
    let names: Vec<String> = match &c.data.modalities {
        Some(m) => m.clone(),
        None => c.data.recipes.keys().cloned().collect(),
    };
    names
        .into_iter()
        .map(|m| {
            let mut t = c.clone();
            t.name = format!("{}-teacher-{m}", c.name);
            t.method = Default::default();
            t.data.modalities = Some(vec![m.clone()]);
            // A ratio against the other modalities needs some.
            t.monitor_score_ratio = false;
            if let Some(p) = &c.data.cache_path {
                let stem = p
                    .file_stem()
                    .map_or("inputs".into(), |s| s.to_string_lossy().into_owned());
                t.data.cache_path = Some(p.with_file_name(format!("{stem}-only-{m}.mmbc")));
            }
            (m, t)
        })
        .collect()
}

/// Trains `c`'s teachers ([`teacher_configs`]; an earlier run of the same name is replaced) and
/// returns the `teachers` table of their best checkpoints, for `[method] teachers`.
pub fn train_teachers(c: &TrainConfig) -> Result<toml::Table> {
    let mut teachers = toml::Table::new();
    for (m, t) in teacher_configs(c) {
        let mut run = Trainer::from_config(t.clone())?;
        run.set_overwrite(true);
        run.run(&mut Quiet)?;
        let best = t.run_dir().join("best.safetensors");
        teachers.insert(m, toml::Value::String(best.display().to_string()));
    }
    Ok(teachers)
}
