//! Teachers for the methods that read other runs' models (UMT, UME): one run per modality of a
//! config, on that modality alone.

use crate::{Quiet, TrainConfig, Trainer};
use anyhow::Result;

/// One teacher per modality of `c`: joint training of `c` (same seed, epochs, encoders and
/// optimizer) on that modality alone, named `<name>-teacher-<modality>`, with its own input
/// cache (an earlier run of that name is replaced); the `teachers` table of their best
/// checkpoints, for `[method] teachers`.
pub fn train_teachers(c: &TrainConfig) -> Result<toml::Table> {
    let names: Vec<String> = match &c.data.modalities {
        Some(m) => m.clone(),
        None => c.data.recipes.keys().cloned().collect(),
    };
    let mut teachers = toml::Table::new();
    for m in names {
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
        let mut run = Trainer::from_config(t.clone())?;
        run.set_overwrite(true);
        run.run(&mut Quiet)?;
        let best = t.run_dir().join("best.safetensors");
        teachers.insert(m, toml::Value::String(best.display().to_string()));
    }
    Ok(teachers)
}
