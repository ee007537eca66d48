//! The runs on one modality alone that UMT (its teachers) and UME (its members) read: named per
//! modality in a method's `teachers` option, and matched to the student's modalities.

use anyhow::{bail, Context, Result};
use mmbal_fusion::MultimodalModel;
use std::collections::BTreeMap;

/// `teachers` must name at least one checkpoint (checked when the trainer prepares the model,
/// so that a method can be built and its options listed without them).
pub(crate) fn require_named(method: &str, teachers: &BTreeMap<String, String>) -> Result<()> {
    if teachers.is_empty() {
        bail!(
            "{method}: `teachers` names no checkpoint; give one per modality, e.g. teachers = {{ \
             audio = \"runs/audio-only/best.safetensors\", visual = \"runs/visual-only/best.safetensors\" }}"
        );
    }
    Ok(())
}

/// The opened `models` (in the order of `teachers`, modality -> checkpoint) in the student's
/// modality order: each must be a run on exactly the modality it is named for, every student
/// modality needs one, and none may be left over. `role` names them in errors ("teacher").
pub(crate) fn per_student_modality(
    method: &str,
    role: &str,
    teachers: &BTreeMap<String, String>,
    student: &MultimodalModel,
    models: Vec<MultimodalModel>,
) -> Result<Vec<MultimodalModel>> {
    let mut by_modality: BTreeMap<String, MultimodalModel> = BTreeMap::new();
    for ((named, path), t) in teachers.iter().zip(models) {
        if t.modalities.len() != 1 || &t.modalities[0] != named {
            bail!(
                "{method}: the {role} for `{named}` ({path}) was trained on {:?}; a {role} is a \
                 run on its modality alone",
                t.modalities
            );
        }
        by_modality.insert(named.clone(), t);
    }
    let ordered = student
        .modalities
        .iter()
        .map(|m| {
            by_modality.remove(m).with_context(|| {
                format!(
                    "{method}: no {role} for the modality `{m}` (teachers = {{ {m} = \"runs/...\" }})"
                )
            })
        })
        .collect::<Result<_>>()?;
    if let Some(extra) = by_modality.keys().next() {
        bail!("{method}: a {role} for `{extra}`, which the student does not have");
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmbal_fusion::{BnInit, EncoderSpec, FusionKind, LinearInit, SmallCnnOptions};

    fn model(names: &[&str]) -> MultimodalModel {
        let enc: EncoderSpec = SmallCnnOptions {
            in_channels: 1,
            width: 2,
            bn_init: BnInit::Ones,
        }
        .into();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let encs = vec![enc; names.len()];
        MultimodalModel::new(
            &names,
            &encs,
            FusionKind::Concat,
            LinearInit::Pytorch,
            3,
            0,
            &candle_core::Device::Cpu,
        )
        .unwrap()
    }

    fn named(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect()
    }

    #[test]
    fn runs_are_matched_to_the_students_modalities() {
        let student = model(&["audio", "visual"]);
        let t = named(&[("audio", "a.st"), ("visual", "v.st")]);
        // Opened in the option's order (audio, visual); returned in the student's.
        let got = per_student_modality(
            "umt",
            "teacher",
            &t,
            &student,
            vec![model(&["audio"]), model(&["visual"])],
        )
        .unwrap();
        let names: Vec<&str> = got.iter().map(|m| m.modalities[0].as_str()).collect();
        assert_eq!(names, ["audio", "visual"]);
        let err = |t: &BTreeMap<String, String>, models| match per_student_modality(
            "umt", "teacher", t, &student, models,
        ) {
            Ok(_) => panic!("accepted"),
            Err(e) => format!("{e:#}"),
        };
        // A run on another modality, or on two.
        let e = err(&t, vec![model(&["visual"]), model(&["visual"])]);
        assert!(
            e.contains("the teacher for `audio` (a.st) was trained on [\"visual\"]"),
            "{e}"
        );
        let e = err(&t, vec![model(&["audio", "visual"]), model(&["visual"])]);
        assert!(
            e.contains("a teacher is a run on its modality alone"),
            "{e}"
        );
        // A student modality without one; one the student does not have.
        let e = err(&named(&[("audio", "a.st")]), vec![model(&["audio"])]);
        assert!(e.contains("no teacher for the modality `visual`"), "{e}");
        let three = named(&[("audio", "a"), ("text", "t"), ("visual", "v")]);
        let e = err(
            &three,
            vec![model(&["audio"]), model(&["text"]), model(&["visual"])],
        );
        assert!(
            e.contains("a teacher for `text`, which the student does not have"),
            "{e}"
        );
        let e = format!("{:#}", require_named("ume", &BTreeMap::new()).unwrap_err());
        assert!(e.contains("ume: `teachers` names no checkpoint"), "{e}");
    }
}
